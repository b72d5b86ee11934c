import numpy as np
import pytest

import pyengine as pe


class Scale(pe.Module):
    """A custom layer written in NumPy: y = a * x, with a running count buffer."""

    def __init__(self):
        super().__init__()
        self.a = pe.Parameter(np.array([2.0]))
        self.register_buffer("calls", np.array(0, dtype=np.int64))

    def forward(self, x):
        self._x = x
        self.calls = np.array(self.calls + 1, dtype=np.int64)
        return self.a.data * x

    def backward(self, g, input_grad=True):
        self.a.grad += np.sum(g * self._x)
        return self.a.data * g if input_grad else None


def test_registration_order_names_and_state_dict():
    model = pe.Sequential(pe.Linear(3, 4), Scale(), pe.Sequential(pe.Linear(4, 2)))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.a", "2.0.weight", "2.0.bias"]
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.a", "1.calls", "2.0.weight", "2.0.bias"]
    assert sd["1.calls"].shape == () and sd["1.calls"].dtype == np.int64
    # state_dict returns copies.
    sd["0.weight"][...] = 0
    assert model[0].weight.data.any()


def test_load_state_dict_strict_and_atomic():
    model = pe.Sequential(pe.Linear(3, 4), Scale())
    other = pe.Sequential(pe.Linear(3, 4), Scale())
    other[1].calls = np.array(7, dtype=np.int64)
    sd = other.state_dict()
    model.load_state_dict(sd)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    assert int(model[1].calls) == 7
    # A 0-d Python integer is accepted for an integer buffer.
    sd["1.calls"] = 3
    model.load_state_dict(sd)
    assert int(model[1].calls) == 3
    # A wrong shape changes nothing.
    before = model.state_dict()
    bad = dict(sd)
    bad["0.weight"] = np.zeros((4, 4), np.float32)
    bad["0.bias"] = np.full(4, 9.0, np.float32)
    with pytest.raises(ValueError, match="0.weight"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(KeyError, match="missing"):
        model.load_state_dict({"0.weight": sd["0.weight"]})
    missing, unexpected = model.load_state_dict({"0.bias": sd["0.bias"], "zzz": 1}, strict=False)
    assert "0.weight" in missing and unexpected == ["zzz"]


def test_grads_accumulate_until_zeroed(rng):
    model = pe.Sequential(pe.Linear(3, 2), Scale())
    x = rng.standard_normal((4, 3)).astype(np.float32)
    g = np.ones((4, 2), np.float32)
    model(x)
    model.backward(g)
    first = [p.grad.copy() for p in model.parameters()]
    model(x)
    model.backward(g)
    for p, f in zip(model.parameters(), first):
        np.testing.assert_allclose(p.grad, 2 * f, rtol=1e-6)
    model.zero_grad()
    assert all(not p.grad.any() for p in model.parameters())


def test_sequential_input_grad_flag_reaches_first_child_only(rng):
    model = pe.Sequential(pe.Linear(3, 5), pe.Linear(5, 2))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    model(x)
    assert model.backward(np.ones((2, 2), np.float32), input_grad=False) is None
    assert model[0].weight.grad.any()


def test_custom_module_in_container_gradcheck(rng):
    pe.manual_seed(0)  # the init draws from pe's global RNG: same weights whatever ran before
    model = pe.Sequential(pe.Linear(3, 4, dtype=np.float64), Scale(),
                          pe.Linear(4, 2, dtype=np.float64))
    assert pe.gradcheck(model, rng.standard_normal((5, 3))) < 1e-6


def test_train_eval_flags_and_repr():
    model = pe.Sequential(pe.Linear(3, 4), pe.Sequential(Scale()))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    assert "Linear(in_features=3" in repr(model)
    assert len(model) == 2 and len(list(model.children())) == 2


def test_module_without_super_init_is_a_clear_error():
    class Bad(pe.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="not a Module"):
        pe.Sequential(pe.Linear(2, 2), lambda x: x)


def test_parameter_rejects_integer_data():
    with pytest.raises(TypeError, match="float32 or float64"):
        pe.Parameter(np.arange(3))


def test_no_grad_is_per_thread():
    import threading
    seen = {}
    with pe.no_grad():
        t = threading.Thread(target=lambda: seen.setdefault("other", pe.is_grad_enabled()))
        t.start()
        t.join()
        assert not pe.is_grad_enabled()
    assert seen["other"] is True and pe.is_grad_enabled()


def test_parameter_keeps_0d_shape_and_copies_non_contiguous():
    p = pe.Parameter(np.array(1.5))
    assert p.shape == () and p.grad.shape == ()
    q = pe.Parameter(np.ones((4, 6))[:, ::2])
    assert q.data.flags.c_contiguous and q.shape == (4, 3)
