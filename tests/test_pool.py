import numpy as np
import pytest

import pyengine as pe
from engine import pool
from pyengine import reference as R

from conftest import tol

DTYPES = [np.float32, np.float64]

# (input shape, kwargs): padding, stride, ceil_mode, dilation, odd sizes, batch 1.
MAX_CASES = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((1, 2, 7, 9), dict(kernel_size=2)),                      # odd: last row/col dropped
    ((2, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((2, 1, 10, 11), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0))),
    ((1, 2, 9, 10), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ((2, 2, 11, 8), dict(kernel_size=2, stride=3, dilation=(2, 3), ceil_mode=True)),
    ((1, 1, 5, 5), dict(kernel_size=5)),                       # window = whole input
    ((3, 2, 6, 6), dict(kernel_size=4, stride=1, padding=2)),
]

AVG_CASES = [
    ((2, 3, 8, 8), dict(kernel_size=2)),
    ((1, 2, 7, 9), dict(kernel_size=3, stride=2)),
    ((2, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 2, 7, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((1, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 3, 7, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                        count_include_pad=False)),
    ((2, 1, 10, 11), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1),
                          divisor_override=4)),
    ((1, 1, 6, 5), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
]

ADAPTIVE_CASES = [
    ((2, 3, 8, 8), (1, 1)),
    ((1, 2, 7, 9), (1, 1)),
    ((2, 2, 7, 9), (3, 4)),      # non-divisible: overlapping windows
    ((1, 3, 5, 5), (5, 5)),      # identity
    ((2, 1, 4, 6), (7, 9)),      # output larger than input
    ((1, 2, 10, 3), (4, 2)),
]


def distinct_values(shape, rng, dtype=np.float64):
    """Inputs without ties (spacing 0.01 >> gradcheck's eps), so the argmax is stable."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) * 0.01 - n * 0.005).astype(dtype)


# --- forward and backward vs the NumPy reference --------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kw", MAX_CASES)
def test_max_pool_matches_reference(shape, kw, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y, ind = pool.max_pool2d(x, **kw)
    y_ref, ind_ref = R.max_pool2d_forward(x, **kw)
    assert y.dtype == dtype and ind.dtype == np.int64
    assert np.array_equal(y, y_ref) and np.array_equal(ind, ind_ref)
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(pool.max_pool2d_grad(g, ind, x.shape),
                               R.max_pool2d_backward(g, ind_ref, x.shape), *tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kw", AVG_CASES)
def test_avg_pool_matches_reference(shape, kw, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y = pool.avg_pool2d(x, **kw)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, R.avg_pool2d_forward(x, **kw), *tol(dtype))
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(pool.avg_pool2d_grad(g, x.shape, **kw),
                               R.avg_pool2d_backward(g, x.shape, **kw), *tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES)
def test_adaptive_avg_pool_matches_reference(shape, out, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y = pool.adaptive_avg_pool2d(x, out)
    assert y.shape == shape[:2] + out
    np.testing.assert_allclose(y, R.adaptive_avg_pool2d_forward(x, out), *tol(dtype))
    g = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(pool.adaptive_avg_pool2d_grad(g, x.shape),
                               R.adaptive_avg_pool2d_backward(g, x.shape), *tol(dtype))


def test_max_pool_nan_propagates():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    y, ind = pool.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and ind[0, 0, 0, 0] == 5
    assert np.array_equal(y[0, 0].ravel()[1:], np.zeros(3, np.float32))


def test_max_pool_ties_pick_first_in_window():
    y, ind = pool.max_pool2d(np.ones((1, 1, 4, 4)), 2)
    assert np.array_equal(ind[0, 0], [[0, 2], [8, 10]])


def test_non_contiguous_input_is_copied_not_misread(rng):
    base = rng.standard_normal((2, 6, 9, 8))
    x = base[:, ::2, :, ::-1]
    assert not x.flags.c_contiguous
    y, ind = pool.max_pool2d(x, 3, 2, 1)
    y_ref, _ = R.max_pool2d_forward(np.ascontiguousarray(x), 3, 2, 1)
    assert np.array_equal(y, y_ref)
    np.testing.assert_allclose(pool.avg_pool2d(x, 3, 2, 1), R.avg_pool2d_forward(x, 3, 2, 1),
                               *tol(np.float64))
    np.testing.assert_allclose(pool.adaptive_avg_pool2d(x, (2, 3)),
                               R.adaptive_avg_pool2d_forward(x, (2, 3)), *tol(np.float64))
    g = rng.standard_normal((2, 3, 5, 8))[..., ::2]
    np.testing.assert_allclose(pool.max_pool2d_grad(g, ind, x.shape),
                               R.max_pool2d_backward(np.ascontiguousarray(g), ind, x.shape),
                               *tol(np.float64))


def test_empty_batch():
    y, ind = pool.max_pool2d(np.zeros((0, 3, 4, 4), np.float32), 2)
    assert y.shape == (0, 3, 2, 2) and ind.shape == (0, 3, 2, 2)
    assert pool.avg_pool2d(np.zeros((0, 3, 4, 4)), 2).shape == (0, 3, 2, 2)
    assert pool.adaptive_avg_pool2d(np.zeros((2, 0, 4, 4)), 1).shape == (2, 0, 1, 1)


# --- gradcheck (float64, tiny shapes) -------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=2, stride=1, dilation=2),
])
def test_max_pool_gradcheck(kw, rng):
    x = distinct_values((2, 2, 5, 6), rng)
    pe.gradcheck(pe.MaxPool2d(**kw), x)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=3, stride=1, padding=1, divisor_override=7),
])
def test_avg_pool_gradcheck(kw, rng):
    pe.gradcheck(pe.AvgPool2d(**kw), rng.standard_normal((2, 2, 5, 6)))


@pytest.mark.parametrize("out", [1, (2, 4), (None, 3)])
def test_adaptive_avg_pool_gradcheck(out, rng):
    pe.gradcheck(pe.AdaptiveAvgPool2d(out), rng.standard_normal((2, 2, 5, 6)))


# --- determinism across thread counts -------------------------------------------------

def test_same_bits_for_1_and_2_threads(rng):
    # Large enough that every kernel runs its OpenMP loop (small calls stay serial).
    x = rng.standard_normal((4, 16, 33, 35)).astype(np.float32)
    runs = []
    for t in (1, 2):
        pe.set_num_threads(t)
        y, ind = pool.max_pool2d(x, 3, 2, 1)
        ya = pool.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
        yd = pool.adaptive_avg_pool2d(x, (5, 3))
        yg = pool.adaptive_avg_pool2d(x, 1)
        gx = pool.max_pool2d_grad(np.ones_like(y), ind, x.shape)
        ga = pool.avg_pool2d_grad(np.ones_like(ya), x.shape, 3, 2, 1, ceil_mode=True)
        gd = pool.adaptive_avg_pool2d_grad(np.ones_like(yd), x.shape)
        runs.append((y, ind, ya, yd, yg, gx, ga, gd))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


# --- bad input -> clear errors --------------------------------------------------------

@pytest.mark.parametrize("fn", [pool.max_pool2d, pool.avg_pool2d])
@pytest.mark.parametrize("kw,match", [
    (dict(kernel_size=9), "kernel_size"),                # larger than the padded input
    (dict(kernel_size=2, stride=0), "stride"),
    (dict(kernel_size=3, padding=2), "padding"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=2, padding=-1), "padding"),
    (dict(kernel_size=(2, 2, 2)), "kernel_size"),
])
def test_bad_arguments_raise_value_error(fn, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(np.zeros((1, 1, 6, 6), np.float32), **kw)


def test_bad_inputs():
    with pytest.raises(ValueError, match="x must be 4-dimensional"):
        pool.max_pool2d(np.zeros((6, 6), np.float32), 2)
    with pytest.raises(ValueError, match="x must be 4-dimensional"):
        pool.adaptive_avg_pool2d(np.zeros((1, 6, 6), np.float32), 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        pool.avg_pool2d(np.zeros((1, 1, 6, 6), np.float16), 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        pool.max_pool2d(np.zeros((1, 1, 6, 6), np.int32), 2)
    with pytest.raises(ValueError, match="output_size"):
        pool.adaptive_avg_pool2d(np.zeros((1, 1, 6, 6)), 0)
    with pytest.raises(ValueError, match="divisor_override"):
        pool.avg_pool2d(np.zeros((1, 1, 6, 6)), 2, divisor_override=0)
    with pytest.raises(TypeError, match="dilation"):
        pool.max_pool2d(np.zeros((1, 1, 6, 6)), 2, dilation=1.5)
    with pytest.raises(ValueError, match="4-D"):
        pe.MaxPool2d(2)(np.zeros((6, 6)))


def test_bad_backward_arguments(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    y, ind = pool.max_pool2d(x, 2)
    with pytest.raises(TypeError, match="indices must be an int64"):
        pool.max_pool2d_grad(y, ind.astype(np.int32), x.shape)
    with pytest.raises(ValueError, match="indices shape"):
        pool.max_pool2d_grad(y, ind[:, :1], x.shape)
    bad = ind.copy()
    bad[0, 0, 0, 0] = 16           # outside the 4x4 plane: rejected, never written
    with pytest.raises(ValueError, match="index is outside"):
        pool.max_pool2d_grad(y, bad, x.shape)
    with pytest.raises(ValueError, match="input_shape"):
        pool.max_pool2d_grad(y, ind, (1, 3, 4, 4))
    with pytest.raises(ValueError, match="grad_out spatial size"):
        pool.avg_pool2d_grad(y, (1, 2, 6, 6), 2)


# --- modules --------------------------------------------------------------------------

def test_modules_defaults_and_repr():
    m = pe.MaxPool2d(3)
    assert m.stride == 3 and m.padding == 0 and m.dilation == 1 and not m.ceil_mode
    a = pe.AvgPool2d(2, count_include_pad=False)
    assert a.stride == 2 and "count_include_pad=False" in repr(a)
    assert "output_size=(None, 3)" in repr(pe.AdaptiveAvgPool2d((None, 3)))
    assert m.state_dict() == {} and m.parameters() == []


def test_max_pool_module_return_indices_and_unbatched(rng):
    x = rng.standard_normal((3, 6, 6)).astype(np.float32)
    y, ind = pe.MaxPool2d(2, return_indices=True)(x)
    y_ref, ind_ref = R.max_pool2d_forward(x[None], 2)
    assert np.array_equal(y, y_ref[0]) and np.array_equal(ind, ind_ref[0])
    m = pe.MaxPool2d(2)
    y = m(x)
    gx = m.backward(np.ones_like(y))
    assert gx.shape == x.shape and gx.sum() == y.size


def test_adaptive_none_keeps_input_size(rng):
    x = rng.standard_normal((2, 3, 5, 7))
    y = pe.AdaptiveAvgPool2d((None, 2))(x)
    assert y.shape == (2, 3, 5, 2)
    np.testing.assert_allclose(y, R.adaptive_avg_pool2d_forward(x, (5, 2)), *tol(np.float64))


def test_input_grad_false_and_no_grad(rng):
    x = rng.standard_normal((1, 2, 4, 4))
    for m in (pe.MaxPool2d(2), pe.AvgPool2d(2), pe.AdaptiveAvgPool2d(1)):
        y = m(x)
        assert m.backward(np.ones_like(y), input_grad=False) is None
        with pe.no_grad():
            m(x)
        with pytest.raises(RuntimeError, match="without a forward"):
            m.backward(np.ones_like(y))


# --- torch comparison -----------------------------------------------------------------

@pytest.mark.parametrize("shape,kw", MAX_CASES)
def test_max_pool_matches_torch(shape, kw, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty, tind = torch.nn.functional.max_pool2d(tx, return_indices=True, **kw)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(g))
    m = pe.MaxPool2d(**kw)
    y = m(x)
    assert np.array_equal(y, ty.detach().numpy())
    assert np.array_equal(m._indices, tind.numpy())
    np.testing.assert_allclose(m.backward(g), tx.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,kw", AVG_CASES)
def test_avg_pool_matches_torch(shape, kw, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, **kw)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(g))
    m = pe.AvgPool2d(**kw)
    np.testing.assert_allclose(m(x), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.backward(g), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,out", ADAPTIVE_CASES + [((2, 3, 5, 7), (None, 2))])
def test_adaptive_avg_pool_matches_torch(shape, out, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.AdaptiveAvgPool2d(out)(tx)
    g = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.tensor(g))
    m = pe.AdaptiveAvgPool2d(out)
    np.testing.assert_allclose(m(x), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.backward(g), tx.grad.numpy(), rtol=1e-5, atol=1e-6)
