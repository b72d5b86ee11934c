import numpy as np
import pytest

import pyengine as pe
from engine import rnn
from pyengine import reference as R

from conftest import tol

MODES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
CLASSES = [(pe.RNN, {}, "RNN_TANH"), (pe.RNN, {"nonlinearity": "relu"}, "RNN_RELU"),
           (pe.LSTM, {}, "LSTM"), (pe.GRU, {}, "GRU")]


def _layer_data(rng, mode, T, B, I, H, dtype, bias=True, states=True):
    G = MODES[mode]
    d = {
        "x": rng.standard_normal((T, B, I)),
        "w_ih": rng.standard_normal((G * H, I)) * 0.5,
        "w_hh": rng.standard_normal((G * H, H)) * 0.5,
        "b_ih": rng.standard_normal(G * H) * 0.3 if bias else None,
        "b_hh": rng.standard_normal(G * H) * 0.3 if bias else None,
        "h0": rng.standard_normal((B, H)) if states else None,
        "c0": rng.standard_normal((B, H)) if states and mode == "LSTM" else None,
    }
    return {k: None if v is None else v.astype(dtype) for k, v in d.items()}


def _reference_forward(mode, d, reverse=False):
    """pe.reference's layer forward (y, h_n, c_n, cache) on d in float64."""
    f64 = {k: None if v is None else v.astype(np.float64) for k, v in d.items()}
    return R.rnn_layer_forward(mode, f64["x"], f64["w_ih"], f64["w_hh"], f64["b_ih"],
                               f64["b_hh"], f64["h0"], f64["c0"], reverse=reverse)


# -- kernel level: one layer, one direction --------------------------------------

@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
# The larger shapes reach every path of the float32 per-step kernels: batch >= 4
# (packed-panel tiles of 6/4/2/1 rows, 16- and 8-wide panels and a column tail),
# batch >= 16 (LSTM and Elman: the input projection inside each step's GEMM)
# and batch < 4 (the GEMV steps) with hidden sizes that are not multiples of 8.
@pytest.mark.parametrize("shape", [(5, 3, 4, 7), (1, 1, 3, 5), (4, 1, 2, 9), (1, 6, 5, 3),
                                   (3, 13, 5, 37), (2, 4, 3, 24), (3, 2, 6, 33),
                                   (3, 17, 5, 37), (1, 16, 3, 5)])
def test_layer_kernel_matches_reference(mode, dtype, reverse, shape, rng):
    T, B, I, H = shape
    d = _layer_data(rng, mode, T, B, I, H, dtype, states=T != 1)
    ws = np.empty(rnn.workspace_size(mode, T, B, H), dtype)
    y, hn, cn = rnn.rnn_forward(mode, d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                d["h0"], d["c0"], reverse=reverse, workspace=ws)
    ry, rhn, rcn, cache = _reference_forward(mode, d, reverse)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(y, ry, rtol=rtol, atol=atol)
    np.testing.assert_allclose(hn, rhn, rtol=rtol, atol=atol)
    if mode == "LSTM":
        np.testing.assert_allclose(cn, rcn, rtol=rtol, atol=atol)
    else:
        assert cn is None
    # Inference (no workspace) gives the same bits as training.
    yi, hni, _ = rnn.rnn_forward(mode, d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                 d["h0"], d["c0"], reverse=reverse)
    assert np.array_equal(yi, y) and np.array_equal(hni, hn)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dhn = rng.standard_normal(hn.shape).astype(dtype)
    dcn = rng.standard_normal(hn.shape).astype(dtype) if mode == "LSTM" else None
    got = rnn.rnn_backward(mode, d["x"], d["w_ih"], d["w_hh"], y, d["h0"], d["c0"], ws, dy,
                           dhn, dcn, reverse=reverse)
    want = R.rnn_layer_backward(cache, dy.astype(np.float64), dhn.astype(np.float64),
                                None if dcn is None else dcn.astype(np.float64))
    names = ["d_x", "d_h0", "d_c0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, name
            continue
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * 10 if dtype == np.float32
                                   else atol, err_msg=name)


def test_layer_kernel_accumulates_grads_and_dx(rng):
    d = _layer_data(rng, "LSTM", 4, 3, 5, 6, np.float64)
    args = (d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"], d["h0"], d["c0"])
    ws = np.empty(rnn.workspace_size("LSTM", 4, 3, 6))
    dy = rng.standard_normal((4, 3, 6))
    y, _, _ = rnn.rnn_forward("LSTM", *args, workspace=ws)
    fresh = rnn.rnn_backward("LSTM", d["x"], d["w_ih"], d["w_hh"], y, d["h0"], d["c0"], ws, dy)
    x, w_ih, w_hh, b_ih, b_hh = d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"]
    bufs = [np.ones_like(a) for a in (x, w_ih, w_hh, b_ih, b_hh)]
    y, _, _ = rnn.rnn_forward("LSTM", *args, workspace=ws)
    acc = rnn.rnn_backward("LSTM", x, w_ih, w_hh, y, d["h0"], d["c0"], ws, dy,
                           d_x=bufs[0], grad_w_ih=bufs[1], grad_w_hh=bufs[2],
                           grad_b_ih=bufs[3], grad_b_hh=bufs[4])
    # d_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh are the passed arrays, += into.
    for buf, got, want in zip(bufs, acc[:1] + acc[3:], fresh[:1] + fresh[3:]):
        assert got is buf
        np.testing.assert_allclose(got, want + 1, rtol=1e-12, atol=1e-12)


def test_layer_kernel_no_bias_and_no_input_grad(rng):
    d = _layer_data(rng, "GRU", 3, 2, 4, 5, np.float64, bias=False)
    ws = np.empty(rnn.workspace_size("GRU", 3, 2, 5))
    y, hn, _ = rnn.rnn_forward("GRU", d["x"], d["w_ih"], d["w_hh"], h0=d["h0"], workspace=ws)
    ry, _, _, cache = R.rnn_layer_forward("GRU", d["x"], d["w_ih"], d["w_hh"], h0=d["h0"])
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dh0, _, gwi, gwh, gbi, gbh = rnn.rnn_backward(
        "GRU", d["x"], d["w_ih"], d["w_hh"], y, d["h0"], None, ws, dy, bias=False,
        input_grad=False)
    want = R.rnn_layer_backward(cache, dy)
    assert dx is None and gbi is None and gbh is None
    np.testing.assert_allclose(dh0, want[1], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(gwh, want[4], rtol=1e-11, atol=1e-12)


def test_layer_kernel_bad_arguments(rng):
    d = _layer_data(rng, "LSTM", 3, 2, 4, 5, np.float32)
    with pytest.raises(ValueError, match="mode"):
        rnn.rnn_forward("ELMAN", d["x"], d["w_ih"], d["w_hh"])
    with pytest.raises(ValueError, match="w_ih"):
        rnn.rnn_forward("LSTM", d["x"], d["w_ih"][:, :3], d["w_hh"])
    with pytest.raises(ValueError, match="w_hh"):
        rnn.rnn_forward("GRU", d["x"], d["w_ih"], d["w_hh"])
    with pytest.raises(ValueError, match="h0"):
        rnn.rnn_forward("LSTM", d["x"], d["w_ih"], d["w_hh"], h0=np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        rnn.rnn_forward("LSTM", d["x"].astype(np.float16), d["w_ih"], d["w_hh"])
    with pytest.raises(TypeError, match="dtype"):
        rnn.rnn_forward("LSTM", d["x"], d["w_ih"].astype(np.float64), d["w_hh"])
    with pytest.raises(ValueError, match="workspace"):
        rnn.rnn_forward("LSTM", d["x"], d["w_ih"], d["w_hh"], workspace=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        rnn.rnn_forward("LSTM", d["x"][:0], d["w_ih"], d["w_hh"])
    with pytest.raises(ValueError, match="out"):
        rnn.rnn_forward("LSTM", d["x"], d["w_ih"], d["w_hh"],
                        out=np.empty((3, 2, 5), np.float32), out_offset=2)


# -- module level ------------------------------------------------------------------

def _module(cls, kw, dtype, **extra):
    pe.manual_seed(0)
    return cls(extra.pop("input_size", 4), extra.pop("hidden_size", 5), dtype=dtype,
               **kw, **extra)


def _params(m):
    return {n: p.data for n, p in m.named_parameters()}


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (1, True), (2, False),
                                                      (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given_states", [False, True])
def test_module_matches_reference(cls, kw, mode, num_layers, bidirectional, batch_first,
                                  given_states, rng):
    dtype = np.float64
    m = _module(cls, kw, dtype, num_layers=num_layers, bidirectional=bidirectional,
                batch_first=batch_first)
    T, B, H, D = 4, 3, 5, 2 if bidirectional else 1
    x = rng.standard_normal((T, B, 4))
    h0 = rng.standard_normal((num_layers * D, B, H)) if given_states else None
    c0 = rng.standard_normal((num_layers * D, B, H)) if given_states else None
    hx = None if not given_states else ((h0, c0) if mode == "LSTM" else h0)
    xin = x.transpose(1, 0, 2).copy() if batch_first else x
    out, hn = m(xin, hx)
    ry, rhn, rcn, cache = R.rnn_forward(mode, x, _params(m), num_layers, bidirectional, h0,
                                        c0 if mode == "LSTM" else None)
    rout = ry.transpose(1, 0, 2) if batch_first else ry
    np.testing.assert_allclose(out, rout, rtol=1e-11, atol=1e-12)
    if mode == "LSTM":
        hn, cn = hn
        np.testing.assert_allclose(cn, rcn, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(hn, rhn, rtol=1e-11, atol=1e-12)

    g = rng.standard_normal(out.shape)
    dhn = rng.standard_normal(hn.shape)
    dcn = rng.standard_normal(hn.shape)
    m.zero_grad()
    dx = m.backward(g, (dhn, dcn) if mode == "LSTM" else dhn)
    gseq = g.transpose(1, 0, 2) if batch_first else g
    rdx, rdh0, rdc0, rgrads = R.rnn_backward(cache, gseq, dhn,
                                             dcn if mode == "LSTM" else None)
    np.testing.assert_allclose(dx, rdx.transpose(1, 0, 2) if batch_first else rdx,
                               rtol=1e-10, atol=1e-11)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, rgrads[name], rtol=1e-10, atol=1e-11, err_msg=name)
    if mode == "LSTM":
        np.testing.assert_allclose(m.grad_hx[0], rdh0, rtol=1e-10, atol=1e-11)
        np.testing.assert_allclose(m.grad_hx[1], rdc0, rtol=1e-10, atol=1e-11)
    else:
        np.testing.assert_allclose(m.grad_hx, rdh0, rtol=1e-10, atol=1e-11)


def test_module_float32_matches_reference(rng):
    m = _module(pe.LSTM, {}, np.float32, num_layers=2, bidirectional=True)
    x = rng.standard_normal((6, 2, 4)).astype(np.float32)
    out, (hn, cn) = m(x)
    params64 = {k: v.astype(np.float64) for k, v in _params(m).items()}
    ry, rhn, rcn, cache = R.rnn_forward("LSTM", x.astype(np.float64), params64, 2, True)
    rtol, atol = tol(np.float32)
    np.testing.assert_allclose(out, ry, rtol=rtol, atol=atol)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx = m.backward(g)
    rdx, _, _, rgrads = R.rnn_backward(cache, g.astype(np.float64))
    np.testing.assert_allclose(dx, rdx, rtol=rtol, atol=atol)
    for name, p in m.named_parameters():
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad, rgrads[name], rtol=rtol, atol=10 * atol,
                                   err_msg=name)


class _AllOutputs(pe.Module):
    """Exposes output, h_n (and c_n) of a recurrent layer as one flat array for gradcheck."""

    def __init__(self, layer, hx=None, seed=None):
        super().__init__()
        self.layer = layer
        self.hx = hx
        self.seed = seed

    def forward(self, x):
        if self.seed is not None:
            pe.manual_seed(self.seed)  # the same dropout mask on every call
        out, hn = self.layer(x, self.hx)
        parts = [out, *hn] if isinstance(hn, tuple) else [out, hn]
        self.shapes = [p.shape for p in parts]
        return np.concatenate([p.ravel() for p in parts])

    def backward(self, grad_out, input_grad=True):
        sizes = np.cumsum([int(np.prod(s)) for s in self.shapes])[:-1]
        parts = [p.reshape(s) for p, s in zip(np.split(grad_out, sizes), self.shapes)]
        d_hn = tuple(parts[1:]) if len(parts) == 3 else parts[1]
        return self.layer.backward(parts[0], d_hn, input_grad=input_grad)


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_module_gradcheck(cls, kw, mode, bidirectional, rng):
    m = _module(cls, kw, np.float64, input_size=3, hidden_size=3, num_layers=2,
                bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    h0 = rng.standard_normal((2 * D, 2, 3))
    hx = (h0, rng.standard_normal((2 * D, 2, 3))) if mode == "LSTM" else h0
    x = rng.standard_normal((3, 2, 3))
    pe.gradcheck(_AllOutputs(m, hx), x)


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
def test_initial_state_gradient(cls, kw, mode, rng):
    m = _module(cls, kw, np.float64, input_size=3, hidden_size=4, num_layers=2,
                bidirectional=True)
    x = rng.standard_normal((3, 2, 3))
    h0 = rng.standard_normal((4, 2, 4))
    c0 = rng.standard_normal((4, 2, 4))

    def run(h, c):
        out, hn = m(x, (h, c) if mode == "LSTM" else h)
        return out

    def grads(w, h, c):
        run(h, c)
        m.backward(w)
        return m.grad_hx if mode == "LSTM" else (m.grad_hx, None)

    pe.gradcheck(run, (h0, c0), grad_fn=grads)


def test_gradcheck_with_interlayer_dropout(rng):
    m = _module(pe.GRU, {}, np.float64, input_size=3, hidden_size=3, num_layers=3,
                dropout=0.5)
    x = rng.standard_normal((3, 2, 3))
    pe.gradcheck(_AllOutputs(m, seed=3), x)
    # Dropout is active in training only.
    pe.manual_seed(3)
    train_out, _ = m(x)
    m.eval()
    eval_out, _ = m(x)
    ref, _, _, _ = R.rnn_forward("GRU", x, _params(m), 3)
    np.testing.assert_allclose(eval_out, ref, rtol=1e-11, atol=1e-12)
    assert not np.allclose(train_out, eval_out)


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
def test_unbatched_input(cls, kw, mode, rng):
    m = _module(cls, kw, np.float64, bidirectional=True)
    x = rng.standard_normal((4, 4))
    out, hn = m(x)
    out3, hn3 = m(x[:, None, :])
    assert out.shape == (4, 10)
    np.testing.assert_array_equal(out, out3[:, 0])
    hn, hn3 = (hn[0], hn3[0]) if mode == "LSTM" else (hn, hn3)
    np.testing.assert_array_equal(hn, hn3[:, 0])
    g = rng.standard_normal(out.shape)
    m(x)
    dx = m.backward(g)
    m(x[:, None, :])
    dx3 = m.backward(g[:, None, :])
    np.testing.assert_array_equal(dx, dx3[:, 0])


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
def test_torch_same_outputs_and_grads(cls, kw, mode, rng):
    torch = pytest.importorskip("torch")
    tcls = {"RNN_TANH": torch.nn.RNN, "RNN_RELU": torch.nn.RNN, "LSTM": torch.nn.LSTM,
            "GRU": torch.nn.GRU}[mode]
    for num_layers, bidirectional, batch_first in [(1, False, False), (2, True, True)]:
        m = _module(cls, kw, np.float32, input_size=6, hidden_size=13, num_layers=num_layers,
                    bidirectional=bidirectional, batch_first=batch_first)
        t = tcls(6, 13, num_layers=num_layers, bidirectional=bidirectional,
                 batch_first=batch_first, **kw)
        t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
        D = 2 if bidirectional else 1
        x = rng.standard_normal((5, 3, 6) if not batch_first else (3, 5, 6)).astype(np.float32)
        h0 = rng.standard_normal((num_layers * D, 3, 13)).astype(np.float32)
        c0 = rng.standard_normal((num_layers * D, 3, 13)).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        h0t = torch.from_numpy(h0).requires_grad_()
        c0t = torch.from_numpy(c0).requires_grad_()
        if mode == "LSTM":
            out, (hn, cn) = m(x, (h0, c0))
            tout, (thn, tcn) = t(xt, (h0t, c0t))
        else:
            out, hn = m(x, h0)
            tout, thn = t(xt, h0t)
        rtol, atol = tol(np.float32)
        np.testing.assert_allclose(out, tout.detach().numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(hn, thn.detach().numpy(), rtol=rtol, atol=atol)
        g = rng.standard_normal(out.shape).astype(np.float32)
        dhn = rng.standard_normal(hn.shape).astype(np.float32)
        loss = (tout * torch.from_numpy(g)).sum() + (thn * torch.from_numpy(dhn)).sum()
        if mode == "LSTM":
            np.testing.assert_allclose(cn, tcn.detach().numpy(), rtol=rtol, atol=atol)
            dcn = rng.standard_normal(cn.shape).astype(np.float32)
            loss = loss + (tcn * torch.from_numpy(dcn)).sum()
            dx = m.backward(g, (dhn, dcn))
        else:
            dx = m.backward(g, dhn)
        loss.backward()
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=rtol, atol=atol)
        dh0 = m.grad_hx[0] if mode == "LSTM" else m.grad_hx
        np.testing.assert_allclose(dh0, h0t.grad.numpy(), rtol=rtol, atol=atol)
        if mode == "LSTM":
            np.testing.assert_allclose(m.grad_hx[1], c0t.grad.numpy(), rtol=rtol, atol=atol)
        tparams = dict(t.named_parameters())
        for name, p in m.named_parameters():
            np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=rtol,
                                       atol=10 * atol, err_msg=name)


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
def test_threads_bitwise_identical(cls, kw, mode, rng):
    # Batch 64 and hidden 256: several batch chunks per step, bias-grad blocks
    # summed in parallel.
    m = _module(cls, kw, np.float32, input_size=16, hidden_size=256, bidirectional=True)
    x = rng.standard_normal((8, 64, 16)).astype(np.float32)
    g = rng.standard_normal((8, 64, 512)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        pe.set_num_threads(threads)
        m.zero_grad()
        out, hn = m(x)
        dx = m.backward(g)
        results.append([out, dx] + [p.grad.copy() for p in m.parameters()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["LSTM", "RNN_TANH"])
def test_fused_input_steps_threads_identical(mode, rng):
    # Batch 32, hidden 128: the input projection runs inside each step's GEMM,
    # the steps cut in two chunks of batch rows.
    T, B, I, H = 4, 32, 20, 128
    d = _layer_data(rng, mode, T, B, I, H, np.float32)
    d["w_hh"] *= 0.1
    d["w_ih"] *= 0.3
    ry, rhn, _, cache = _reference_forward(mode, d)
    dy = rng.standard_normal(ry.shape).astype(np.float32)
    want = R.rnn_layer_backward(cache, dy.astype(np.float64))
    rtol, atol = tol(np.float32)
    results = []
    for threads in (1, 2, 3):
        pe.set_num_threads(threads)
        ws = np.empty(rnn.workspace_size(mode, T, B, H), np.float32)
        y, hn, _ = rnn.rnn_forward(mode, d["x"], d["w_ih"], d["w_hh"], d["b_ih"], d["b_hh"],
                                   d["h0"], d["c0"], workspace=ws)
        np.testing.assert_allclose(y, ry, rtol=rtol, atol=atol)
        got = rnn.rnn_backward(mode, d["x"], d["w_ih"], d["w_hh"], y, d["h0"], d["c0"], ws,
                               dy)
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, rtol=rtol, atol=10 * atol)
        results.append([y, hn] + [g for g in got if g is not None])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


# Batch < 4, float32: the forward steps split the hidden units among the threads
# once each thread's share of W_hh is >= 96 KB; these shapes split at 2 and 3
# threads, with hidden sizes that are not multiples of 8 (and 4), T = 1 included
# (T = 80: the input projection as two chunks of hidden units in the same
# region; T * B < 4 takes it by GEMV).
@pytest.mark.parametrize("mode,T,B,I,H", [("LSTM", 7, 1, 5, 113), ("LSTM", 1, 1, 3, 128),
                                          ("LSTM", 80, 1, 64, 113),
                                          ("LSTM", 3, 3, 4, 70), ("GRU", 5, 2, 3, 101),
                                          ("RNN_TANH", 4, 1, 3, 230),
                                          ("RNN_RELU", 2, 1, 3, 230)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
def test_small_batch_steps_split_threads_identical(mode, T, B, I, H, dtype, reverse, rng):
    d = _layer_data(rng, mode, T, B, I, H, dtype)
    d["w_hh"] *= 0.2
    ry, rhn, rcn, cache = _reference_forward(mode, d, reverse)
    dy = rng.standard_normal(ry.shape).astype(dtype)
    want = R.rnn_layer_backward(cache, dy.astype(np.float64))
    rtol, atol = tol(dtype)
    results = []
    for threads in (1, 2, 3):
        pe.set_num_threads(threads)
        ws = np.empty(rnn.workspace_size(mode, T, B, H), dtype)
        y, hn, cn = rnn.rnn_forward(mode, d["x"], d["w_ih"], d["w_hh"], d["b_ih"],
                                    d["b_hh"], d["h0"], d["c0"], reverse=reverse,
                                    workspace=ws)
        yi, hni, cni = rnn.rnn_forward(mode, d["x"], d["w_ih"], d["w_hh"], d["b_ih"],
                                       d["b_hh"], d["h0"], d["c0"], reverse=reverse)
        assert np.array_equal(yi, y) and np.array_equal(hni, hn)
        np.testing.assert_allclose(y, ry, rtol=rtol, atol=atol)
        np.testing.assert_allclose(hn, rhn, rtol=rtol, atol=atol)
        got = rnn.rnn_backward(mode, d["x"], d["w_ih"], d["w_hh"], y, d["h0"], d["c0"],
                               ws, dy, reverse=reverse)
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, rtol=rtol, atol=10 * atol)
        results.append([y, hn] + ([cn] if mode == "LSTM" else [])
                       + [g for g in got if g is not None])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("mode,H", [("LSTM", 200), ("GRU", 256), ("RNN_TANH", 400)])
def test_small_batch_steps_oversubscribed_threads_identical(mode, H, rng):
    # More threads than chunks (and than cores here): the threads that own no
    # chunk, or whose owner is off its core, take tasks late (the stealing
    # path); the bits stay those of one thread.
    d = _layer_data(rng, mode, 60, 1, 16, H, np.float32)
    d["w_hh"] *= 0.2
    results = []
    for threads in (1, 8, 3):
        pe.set_num_threads(threads)
        results.append(rnn.rnn_forward(mode, d["x"], d["w_ih"], d["w_hh"], d["b_ih"],
                                       d["b_hh"], d["h0"], d["c0"]))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert (a is None and b is None) or np.array_equal(a, b)


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
@pytest.mark.parametrize("layout", ["seq_first", "batch_first", "unbatched"])
@pytest.mark.parametrize("given_states", [False, True])
def test_no_grad_single_layer_path_same_as_training(cls, kw, mode, layout, given_states,
                                                     rng):
    # One layer and direction under no_grad takes a shorter path (the kernel
    # allocates outputs and zero states): same values, shapes and dtypes.
    m = _module(cls, kw, np.float32, batch_first=layout == "batch_first")
    shape = {"seq_first": (4, 3, 4), "batch_first": (3, 4, 4), "unbatched": (4, 4)}[layout]
    x = rng.standard_normal(shape).astype(np.float32)
    hx = None
    if given_states:
        sshape = (1, 5) if layout == "unbatched" else (1, 3, 5)
        h = rng.standard_normal(sshape).astype(np.float32)
        hx = (h, rng.standard_normal(sshape).astype(np.float32)) if mode == "LSTM" else h
    want = m(x, hx)
    with pe.no_grad():
        got = m(x, hx)
    flat = lambda r: [r[0], *r[1]] if mode == "LSTM" else list(r)
    for g, w in zip(flat(got), flat(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.array_equal(g, w)


def test_parameter_names_shapes_and_init():
    pe.manual_seed(0)
    m = pe.GRU(10, 20, num_layers=2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l0_reverse"]
    assert len(names) == 16
    assert m.weight_ih_l0.shape == (60, 10) and m.weight_ih_l1.shape == (60, 40)
    assert m.weight_hh_l1_reverse.shape == (60, 20) and m.bias_hh_l1.shape == (60,)
    k = 1 / np.sqrt(20)
    for _, p in m.named_parameters():
        assert p.dtype == np.float32 and np.all(np.abs(p.data) <= k)
    big = pe.LSTM(3, 400).weight_hh_l0.data
    assert big.min() < -0.9 * 0.05 and big.max() > 0.9 * 0.05   # U(-1/20, 1/20)
    assert "bias_ih_l0" not in dict(pe.RNN(3, 4, bias=False).named_parameters())
    assert "LSTM(10, 20, num_layers=2, bidirectional=True)" == repr(
        pe.LSTM(10, 20, num_layers=2, bidirectional=True))


def test_state_dict_roundtrip(rng):
    a = _module(pe.LSTM, {}, np.float32, num_layers=2)
    pe.manual_seed(5)
    b = pe.LSTM(4, 5, num_layers=2)
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    assert np.array_equal(a(x)[0], b(x)[0])


@pytest.mark.parametrize("cls,kw,mode", CLASSES)
def test_bad_inputs_raise_clear_errors(cls, kw, mode, rng):
    m = _module(cls, kw, np.float32)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="input_size. Expected 4, got 6"):
        m(rng.standard_normal((3, 2, 6)).astype(np.float32))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        m(x[None])
    with pytest.raises(TypeError, match="float"):
        m(x.astype(np.int32))
    with pytest.raises(TypeError, match="dtype"):
        m(x.astype(np.float16))
    bad_h = np.zeros((1, 3, 5), np.float32)
    with pytest.raises(ValueError, match=r"h_0|hx"):
        m(x, (bad_h, bad_h) if mode == "LSTM" else bad_h)
    if mode == "LSTM":
        with pytest.raises(TypeError, match="tuple"):
            m(x, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(RuntimeError, match="without a forward"):
        _module(cls, kw, np.float32).backward(np.zeros((3, 2, 5), np.float32))
    with pe.no_grad():
        m(x)
    with pytest.raises(RuntimeError, match="without a forward"):
        m.backward(np.zeros((3, 2, 5), np.float32))
    m(x)
    with pytest.raises(ValueError, match="grad_out"):
        m.backward(np.zeros((3, 2, 6), np.float32))
    with pytest.raises(ValueError, match="hidden_size"):
        cls(4, 0, **kw)


def test_rnn_rejects_unknown_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity"):
        pe.RNN(3, 4, nonlinearity="sigmoid")


def test_backward_without_input_grad_and_grad_accumulation(rng):
    m = _module(pe.LSTM, {}, np.float64, num_layers=2)
    x = rng.standard_normal((3, 2, 4))
    g = rng.standard_normal((3, 2, 5))
    m(x)
    assert m.backward(g, input_grad=False) is None
    first = [p.grad.copy() for p in m.parameters()]
    m(x)
    m.backward(g)
    for p, f in zip(m.parameters(), first):
        np.testing.assert_allclose(p.grad, 2 * f, rtol=1e-12, atol=1e-14)


def test_saturated_gates_stay_finite(rng):
    m = _module(pe.LSTM, {}, np.float32)
    for p in m.parameters():
        p.data *= 200
    x = (rng.standard_normal((5, 2, 4)) * 100).astype(np.float32)
    out, (hn, cn) = m(x)
    dx = m.backward(np.ones_like(out))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    assert np.all(np.abs(out) <= 1)


def test_non_contiguous_input_is_copied_not_misread(rng):
    m = _module(pe.GRU, {}, np.float64, input_size=4, batch_first=True)
    wide = rng.standard_normal((2, 5, 8))
    x = wide[:, :, ::2]
    assert not x.flags.c_contiguous
    out, hn = m(x)
    out_c, hn_c = m(np.ascontiguousarray(x))
    assert np.array_equal(out, out_c) and np.array_equal(hn, hn_c)
    d = rnn.rnn_forward("RNN_TANH", rng.standard_normal((3, 2, 8))[:, :, ::2],
                        rng.standard_normal((5, 4)), rng.standard_normal((10, 5))[::2])
    assert d[0].shape == (3, 2, 5)
