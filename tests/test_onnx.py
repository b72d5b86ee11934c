"""pe.export_onnx: onnxruntime runs the exported graph and agrees with us."""

import numpy as np
import pytest

import pyengine as pe

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _ort_run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _check(model, x, tmp_path, other_batch=None, atol=1e-5):
    path = tmp_path / "model.onnx"
    was_training = model.training
    proto = pe.export_onnx(model, x, path)
    assert isinstance(proto, onnx.ModelProto) and path.exists()
    assert model.training == was_training    # export restores the mode
    model.eval()
    for batch in [x] + ([other_batch] if other_batch is not None else []):
        with pe.no_grad():
            want = model(batch)
        np.testing.assert_allclose(_ort_run(path, batch), want, rtol=1e-5, atol=atol)
    return proto


def _ops(proto):
    return {n.op_type for n in proto.graph.node}


def test_mlp(tmp_path, rng):
    model = pe.Sequential(pe.Linear(12, 20), pe.ReLU(), pe.Dropout(0.3), pe.Linear(20, 16),
                          pe.Sigmoid(), pe.Linear(16, 8), pe.Tanh(), pe.Linear(8, 5, bias=False),
                          pe.Softmax(dim=1))
    x = rng.standard_normal((4, 12)).astype(np.float32)
    proto = _check(model, x, tmp_path, other_batch=rng.standard_normal((9, 12)).astype(np.float32))
    assert {"Gemm", "Relu", "Sigmoid", "Tanh", "Softmax", "Identity"} <= _ops(proto)


def test_lenet5(tmp_path, rng):
    from pyengine.models import lenet5
    pe.manual_seed(0)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    proto = _check(lenet5(), x, tmp_path,
                   other_batch=rng.standard_normal((5, 1, 28, 28)).astype(np.float32))
    assert {"Conv", "MaxPool", "Flatten", "Gemm"} <= _ops(proto)


def test_resnet_small_with_trained_batchnorm(tmp_path, rng):
    from pyengine.models import resnet_small
    pe.manual_seed(0)
    model = resnet_small()
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    for _ in range(2):        # non-trivial running statistics
        model(x * 2 + 0.5)
    proto = _check(model, x, tmp_path, atol=1e-4)
    assert {"Conv", "BatchNormalization", "Add", "GlobalAveragePool"} <= _ops(proto)


def test_other_layers(tmp_path, rng):
    model = pe.Sequential(
        pe.Conv2d(3, 8, 3, stride=2, padding=1, groups=1, dilation=1),
        pe.BatchNorm2d(8), pe.LeakyReLU(0.1),
        pe.Concat(pe.Sequential(pe.Conv2d(8, 4, 3, padding="same", bias=False), pe.ReLU()),
                  pe.Conv2d(8, 4, 1, groups=4)),
        pe.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        pe.MaxPool2d(3, stride=2, padding=1),
        pe.AdaptiveAvgPool2d(2),
        pe.Flatten(start_dim=2), pe.Linear(4, 6), pe.Softplus(), pe.LogSoftmax(dim=-1),
        pe.Identity())
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    proto = _check(model, x, tmp_path)
    assert {"Concat", "AveragePool", "MatMul", "Reshape", "LeakyRelu", "Softplus",
            "LogSoftmax"} <= _ops(proto)


def test_unsupported_modules_are_listed(tmp_path, rng):
    class Custom(pe.Module):
        def forward(self, x):
            return x

    model = pe.Sequential(pe.Linear(3, 4), pe.GELU(), Custom())
    with pytest.raises(NotImplementedError, match=r"1 \(GELU\), 2 \(Custom\)"):
        pe.export_onnx(model, np.zeros((1, 3), np.float32), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(TypeError, match="float32 or float64"):
        pe.export_onnx(pe.Linear(3, 4), np.zeros((1, 3), np.int64), tmp_path / "m.onnx")
