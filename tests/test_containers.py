import numpy as np
import pytest

import pyengine as pe
from pyengine import reference as R
from pyengine.module import Module, Parameter, is_grad_enabled


class Affine(Module):
    """y = x * weight + bias over the last axis (a custom NumPy layer with parameters)."""

    def __init__(self, n, seed, dtype=np.float64):
        super().__init__()
        r = np.random.default_rng(seed)
        self.weight = Parameter(r.standard_normal(n).astype(dtype))
        self.bias = Parameter(r.standard_normal(n).astype(dtype))

    def forward(self, x):
        if is_grad_enabled():
            self._x = x
        return x * self.weight.data + self.bias.data

    def backward(self, g, input_grad=True):
        x = self._saved("_x")
        axes = tuple(range(g.ndim - 1))
        self.weight.grad += (g * x).sum(axis=axes)
        self.bias.grad += g.sum(axis=axes)
        return g * self.weight.data if input_grad else None


class Square(Module):
    def forward(self, x):
        self._x = x
        return x * x

    def backward(self, g, input_grad=True):
        return 2 * self._x * g if input_grad else None


class Identity(Module):
    """Returns its gradient unchanged (the same array), to catch in-place sums."""

    def forward(self, x):
        return x

    def backward(self, g, input_grad=True):
        return g if input_grad else None


def test_residual_identity_forward_backward_vs_numpy(rng):
    x = rng.standard_normal((3, 4))
    block = pe.Sequential(Affine(4, 0), Square())
    res = pe.Residual(block)
    a = x * block[0].weight.data + block[0].bias.data
    np.testing.assert_allclose(res(x), a * a + x, rtol=1e-12)
    g = rng.standard_normal((3, 4))
    dx = res.backward(g)
    da = 2 * a * g
    np.testing.assert_allclose(dx, da * block[0].weight.data + g, rtol=1e-12)
    np.testing.assert_allclose(block[0].weight.grad, (da * x).sum(0), rtol=1e-12)
    np.testing.assert_allclose(block[0].bias.grad, da.sum(0), rtol=1e-12)


def test_residual_with_shortcut_state_dict_keys_and_gradcheck(rng):
    res = pe.Residual(pe.Sequential(Affine(5, 1), Square()), Affine(5, 2))
    keys = list(res.state_dict())
    assert keys == ["block.0.weight", "block.0.bias", "shortcut.weight", "shortcut.bias"]
    assert [n for n, _ in res.named_children()] == ["block", "shortcut"]
    pe.gradcheck(res, rng.standard_normal((2, 5)))


def test_residual_identity_shortcut_has_no_keys():
    res = pe.Residual(pe.Sequential(Affine(3, 0)))
    assert list(res.state_dict()) == ["block.0.weight", "block.0.bias"]
    assert "identity" in repr(res)


def test_residual_does_not_modify_grad_out_in_place(rng):
    res = pe.Residual(Identity(), Identity())
    x = rng.standard_normal((2, 3))
    g = rng.standard_normal((2, 3))
    g0 = g.copy()
    np.testing.assert_allclose(res(x), 2 * x)
    dx = res.backward(g)
    np.testing.assert_allclose(dx, 2 * g0)
    assert np.array_equal(g, g0)


def test_residual_input_grad_false_still_accumulates_param_grads(rng):
    x = rng.standard_normal((3, 4))
    g = rng.standard_normal((3, 4))
    res = pe.Residual(Affine(4, 3), Affine(4, 4))
    res(x)
    res.backward(g)
    want = {n: p.grad.copy() for n, p in res.named_parameters()}
    res.zero_grad()
    res(x)
    assert res.backward(g, input_grad=False) is None
    for n, p in res.named_parameters():
        np.testing.assert_allclose(p.grad, want[n], rtol=1e-12)
    # gradients accumulate across backward calls
    res.backward(g, input_grad=False)
    for n, p in res.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * want[n], rtol=1e-12)


def test_residual_shape_mismatch_raises(rng):
    res = pe.Residual(pe.MaxPool2d(2))
    with pytest.raises(ValueError, match="shape"):
        res(rng.standard_normal((1, 1, 4, 4)))
    with pytest.raises(TypeError, match="block must be a Module"):
        pe.Residual(lambda x: x)


def test_residual_of_pools_matches_numpy(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    res = pe.Residual(pe.Sequential(pe.MaxPool2d(2), pe.AdaptiveAvgPool2d(4)),
                      pe.AvgPool2d(3, stride=1, padding=1))
    y = res(x)
    ref = R
    m, _ = ref.max_pool2d_forward(x, 2)
    want = ref.adaptive_avg_pool2d_forward(m, 4) + ref.avg_pool2d_forward(x, 3, 1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-12)
    pe.gradcheck(pe.Residual(pe.AvgPool2d(3, 1, 1), pe.AdaptiveAvgPool2d(4)), x)


def test_concat_forward_backward_vs_numpy(rng):
    x = rng.standard_normal((3, 4))
    b0, b1, b2 = Affine(4, 5), Square(), Identity()
    cat = pe.Concat(b0, b1, b2)
    y = cat(x)
    a = x * b0.weight.data + b0.bias.data
    np.testing.assert_allclose(y, np.concatenate([a, x * x, x], axis=1), rtol=1e-12)
    g = rng.standard_normal((3, 12))
    dx = cat.backward(g)
    want = g[:, :4] * b0.weight.data + 2 * x * g[:, 4:8] + g[:, 8:]
    np.testing.assert_allclose(dx, want, rtol=1e-12)
    np.testing.assert_allclose(b0.weight.grad, (g[:, :4] * x).sum(0), rtol=1e-12)
    assert cat.backward(g, input_grad=False) is None
    np.testing.assert_allclose(b0.weight.grad, 2 * (g[:, :4] * x).sum(0), rtol=1e-12)


def test_concat_channels_of_pools_and_gradcheck(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    cat = pe.Concat(pe.MaxPool2d(3, 1, 1), pe.AvgPool2d(3, 1, 1), axis=1)
    y = cat(x)
    assert y.shape == (2, 6, 6, 6)
    np.testing.assert_allclose(y[:, 3:], R.avg_pool2d_forward(x, 3, 1, 1),
                               rtol=1e-12)
    x = (rng.permutation(72).reshape(1, 2, 6, 6) * 0.01)   # no ties for the max branch
    pe.gradcheck(cat, x)


def test_concat_negative_axis_state_dict_and_gradcheck(rng):
    cat = pe.Concat(Affine(3, 6), pe.Sequential(Affine(3, 7), Square()), axis=-1)
    assert list(cat.state_dict()) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]
    assert len(cat) == 2 and cat[1][1].__class__ is Square
    assert cat(rng.standard_normal((2, 5, 3))).shape == (2, 5, 6)
    pe.gradcheck(cat, rng.standard_normal((2, 5, 3)))


def test_concat_errors(rng):
    with pytest.raises(ValueError, match="at least one branch"):
        pe.Concat()
    with pytest.raises(TypeError, match="branch 1"):
        pe.Concat(Identity(), 3)
    cat = pe.Concat(Identity(), Identity())
    with pe.no_grad():
        cat(rng.standard_normal((2, 3)))
    with pytest.raises(RuntimeError, match="without a forward"):
        cat.backward(np.ones((2, 6)))
    cat(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match="grad_out has 5"):
        cat.backward(np.ones((2, 5)))


def test_nested_in_sequential_state_dict_keys():
    net = pe.Sequential(pe.Residual(pe.Sequential(Affine(2, 0)), Affine(2, 1)),
                        pe.Concat(Affine(2, 2), Identity()))
    assert list(net.state_dict()) == [
        "0.block.0.weight", "0.block.0.bias", "0.shortcut.weight", "0.shortcut.bias",
        "1.0.weight", "1.0.bias"]
    sd = {k: v + 1 for k, v in net.state_dict().items()}
    net.load_state_dict(sd)
    np.testing.assert_allclose(net[1][0].bias.data, sd["1.0.bias"])
