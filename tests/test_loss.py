"""Loss kernels and modules vs pe.reference, gradcheck, threads, bad input and torch."""

import numpy as np
import pytest

import pyengine as pe
from engine import loss as K
from pyengine import reference as ref

from conftest import tol

DTYPES = [np.float32, np.float64]
REDUCTIONS = ["mean", "sum", "none"]


def _labels(rng, n, C, ignore_frac=0.0, ignore_index=-100):
    t = rng.integers(0, C, n)
    if ignore_frac:
        t[rng.random(n) < ignore_frac] = ignore_index
    return t


def _check(a, b, dtype):
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Cross-entropy and NLL vs the reference

CE_OPTIONS = [
    dict(),
    dict(weight=True),
    dict(ignore=True),
    dict(label_smoothing=0.1),
    dict(weight=True, ignore=True, label_smoothing=0.25),
]


def _ce_args(rng, opts, C, dtype):
    kw = {}
    if opts.get("weight"):
        kw["weight"] = rng.uniform(0.2, 2.0, C).astype(dtype)
    if "label_smoothing" in opts:
        kw["label_smoothing"] = opts["label_smoothing"]
    return kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("N,C", [(7, 5), (1, 3), (600, 37)])
def test_cross_entropy_matches_reference(N, C, opts, reduction, dtype, rng):
    x = (3 * rng.standard_normal((N, C))).astype(dtype)
    t = _labels(rng, N, C, 0.3 if opts.get("ignore") else 0.0)
    kw = _ce_args(rng, opts, C, dtype)
    loss_fn = pe.CrossEntropyLoss(reduction=reduction, **kw)
    loss = loss_fn(x, t)
    expect = ref.cross_entropy_forward(x, t, reduction=reduction, **kw)
    if reduction == "none":
        assert loss.shape == (N,) and loss.dtype == dtype
    else:
        assert isinstance(loss, float)
    _check(loss, expect, dtype)
    g = rng.standard_normal(N).astype(dtype) if reduction == "none" else None
    dx = loss_fn.backward(g)
    assert dx.shape == x.shape and dx.dtype == dtype
    _check(dx, ref.cross_entropy_backward(x, t, reduction=reduction, grad=g, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_matches_reference(weighted, reduction, dtype, rng):
    N, C = 9, 4
    logp = ref.log_softmax_forward(rng.standard_normal((N, C))).astype(dtype)
    t = _labels(rng, N, C, 0.3, ignore_index=2)
    w = rng.uniform(0.5, 2, C).astype(dtype) if weighted else None
    loss_fn = pe.NLLLoss(weight=w, ignore_index=2, reduction=reduction)
    _check(loss_fn(logp, t), ref.nll_forward(logp, t, w, 2, reduction), dtype)
    g = rng.standard_normal(N).astype(dtype) if reduction == "none" else None
    _check(loss_fn.backward(g), ref.nll_backward(logp, t, w, 2, reduction, g), dtype)


def test_cross_entropy_equals_log_softmax_then_nll(rng):
    x = rng.standard_normal((6, 5))
    t = _labels(rng, 6, 5)
    ce = pe.CrossEntropyLoss()
    ls, nll = pe.LogSoftmax(dim=1), pe.NLLLoss()
    assert ce(x, t) == pytest.approx(nll(ls(x), t), rel=1e-12)
    np.testing.assert_allclose(ce.backward(), ls.backward(nll.backward()), atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_spatial_and_unbatched(reduction, rng):
    # (N, C, d1, d2) scores with (N, d1, d2) labels == rows after moving C last.
    x = rng.standard_normal((2, 4, 3, 5))
    t = rng.integers(0, 4, (2, 3, 5))
    loss_fn = pe.CrossEntropyLoss(reduction=reduction)
    loss = loss_fn(x, t)
    rows = np.moveaxis(x, 1, -1).reshape(-1, 4)
    expect = ref.cross_entropy_forward(rows, t.reshape(-1), reduction=reduction)
    if reduction == "none":
        assert loss.shape == (2, 3, 5)
        expect = expect.reshape(2, 3, 5)
    np.testing.assert_allclose(loss, expect, rtol=1e-12)
    g = rng.standard_normal((2, 3, 5)) if reduction == "none" else None
    dx = loss_fn.backward(g)
    drows = ref.cross_entropy_backward(rows, t.reshape(-1), reduction=reduction,
                                       grad=None if g is None else g.reshape(-1))
    np.testing.assert_allclose(dx, np.moveaxis(drows.reshape(2, 3, 5, 4), -1, 1),
                               rtol=1e-12, atol=1e-12)
    # unbatched (C,) scores and a 0-d label
    u = pe.CrossEntropyLoss(reduction=reduction)
    lu = u(x[0, :, 0, 0], np.array(t[0, 0, 0]))
    assert np.ndim(lu) == 0
    assert float(lu) == pytest.approx(
        float(np.ravel(ref.cross_entropy_forward(x[:1, :, 0, 0], t[:1, 0, 0], reduction="sum"))[0]))
    assert u.backward().shape == (4,)


@pytest.mark.parametrize("loss_cls,kw", [
    (pe.CrossEntropyLoss, {}),
    (pe.CrossEntropyLoss, dict(weight=np.array([1.0, 2.0, 0.5, 1.5]), label_smoothing=0.2)),
    (pe.NLLLoss, dict(weight=np.array([1.0, 2.0, 0.5, 1.5]))),
])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_loss_gradcheck(loss_cls, kw, reduction, rng):
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, -100, 1, 2])
    loss_fn = loss_cls(reduction=reduction, **kw)
    pe.gradcheck(lambda a: np.asarray(loss_fn(a, t)),
                 (x,), grad_fn=lambda w, a: (loss_fn(a, t), loss_fn.backward(w))[1])


def test_int32_and_int64_labels_agree(rng):
    x = rng.standard_normal((8, 6)).astype(np.float32)
    t = _labels(rng, 8, 6)
    a, b = pe.CrossEntropyLoss(), pe.CrossEntropyLoss()
    assert a(x, t.astype(np.int32)) == b(x, t.astype(np.int64))
    np.testing.assert_array_equal(a.backward(), b.backward())
    assert pe.CrossEntropyLoss()(x, t.astype(np.uint8)) == a(x, t)


def test_large_logits_are_stable():
    x = np.array([[1e4, 0.0, -1e4], [-3e4, -3e4, -3e4]], np.float32)
    loss_fn = pe.CrossEntropyLoss(reduction="none", label_smoothing=0.1)
    loss = loss_fn(x, np.array([0, 1]))
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(loss_fn.backward()))
    np.testing.assert_allclose(loss, ref.cross_entropy_forward(
        x.astype(np.float64), np.array([0, 1]), reduction="none", label_smoothing=0.1),
        rtol=1e-6)


# ---------------------------------------------------------------------------
# Bad input

def test_labels_out_of_range_name_the_label(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    for bad in (3, 7, -1, -101):
        t = np.array([0, 1, bad, 2])
        for loss_fn in (pe.CrossEntropyLoss(), pe.NLLLoss()):
            with pytest.raises(ValueError, match=f"class index {bad}, out of range"):
                loss_fn(x, t)
    with pytest.raises(ValueError, match="class index -100"):   # not the ignore_index here
        K.cross_entropy(x, np.array([0, 1, 2, -100]), ignore_index=1)


def test_float_and_nan_targets_rejected(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for t in (np.array([0.0, 1.0, 2.0]), np.array([0, np.nan, 1]), np.array([True, False, True])):
        with pytest.raises(TypeError, match="integer class indices"):
            pe.CrossEntropyLoss()(x, t)
        with pytest.raises(TypeError, match="integer class indices"):
            pe.NLLLoss()(x, t)


def test_shape_and_dtype_errors(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="target shape"):
        pe.CrossEntropyLoss()(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="target shape"):
        pe.CrossEntropyLoss()(x, np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="class dimension"):
        pe.CrossEntropyLoss()(np.float32(1.0), np.array(0))
    with pytest.raises(ValueError, match="weight must have one value per class"):
        pe.CrossEntropyLoss(weight=np.ones(3))(x, np.array([0, 1, 2]))
    for loss_cls in (pe.CrossEntropyLoss, pe.NLLLoss, pe.MSELoss, pe.BCEWithLogitsLoss):
        with pytest.raises(TypeError, match="float32 or float64"):
            loss_cls()(x.astype(np.float16), np.zeros(3, np.int64))
        with pytest.raises(TypeError, match="float32 or float64"):
            loss_cls()(np.ones((3, 4), np.int64), np.zeros(3, np.int64))
        with pytest.raises(ValueError, match="reduction"):
            loss_cls(reduction="avg")
    for loss_cls in (pe.MSELoss, pe.BCEWithLogitsLoss):
        with pytest.raises(ValueError, match="shape"):
            loss_cls()(x, np.zeros((4, 3), np.float32))
        with pytest.raises(ValueError, match="dtype"):
            loss_cls()(x, np.zeros((3, 4), np.float64))
        with pytest.raises(ValueError, match="dtype"):
            loss_cls()(x, np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="label_smoothing"):
        pe.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="broadcast"):
        pe.BCEWithLogitsLoss(pos_weight=np.ones(3))(x, np.zeros((3, 4), np.float32))


def test_backward_without_forward_and_under_no_grad(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for loss_fn, t in ((pe.CrossEntropyLoss(), np.array([0, 1, 2])),
                       (pe.MSELoss(), np.zeros((3, 4), np.float32))):
        with pytest.raises(RuntimeError, match="without a forward"):
            loss_fn.backward()
        with pe.no_grad():
            loss_fn(x, t)
        with pytest.raises(RuntimeError, match="no_grad"):
            loss_fn.backward()


def test_backward_grad_argument(rng):
    x = rng.standard_normal((4, 3))
    t = _labels(rng, 4, 3)
    loss_fn = pe.CrossEntropyLoss()
    loss_fn(x, t)
    np.testing.assert_allclose(loss_fn.backward(2.5), 2.5 * loss_fn.backward(), rtol=1e-15)
    with pytest.raises(ValueError, match="scalar"):
        loss_fn.backward(np.ones(4))
    none_fn = pe.CrossEntropyLoss(reduction="none")
    none_fn(x, t)
    with pytest.raises(ValueError, match="shape of the unreduced loss"):
        none_fn.backward(np.ones(3))


# ---------------------------------------------------------------------------
# Empty batches and all-ignored targets (torch: mean is nan, sum is 0)

@pytest.mark.parametrize("loss_cls", [pe.CrossEntropyLoss, pe.NLLLoss])
def test_empty_and_all_ignored(loss_cls):
    x = np.zeros((0, 5), np.float32)
    t = np.zeros(0, np.int64)
    assert np.isnan(loss_cls()(x, t))
    assert loss_cls(reduction="sum")(x, t) == 0.0
    f = loss_cls(reduction="none")
    assert f(x, t).shape == (0,)
    assert f.backward().shape == (0, 5)
    m = loss_cls()
    m(x, t)
    assert m.backward().shape == (0, 5)
    x = np.ones((3, 5), np.float32)
    m = loss_cls()
    assert np.isnan(m(x, np.full(3, -100)))
    np.testing.assert_array_equal(m.backward(), 0)


def test_empty_elementwise():
    x = np.zeros((0, 3), np.float32)
    for loss_cls in (pe.MSELoss, pe.BCEWithLogitsLoss):
        assert np.isnan(loss_cls()(x, x))
        f = loss_cls(reduction="sum")
        assert f(x, x) == 0.0
        assert f.backward().shape == (0, 3)


# ---------------------------------------------------------------------------
# MSE and BCE-with-logits vs the reference

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 3), (1,), (3, 7, 11), (40000,)])
def test_mse_matches_reference(shape, reduction, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape).astype(dtype)
    f = pe.MSELoss(reduction=reduction)
    _check(f(x, y), ref.mse_forward(x, y, reduction), dtype)
    g = rng.standard_normal(shape).astype(dtype) if reduction == "none" else None
    dx = f.backward(g)
    assert dx.shape == shape and dx.dtype == dtype
    _check(dx, ref.mse_backward(x, y, reduction, g), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", ["none", "weight", "pos_weight", "both"])
@pytest.mark.parametrize("shape", [(6, 4), (1, 4), (3, 5, 4), (9000, 4)])
def test_bce_with_logits_matches_reference(shape, weighted, reduction, dtype, rng):
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    w = rng.uniform(0.5, 2, shape[-1]).astype(dtype) if weighted in ("weight", "both") else None
    pw = rng.uniform(0.5, 3, shape[-1]).astype(dtype) if weighted in ("pos_weight", "both") else None
    f = pe.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
    _check(f(x, y), ref.bce_with_logits_forward(x, y, w, pw, reduction), dtype)
    g = rng.standard_normal(shape).astype(dtype) if reduction == "none" else None
    dx = f.backward(g)
    assert dx.shape == shape and dx.dtype == dtype
    _check(dx, ref.bce_with_logits_backward(x, y, w, pw, reduction, g), dtype)


def test_bce_extreme_logits_are_finite():
    x = np.array([-1e4, -50, 0, 50, 1e4], np.float32)
    y = np.array([1, 0, 1, 1, 0], np.float32)
    f = pe.BCEWithLogitsLoss(reduction="none", pos_weight=np.float32(2.0))
    loss = f(x, y)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(f.backward()))
    np.testing.assert_allclose(loss, ref.bce_with_logits_forward(
        x.astype(np.float64), y.astype(np.float64), None, 2.0, "none"), rtol=1e-6)


@pytest.mark.parametrize("loss_fn", [pe.MSELoss(), pe.MSELoss(reduction="none"),
                                     pe.BCEWithLogitsLoss(weight=np.array([1.0, 0.5, 2.0]),
                                                          pos_weight=np.array([3.0, 1.0, 0.5])),
                                     pe.BCEWithLogitsLoss(reduction="sum")])
def test_elementwise_gradcheck(loss_fn, rng):
    x = rng.standard_normal((4, 3))
    y = rng.uniform(0, 1, (4, 3))
    pe.gradcheck(lambda a: np.asarray(loss_fn(a, y)), (x,),
                 grad_fn=lambda w, a: (loss_fn(a, y), loss_fn.backward(w))[1])


def test_non_contiguous_inputs(rng):
    x = rng.standard_normal((10, 8)).astype(np.float32)
    t = _labels(rng, 4, 10)
    f = pe.CrossEntropyLoss()
    assert f(x.T[::2], t) == pytest.approx(ref.cross_entropy_forward(x.T[::2], t), rel=1e-6)
    _check(f.backward(), ref.cross_entropy_backward(x.T[::2], t), np.float32)
    y = rng.standard_normal((8, 10)).astype(np.float32)
    g = pe.MSELoss()
    assert g(x.T, y[:, ::-1]) == pytest.approx(ref.mse_forward(x.T, y[:, ::-1]), rel=1e-6)


# ---------------------------------------------------------------------------
# Kernel-level entries

def test_kernel_cross_entropy_grad_in_place(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    t = _labels(rng, 5, 7)
    _, s, ws, prob = K.cross_entropy(x, t)
    expect = K.cross_entropy_grad(prob, t, scale=1 / ws)
    assert K.cross_entropy_grad(prob, t, scale=1 / ws, out=prob) is prob
    np.testing.assert_array_equal(prob, expect)
    # Caffe's SoftmaxWithLoss: (p - onehot) / N
    p = ref.softmax_forward(x)
    onehot = np.eye(7, dtype=np.float32)[t]
    np.testing.assert_allclose(expect, (p - onehot) / 5, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Determinism across thread counts

def test_one_and_two_threads_bitwise(rng):
    x = (3 * rng.standard_normal((3000, 37))).astype(np.float32)   # 7 row chunks
    t = _labels(rng, 3000, 37, 0.1)
    w = rng.uniform(0.5, 2, 37).astype(np.float32)
    a = rng.standard_normal((70001,)).astype(np.float32)            # 5 element chunks
    b = rng.uniform(0, 1, (70001,)).astype(np.float32)
    out = []
    for n in (1, 2):
        pe.set_num_threads(n)
        res = []
        for f, args in ((pe.CrossEntropyLoss(weight=w, label_smoothing=0.1), (x, t)),
                        (pe.NLLLoss(), (x, t)), (pe.MSELoss(), (a, b)),
                        (pe.BCEWithLogitsLoss(), (a, b))):
            res.append((f(*args), f.backward()))
        out.append(res)
    for (l1, d1), (l2, d2) in zip(*out):
        assert l1 == l2
        assert np.array_equal(d1, d2)


# ---------------------------------------------------------------------------
# PyTorch

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_cross_entropy_matches_torch(opts, reduction, dtype, rng):
    torch = pytest.importorskip("torch")
    N, C = 33, 10
    x = (2 * rng.standard_normal((N, C, 3))).astype(dtype)    # spatial dim too
    t = rng.integers(0, C, (N, 3))
    if opts.get("ignore"):
        t[rng.random((N, 3)) < 0.3] = 4
    kw = _ce_args(rng, opts, C, dtype)
    ignore = 4 if opts.get("ignore") else -100
    f = pe.CrossEntropyLoss(ignore_index=ignore, reduction=reduction, **kw)
    loss = f(x, t)
    g = rng.standard_normal((N, 3)).astype(dtype) if reduction == "none" else None
    dx = f.backward(g)
    tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    tf = torch.nn.CrossEntropyLoss(ignore_index=ignore, reduction=reduction, **tkw)
    tx = torch.tensor(x, requires_grad=True)
    tl = tf(tx, torch.tensor(t))
    tl.backward(torch.tensor(g) if g is not None else None)
    rtol, atol = (2e-5, 1e-6) if dtype == np.float32 else (1e-10, 1e-12)
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_mse_bce_match_torch(reduction, rng):
    torch = pytest.importorskip("torch")
    N, C = 12, 5
    logp = ref.log_softmax_forward(rng.standard_normal((N, C)).astype(np.float32))
    t = rng.integers(0, C, N)
    t[::4] = 1
    w = rng.uniform(0.5, 2, C).astype(np.float32)
    x = (3 * rng.standard_normal((N, C))).astype(np.float32)
    y = rng.uniform(0, 1, (N, C)).astype(np.float32)
    pw = rng.uniform(0.5, 3, C).astype(np.float32)
    cases = [
        (pe.NLLLoss(weight=w, ignore_index=1, reduction=reduction),
         torch.nn.NLLLoss(weight=torch.tensor(w), ignore_index=1, reduction=reduction),
         logp, t, torch.tensor(t)),
        (pe.MSELoss(reduction=reduction), torch.nn.MSELoss(reduction=reduction),
         x, y, torch.tensor(y)),
        (pe.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw),
         torch.nn.BCEWithLogitsLoss(weight=torch.tensor(w), reduction=reduction,
                                    pos_weight=torch.tensor(pw)),
         x, y, torch.tensor(y)),
    ]
    for f, tf, a, target, ttarget in cases:
        loss = f(a, target)
        ta = torch.tensor(a, requires_grad=True)
        tl = tf(ta, ttarget)
        g = rng.standard_normal(np.shape(tl)).astype(np.float32) if reduction == "none" else None
        dx = f.backward(g)
        tl.backward(torch.tensor(g) if g is not None else None)
        np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(dx, ta.grad.numpy(), rtol=2e-5, atol=1e-6)


def test_state_dict_keys_like_torch():
    f = pe.CrossEntropyLoss(weight=np.ones(3, np.float32))
    assert list(f.state_dict()) == ["weight"]
    assert list(pe.CrossEntropyLoss().state_dict()) == []
    b = pe.BCEWithLogitsLoss(pos_weight=np.ones(3, np.float32))
    assert list(b.state_dict()) == ["pos_weight"]
    assert isinstance(f, pe.Loss) and isinstance(pe.MSELoss(), pe.Loss)
    assert repr(pe.CrossEntropyLoss(label_smoothing=0.1)) == "CrossEntropyLoss(label_smoothing=0.1)"
