"""Dropout: counter-based masks, reproducibility across seeds and threads."""

import numpy as np
import pytest

import pyengine as pe
from engine import dropout as kernels
from pyengine import reference as ref


def _forward(p, x, seed=0, threads=None):
    if threads is not None:
        pe.set_num_threads(threads)
    pe.manual_seed(seed)
    d = pe.Dropout(p)
    return d, d(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_forward_backward_match_reference_with_the_mask(rng, dtype, p):
    x = rng.standard_normal((37, 11, 3)).astype(dtype)
    pe.manual_seed(3)
    d = pe.Dropout(p)
    y = d(x)
    mask = d._mask
    assert mask.dtype == np.uint8 and mask.shape == x.shape
    np.testing.assert_allclose(y, ref.dropout_forward(x, mask, p), rtol=1e-6, atol=0)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = d.backward(dy)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, ref.dropout_backward(dy, mask, p), rtol=1e-6, atol=0)
    # The backward uses forward's mask: zero exactly where the output was dropped.
    np.testing.assert_array_equal(dx == 0, (mask == 0) | (dy == 0))
    if p == 0:
        np.testing.assert_array_equal(y, x)
    if p == 1:
        assert not y.any() and not dx.any()


def test_same_seed_same_mask_any_thread_count(rng):
    x = rng.standard_normal((300, 1000)).astype(np.float32)   # several kernel chunks
    _, y1 = _forward(0.4, x, seed=11, threads=1)
    _, y2 = _forward(0.4, x, seed=11, threads=2)
    assert np.array_equal(y1, y2)
    _, y3 = _forward(0.4, x, seed=12, threads=2)
    assert not np.array_equal(y1, y3)
    m1 = kernels.keep_mask((1000, 333), 0.3, 123456789)
    pe.set_num_threads(1)
    m2 = kernels.keep_mask((1000, 333), 0.3, 123456789)
    assert np.array_equal(m1, m2)


def test_successive_calls_differ_and_manual_seed_resets(rng):
    x = np.ones((50, 40), np.float32)
    pe.manual_seed(7)
    d = pe.Dropout(0.5)
    a, b = d(x).copy(), d(x).copy()
    assert not np.array_equal(a, b)
    pe.manual_seed(7)
    assert np.array_equal(d(x), a)
    assert np.array_equal(d(x), b)
    # Drawing masks does not disturb initialisation draws.
    pe.manual_seed(7)
    r1 = pe._random.get_rng().random()
    pe.manual_seed(7)
    d(x)
    assert pe._random.get_rng().random() == r1


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_mean_is_one_minus_p(p):
    pe.manual_seed(0)
    d = pe.Dropout(p)
    x = np.ones(200_000, np.float64)
    y = d(x)
    keep = d._mask.mean()
    # 200k Bernoulli draws: the standard error is below 0.0012.
    assert abs(keep - (1 - p)) < 0.006
    assert abs(y.mean() - 1.0) < 0.006 / (1 - p)
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p))


def test_mask_bits_look_independent():
    m = kernels.keep_mask(100_000, 0.5, 42).astype(np.float64)
    # Neighbouring elements are uncorrelated and runs are not periodic.
    assert abs(np.corrcoef(m[:-1], m[1:])[0, 1]) < 0.02
    other = kernels.keep_mask(100_000, 0.5, 43).astype(np.float64)
    assert abs(np.corrcoef(m, other)[0, 1]) < 0.02


def test_gradcheck_with_fixed_mask(rng):
    pe.manual_seed(5)
    d = pe.Dropout(0.3)
    x = rng.standard_normal((4, 6))
    d(x)
    mask = d._mask.copy()

    def fn(x):
        return kernels.dropout_grad(x, mask, 0.3)   # the forward map with a fixed mask

    def grad_fn(w, x):
        return (kernels.dropout_grad(w, mask, 0.3),)

    pe.gradcheck(fn, x, grad_fn)
    np.testing.assert_allclose(fn(x), ref.dropout_forward(x, mask, 0.3), rtol=1e-12)


def test_eval_mode_is_identity(rng):
    d = pe.Dropout(0.7).eval()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    assert d(x) is x
    g = np.ones_like(x)
    assert d.backward(g) is g
    assert d.backward(g, input_grad=False) is None


def test_inplace(rng):
    pe.manual_seed(1)
    x = rng.standard_normal((20, 30)).astype(np.float32)
    want = _forward(0.5, x.copy(), seed=1)[1]
    pe.manual_seed(1)
    d = pe.Dropout(0.5, inplace=True)
    y = d(x)
    assert y is x
    np.testing.assert_array_equal(x, want)
    # A non-contiguous input is written back too.
    base = rng.standard_normal((20, 60)).astype(np.float32)
    view = base[:, ::2]
    expect = _forward(0.5, view.copy(), seed=2)[1]
    pe.manual_seed(2)
    pe.Dropout(0.5, inplace=True)(view)
    np.testing.assert_array_equal(base[:, ::2], expect)


def test_no_grad_keeps_no_mask(rng):
    d = pe.Dropout(0.5)
    with pe.no_grad():
        d(rng.standard_normal(10))
    with pytest.raises(RuntimeError, match="without a forward pass"):
        d.backward(np.ones(10))


def test_non_contiguous_and_empty(rng):
    x = rng.standard_normal((10, 10))[::2, ::3]
    d, y = _forward(0.5, x, seed=9)
    _, y2 = _forward(0.5, np.ascontiguousarray(x), seed=9)
    np.testing.assert_array_equal(y, y2)
    d2, e = _forward(0.5, np.zeros((0, 3)), seed=9)
    assert e.shape == (0, 3) and d2.backward(np.zeros((0, 3))).shape == (0, 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        pe.Dropout(1.5)
    with pytest.raises(ValueError, match="between 0 and 1, but got -0.1"):
        pe.Dropout(-0.1)
    with pytest.raises(TypeError, match="must be a number"):
        pe.Dropout("0.5")
    d = pe.Dropout(0.5)
    with pytest.raises(TypeError, match="float32 or float64"):
        d(np.ones(4, np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        d(np.ones(4, np.int32))
    d(np.ones(4))
    with pytest.raises(ValueError, match="grad_out must have the output's shape"):
        d.backward(np.ones(5))
    with pytest.raises(ValueError, match="between 0 and 1"):
        kernels.dropout(np.ones(3), 2.0, 1)
    with pytest.raises(ValueError, match="key must be in"):
        kernels.dropout(np.ones(3), 0.5, -1)
    with pytest.raises(TypeError, match="mask must be the uint8 array"):
        kernels.dropout_grad(np.ones(3), np.ones(3, bool), 0.5)
    assert repr(pe.Dropout(0.2)) == "Dropout(p=0.2, inplace=False)"
