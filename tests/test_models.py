import numpy as np
import pytest

import pyengine as pe
from pyengine.models import lenet5, resnet_small, vgg_small


def _needs(*names):
    missing = [n for n in names if not hasattr(pe, n)]
    return pytest.mark.skipif(bool(missing), reason=f"pyengine lacks {missing} on this branch")


needs_cnn = _needs("Conv2d", "ReLU", "Flatten", "Linear", "CrossEntropyLoss")
needs_bn = _needs("Conv2d", "ReLU", "Flatten", "Linear", "CrossEntropyLoss", "BatchNorm2d")

BUILDERS = {
    "lenet5": (lenet5, (1, 28, 28), needs_cnn),
    "vgg_small": (vgg_small, (3, 32, 32), needs_cnn),
    "resnet_small": (resnet_small, (3, 32, 32), needs_bn),
}
MODEL_PARAMS = [pytest.param(name, marks=mark) for name, (_, _, mark) in BUILDERS.items()]


def make(name, seed=0, **kw):
    pe.manual_seed(seed)
    build, shape, _ = BUILDERS[name]
    return build(**kw), shape


def to_float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
        p.grad = np.zeros_like(p.data)
    for mod in model.modules():
        for name, b in list(mod._buffers.items()):
            if isinstance(b, np.ndarray) and b.dtype == np.float32:
                mod.register_buffer(name, b.astype(np.float64))
    return model


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_forward_shapes_and_backward(name, rng):
    model, shape = make(name)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape
    assert all(np.any(p.grad != 0) for p in model.parameters())
    other, _ = make(name, num_classes=7, in_channels=2)
    assert other(rng.standard_normal((1, 2) + shape[1:]).astype(np.float32)).shape == (1, 7)


@needs_cnn
def test_lenet5_state_dict_keys():
    model, _ = make("lenet5")
    keys = [f"{i}.{leaf}" for i in (0, 3, 7, 9, 11) for leaf in ("weight", "bias")]
    assert list(model.state_dict()) == keys
    shapes = [p.shape for p in model.parameters()]
    assert shapes == [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,),
                      (84, 120), (84,), (10, 84), (10,)]


@needs_cnn
def test_vgg_small_state_dict_keys():
    model, _ = make("vgg_small")
    keys = [f"features.{i}.{leaf}" for i in (0, 2, 5, 7, 10, 12) for leaf in ("weight", "bias")]
    keys += [f"classifier.{i}.{leaf}" for i in (0, 2) for leaf in ("weight", "bias")]
    assert list(model.state_dict()) == keys
    assert model.state_dict()["classifier.0.weight"].shape == (256, 128 * 4 * 4)


@needs_bn
def test_resnet_small_state_dict_keys():
    model, _ = make("resnet_small")
    keys = list(model.state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    want = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    for i in (1, 2, 3):
        p = f"layer{i}.0."
        want += [p + "block.0.weight"] + [p + f"block.1.{b}" for b in bn]
        want += [p + "block.3.weight"] + [p + f"block.4.{b}" for b in bn]
        if i > 1:
            want += [p + "shortcut.0.weight"] + [p + f"shortcut.1.{b}" for b in bn]
    want += ["fc.weight", "fc.bias"]
    assert keys == want
    assert model.state_dict()["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_matches_torch_with_copied_weights(name, rng):
    torch = pytest.importorskip("torch")
    from pyengine.benchcases_cnn import to_torch

    model, shape = make(name)
    net = to_torch(model)
    assert list(net.state_dict()) == list(model.state_dict())
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    w = rng.standard_normal((4, 10)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = net(tx)
    ty.backward(torch.from_numpy(w))
    y = model(x)
    dx = model.backward(w)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    tgrads = dict(net.named_parameters())
    for k, p in model.named_parameters():
        g = tgrads[k].grad.numpy()
        np.testing.assert_allclose(p.grad, g, rtol=1e-3, atol=1e-4 * np.abs(g).max(), err_msg=k)
    # running statistics (BatchNorm) follow torch's update
    tstate = net.state_dict()
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(np.asarray(v, np.float64), tstate[k].double().numpy(),
                                   rtol=1e-4, atol=1e-5, err_msg=k)
    # eval mode uses the running statistics
    model.eval()
    net.eval()
    with pe.no_grad(), torch.no_grad():
        np.testing.assert_allclose(model(x), net(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_matches_numpy_reference_interpreter(name, rng):
    from pyengine.benchcases_cnn import reference_backward, reference_forward

    model, shape = make(name)
    params = {k: np.array(v) for k, v in model.state_dict().items()}
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    g = rng.standard_normal((3, 10)).astype(np.float32)
    cache = {}
    y_ref = reference_forward(model, x, params, cache)
    dx_ref, grads = reference_backward(model, g, params, cache)
    np.testing.assert_allclose(model(x), y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.backward(g), dx_ref, rtol=1e-4, atol=1e-5)
    for k, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, grads[k], rtol=1e-3,
                                   atol=1e-4 * np.abs(grads[k]).max(), err_msg=k)


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_training_steps_reduce_the_loss(name, rng):
    model, shape = make(name)
    x = rng.standard_normal((8,) + shape).astype(np.float32)
    y = rng.integers(0, 10, 8)
    loss_fn = pe.CrossEntropyLoss()
    lr = {"lenet5": 3e-3, "vgg_small": 5e-4, "resnet_small": 2e-3}[name]
    opt = pe.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(6):
        losses.append(loss_fn(model(x), y))
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    assert losses[-1] < 0.85 * losses[0], losses


@needs_bn
def test_basic_block_gradcheck(rng):
    from pyengine.models.cnn import basic_block

    pe.manual_seed(0)
    block = to_float64(basic_block(2, 3, stride=2))
    pe.gradcheck(block, rng.standard_normal((2, 2, 5, 5)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_same_bits_for_1_and_2_threads(name, rng):
    x = rng.standard_normal((2,) + BUILDERS[name][1]).astype(np.float32)
    outs = []
    for t in (1, 2):
        pe.set_num_threads(t)
        model, _ = make(name)
        y = model(x)
        dx = model.backward(np.ones_like(y))
        outs.append([y, dx] + [p.grad for p in model.parameters()])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@needs_cnn
def test_demo_lenet5_reaches_97_percent(tmp_path, capsys):
    from pyengine.__main__ import main

    path = str(tmp_path / "lenet5.safetensors")
    assert main(["demo", "--model", "lenet5", "--threads", "1", "--checkpoint", path]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy >= 0.97, out
    assert main(["eval", path, "--threads", "1"]) == 0
    assert f"test accuracy: {accuracy:.4f}" in capsys.readouterr().out
