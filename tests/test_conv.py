import numpy as np
import pytest

import pyengine as pe
from engine import conv as kconv
from pyengine import reference as ref

# (x shape, weight shape (K, C/groups, kh, kw), stride, padding, dilation, groups)
# A curated sweep: every kernel size / stride / padding / dilation / groups value
# appears, with odd sizes, batch 1, non-square kernels and a 1x1 output.
CONFIGS = [
    ((2, 4, 5, 6), (3, 4, 1, 1), 1, 0, 1, 1),            # pointwise: plain GEMM
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 2, 9, 9), (3, 2, 5, 5), 1, 2, 1, 1),            # batch 1
    ((2, 2, 15, 13), (3, 2, 7, 7), 2, 3, 1, 1),
    ((2, 3, 11, 10), (4, 3, 3, 3), 3, 0, 1, 1),
    ((2, 3, 9, 9), (4, 3, 3, 3), 1, 2, 2, 1),            # dilation 2
    ((2, 4, 7, 7), (6, 2, 3, 3), 1, 1, 1, 2),            # groups 2
    ((2, 4, 8, 8), (4, 1, 3, 3), 1, 1, 1, 4),            # depthwise
    ((2, 3, 7, 9), (6, 1, 3, 3), 2, 1, 1, 3),            # depthwise, multiplier 2
    ((2, 3, 8, 9), (4, 3, 2, 5), (1, 2), (1, 2), 1, 1),  # non-square kernel
    ((2, 3, 5, 5), (4, 3, 5, 5), 1, 0, 1, 1),            # 1x1 output
    ((2, 2, 6, 7), (3, 2, 4, 2), 1, (1, 2, 0, 1), 1, 1),  # asymmetric padding
    ((40, 3, 5, 5), (4, 3, 3, 3), 1, 0, 1, 1),           # small maps batched per GEMM
    ((9, 4, 4, 4), (8, 4, 3, 3), 1, 1, 1, 1),            # whole batch in one GEMM
    ((2, 3, 7, 7), (4, 3, 1, 1), 2, 0, 1, 1),            # 1x1 strided
    ((2, 2, 4, 4), (3, 2, 3, 3), 1, 2, (2, 1), 1),       # padding > needed
    ((3, 1, 12, 12), (6, 1, 5, 5), 1, 2, 1, 1),          # first layer, 1 channel
    ((2, 6, 8, 19), (12, 6, 3, 3), 1, 1, 1, 1),          # 6-channel tiles, 2 pixel vectors
    ((2, 16, 5, 18), (16, 16, 3, 5), 1, (1, 2), 1, 1),   # 8-channel tiles
    ((2, 5, 9, 8), (11, 5, 3, 3), 1, 1, 1, 1),           # blocks of 6+4+1 channels, 8-pixel rows
    ((1, 9, 6, 21), (9, 9, 3, 3), 1, 1, 1, 1),           # blocks of 6+2+1, dx's 9 channels too
    ((2, 14, 7, 7), (14, 7, 3, 3), 1, 1, 1, 2),          # 6+1 per group
    ((2, 3, 11, 17), (13, 3, 3, 3), 2, 1, 1, 1),         # 6+6+1, strided
    ((1, 6, 5, 9), (7, 6, 3, 3), 1, 3, 1, 1),            # bands reading only padding, odd rows
    # Direct weight gradient with output channels in the lanes: 2 vectors x
    # 6 taps (float32: 16 channels), 1 vector x 12 taps with groups and
    # stride, 3 blocks of 1 vector with dilation.
    ((3, 5, 9, 10), (16, 5, 3, 3), 1, 1, 1, 1),
    ((2, 8, 11, 7), (16, 4, 3, 3), (2, 1), 1, 1, 2),
    ((2, 6, 12, 12), (24, 6, 3, 3), 1, 2, 2, 1),
]
IDS = [f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}".replace(" ", "") for c in CONFIGS]
ALGOS = ["im2col", "direct"]


def _close(got, want, dtype):
    """Elementwise check, atol scaled by the result's magnitude (sums of many terms)."""
    t = 1e-5 if np.dtype(dtype) == np.float32 else 1e-11
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=t, atol=t * scale)


def _data(cfg, dtype, rng):
    xs, ws, s, p, d, g = cfg
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    y = ref.conv2d_forward(x.astype(np.float64), w.astype(np.float64),
                           b.astype(np.float64), s, p, d, g)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, dy


def _reference(cfg, x, w, b, dy):
    """(y, dx, dw, db) of the float64 reference for these arrays."""
    _, _, s, p, d, g = cfg
    x, w, b, dy = (a.astype(np.float64) for a in (x, w, b, dy))
    return (ref.conv2d_forward(x, w, b, s, p, d, g),) + ref.conv2d_backward(x, w, dy, s, p, d, g)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_kernels_match_reference(cfg, dtype, algo, rng):
    _, _, s, p, d, g = cfg
    x, w, b, dy = _data(cfg, dtype, rng)
    want_y, want_dx, want_dw, want_db = _reference(cfg, x, w, b, dy)

    y = kconv.conv2d(x, w, b, s, p, d, g, algo=algo)
    dx, dw, db = kconv.conv2d_grad(x, w, dy, s, p, d, g, algo=algo)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    _close(y, want_y, dtype)
    _close(dx, want_dx, dtype)
    _close(dw, want_dw, dtype)
    _close(db, want_db, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[3], CONFIGS[5], CONFIGS[6], CONFIGS[11]],
                         ids=[IDS[1], IDS[3], IDS[5], IDS[6], IDS[11]])
def test_im2col_tiled_and_unbatched_paths(cfg, dtype, rng):
    # Shrink the column tile to one output row and switch image batching off
    # and to whole-batch, so small shapes exercise every im2col code path.
    _, _, s, p, d, g = cfg
    x, w, b, dy = _data(cfg, dtype, rng)
    want = _reference(cfg, x, w, b, dy)
    for tuning in (dict(col_tile_elems=1, min_gemm_cols=1),
                   dict(col_tile_elems=200, min_gemm_cols=10**6)):
        old = kconv._set_tuning(**tuning)
        try:
            got = (kconv.conv2d(x, w, b, s, p, d, g, algo="im2col"),) + \
                kconv.conv2d_grad(x, w, dy, s, p, d, g, algo="im2col")
        finally:
            kconv._set_tuning(**old)
        for a, e in zip(got, want):
            _close(a, e, dtype)


@pytest.mark.parametrize("cfg", CONFIGS[:12:3] + CONFIGS[12:14], ids=IDS[:12:3] + IDS[12:14])
def test_algorithms_agree(cfg, rng):
    _, _, s, p, d, g = cfg
    x, w, b, dy = _data(cfg, np.float64, rng)
    outs = [(kconv.conv2d(x, w, b, s, p, d, g, algo=a),)
            + kconv.conv2d_grad(x, w, dy, s, p, d, g, algo=a) for a in ALGOS]
    for got, want in zip(outs[0], outs[1]):
        _close(got, want, np.float64)


def test_reference_im2col_matches_direct_definition(rng):
    # The reference itself against the convolution sum written out.
    x = rng.standard_normal((1, 2, 5, 6))
    w = rng.standard_normal((3, 2, 3, 2))
    y = ref.conv2d_forward(x, w, None, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    for k in range(3):
        for oh in range(y.shape[2]):
            for ow in range(y.shape[3]):
                s = sum(w[k, c, i, j] * xp[0, c, oh * 2 + i, ow + 2 * j]
                        for c in range(2) for i in range(3) for j in range(2))
                assert abs(y[0, k, oh, ow] - s) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [((3, 3), 1, 1, 1), ((2, 3), (2, 1), (0, 1), (1, 2)),
                                  ((5, 5), 3, 2, 1), ((1, 1), 1, 0, 1)])
def test_im2col_col2im_match_reference(geom, dtype, rng):
    k, s, p, d = geom
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    cols = kconv.im2col(x, k, s, p, d)
    np.testing.assert_array_equal(cols, ref.im2col(x, k, s, p, d))
    c = rng.standard_normal(cols.shape).astype(dtype)
    _close(kconv.col2im(c, x.shape, k, s, p, d),
           ref.col2im(c.astype(np.float64), x.shape, k, s, p, d), dtype)


# Winograd F(2x2, 3x3): 3x3, stride 1, dilation 1. Odd output sizes (half
# tiles), batch 1, 1x1 and 1-column outputs, padding 0/1/2/3/asymmetric,
# groups and depthwise, channel counts that leave GEMM blocks of 6+4+2+1,
# small maps whose blocks span images and large ones split into blocks.
WINO_CONFIGS = [
    ((2, 3, 7, 9), (5, 3, 3, 3), 1),
    ((1, 1, 3, 3), (1, 1, 3, 3), 0),                     # one tile, 1x1 output
    ((3, 8, 32, 32), (6, 8, 3, 3), 1),                   # several blocks per image
    ((2, 6, 5, 4), (4, 3, 3, 3), 2, 2),                  # groups 2, padding 2
    ((2, 4, 11, 1), (4, 2, 3, 3), 1, 2),                 # one column
    ((5, 7, 6, 13), (13, 7, 3, 3), (0, 1, 2, 0)),         # asymmetric, 6+6+1 channels
    ((1, 2, 1, 1), (3, 2, 3, 3), 2),                     # input smaller than a tile
    ((2, 12, 9, 10), (12, 1, 3, 3), 1, 12),              # depthwise
    ((9, 50, 4, 5), (51, 50, 3, 3), 1),                  # blocks spanning images, 6*8+2+1
    ((2, 3, 6, 6), (4, 3, 3, 3), 3),                     # padding 3: dx goes as auto
    ((1, 64, 17, 15), (64, 64, 3, 3), 1),                # what auto picks it for
    ((3, 4, 30, 30), (5, 4, 3, 3), 1),                   # dW: a shorter last block
    ((1, 260, 4, 4), (260, 260, 3, 3), 1),               # dW too wide: goes as auto
]
WINO_IDS = [f"x{c[0]}-w{c[1]}-p{c[2]}-g{c[3] if len(c) > 3 else 1}".replace(" ", "")
            for c in WINO_CONFIGS]


def _wino_cfg(c):
    return (c[0], c[1], 1, c[2], 1, c[3] if len(c) > 3 else 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", WINO_CONFIGS, ids=WINO_IDS)
def test_winograd_matches_reference(cfg, dtype, rng):
    cfg = _wino_cfg(cfg)
    _, _, s, p, d, g = cfg
    x, w, b, dy = _data(cfg, dtype, rng)
    want = _reference(cfg, x, w, b, dy)
    got = (kconv.conv2d(x, w, b, s, p, d, g, algo="winograd"),) + \
        kconv.conv2d_grad(x, w, dy, s, p, d, g, algo="winograd")
    for a, e in zip(got, want):
        assert a.dtype == dtype
        _close(a, e, dtype)
    # Without bias, and fused with ReLU through a plan (as pe.Conv2d runs it).
    _close(kconv.conv2d(x, w, None, s, p, d, g, algo="winograd"),
           want[0] - b.astype(np.float64)[None, :, None, None], dtype)
    plan = kconv.Conv2dPlan(x.shape, w.shape, dtype, s, p, d, g, algo="winograd")
    _close(plan.forward(x, w, b, relu=True), np.maximum(want[0], 0), dtype)
    # Accumulating into given gradient arrays.
    _, dw, db = kconv.conv2d_grad(x, w, dy, s, p, d, g, algo="winograd", input_grad=False,
                                  grad_weight=got[2].copy(), grad_bias=got[3].copy())
    _close(dw, 2 * want[2], dtype)
    _close(db, 2 * want[3], dtype)


def test_winograd_large_values_and_non_finite(rng):
    # The transforms add and subtract inputs: relative accuracy holds at
    # large magnitudes, and a NaN / inf in the input reaches the outputs that
    # read it (as the other algorithms).
    x = rng.standard_normal((2, 8, 9, 9)) * 1e30
    w = rng.standard_normal((8, 8, 3, 3))
    _close(kconv.conv2d(x, w, padding=1, algo="winograd") / 1e30,
           ref.conv2d_forward(x, w, None, padding=1) / 1e30, np.float64)
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    x[0, 1, 3, 4] = np.nan
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    y = kconv.conv2d(x, w, padding=1, algo="winograd")
    want = np.isnan(kconv.conv2d(x, w, padding=1, algo="im2col"))
    assert np.isnan(y[:, :, 2:5, 3:6]).all() and want[:, :, 2:5, 3:6].all()
    assert np.isfinite(y[:, :, :, :2]).all() and np.isfinite(y[:, :, 6:]).all()


# -- the module ---------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=(3, 2), stride=2, groups=2, dilation=(1, 2)),
    dict(in_channels=3, out_channels=3, kernel_size=3, padding="same", groups=3),
    dict(in_channels=2, out_channels=2, kernel_size=4, padding="same", bias=False),
])
@pytest.mark.parametrize("algo", ALGOS)
def test_gradcheck_module(kw, algo):
    pe.manual_seed(0)
    m = pe.Conv2d(**kw, algo=algo, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((2, kw["in_channels"], 5, 6))
    pe.gradcheck(m, x)


@pytest.mark.parametrize("kw", [
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=2, bias=False),
    dict(in_channels=3, out_channels=2, kernel_size=3, padding=3),
])
def test_gradcheck_module_winograd(kw):
    pe.manual_seed(0)
    m = pe.Conv2d(**kw, algo="winograd", dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((2, kw["in_channels"], 5, 6))
    pe.gradcheck(m, x)


def test_module_shapes_init_state_dict():
    pe.manual_seed(0)
    m = pe.Conv2d(6, 16, 5)
    assert m.weight.shape == (16, 6, 5, 5) and m.bias.shape == (16,)
    assert m.weight.dtype == np.float32
    assert list(m.state_dict()) == ["weight", "bias"]
    bound = 1 / np.sqrt(6 * 25)
    for p in (m.weight.data, m.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.8 * bound
    # Roughly uniform: the std of U(-b, b) is b/sqrt(3).
    assert abs(m.weight.data.std() - bound / np.sqrt(3)) < 0.1 * bound
    g = pe.Conv2d(4, 8, 3, groups=2, bias=False)
    assert g.weight.shape == (8, 2, 3, 3) and g.bias is None
    assert list(g.state_dict()) == ["weight"]
    assert "groups=2" in repr(g) and "bias=False" in repr(g)


@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (3, 1), (4, 2), (3, 2)])
def test_padding_same_keeps_size_and_valid_pads_nothing(k, d, rng):
    x = rng.standard_normal((2, 2, 7, 8)).astype(np.float32)
    m = pe.Conv2d(2, 3, k, padding="same", dilation=d)
    assert m(x).shape == (2, 3, 7, 8)
    total = d * (k - 1)
    want = ref.conv2d_forward(x, m.weight.data, m.bias.data,
                              padding=(total // 2, total - total // 2) * 2, dilation=d)
    _close(m(x), want, np.float32)
    v = pe.Conv2d(2, 3, k, padding="valid", dilation=d)
    assert v(x).shape == (2, 3, 7 - total, 8 - total)


def test_backward_accumulates_and_input_grad_false_skips(rng):
    m = pe.Conv2d(3, 4, 3, padding=1, dtype=np.float64)
    x = rng.standard_normal((2, 3, 6, 6))
    dy = rng.standard_normal((2, 4, 6, 6))
    m(x)
    dx = m.backward(dy)
    w1, b1 = m.weight.grad.copy(), m.bias.grad.copy()
    want_dx, want_dw, want_db = ref.conv2d_backward(x, m.weight.data, dy, padding=1)
    _close(dx, want_dx, np.float64)
    _close(w1, want_dw, np.float64)
    _close(b1, want_db, np.float64)
    m(x)
    assert m.backward(dy, input_grad=False) is None
    _close(m.weight.grad, 2 * want_dw, np.float64)
    _close(m.bias.grad, 2 * want_db, np.float64)
    m.zero_grad()
    assert not m.weight.grad.any()


def test_no_grad_keeps_nothing(rng):
    m = pe.Conv2d(1, 2, 3)
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    with pe.no_grad():
        y = m(x)
    assert y.shape == (1, 2, 3, 3)
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.ones_like(y))


def test_non_contiguous_input_is_copied(rng):
    m = pe.Conv2d(3, 4, 3, padding=1)
    big = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    x = big[:, :, ::2, 1::2]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(m(x), m(np.ascontiguousarray(x)))
    y = kconv.conv2d(x, m.weight.data, None, padding=1)
    np.testing.assert_array_equal(y, kconv.conv2d(np.ascontiguousarray(x), m.weight.data,
                                                  None, padding=1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), "in_channels"),
    (dict(in_channels=4, out_channels=3, kernel_size=3, groups=2), "out_channels"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, stride=0), "stride"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding=-1), "padding"),
    (dict(in_channels=2, out_channels=2, kernel_size=0), "kernel_size"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, dilation=0), "dilation"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding="full"), "padding"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding="same", stride=2), "stride"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, padding_mode="reflect"), "padding_mode"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, algo="fft"), "algo"),
    (dict(in_channels=2, out_channels=2, kernel_size=5, algo="winograd"), "winograd"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, algo="winograd"), "winograd"),
    (dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, algo="winograd"), "winograd"),
    (dict(in_channels=0, out_channels=2, kernel_size=3), "in_channels"),
])
def test_invalid_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pe.Conv2d(**kwargs)


def test_invalid_inputs_raise(rng):
    m = pe.Conv2d(2, 3, 5)
    with pytest.raises(ValueError, match="larger than the padded input"):
        m(np.zeros((1, 2, 4, 8), np.float32))
    with pytest.raises(ValueError, match="in_channels=2"):
        m(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="N, C, H, W"):
        m(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        m(np.zeros((1, 2, 8, 8), np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        m(np.zeros((1, 2, 8, 8), np.int64))
    # The kernel entries check on their own.
    x = np.zeros((1, 2, 8, 8), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        kconv.conv2d(x.astype(np.float16), w)
    with pytest.raises(TypeError, match="dtype"):
        kconv.conv2d(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="channels"):
        kconv.conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="stride"):
        kconv.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        kconv.conv2d(x, w, padding=-1)
    with pytest.raises(ValueError, match="bias"):
        kconv.conv2d(x, w, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="algo"):
        kconv.conv2d(x, w, algo="fft")
    for kw in (dict(stride=2), dict(dilation=2)):
        with pytest.raises(ValueError, match="winograd"):
            kconv.conv2d(x, w, algo="winograd", **kw)
        with pytest.raises(ValueError, match="winograd"):
            kconv.conv2d_grad(x, w, np.zeros((1, 3, 3, 3), np.float32), algo="winograd", **kw)
    with pytest.raises(ValueError, match="winograd"):
        kconv.conv2d(x, np.zeros((3, 2, 5, 5), np.float32), algo="winograd")
    with pytest.raises(ValueError, match="winograd"):
        kconv.Conv2dPlan(x.shape, (3, 2, 3, 1), np.float32, algo="winograd")
    with pytest.raises(ValueError, match="grad_out"):
        kconv.conv2d_grad(x, w, np.zeros((1, 3, 5, 5), np.float32))


@pytest.mark.parametrize("which", ["forward", "backward_input", "backward_weight"])
def test_auto_heuristic(which):
    def pick(xs, ws, **kw):
        return kconv.choose_algo(xs, ws, which=which, **kw)
    # Depthwise and first layers (short GEMM rows): direct for every pass.
    assert pick((8, 32, 16, 16), (32, 1, 3, 3), padding=1, groups=32) == "direct"
    assert pick((64, 1, 28, 28), (6, 1, 5, 5), padding=2) == "direct"
    # LeNet's second layer: direct (a GEMM of 16 x 150 rows runs slowly).
    assert pick((64, 6, 14, 14), (16, 6, 5, 5)) == "direct"
    # 1x1 stride 1: a plain GEMM.
    assert pick((8, 64, 8, 8), (128, 64, 1, 1)) == "im2col"
    # 3x3 stride-1 layers with >= 48 channels in and out: Winograd for the
    # forward and grad-input, and for the weight gradient of ~64 channels on
    # large maps (direct or im2col for the others).
    assert pick((32, 64, 32, 32), (64, 64, 3, 3), padding=1) == "winograd"
    assert pick((8, 48, 56, 56), (64, 48, 3, 3), padding=1) == "winograd"
    odd = pick((32, 64, 32, 32), (70, 64, 3, 3), padding=1)
    assert odd == ("direct" if which == "backward_weight" else "winograd")
    # Narrower 3x3 layers: direct (the forward tiles need channels in
    # multiples of 8 or 6 with AVX-512's 32 registers, any count >= 6 with
    # AVX2's 16).
    narrow = pick((32, 40, 32, 32), (70, 40, 3, 3), padding=1)
    wide = kconv.simd_info()["registers"] >= 32
    want = {"forward": "im2col" if wide else "direct",     # 70 output channels
            "backward_input": "direct",                      # 40 input channels
            "backward_weight": "direct"}                     # 32x32 maps
    assert narrow == want[which]
    assert pick((32, 32, 16, 16), (32, 32, 3, 3), padding=1) == "direct"
    # Padding 3: the grad-input is no longer a forward over padded dy.
    pad3 = pick((32, 64, 16, 16), (64, 64, 3, 3), padding=3)
    assert pad3 == {"forward": "winograd", "backward_input": "im2col",
                    "backward_weight": "direct"}[which]
    # Weight gradients of wide layers on small or strided maps: the GEMM.
    mid = pick((32, 64, 16, 16), (64, 64, 3, 3), padding=1)
    assert mid == ("direct" if which == "backward_weight" else "winograd")
    strided = pick((32, 16, 32, 32), (32, 16, 3, 3), padding=1, stride=2)
    assert strided == ("im2col" if which == "backward_input" else "direct")
    small = pick((32, 256, 4, 4), (256, 256, 3, 3), padding=1)
    assert small == ("im2col" if which == "backward_weight" else "winograd")
    assert pick((32, 256, 8, 8), (256, 256, 3, 3), padding=2, dilation=2) != "winograd"
    assert pick((2, 3, 8, 200), (8, 3, 1, 100)) == "im2col"   # beyond the direct tap table
    # ResNet's 1x1 stride-2 projection: subsampling + GEMM in every pass.
    assert pick((32, 32, 16, 16), (64, 32, 1, 1), stride=2) == "im2col"


def test_direct_rejects_very_wide_kernels():
    x = np.zeros((1, 1, 2, 80), np.float32)
    w = np.zeros((1, 1, 1, 70), np.float32)
    with pytest.raises(ValueError, match="kernel widths"):
        kconv.conv2d(x, w, algo="direct")
    assert kconv.conv2d(x, w, algo="auto").shape == (1, 1, 2, 11)


# -- threads ------------------------------------------------------------------

@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("shapes", [
    ((16, 8, 10, 10), (16, 8, 3, 3), 1, 1, 1),     # many dW chunks
    ((40, 3, 5, 5), (8, 3, 3, 3), 1, 0, 1),        # batched small maps
    ((1, 8, 20, 20), (16, 8, 3, 3), 1, 1, 1),      # one item: threaded GEMM
    ((6, 8, 9, 9), (8, 1, 3, 3), 2, 1, 8),         # depthwise
    ((2, 64, 32, 32), (8, 64, 3, 3), 1, 1, 1),     # column tiles of a few rows
])
def test_one_and_two_threads_bitwise_equal(shapes, algo, rng):
    _threads_bitwise_equal(shapes, algo, rng)


@pytest.mark.parametrize("shapes", [
    ((16, 8, 10, 10), (16, 8, 3, 3), 1, 1, 1),     # blocks spanning images
    ((1, 8, 40, 20), (16, 8, 3, 3), 1, 1, 1),      # blocks of one image
    ((3, 64, 9, 9), (64, 32, 3, 3), 1, 1, 2),      # groups, odd output
])
def test_one_and_two_threads_bitwise_equal_winograd(shapes, rng):
    _threads_bitwise_equal(shapes, "winograd", rng)


def _threads_bitwise_equal(shapes, algo, rng):
    xs, ws, s, p, g = shapes
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    dy = None
    outs = []
    old = kconv._set_tuning(min_thread_flops=0)   # small shapes use both threads too
    try:
        for t in (1, 2):
            pe.set_num_threads(t)
            y = kconv.conv2d(x, w, b, s, p, 1, g, algo=algo)
            if dy is None:
                dy = rng.standard_normal(y.shape).astype(np.float32)
            outs.append((y,) + kconv.conv2d_grad(x, w, dy, s, p, 1, g, algo=algo))
    finally:
        kconv._set_tuning(**old)
    for a, b_ in zip(*outs):
        assert np.array_equal(a, b_)


# -- torch --------------------------------------------------------------------

TORCH_CASES = [
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(5, 3), stride=(2, 1), padding=(2, 0),
         dilation=(1, 2), groups=2),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=6),
    dict(in_channels=2, out_channels=4, kernel_size=4, padding="same", dilation=2),
    dict(in_channels=1, out_channels=6, kernel_size=5, padding=2),
    dict(in_channels=8, out_channels=5, kernel_size=1, bias=False),
]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("kw", TORCH_CASES)
def test_matches_torch_with_copied_weights(kw, algo, rng):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv2d(**kw).double()
    m = pe.Conv2d(**kw, algo=algo, dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((3, kw["in_channels"], 11, 10))
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    y = m(x)
    _close(y, ty.detach().numpy(), np.float64)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.tensor(dy))
    dx = m.backward(dy)
    _close(dx, tx.grad.numpy(), np.float64)
    _close(m.weight.grad, tm.weight.grad.numpy(), np.float64)
    if tm.bias is not None:
        _close(m.bias.grad, tm.bias.grad.numpy(), np.float64)


@pytest.mark.parametrize("kw", [k for k in TORCH_CASES if k["kernel_size"] == 3
                                and k.get("stride", 1) == 1] + [
    dict(in_channels=6, out_channels=4, kernel_size=3, padding="same", groups=2),
])
def test_winograd_matches_torch_with_copied_weights(kw, rng):
    test_matches_torch_with_copied_weights(kw, "winograd", rng)


def test_float32_matches_torch(rng):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Conv2d(16, 32, 3, padding=1)
    m = pe.Conv2d(16, 32, 3, padding=1)
    m.load_state_dict(tm.state_dict())
    x = rng.standard_normal((4, 16, 12, 12)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = tm(tx)
    y = m(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    dx = m.backward(dy)
    # float32 sums of 144 (forward), 288 (dx) and 576 (dw) terms.
    for got, want in ((y, ty), (dx, tx.grad), (m.weight.grad, tm.weight.grad),
                      (m.bias.grad, tm.bias.grad)):
        want = want.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_auto_mixes_algorithms_per_pass(dtype, rng):
    # Forward and grad-input run Winograd, grad-weight im2col for this shape.
    cfg = ((3, 64, 12, 12), (70, 64, 3, 3), 1, 1, 1, 1)
    assert [kconv.choose_algo(cfg[0], cfg[1], padding=1, which=w)
            for w in ("forward", "backward_input", "backward_weight")] == \
        ["winograd", "winograd", "im2col"]
    x, w, b, dy = _data(cfg, dtype, rng)
    got = (kconv.conv2d(x, w, b, padding=1),) + kconv.conv2d_grad(x, w, dy, padding=1)
    for a, want in zip(got, _reference(cfg, x, w, b, dy)):
        _close(a, want, dtype)
