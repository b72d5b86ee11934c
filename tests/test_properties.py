"""Property-based tests: random valid shapes/hyperparameters agree with
pe.reference (forward and backward); random invalid ones raise a Python
exception (and the process survives).

Small shapes and a few dozen examples per test keep the whole file around a
minute. Float64 is compared tightly; float32 with float32 tolerances.
"""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import pyengine as pe  # noqa: E402
from engine import conv, dense, norm  # noqa: E402

ref = pe.reference
SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
dtypes = st.sampled_from([np.float32, np.float64])


def _tol(dtype, scale=1.0):
    return dict(rtol=1e-4, atol=1e-4 * scale) if dtype == np.float32 else \
        dict(rtol=1e-9, atol=1e-10 * scale)


def _arr(seed, shape, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


seeds = st.integers(0, 2**32 - 1)


# ---- dense ------------------------------------------------------------------------

@settings(max_examples=150, **SETTINGS)
@given(N=st.integers(1, 9), IN=st.integers(1, 17), OUT=st.integers(1, 13),
       bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_dense_matches_reference(N, IN, OUT, bias, dtype, seed):
    x, w = _arr(seed, (N, IN), dtype), _arr(seed + 1, (OUT, IN), dtype)
    b = _arr(seed + 2, (OUT,), dtype) if bias else None
    gy = _arr(seed + 3, (N, OUT), dtype)
    np.testing.assert_allclose(dense.linear_forward(x, w, b), ref.linear_forward(x, w, b),
                               **_tol(dtype, IN))
    dx, dw, db = dense.linear_backward(x, w, gy)
    rdx, rdw, rdb = ref.linear_backward(x, w, gy)
    for got, want in ((dx, rdx), (dw, rdw), (db, rdb)):
        np.testing.assert_allclose(got, want, **_tol(dtype, max(N, OUT)))


@settings(max_examples=60, **SETTINGS)
@given(N=st.integers(0, 4), IN=st.integers(1, 6), OUT=st.integers(1, 6),
       bad=st.sampled_from(["features", "bias", "grad", "rank", "dtype", "mixed"]))
def test_dense_rejects_invalid(N, IN, OUT, bad):
    x, w, b, gy = np.ones((N, IN)), np.ones((OUT, IN)), np.ones(OUT), np.ones((N, OUT))
    if bad == "features":
        w = np.ones((OUT, IN + 1))
    elif bad == "bias":
        b = np.ones(OUT + 1)
    elif bad == "grad":
        gy = np.ones((N, OUT + 1))
    elif bad == "rank":
        x = np.ones((N, IN, 1))
    elif bad == "dtype":
        x = x.astype(np.int32)
    else:
        w = w.astype(np.float32)
    with pytest.raises((ValueError, TypeError)):
        dense.linear_forward(x, w, b)
        dense.linear_backward(x, w, gy)


# ---- conv (both algorithms) ---------------------------------------------------------

@st.composite
def conv_geometry(draw):
    groups = draw(st.integers(1, 3))
    Cg, Kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    H = draw(st.integers(max(1, eh - 2 * ph), max(1, eh - 2 * ph) + 6))
    W = draw(st.integers(max(1, ew - 2 * pw), max(1, ew - 2 * pw) + 6))
    N = draw(st.integers(1, 3))
    return dict(N=N, C=Cg * groups, H=H, W=W, K=Kg * groups, Cg=Cg, kh=kh, kw=kw,
                stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)


@settings(max_examples=250, **SETTINGS)
@given(g=conv_geometry(), algo=st.sampled_from(["im2col", "direct"]), dtype=dtypes,
       bias=st.booleans(), seed=seeds)
def test_conv_matches_reference(g, algo, dtype, bias, seed):
    x = _arr(seed, (g["N"], g["C"], g["H"], g["W"]), dtype)
    w = _arr(seed + 1, (g["K"], g["Cg"], g["kh"], g["kw"]), dtype)
    b = _arr(seed + 2, (g["K"],), dtype) if bias else None
    hp = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"],
              groups=g["groups"])
    y = conv.conv2d(x, w, b, algo=algo, **hp)
    want = ref.conv2d_forward(x, w, b, **hp)
    fan = g["Cg"] * g["kh"] * g["kw"]
    np.testing.assert_allclose(y, want, **_tol(dtype, fan))
    gy = _arr(seed + 3, y.shape, dtype)
    dx, dw, db = conv.conv2d_grad(x, w, gy, algo=algo, bias=bias, **hp)
    rdx, rdw, rdb = ref.conv2d_backward(x, w, gy, **hp)
    np.testing.assert_allclose(dx, rdx, **_tol(dtype, fan))
    np.testing.assert_allclose(dw, rdw, **_tol(dtype, y.size))
    if bias:
        np.testing.assert_allclose(db, rdb, **_tol(dtype, y.size))


@settings(max_examples=100, **SETTINGS)
@given(g=conv_geometry(), algo=st.sampled_from(["im2col", "direct", "auto"]),
       bad=st.sampled_from(["stride", "padding", "dilation", "groups", "channels",
                            "kernel", "empty", "grad", "bias", "algo", "dtype"]),
       value=st.integers(-3, 0))
def test_conv_rejects_invalid(g, algo, bad, value):
    x = np.ones((g["N"], g["C"], g["H"], g["W"]), np.float32)
    w = np.ones((g["K"], g["Cg"], g["kh"], g["kw"]), np.float32)
    b = None
    hp = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"],
              groups=g["groups"])
    if bad == "stride":
        hp["stride"] = (value, 1)
    elif bad == "padding":
        hp["padding"] = value - 1
    elif bad == "dilation":
        hp["dilation"] = value
    elif bad == "groups":
        hp["groups"] = value
    elif bad == "channels":
        x = np.ones((g["N"], g["C"] + 1, g["H"], g["W"]), np.float32)
    elif bad == "kernel":
        hp["padding"] = 0
        w = np.ones((g["K"], g["Cg"], g["H"] + 1, 1), np.float32)
    elif bad == "empty":
        x = x[:0]
    elif bad == "bias":
        b = np.ones(g["K"] + 1, np.float32)
    elif bad == "algo":
        algo = "winograd"
    elif bad == "dtype":
        x = x.astype(np.float16)
    if bad == "grad":
        y = conv.conv2d(x, w, **hp)
        with pytest.raises(ValueError, match="grad_out"):
            conv.conv2d_grad(x, w, np.ones(y.shape[:-1] + (y.shape[-1] + 1,), np.float32),
                             algo=algo, **hp)
        return
    with pytest.raises((ValueError, TypeError)):
        conv.conv2d(x, w, b, algo=algo, **hp)


# ---- batch norm ---------------------------------------------------------------------

@settings(max_examples=150, **SETTINGS)
@given(N=st.integers(1, 5), C=st.integers(1, 5), spatial=st.lists(st.integers(1, 4),
       max_size=2), affine=st.booleans(), training=st.booleans(), dtype=dtypes, seed=seeds)
def test_batchnorm_matches_reference(N, C, spatial, affine, training, dtype, seed):
    shape = (N, C, *spatial)
    if training and N * int(np.prod(spatial)) < 2:
        shape = (N + 1, C, *spatial)
    x = _arr(seed, shape, dtype) * 3 + 1
    w = _arr(seed + 1, (C,), dtype) if affine else None
    b = _arr(seed + 2, (C,), dtype) if affine else None
    rm = _arr(seed + 3, (C,), dtype)
    rv = np.abs(_arr(seed + 4, (C,), dtype)) + 0.5
    rm0, rv0 = rm.copy(), rv.copy()
    y, m, inv = norm.batch_norm_forward(x, w, b, rm, rv, training=training)
    ry, rmean, rinv, rrm, rrv = ref.batchnorm_forward(x, w, b, rm0, rv0, training=training)
    t = _tol(dtype, 10)
    np.testing.assert_allclose(y, ry, **t)
    np.testing.assert_allclose(rm, rrm, **t)
    np.testing.assert_allclose(rv, rrv, **t)
    gy = _arr(seed + 5, shape, dtype)
    gw, gb = np.zeros(C, dtype), np.zeros(C, dtype)
    gx = norm.batch_norm_backward(gy, x, w, m, inv, training=training,
                                  grad_weight=gw, grad_bias=gb)
    rgx, rgw, rgb = ref.batchnorm_backward(gy, x, w, rmean, rinv, training=training)
    np.testing.assert_allclose(gx, rgx, **_tol(dtype, 100))
    np.testing.assert_allclose(gw, rgw, **_tol(dtype, 100))
    np.testing.assert_allclose(gb, rgb, **_tol(dtype, 100))


@settings(max_examples=60, **SETTINGS)
@given(N=st.integers(1, 4), C=st.integers(1, 4),
       bad=st.sampled_from(["rank", "weight", "running", "eps", "grad", "dtype", "single"]))
def test_batchnorm_rejects_invalid(N, C, bad):
    x = np.ones((N + 1, C, 3))
    kw = dict(weight=None, bias=None, running_mean=np.zeros(C), running_var=np.ones(C))
    if bad == "rank":
        x = np.ones(C)
    elif bad == "weight":
        kw["weight"] = np.ones(C + 1)
    elif bad == "running":
        kw["running_var"] = None
    elif bad == "eps":
        kw["eps"] = -abs(N) * 1e-3 - 1e-6
    elif bad == "dtype":
        x = x.astype(np.int16)
    elif bad == "single":
        x = np.ones((1, C))
    if bad == "grad":
        y, m, inv = norm.batch_norm_forward(x, **kw)
        with pytest.raises(ValueError, match="grad_out"):
            norm.batch_norm_backward(np.ones((N + 2, C, 3)), x, None, m, inv)
        return
    with pytest.raises((ValueError, TypeError)):
        norm.batch_norm_forward(x, **kw)


# ---- pooling --------------------------------------------------------------------------

from engine import pool, rnn  # noqa: E402


@st.composite
def pool_geometry(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    H = draw(st.integers(max(1, k[0] - 2 * p[0]), 9))
    W = draw(st.integers(max(1, k[1] - 2 * p[1]), 9))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W), k=k, s=s, p=p,
                ceil=draw(st.booleans()))


@settings(max_examples=200, **SETTINGS)
@given(g=pool_geometry(), kind=st.sampled_from(["max", "avg", "adaptive"]), dtype=dtypes,
       seed=seeds)
def test_pool_matches_reference(g, kind, dtype, seed):
    x = _arr(seed, g["shape"], dtype)
    if kind == "max":
        y, ind = pool.max_pool2d(x, g["k"], g["s"], g["p"], ceil_mode=g["ceil"])
        ry, rind = ref.max_pool2d_forward(x, g["k"], g["s"], g["p"], ceil_mode=g["ceil"])
        np.testing.assert_array_equal(y, ry)
        gy = _arr(seed + 1, y.shape, dtype)
        np.testing.assert_allclose(pool.max_pool2d_grad(gy, ind, x.shape),
                                   ref.max_pool2d_backward(gy, rind, x.shape), **_tol(dtype, 10))
    elif kind == "avg":
        y = pool.avg_pool2d(x, g["k"], g["s"], g["p"], ceil_mode=g["ceil"])
        np.testing.assert_allclose(y, ref.avg_pool2d_forward(x, g["k"], g["s"], g["p"],
                                                             ceil_mode=g["ceil"]), **_tol(dtype))
        gy = _arr(seed + 1, y.shape, dtype)
        np.testing.assert_allclose(
            pool.avg_pool2d_grad(gy, x.shape, g["k"], g["s"], g["p"], ceil_mode=g["ceil"]),
            ref.avg_pool2d_backward(gy, x.shape, g["k"], g["s"], g["p"], ceil_mode=g["ceil"]),
            **_tol(dtype, 10))
    else:
        out = (1 + seed % g["shape"][2], 1 + (seed // 7) % g["shape"][3])
        y = pool.adaptive_avg_pool2d(x, out)
        np.testing.assert_allclose(y, ref.adaptive_avg_pool2d_forward(x, out), **_tol(dtype))
        gy = _arr(seed + 1, y.shape, dtype)
        np.testing.assert_allclose(pool.adaptive_avg_pool2d_grad(gy, x.shape),
                                   ref.adaptive_avg_pool2d_backward(gy, x.shape),
                                   **_tol(dtype, 10))


@settings(max_examples=80, **SETTINGS)
@given(g=pool_geometry(), bad=st.sampled_from(["kernel", "stride", "padding", "big", "rank",
                                               "dtype", "indices"]),
       value=st.integers(-3, 0))
def test_pool_rejects_invalid(g, bad, value):
    x = np.ones(g["shape"], np.float32)
    k, s, p = g["k"], g["s"], g["p"]
    if bad == "kernel":
        k = value
    elif bad == "stride":
        s = value
    elif bad == "padding":
        p = value - 1 if value < 0 else k[0] // 2 + 1
    elif bad == "big":
        k, p = (g["shape"][2] + 1, 1), 0
    elif bad == "rank":
        x = x[0]
    elif bad == "dtype":
        x = x.astype(np.int64)
    if bad == "indices":
        y, ind = pool.max_pool2d(x, k, s, p)
        ind = ind + x.shape[2] * x.shape[3]   # every index outside its plane
        with pytest.raises(ValueError, match="outside its plane"):
            pool.max_pool2d_grad(np.ones_like(y), ind, x.shape)
        return
    with pytest.raises((ValueError, TypeError)):
        pool.max_pool2d(x, k, s, p)


# ---- recurrent ------------------------------------------------------------------------

@settings(max_examples=200, **SETTINGS)
@given(mode=st.sampled_from(["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]), T=st.integers(1, 5),
       B=st.integers(1, 3), I=st.integers(1, 5), H=st.integers(1, 6), bias=st.booleans(),
       reverse=st.booleans(), dtype=dtypes, seed=seeds)
def test_recurrent_matches_reference(mode, T, B, I, H, bias, reverse, dtype, seed):
    G = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}[mode]
    x = _arr(seed, (T, B, I), dtype)
    w_ih, w_hh = _arr(seed + 1, (G * H, I), dtype) * 0.5, _arr(seed + 2, (G * H, H), dtype) * 0.5
    b_ih = _arr(seed + 3, (G * H,), dtype) if bias else None
    b_hh = _arr(seed + 4, (G * H,), dtype) if bias else None
    h0 = _arr(seed + 5, (B, H), dtype)
    c0 = _arr(seed + 6, (B, H), dtype) if mode == "LSTM" else None
    ws = np.empty(rnn.workspace_size(mode, T, B, H), dtype)
    y, h_n, c_n = rnn.rnn_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse=reverse,
                                  workspace=ws)
    ry, rh, rc, cache = ref.rnn_layer_forward(mode, x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                                              reverse=reverse)
    t = _tol(dtype, 10)
    np.testing.assert_allclose(y, ry, **t)
    np.testing.assert_allclose(h_n, rh, **t)
    if mode == "LSTM":
        np.testing.assert_allclose(c_n, rc, **t)
    dy = _arr(seed + 7, y.shape, dtype)
    grads = rnn.rnn_backward(mode, x, w_ih, w_hh, y, h0, c0, ws, dy, reverse=reverse,
                             bias=bias)
    rgrads = ref.rnn_layer_backward(cache, dy)
    for i, name in enumerate(["d_x", "d_h0", "d_c0", "d_w_ih", "d_w_hh", "d_b_ih", "d_b_hh"]):
        if grads[i] is None or rgrads[i] is None:
            continue
        np.testing.assert_allclose(grads[i], rgrads[i], err_msg=name, **_tol(dtype, 100))
