"""Activation kernels and modules vs pe.reference, gradcheck, threads and torch."""

import warnings

import numpy as np
import pytest

import pyengine as pe
from engine import activation as K
from pyengine import reference as ref

from conftest import tol

DTYPES = [np.float32, np.float64]

# name -> (module factory, reference forward, reference backward(x, dy))
MODULES = {
    "relu": (lambda: pe.ReLU(), ref.relu_forward, ref.relu_backward),
    "leaky_relu": (lambda: pe.LeakyReLU(0.1), lambda x: ref.leaky_relu_forward(x, 0.1),
                   lambda x, dy: ref.leaky_relu_backward(x, dy, 0.1)),
    "leaky_relu_neg": (lambda: pe.LeakyReLU(-0.3),
                       lambda x: ref.leaky_relu_forward(x, -0.3),
                       lambda x, dy: ref.leaky_relu_backward(x, dy, -0.3)),
    "sigmoid": (lambda: pe.Sigmoid(), ref.sigmoid_forward, ref.sigmoid_backward),
    "tanh": (lambda: pe.Tanh(), ref.tanh_forward, ref.tanh_backward),
    "softplus": (lambda: pe.Softplus(), ref.softplus_forward, ref.softplus_backward),
    "softplus_beta": (lambda: pe.Softplus(beta=2.0, threshold=3.0),
                      lambda x: ref.softplus_forward(x, 2.0, 3.0),
                      lambda x, dy: ref.softplus_backward(x, dy, 2.0, 3.0)),
    "gelu": (lambda: pe.GELU(), ref.gelu_forward, ref.gelu_backward),
    "gelu_tanh": (lambda: pe.GELU("tanh"), lambda x: ref.gelu_forward(x, "tanh"),
                  lambda x, dy: ref.gelu_backward(x, dy, "tanh")),
    "softmax": (lambda: pe.Softmax(dim=-1), ref.softmax_forward, ref.softmax_backward),
    "log_softmax": (lambda: pe.LogSoftmax(dim=-1), ref.log_softmax_forward,
                    ref.log_softmax_backward),
}

SHAPES = [(3, 7), (1, 5), (2, 3, 17), (5, 7000)]   # odd, batch 1, 3-d, several chunks


def _data(rng, shape, dtype, scale=3.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_matches_reference(name, shape, dtype, rng):
    make, fwd, bwd = MODULES[name]
    x = _data(rng, shape, dtype)
    dy = _data(rng, shape, dtype, 1.0)
    m = make()
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(y, fwd(x), rtol=rtol, atol=atol)
    dx = m.backward(dy)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, bwd(x, dy), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_gradcheck(name, rng):
    make, _, _ = MODULES[name]
    x = rng.standard_normal((3, 5))
    pe.gradcheck(make(), x)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_non_contiguous_input(name, rng):
    make, fwd, bwd = MODULES[name]
    base = _data(rng, (6, 10), np.float32)
    for x in (base[:, ::2], base.T):
        assert not x.flags.c_contiguous
        dy = _data(rng, x.shape, np.float32, 1.0)
        m = make()
        np.testing.assert_allclose(m(x), fwd(x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.backward(dy[:, ::-1][:, ::-1]), bwd(x, dy),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_one_and_two_threads_bitwise(name, rng):
    make, _, _ = MODULES[name]
    x = _data(rng, (37, 1500), np.float32)      # 55500 elements: 4 chunks
    dy = _data(rng, x.shape, np.float32, 1.0)
    results = []
    for n in (1, 2):
        pe.set_num_threads(n)
        m = make()
        results.append((m(x), m.backward(dy)))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("bad", [np.float16, np.int32])
def test_bad_dtype_rejected(name, bad):
    make, _, _ = MODULES[name]
    with pytest.raises(TypeError, match="float32 or float64"):
        make()(np.ones((2, 3), dtype=bad))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_bad_grad_shape_and_missing_forward(name, rng):
    make, _, _ = MODULES[name]
    m = make()
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.ones((2, 3), np.float32))
    m(_data(rng, (2, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        m.backward(np.ones((3, 2), np.float32))
    assert m.backward(np.ones((2, 3), np.float32), input_grad=False) is None
    with pe.no_grad():
        m(_data(rng, (2, 3), np.float32))
    with pytest.raises(RuntimeError, match="no_grad"):
        m.backward(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_zero_size(name):
    make, _, _ = MODULES[name]
    for shape in ((0, 4), (3, 0)):
        m = make()
        x = np.ones(shape, np.float32)
        assert m(x).shape == shape
        assert m.backward(x).shape == shape


def test_grad_in_other_float_dtype_is_converted(rng):
    m = pe.Tanh()
    x = _data(rng, (3, 4), np.float32)
    dy = rng.standard_normal((3, 4))            # float64 gradient
    dx = m(x) is not None and m.backward(dy)
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, ref.tanh_backward(x, dy.astype(np.float32)),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="grad_out"):
        m.backward(np.ones((3, 4), np.float16))


# ---------------------------------------------------------------------------
# In place

@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_inplace(dtype, rng):
    x = _data(rng, (4, 9), dtype)
    x0 = x.copy()
    m = pe.ReLU(inplace=True)
    y = m(x)
    assert y is x
    np.testing.assert_array_equal(x, ref.relu_forward(x0))
    dy = _data(rng, x.shape, dtype)
    np.testing.assert_array_equal(m.backward(dy), ref.relu_backward(x0, dy))
    assert repr(m) == "ReLU(inplace=True)"


def test_relu_inplace_non_contiguous(rng):
    base = _data(rng, (4, 10), np.float32)
    x = base[:, ::2]
    x0 = x.copy()
    m = pe.ReLU(inplace=True)
    y = m(x)
    np.testing.assert_array_equal(base[:, ::2], ref.relu_forward(x0))
    np.testing.assert_array_equal(y, ref.relu_forward(x0))
    dy = _data(rng, x.shape, np.float32)
    np.testing.assert_array_equal(m.backward(dy), ref.relu_backward(x0, dy))


@pytest.mark.parametrize("slope", [0.2, 0.0, -0.5])
def test_leaky_relu_inplace(slope, rng):
    x = _data(rng, (5, 6), np.float64)
    x0 = x.copy()
    m = pe.LeakyReLU(slope, inplace=True)
    assert m(x) is x
    np.testing.assert_allclose(x, ref.leaky_relu_forward(x0, slope), rtol=0, atol=0)
    dy = _data(rng, x.shape, np.float64)
    np.testing.assert_allclose(m.backward(dy), ref.leaky_relu_backward(x0, dy, slope),
                               rtol=0, atol=0)


def test_inplace_read_only_rejected():
    x = np.ones((2, 2), np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        pe.ReLU(inplace=True)(x)


@pytest.mark.parametrize("fn", [K.relu, K.sigmoid, K.tanh, K.gelu, K.softplus,
                                K.softmax, K.log_softmax])
def test_kernel_out_equals_input(fn, rng):
    x = _data(rng, (7, 33), np.float32)
    expect = fn(x.copy())
    assert fn(x, out=x) is x
    np.testing.assert_array_equal(x, expect)


def test_kernel_argument_errors(rng):
    x = _data(rng, (3, 4), np.float32)
    with pytest.raises(TypeError, match="out must have dtype float32"):
        K.relu(x, out=np.empty((3, 4), np.float64))
    with pytest.raises(ValueError, match="out must have shape"):
        K.relu(x, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="grad_y must have dtype float32"):
        K.relu_grad(x, x.astype(np.float64))
    with pytest.raises(ValueError, match="2-dimensional"):
        K.softmax(x.reshape(-1))
    with pytest.raises(ValueError, match="beta > 0"):
        K.softplus(x, beta=0.0)
    with pytest.raises(ValueError, match="approximate"):
        pe.GELU("fast")
    with pytest.raises(ValueError, match="beta > 0"):
        pe.Softplus(beta=-1)


# ---------------------------------------------------------------------------
# Numerics

@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_softplus_extremes(dtype):
    x = np.array([-1e4, -100, -30, 0, 30, 100, 1e4], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = K.sigmoid(x)
        sp = K.softplus(x)
    assert np.all(np.isfinite(s)) and s[0] == 0 and s[-1] == 1 and s[3] == 0.5
    assert np.all(np.isfinite(sp)) and sp[-1] == x[-1] and sp[0] == 0
    np.testing.assert_allclose(sp, ref.softplus_forward(x), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_stable_for_large_logits(dtype):
    x = np.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4, -1e4]], dtype)
    y = K.softmax(x)
    ly = K.log_softmax(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(ly))
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(ly, ref.log_softmax_forward(x), rtol=1e-6)


def test_nan_propagates():
    x = np.array([[np.nan, 1.0, -1.0]], np.float32)
    for fn in (K.relu, K.sigmoid, K.tanh, K.gelu, K.softplus, K.leaky_relu):
        assert np.isnan(fn(x)[0, 0]) and not np.isnan(fn(x)[0, 1])
    assert np.all(np.isnan(K.softmax(x))) and np.all(np.isnan(K.log_softmax(x)))


def test_relu_gradient_at_zero_is_zero():
    m = pe.ReLU()
    m(np.zeros(3, np.float32))
    np.testing.assert_array_equal(m.backward(np.ones(3, np.float32)), 0)


# ---------------------------------------------------------------------------
# Softmax dims and Flatten

@pytest.mark.parametrize("cls,fwd,bwd", [
    (pe.Softmax, ref.softmax_forward, ref.softmax_backward),
    (pe.LogSoftmax, ref.log_softmax_forward, ref.log_softmax_backward)])
@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_softmax_any_dim(cls, fwd, bwd, dim, rng):
    x = rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal((3, 4, 5))
    m = cls(dim=dim)
    y = m(x)
    assert y.flags.c_contiguous
    np.testing.assert_allclose(np.moveaxis(y, dim, -1), fwd(np.moveaxis(x, dim, -1)),
                               rtol=1e-12, atol=1e-12)
    dx = m.backward(dy)
    np.testing.assert_allclose(np.moveaxis(dx, dim, -1),
                               bwd(np.moveaxis(x, dim, -1), np.moveaxis(dy, dim, -1)),
                               rtol=1e-12, atol=1e-12)
    pe.gradcheck(cls(dim=dim), x[:2, :3, :2])


@pytest.mark.parametrize("ndim,implicit", [(1, 0), (2, 1), (3, 0), (4, 1)])
def test_softmax_implicit_dim_like_torch(ndim, implicit, rng):
    x = rng.standard_normal((2, 3, 4, 5)[:ndim])
    with pytest.warns(UserWarning, match="Implicit dimension"):
        y = pe.Softmax()(x)
    np.testing.assert_allclose(y, pe.Softmax(dim=implicit)(x), rtol=0, atol=0)


def test_softmax_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        pe.Softmax(dim=2)(np.ones((2, 3)))


def test_flatten(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    m = pe.Flatten()
    y = m(x)
    assert y.shape == (2, 60) and np.shares_memory(x, y)
    g = m.backward(y)
    assert g.shape == x.shape and np.shares_memory(g, x)
    assert pe.Flatten(0)(x).shape == (120,)
    assert pe.Flatten(1, 2)(x).shape == (2, 12, 5)
    assert pe.Flatten(-3, -2)(x).shape == (2, 12, 5)
    assert pe.Flatten()(np.ones((4, 1))).shape == (4, 1)
    assert pe.Flatten()(np.ones((0, 3, 2))).shape == (0, 6)
    with pytest.raises(ValueError, match="out of range"):
        pe.Flatten()(np.ones(5))
    with pytest.raises(ValueError, match="after"):
        pe.Flatten(2, 1)(x)
    assert repr(pe.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"


def test_reprs():
    assert repr(pe.ReLU()) == "ReLU()"
    assert repr(pe.LeakyReLU()) == "LeakyReLU(negative_slope=0.01)"
    assert repr(pe.Softplus()) == "Softplus(beta=1.0, threshold=20.0)"
    assert repr(pe.GELU("tanh")) == "GELU(approximate='tanh')"
    assert repr(pe.Softmax(dim=1)) == "Softmax(dim=1)"


def test_in_sequential(rng):
    model = pe.Sequential(pe.Flatten(), pe.GELU(), pe.Tanh(), pe.LogSoftmax(dim=1))
    x = rng.standard_normal((2, 3, 2))
    pe.gradcheck(model, x)


# ---------------------------------------------------------------------------
# PyTorch

TORCH_PAIRS = [
    ("ReLU()", lambda: pe.ReLU()),
    ("LeakyReLU(0.2)", lambda: pe.LeakyReLU(0.2)),
    ("Sigmoid()", lambda: pe.Sigmoid()),
    ("Tanh()", lambda: pe.Tanh()),
    ("Softplus()", lambda: pe.Softplus()),
    ("Softplus(beta=0.5, threshold=2.0)", lambda: pe.Softplus(beta=0.5, threshold=2.0)),
    ("GELU()", lambda: pe.GELU()),
    ("GELU(approximate='tanh')", lambda: pe.GELU(approximate="tanh")),
    ("Softmax(dim=1)", lambda: pe.Softmax(dim=1)),
    ("Softmax(dim=0)", lambda: pe.Softmax(dim=0)),
    ("LogSoftmax(dim=-1)", lambda: pe.LogSoftmax(dim=-1)),
    ("Flatten()", lambda: pe.Flatten()),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("torch_expr,make", TORCH_PAIRS, ids=[p[0] for p in TORCH_PAIRS])
def test_matches_torch(torch_expr, make, dtype, rng):
    torch = pytest.importorskip("torch")
    x = _data(rng, (4, 6, 5), dtype)
    m = make()
    y = m(x)
    dy = _data(rng, y.shape, dtype, 1.0)
    dx = m.backward(dy)
    tm = eval("torch.nn." + torch_expr)
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    ty.backward(torch.tensor(dy))
    rtol, atol = (1e-5, 1e-5) if dtype == np.float32 else (1e-10, 1e-10)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "gelu", "gelu_tanh"])
def test_accuracy_over_a_dense_range(name, dtype):
    # The element-wise loops call SIMD libm variants where available
    # (K.vector_math_enabled()); check them densely against float64 NumPy.
    make, fwd, bwd = MODULES[name]
    x = np.linspace(-30, 30, 200001).astype(dtype)
    dy = np.ones_like(x)
    m = make()
    y, dx = m(x), m.backward(dy)
    # The reference in extended precision, so that its own rounding (e.g. in
    # 1 + tanh(z) near -1) does not count against the kernel.
    x64 = x.astype(np.longdouble)
    rtol, atol = (2e-6, 1e-7) if dtype == np.float32 else (1e-13, 1e-15)
    np.testing.assert_allclose(y, fwd(x64), rtol=rtol, atol=atol)
    if name in ("sigmoid", "tanh"):
        # Backward from the rounded output (1 - y^2, y (1 - y)), as torch does:
        # where y is near +-1 the derivative is only known to a few ulp of 1.
        atol = 4 * np.finfo(dtype).eps
    np.testing.assert_allclose(dx, bwd(x64, dy.astype(np.longdouble)), rtol=rtol, atol=atol)
