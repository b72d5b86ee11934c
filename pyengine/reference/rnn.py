"""Recurrent layers and the embedding lookup in plain NumPy: per-timestep loops.

Equations as in PyTorch's documentation (gate order LSTM i, f, g, o; GRU r, z, n):

    RNN : h' = act(W_ih x + b_ih + W_hh h + b_hh)
    LSTM: i, f, g, o = sig, sig, tanh, sig of (W_ih x + b_ih + W_hh h + b_hh)
          c' = f * c + i * g,   h' = o * tanh(c')
    GRU : r = sig(W_ir x + b_ir + W_hr h + b_hr),  z likewise
          n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h

Sequences are (T, B, features). One layer and one direction per call to
``rnn_layer_forward``/``rnn_layer_backward``; ``rnn_forward``/``rnn_backward``
stack layers and directions like torch.nn.RNN/LSTM/GRU (no dropout).
"""

import numpy as np

__all__ = ["rnn_layer_forward", "rnn_layer_backward", "rnn_forward", "rnn_backward",
           "embedding_forward", "embedding_backward"]

MODES = ("RNN_TANH", "RNN_RELU", "LSTM", "GRU")


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def rnn_layer_forward(mode, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None,
                      reverse=False):
    """One layer, one direction. Returns (y, h_n, c_n, cache); c_n is None unless LSTM."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    T, B, _ = x.shape
    H = w_hh.shape[1]
    b_ih = np.zeros(w_ih.shape[0], x.dtype) if b_ih is None else b_ih
    b_hh = np.zeros(w_hh.shape[0], x.dtype) if b_hh is None else b_hh
    h = np.zeros((B, H), x.dtype) if h0 is None else h0
    c = np.zeros((B, H), x.dtype) if c0 is None else c0
    y = np.zeros((T, B, H), x.dtype)
    steps = []
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        gx = x[t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        step = {"t": t, "h_prev": h, "c_prev": c}
        if mode == "RNN_TANH":
            h = np.tanh(gx + gh)
        elif mode == "RNN_RELU":
            h = np.maximum(gx + gh, 0)
        elif mode == "LSTM":
            pre = gx + gh
            i = _sigmoid(pre[:, :H])
            f = _sigmoid(pre[:, H:2 * H])
            g = np.tanh(pre[:, 2 * H:3 * H])
            o = _sigmoid(pre[:, 3 * H:])
            c = f * c + i * g
            h = o * np.tanh(c)
            step.update(i=i, f=f, g=g, o=o, c=c)
        else:
            r = _sigmoid(gx[:, :H] + gh[:, :H])
            z = _sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            hn = gh[:, 2 * H:]
            n = np.tanh(gx[:, 2 * H:] + r * hn)
            h = (1 - z) * n + z * h
            step.update(r=r, z=z, n=n, hn=hn)
        step["h"] = h
        y[t] = h
        steps.append(step)
    cache = {"mode": mode, "x": x, "w_ih": w_ih, "w_hh": w_hh, "steps": steps}
    return y, h, (c if mode == "LSTM" else None), cache


def rnn_layer_backward(cache, dy, d_hn=None, d_cn=None):
    """Backward through time of rnn_layer_forward.

    Returns (dx, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh); d_c0 is None unless LSTM.
    """
    mode, x, w_ih, w_hh = cache["mode"], cache["x"], cache["w_ih"], cache["w_hh"]
    H = w_hh.shape[1]
    B = x.shape[1]
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db_ih, db_hh = np.zeros(w_ih.shape[0], x.dtype), np.zeros(w_hh.shape[0], x.dtype)
    dh_next = np.zeros((B, H), x.dtype) if d_hn is None else d_hn.copy()
    dc_next = np.zeros((B, H), x.dtype) if d_cn is None else d_cn.copy()
    for step in reversed(cache["steps"]):
        t, h_prev, h = step["t"], step["h_prev"], step["h"]
        dh = dy[t] + dh_next
        if mode == "RNN_TANH":
            dgx = dgh = dh * (1 - h * h)
            dh_direct = 0
        elif mode == "RNN_RELU":
            dgx = dgh = dh * (h > 0)
            dh_direct = 0
        elif mode == "LSTM":
            i, f, g, o, c = step["i"], step["f"], step["g"], step["o"], step["c"]
            tc = np.tanh(c)
            do = dh * tc
            dc = dc_next + dh * o * (1 - tc * tc)
            di, df, dg = dc * g, dc * step["c_prev"], dc * i
            dc_next = dc * f
            dgx = dgh = np.concatenate([di * i * (1 - i), df * f * (1 - f),
                                        dg * (1 - g * g), do * o * (1 - o)], axis=1)
            dh_direct = 0
        else:
            r, z, n, hn = step["r"], step["z"], step["n"], step["hn"]
            dn = dh * (1 - z)
            dz = dh * (h_prev - n)
            dn_pre = dn * (1 - n * n)
            dr = dn_pre * hn
            dr_pre = dr * r * (1 - r)
            dz_pre = dz * z * (1 - z)
            dgx = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
            dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
            dh_direct = dh * z
        dx[t] = dgx @ w_ih
        dw_ih += dgx.T @ x[t]
        dw_hh += dgh.T @ h_prev
        db_ih += dgx.sum(axis=0)
        db_hh += dgh.sum(axis=0)
        dh_next = dgh @ w_hh + dh_direct
    return (dx, dh_next, (dc_next if mode == "LSTM" else None),
            dw_ih, dw_hh, db_ih, db_hh)


def _param_names(layer, direction):
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    return [f"{k}{sfx}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def rnn_forward(mode, x, params, num_layers=1, bidirectional=False, h0=None, c0=None):
    """Stacked layers like torch.nn.RNN/LSTM/GRU (seq-first, no dropout).

    params: dict with torch's names (weight_ih_l0, bias_hh_l1_reverse, ...);
    biases may be missing. h0, c0: (num_layers * D, B, H) or None.
    Returns (y, h_n, c_n, cache).
    """
    D = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]
    B = x.shape[1]
    h0 = np.zeros((num_layers * D, B, H), x.dtype) if h0 is None else h0
    c0 = np.zeros((num_layers * D, B, H), x.dtype) if c0 is None else c0
    hn, cn, caches = [], [], []
    inp = x
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            wi, wh, bi, bh = (params.get(k) for k in _param_names(layer, d))
            k = layer * D + d
            y, h, c, cache = rnn_layer_forward(mode, inp, wi, wh, bi, bh, h0[k], c0[k],
                                               reverse=bool(d))
            outs.append(y)
            hn.append(h)
            cn.append(c)
            caches.append(cache)
        inp = np.concatenate(outs, axis=2)
    c_n = np.stack(cn) if mode == "LSTM" else None
    return inp, np.stack(hn), c_n, {"caches": caches, "num_layers": num_layers, "D": D,
                                      "mode": mode}


def rnn_backward(cache, dy, d_hn=None, d_cn=None):
    """Backward of rnn_forward. Returns (dx, d_h0, d_c0, grads by parameter name)."""
    L, D = cache["num_layers"], cache["D"]
    caches = cache["caches"]
    H = caches[0]["w_hh"].shape[1]
    grads, dh0, dc0 = {}, [None] * (L * D), [None] * (L * D)
    g = dy
    for layer in range(L - 1, -1, -1):
        dx = None
        for d in range(D):
            k = layer * D + d
            res = rnn_layer_backward(caches[k], g[:, :, d * H:(d + 1) * H],
                                     None if d_hn is None else d_hn[k],
                                     None if d_cn is None else d_cn[k])
            dx = res[0] if dx is None else dx + res[0]
            dh0[k], dc0[k] = res[1], res[2]
            for name, value in zip(_param_names(layer, d), res[3:]):
                grads[name] = value
        g = dx
    d_c0 = np.stack(dc0) if cache["mode"] == "LSTM" else None
    return g, np.stack(dh0), d_c0, grads


def embedding_forward(weight, indices):
    """out[..., :] = weight[indices[...], :]."""
    return weight[indices]


def embedding_backward(d_out, indices, num_embeddings, padding_idx=None):
    """grad_weight with grad_weight[v] = sum of d_out over positions where indices == v."""
    grad = np.zeros((num_embeddings, d_out.shape[-1]), d_out.dtype)
    flat_ids = np.asarray(indices).reshape(-1)
    flat_d = d_out.reshape(-1, d_out.shape[-1])
    for n, v in enumerate(flat_ids):
        if padding_idx is None or v != padding_idx:
            grad[v] += flat_d[n]
    return grad
