"""Recurrent layers RNN, LSTM and GRU on the engine's rnn kernels, as torch.nn.

Each layer and direction is one nogil engine call for the whole sequence, so
no Python runs per time step.
"""

import math

import numpy as np

from engine import dropout as _dropout
from engine import rnn as _k
from pyengine import _random, init
from pyengine.module import Module, Parameter, is_grad_enabled

__all__ = ["RNN", "LSTM", "GRU"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


class _RNNBase(Module):
    """Shared machinery of RNN, LSTM and GRU (torch's RNNBase)."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32):
        super().__init__()
        self.mode = mode
        self.input_size = _check_int(input_size, "input_size", 1)
        self.hidden_size = _check_int(hidden_size, "hidden_size", 1)
        self.num_layers = _check_int(num_layers, "num_layers", 1)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1]. Received: dropout={dropout!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        G, H = _GATES[mode], self.hidden_size
        D = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else H * D
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                setattr(self, "weight_ih" + sfx, Parameter(np.empty((G * H, layer_in), dtype)))
                setattr(self, "weight_hh" + sfx, Parameter(np.empty((G * H, H), dtype)))
                if self.bias:
                    setattr(self, "bias_ih" + sfx, Parameter(np.empty(G * H, dtype)))
                    setattr(self, "bias_hh" + sfx, Parameter(np.empty(G * H, dtype)))
        self._cache = None
        self._workspaces = {}
        self.grad_hx = None
        self.reset_parameters()

    def reset_parameters(self):
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as torch."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p.data, -k, k)

    # -- helpers ---------------------------------------------------------
    @property
    def _num_directions(self):
        return 2 if self.bidirectional else 1

    def _layer_params(self, layer, d):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        get = self._parameters.get
        return (get("weight_ih" + sfx), get("weight_hh" + sfx), get("bias_ih" + sfx),
                get("bias_hh" + sfx))

    def _state_shape(self, batch, unbatched):
        L, H = self.num_layers * self._num_directions, self.hidden_size
        return (L, H) if unbatched else (L, batch, H)

    def _check_state(self, h, name, batch, unbatched, dtype):
        want = self._state_shape(batch, unbatched)
        h = np.asarray(h)
        if h.shape != want:
            raise ValueError(f"{type(self).__name__}: expected {name} of shape {want} "
                             f"(num_layers * num_directions, batch, hidden_size), got {h.shape}")
        if h.dtype != dtype:
            raise TypeError(f"{type(self).__name__}: {name} dtype {h.dtype} does not match "
                            f"the input's {dtype}")
        return h if not unbatched else h[:, None, :]

    def _workspace(self, key, size, dtype):
        ws = self._workspaces.get(key)
        if ws is None or ws.size < size or ws.dtype != dtype:
            ws = np.empty(size, dtype)
            self._workspaces[key] = ws
        return ws

    @staticmethod
    def _grad_of(p):
        """p.grad, re-created if p.data was replaced by an array of another dtype/shape."""
        if p.grad is None or p.grad.shape != p.data.shape or p.grad.dtype != p.data.dtype:
            p.grad = np.zeros_like(p.data)
        return p.grad

    # -- forward ---------------------------------------------------------
    def forward(self, x, hx=None):
        """Run the whole sequence.

        Args:
            x: (T, B, input_size) float array ((B, T, input_size) with
                batch_first=True), or unbatched (T, input_size).
            hx: initial hidden state (num_layers * num_directions, B,
                hidden_size), zeros when None; for the LSTM a tuple (h0, c0).

        Returns:
            (output, h_n); the LSTM returns (output, (h_n, c_n)). output is
            (T, B, num_directions * hidden_size) (batch-first if asked).
        """
        name = type(self).__name__
        x = np.asarray(x)
        dtype = self.weight_ih_l0.data.dtype
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: input must be a float array, got dtype {x.dtype}")
        if x.dtype != dtype:
            raise TypeError(f"{name}: input dtype {x.dtype} does not match the layer's "
                            f"parameters ({dtype})")
        if x.ndim not in (2, 3):
            raise ValueError(f"{name}: expected a 2-D (unbatched) or 3-D input, got shape "
                             f"{x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                             f"{self.input_size}, got {x.shape[-1]}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        x = np.ascontiguousarray(x)
        T, B, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"{name}: expected a non-empty sequence and batch, got input "
                             f"shape {x.shape}")
        L, D, H = self.num_layers, self._num_directions, self.hidden_size
        is_lstm = self.mode == "LSTM"
        h0 = c0 = None
        if hx is not None:
            if is_lstm:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("LSTM: hx must be a tuple (h_0, c_0)")
                h0 = self._check_state(hx[0], "h_0", B, unbatched, dtype)
                c0 = self._check_state(hx[1], "c_0", B, unbatched, dtype)
            else:
                h0 = self._check_state(hx, "hx", B, unbatched, dtype)
        keep = is_grad_enabled()
        if not keep and L == 1 and D == 1:
            # One layer and direction, inference (a batch-1 streaming call is
            # ~0.5 ms): the kernel allocates the outputs and the zero states,
            # which saves the general path's copies and checks (~15 us).
            self._cache = None
            w_ih, w_hh, b_ih, b_hh = self._layer_params(0, 0)
            output, hk, ck = _k.rnn_forward(
                self.mode, x, w_ih.data, w_hh.data,
                None if b_ih is None else b_ih.data, None if b_hh is None else b_hh.data,
                None if h0 is None else h0[0], None if c0 is None else c0[0])
            return self._finish(output, hk[None], None if ck is None else ck[None],
                                unbatched)
        if h0 is None:
            h0 = np.zeros((L * D, B, H), dtype)
        if is_lstm and c0 is None:
            c0 = np.zeros((L * D, B, H), dtype)

        drop = self.training and self.dropout > 0 and L > 1
        inputs, outputs, workspaces, masks = [], [], [], []
        h_n = np.empty((L * D, B, H), dtype)
        c_n = np.empty((L * D, B, H), dtype) if is_lstm else None
        layer_in = x
        for layer in range(L):
            out = np.empty((T, B, D * H), dtype)
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = self._layer_params(layer, d)
                ws = None
                if keep:
                    ws = self._workspace(k, _k.workspace_size(self.mode, T, B, H), dtype)
                    workspaces.append(ws)
                _, hk, ck = _k.rnn_forward(
                    self.mode, layer_in, w_ih.data, w_hh.data,
                    None if b_ih is None else b_ih.data, None if b_hh is None else b_hh.data,
                    h0[k], None if c0 is None else c0[k], reverse=bool(d), out=out,
                    out_offset=d * H, workspace=ws)
                h_n[k] = hk
                if is_lstm:
                    c_n[k] = ck
            inputs.append(layer_in)
            outputs.append(out)
            layer_in = out
            if drop and layer < L - 1:
                # Inter-layer dropout: the engine's counter-based kernel (same
                # seed, same mask for any thread count), as pe.Dropout.
                layer_in, mask = _dropout.dropout(out, self.dropout, _random.next_seed())
                masks.append(mask)
        self._cache = None
        if keep:
            self._cache = {"inputs": inputs, "outputs": outputs, "workspaces": workspaces,
                           "masks": masks, "h0": h0, "c0": c0, "unbatched": unbatched,
                           "shape": (T, B)}
        return self._finish(outputs[-1], h_n, c_n, unbatched)

    def _finish(self, output, h_n, c_n, unbatched):
        """forward's return value from the (T, B, D*H) output and final states."""
        if unbatched:
            output, h_n = output[:, 0, :], h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        elif self.batch_first:
            output = np.ascontiguousarray(output.transpose(1, 0, 2))
        return (output, (h_n, c_n)) if self.mode == "LSTM" else (output, h_n)

    # -- backward --------------------------------------------------------
    def backward(self, grad_out, d_hn=None, input_grad=True):
        """Backward through time of the last forward.

        Args:
            grad_out: gradient of `output` (same shape), or None for zeros.
            d_hn: gradient of h_n, or None; for the LSTM a tuple (d_hn, d_cn)
                (either may be None) or just d_hn.
            input_grad: False skips the input gradient (returns None).

        Returns the gradient of the input; parameter gradients are
        accumulated into ``.grad``; the initial state's gradient is left in
        ``self.grad_hx`` (for the LSTM a tuple (d_h0, d_c0)).
        """
        cache = self._saved("_cache")
        name = type(self).__name__
        T, B = cache["shape"]
        unbatched = cache["unbatched"]
        L, D, H = self.num_layers, self._num_directions, self.hidden_size
        dtype = cache["inputs"][0].dtype
        is_lstm = self.mode == "LSTM"
        out_shape = (T, D * H) if unbatched else ((B, T, D * H) if self.batch_first
                                                  else (T, B, D * H))
        if grad_out is None:
            g = np.zeros((T, B, D * H), dtype)
        else:
            g = np.asarray(grad_out)
            if g.shape != out_shape:
                raise ValueError(f"{name}.backward: grad_out must have the output's shape "
                                 f"{out_shape}, got {g.shape}")
            g = g.astype(dtype, copy=False)
            if unbatched:
                g = g[:, None, :]
            elif self.batch_first:
                g = g.transpose(1, 0, 2)
            g = np.ascontiguousarray(g)
        d_hn_arr = d_cn_arr = None
        if is_lstm and isinstance(d_hn, (tuple, list)):
            d_hn, d_cn = d_hn
            if d_cn is not None:
                d_cn_arr = self._check_state(d_cn, "d_cn", B, unbatched, dtype)
        if d_hn is not None:
            d_hn_arr = self._check_state(np.asarray(d_hn).astype(dtype, copy=False), "d_hn",
                                         B, unbatched, dtype)
        self._cache = None  # the workspaces are consumed below

        d_h0 = np.empty((L * D, B, H), dtype)
        d_c0 = np.empty((L * D, B, H), dtype) if is_lstm else None
        for layer in range(L - 1, -1, -1):
            want_dx = layer > 0 or input_grad
            d_in = None
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = self._layer_params(layer, d)
                d_in, dh0, dc0, *_ = _k.rnn_backward(
                    self.mode, cache["inputs"][layer], w_ih.data, w_hh.data,
                    cache["outputs"][layer], cache["h0"][k],
                    None if cache["c0"] is None else cache["c0"][k],
                    cache["workspaces"][k], g,
                    None if d_hn_arr is None else d_hn_arr[k],
                    None if d_cn_arr is None else d_cn_arr[k],
                    reverse=bool(d), out_offset=d * H, bias=self.bias, d_x=d_in,
                    input_grad=want_dx, grad_w_ih=self._grad_of(w_ih),
                    grad_w_hh=self._grad_of(w_hh),
                    grad_b_ih=None if b_ih is None else self._grad_of(b_ih),
                    grad_b_hh=None if b_hh is None else self._grad_of(b_hh))
                d_h0[k] = dh0
                if is_lstm:
                    d_c0[k] = dc0
            g = d_in
            if layer > 0 and cache["masks"]:
                g = _dropout.dropout_grad(g, cache["masks"][layer - 1], self.dropout)
        if unbatched:
            d_h0 = d_h0[:, 0, :]
            d_c0 = None if d_c0 is None else d_c0[:, 0, :]
        self.grad_hx = (d_h0, d_c0) if is_lstm else d_h0
        if not input_grad:
            return None
        if unbatched:
            return g[:, 0, :]
        return np.ascontiguousarray(g.transpose(1, 0, 2)) if self.batch_first else g

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(_RNNBase):
    """Elman RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), as torch.nn.RNN.

    Args:
        input_size, hidden_size: feature sizes.
        num_layers: stacked layers (default 1).
        nonlinearity: 'tanh' (default) or 'relu'.
        bias: use b_ih and b_hh (default True).
        batch_first: input/output (B, T, F) instead of (T, B, F).
        dropout: dropout on the outputs of every layer but the last (training).
        bidirectional: add a reverse-direction layer (outputs concatenated).
        dtype: float32 (default) or float64.

    Shape: input (T, B, input_size) -> output (T, B, D * hidden_size),
    h_n (num_layers * D, B, hidden_size), D = 2 if bidirectional else 1.
    Parameters: weight_ih_l{k} (hidden, in), weight_hh_l{k} (hidden, hidden),
    bias_ih_l{k}, bias_hh_l{k} (hidden,), plus ..._reverse.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh",
                 bias=True, batch_first=False, dropout=0.0, bidirectional=False,
                 dtype=np.float32):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' "
                             "or 'relu'.")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size,
                         hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class LSTM(_RNNBase):
    """Long short-term memory layer(s), as torch.nn.LSTM (gates i, f, g, o).

    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t).
    Arguments, shapes and parameter names as RNN, with 4*hidden_size gate rows;
    forward(x, (h0, c0)) returns (output, (h_n, c_n)).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype)


class GRU(_RNNBase):
    """Gated recurrent unit layer(s), as torch.nn.GRU (gates r, z, n).

    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h.
    Arguments, shapes and parameter names as RNN, with 3*hidden_size gate rows.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype)
