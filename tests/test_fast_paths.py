"""The lean paths: GEMV for matrix-vector GEMMs, cached layer plans, and
Sequential's fused Conv2d/Linear + ReLU. Each must give the bits of the
general path it short-cuts, and keep its errors."""

import numpy as np
import pytest

import pyengine as pe
from engine import blas, conv, pool
from pyengine import module as pe_module


# -- GEMV inside blas.gemm ------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("shape", [(1, 7, 5), (5, 7, 1), (1, 1, 1), (1, 300, 2),
                                   (3, 4, 1), (1, 5, 600), (700, 9, 1)])
def test_matrix_vector_products(dtype, ta, tb, shape, rng):
    M, K, N = shape
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    for parallel in (False, True):
        # beta = 0 must not read the output (np.empty may hold NaN).
        out = np.full((M, N), np.nan, dtype)
        got = blas.matmul(A, B, out=out, trans_a=ta, trans_b=tb, alpha=1.5,
                          parallel=parallel)
        np.testing.assert_allclose(got, 1.5 * want, rtol=rtol, atol=rtol * np.sqrt(K))
        out = C0.copy()
        got = blas.matmul(A, B, out=out, trans_a=ta, trans_b=tb, beta=0.5,
                          parallel=parallel)
        np.testing.assert_allclose(got, want + 0.5 * C0, rtol=rtol, atol=rtol * np.sqrt(K))


# -- plans --------------------------------------------------------------------

def test_conv_plan_matches_conv2d_and_checks(rng):
    x = rng.standard_normal((2, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    plan = conv.Conv2dPlan(x.shape, w.shape, np.float32, padding=1)
    y = conv.conv2d(x, w, b, padding=1)
    assert plan.y_shape == y.shape
    assert np.array_equal(plan.forward(x, w, b), y)
    assert np.array_equal(plan.forward(x, w, b, relu=True), np.maximum(y, 0))
    with pytest.raises(ValueError, match="shape"):
        plan.forward(x[:1], w, b)
    with pytest.raises(ValueError, match="weight"):
        plan.forward(x, w[:8], b)
    with pytest.raises(ValueError):
        plan.forward(x.astype(np.float64), w, b)      # dtype: typed buffer
    with pytest.raises(ValueError):
        plan.forward(np.asfortranarray(x), w, b)      # not C-contiguous
    with pytest.raises(ValueError, match="stride"):
        conv.Conv2dPlan(x.shape, w.shape, np.float32, stride=0)
    with pytest.raises(TypeError, match="dtype"):
        conv.Conv2dPlan(x.shape, w.shape, np.float16)


def test_maxpool_plan_values_without_indices(rng):
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan
    x[1, 2, :2, :2] = 5.0                               # ties
    for args in [(2,), (2, 2, 0, 1, True), (3, 2, 1), (2, 1, 0, 2)]:
        y, ind = pool.max_pool2d(x, *args)
        plan = pool.MaxPool2dPlan(x.shape, np.float32, *args)
        y1, ind1 = plan.forward(x)
        y2, ind2 = plan.forward(x, indices=False)
        assert ind2 is None
        np.testing.assert_array_equal(y1, y)
        np.testing.assert_array_equal(ind1, ind)
        np.testing.assert_array_equal(y2, y)
    with pytest.raises(ValueError, match="shape"):
        plan.forward(x[:1])


# -- layers and Sequential ------------------------------------------------------

def _lenet_like(dtype=np.float32):
    pe.manual_seed(3)
    return pe.Sequential(
        pe.Conv2d(1, 6, 5, padding=2, dtype=dtype), pe.ReLU(), pe.MaxPool2d(2),
        pe.Conv2d(6, 16, 5, dtype=dtype), pe.ReLU(inplace=True), pe.MaxPool2d(2),
        pe.Flatten(), pe.Linear(400, 32, dtype=dtype), pe.ReLU(),
        pe.Linear(32, 10, dtype=dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [1, 5])
def test_fused_sequential_same_bits_as_unfused(dtype, batch, rng, monkeypatch):
    x = rng.standard_normal((batch, 1, 28, 28)).astype(dtype)
    runs = []
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(pe_module, "_RELU_TYPES", set())
        model = _lenet_like(dtype)
        with pe.no_grad():
            y0 = model(x)
            y0b = model(x)          # second call: the cached plans
        y = model(x)
        dx = model.backward(np.ones_like(y))
        runs.append([y0, y0b, y, dx] + [p.grad for p in model.parameters()])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape", [(3, 2, 9, 11), (2, 9, 11)])
def test_relu_then_max_pool_backward_same_bits(shape, rng, monkeypatch):
    # Overlapping windows (3, stride 2, padding 1): several windows send
    # their gradient to one argmax; unbatched input; a negative grad_out.
    x = rng.standard_normal(shape).astype(np.float32)
    runs = []

    def unused(*args, **kwargs):
        raise AssertionError("the fused path runs no ReLU.backward")

    for fuse in (True, False):
        with monkeypatch.context() as mp:
            if fuse:
                mp.setattr(pe.ReLU, "backward", unused)
            else:
                mp.setattr(pe_module, "_RELU_CONSUMERS", set())
            runs.append(_relu_pool_run(shape, x))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def _relu_pool_run(shape, x):
    pe.manual_seed(1)
    first = [pe.Conv2d(2, 3, 3, padding=1)] if len(shape) == 4 else []  # 4-D only
    model = pe.Sequential(*first, pe.ReLU(), pe.MaxPool2d(3, stride=2, padding=1),
                          pe.ReLU(), pe.MaxPool2d(2, ceil_mode=True))
    y = model(x)
    g = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    dx = model.backward(g)
    out = [y, dx] + [p.grad.copy() for p in model.parameters()]
    assert model.backward(g, input_grad=False) is None
    with pe.no_grad():
        model(x)
    with pytest.raises(RuntimeError, match="without a forward pass"):
        model.backward(g)
    return out


def test_fused_sequential_nan_and_anomaly(rng):
    model = _lenet_like()
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    x[0, 0, 10, 10] = np.nan
    with pe.no_grad():
        y = model(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    with pytest.raises(FloatingPointError, match=r"0|Conv2d"):
        with pe.detect_anomaly():
            model(x)


def test_layer_plans_follow_changes(rng):
    m = pe.Conv2d(3, 4, 3)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert m(x).shape == (2, 4, 6, 6)
    m.padding = (1, 1)                      # drops the cached plan
    assert m(x).shape == (2, 4, 8, 8)
    assert m(x[:1]).shape == (1, 4, 8, 8)   # another input shape: a new plan
    y64 = m(x.astype(np.float64))            # cast to the weight dtype, as before
    assert y64.dtype == np.float32
    xs = np.asfortranarray(x)               # non-contiguous input: copied
    assert np.array_equal(m(xs), m(x))
    ro = x.copy()
    ro.flags.writeable = False
    assert np.array_equal(m(ro), m(x))
    with pytest.raises(ValueError, match="in_channels"):
        m(x[:, :2])
    y = m(x)                                # a plan for this shape exists now
    m.weight.data = np.asfortranarray(m.weight.data)   # non-contiguous parameters:
    m.bias.data = np.stack([m.bias.data] * 2, 1)[:, 0]  # copied, as without a plan
    assert np.array_equal(m(x), y)
    lw = pe.Linear(8, 3)
    u = rng.standard_normal((4, 8)).astype(np.float32)
    yl = lw(u)
    lw.weight.data = np.asfortranarray(lw.weight.data)
    assert np.array_equal(lw(u), yl)

    p = pe.MaxPool2d(2)
    assert p(x).shape == (2, 3, 4, 4)
    p.kernel_size = p.stride = 4
    assert p(x).shape == (2, 3, 2, 2)
    assert p(x[0]).shape == (3, 2, 2)       # unbatched
    with pytest.raises(TypeError):
        p(x.astype(np.float16))

    lin = pe.Linear(8, 3)
    v = rng.standard_normal((4, 8)).astype(np.float32)
    assert np.array_equal(lin(v[:, ::-1].copy()), lin(np.ascontiguousarray(v[:, ::-1])))
    assert np.array_equal(lin(v[:, ::-1]), lin(v[:, ::-1].copy()))
    assert lin(v[None]).shape == (1, 4, 3)
    with pytest.raises(TypeError, match="dtype"):
        lin(v.astype(np.float64))
    with pytest.raises(ValueError, match="8"):
        lin(v[:, :5])


def test_models_with_cached_plans_copy_and_pickle(rng):
    import copy
    import pickle

    from pyengine.models import lenet5, resnet_small
    for build, shape in ((lenet5, (2, 1, 28, 28)), (resnet_small, (2, 3, 32, 32))):
        model = build()
        x = rng.standard_normal(shape).astype(np.float32)
        y = model(x)                        # plans cached on the layers
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert np.array_equal(clone(x), y)
