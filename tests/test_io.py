"""pe.save / pe.load: safetensors round trips, atomic writes, clear errors."""

import json
import os
import struct
from collections import OrderedDict

import numpy as np
import pytest

import pyengine as pe
import pyengine.io as peio


class _WithBuffer(pe.Module):
    """A Linear plus a 0-d int64 buffer, like BatchNorm's num_batches_tracked."""

    def __init__(self):
        super().__init__()
        self.fc = pe.Linear(4, 3)
        self.register_buffer("running", np.zeros(3, np.float32))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))

    def forward(self, x):
        return self.fc(x)

    def backward(self, grad_out, input_grad=True):
        return self.fc.backward(grad_out, input_grad)


def _model(seed=0):
    pe.manual_seed(seed)
    return pe.Sequential(pe.Linear(5, 4), _WithBuffer())


def _assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        assert b.flags.writeable
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def test_state_dict_round_trip_bitwise(tmp_path, rng):
    sd = OrderedDict([
        ("w32", rng.standard_normal((3, 5)).astype(np.float32)),
        ("w64", rng.standard_normal((7,))),
        ("count", np.array(12345678901, dtype=np.int64)),  # 0-d int64
        ("flags", np.array([True, False])),
        ("empty", np.zeros((0, 3), np.float32)),
        ("special", np.array([np.nan, np.inf, -0.0, 1e-45], np.float32)),
    ])
    path = tmp_path / "sd.safetensors"
    pe.save(sd, path)
    back = pe.load(path)
    _assert_same(sd, back)
    assert back["count"].shape == () and back["count"].dtype == np.int64
    assert np.array_equal(back["special"].view(np.uint32), sd["special"].view(np.uint32))


def test_module_round_trip_and_model_argument(tmp_path):
    model = _model(0)
    model[1].num_batches_tracked = np.array(7, dtype=np.int64)
    path = tmp_path / "m.safetensors"
    pe.save(model, path)
    back = pe.load(path)
    assert isinstance(back, OrderedDict)
    _assert_same(model.state_dict(), back)

    other = _model(1)
    assert not np.array_equal(other[0].weight.data, model[0].weight.data)
    pe.load(path, model=other)
    _assert_same(model.state_dict(), other.state_dict())
    assert other[1].num_batches_tracked.dtype == np.int64
    assert int(other[1].num_batches_tracked) == 7


def test_non_contiguous_and_big_endian_arrays(tmp_path, rng):
    a = rng.standard_normal((6, 4))
    sd = {"t": a.T, "be": a.astype(">f4")}
    pe.save(sd, tmp_path / "x.safetensors")
    back = pe.load(tmp_path / "x.safetensors")
    assert np.array_equal(back["t"], a.T)
    assert np.array_equal(back["be"], a.astype(np.float32))


def test_checkpoint_dict_with_optimizer_state(tmp_path, rng):
    model = _model(0)
    opt = pe.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    out = model(x)
    model.backward(np.ones_like(out), input_grad=False)
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "lr": 0.1, "arch": {"name": "mlp", "sizes": (5, 4, 3)}, "note": None,
            "best": float("nan"), "tags": ["a", "b"], "step": np.int64(9)}
    path = tmp_path / "ckpt.safetensors"
    pe.save(ckpt, path)
    back = pe.load(path)
    _assert_same(ckpt, back)
    assert isinstance(back["step"], np.int64)
    assert list(back["optimizer"]["state"]) == list(ckpt["optimizer"]["state"])  # int keys
    # tensors are named by dotted path for other safetensors readers
    from safetensors.numpy import load_file
    names = set(load_file(str(path)))
    assert "model.0.weight" in names and "optimizer.state.0.momentum_buffer" in names

    model2 = _model(1)
    opt2 = pe.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    pe.load(path, model=model2, optimizer=opt2)
    _assert_same(model.state_dict(), model2.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.1


def test_plain_safetensors_file_loads(tmp_path, rng):
    from safetensors.numpy import save_file
    tensors = {"b": rng.standard_normal(3), "a": np.arange(4, dtype=np.int32)}
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    back = pe.load(tmp_path / "plain.safetensors")
    assert isinstance(back, OrderedDict) and set(back) == {"a", "b"}
    for k in tensors:
        assert np.array_equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype


def test_unsupported_objects_raise(tmp_path):
    with pytest.raises(TypeError, match="cannot save object of type object"):
        pe.save({"x": object()}, tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match="dtype <U1"):
        pe.save({"x": np.array(["a"])}, tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match="dict key"):
        pe.save({("a", 1): 1}, tmp_path / "bad.safetensors")
    assert not os.listdir(tmp_path)  # nothing (not even a temp file) left behind


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1])
def test_truncated_file_clear_error_and_model_untouched(tmp_path, cut):
    model = _model(0)
    path = tmp_path / "m.safetensors"
    pe.save(model, path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:len(data) - 3])
    target = _model(1)
    before = target.state_dict()
    with pytest.raises(ValueError, match="truncated|corrupt|not a safetensors"):
        pe.load(path, model=target)
    _assert_same(before, target.state_dict())


def test_corrupt_header_and_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(ValueError, match="not valid JSON"):
        pe.load(path)
    pe.save({"a": np.ones(2)}, path)
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["pyengine.tree"] = '{"__type__": "tensor", "key": "nope"}'
    blob = json.dumps(header).encode().ljust(n)
    assert len(blob) == n  # the replacement tree is shorter than the original
    path.write_bytes(bytes(data[:8]) + blob + bytes(data[8 + n:]))
    with pytest.raises(ValueError, match="corrupt pyengine metadata"):
        pe.load(path)


def test_wrong_shapes_or_names_error_lists_keys_and_model_untouched(tmp_path):
    pe.manual_seed(0)
    small = pe.Sequential(pe.Linear(5, 4), pe.Linear(4, 2))
    pe.save(small, tmp_path / "small.safetensors")
    pe.manual_seed(1)
    wider = pe.Sequential(pe.Linear(5, 6), pe.Linear(6, 2))
    before = wider.state_dict()
    with pytest.raises(ValueError, match=r"0\.weight.*\(6, 5\).*\(4, 5\)") as err:
        pe.load(tmp_path / "small.safetensors", model=wider)
    for key in ("0.weight", "0.bias", "1.weight"):
        assert key in str(err.value)
    _assert_same(before, wider.state_dict())

    deeper = pe.Sequential(pe.Linear(5, 4), pe.Linear(4, 2), pe.Linear(2, 2))
    before = deeper.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['2\.weight', '2\.bias'\]"):
        deeper.load_state_dict(pe.load(tmp_path / "small.safetensors"))
    _assert_same(before, deeper.state_dict())


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = _model(0)
    pe.save(old, path)
    original = path.read_bytes()

    def write_half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(peio, "_write_all", write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        pe.save(_model(1), path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["m.safetensors"]  # the temp file was removed
    _assert_same(old.state_dict(), pe.load(path))

    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("fsync failed")))
    with pytest.raises(OSError, match="fsync failed"):
        pe.save(_model(1), path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["m.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_gets_umask_mode_not_temp_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        pe.save({"a": np.zeros(3)}, tmp_path / "m.safetensors")
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "m.safetensors").st_mode & 0o777) == 0o644


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "m.safetensors"
    pe.save({"a": np.zeros(3)}, path)
    pe.save({"b": np.ones(2, np.float32)}, path)
    back = pe.load(path)
    assert list(back) == ["b"] and np.array_equal(back["b"], np.ones(2, np.float32))
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_torch_reads_saved_state_dict_and_pe_reads_torch_file(tmp_path, rng):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    pe.manual_seed(0)
    model = pe.Sequential(pe.Linear(5, 4), pe.Linear(4, 2))
    pe.save(model, tmp_path / "pe.safetensors")
    tmodel = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    tmodel.load_state_dict(st_torch.load_file(str(tmp_path / "pe.safetensors")))
    x = rng.standard_normal((3, 5)).astype(np.float32)
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)

    with torch.no_grad():
        for p in tmodel.parameters():
            p.mul_(2.0)
    st_torch.save_file(tmodel.state_dict(), str(tmp_path / "torch.safetensors"))
    pe.load(tmp_path / "torch.safetensors", model=model)
    for k, v in tmodel.state_dict().items():
        assert np.array_equal(model.state_dict()[k], v.numpy()), k
