"""Losses in plain NumPy: forward and backward with torch.nn's semantics.

Class losses take (N, C) scores and (N,) integer targets. ``reduction`` is
'mean' (divided by the summed weight of the targets that count), 'sum' or
'none' (one loss per row / element). Backward functions return the gradient
of the reduced loss (for 'none': of ``sum(grad * loss)``).
"""

import numpy as np

__all__ = [
    "cross_entropy_forward", "cross_entropy_backward",
    "nll_forward", "nll_backward",
    "mse_forward", "mse_backward",
    "bce_with_logits_forward", "bce_with_logits_backward",
]


def _log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _class_terms(target, C, weight, ignore_index, dtype):
    """(valid mask, per-row weight w[t] (0 where ignored), class weights)."""
    target = np.asarray(target, dtype=np.int64)
    valid = target != ignore_index
    w = np.ones(C, dtype) if weight is None else np.asarray(weight, dtype)
    safe_t = np.where(valid, target, 0)
    row_w = np.where(valid, w[safe_t], 0).astype(dtype)
    return valid, safe_t, row_w, w


def _reduce(per_row, divisor, reduction):
    if reduction == "none":
        return per_row
    total = float(np.sum(per_row, dtype=np.float64))
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.float64(total) / np.float64(divisor))


def _upstream(per_row_shape, divisor, reduction, grad, dtype):
    if reduction == "none":
        return np.ones(per_row_shape, dtype) if grad is None else np.asarray(grad, dtype)
    if reduction == "sum":
        return np.ones(per_row_shape, dtype)
    return np.full(per_row_shape, 1.0 / divisor if divisor else np.inf, dtype)


def nll_forward(logp, target, weight=None, ignore_index=-100, reduction="mean"):
    N, C = logp.shape
    valid, t, row_w, _ = _class_terms(target, C, weight, ignore_index, logp.dtype)
    per_row = -row_w * logp[np.arange(N), t]
    return _reduce(per_row, row_w.sum(dtype=np.float64), reduction)


def nll_backward(logp, target, weight=None, ignore_index=-100, reduction="mean",
                 grad=None):
    N, C = logp.shape
    valid, t, row_w, _ = _class_terms(target, C, weight, ignore_index, logp.dtype)
    g = _upstream((N,), row_w.sum(dtype=np.float64), reduction, grad, logp.dtype)
    dlogp = np.zeros_like(logp)
    dlogp[np.arange(N), t] = np.where(valid, -row_w * g, 0)
    return dlogp


def cross_entropy_forward(logits, target, weight=None, ignore_index=-100,
                          reduction="mean", label_smoothing=0.0):
    """loss_i = -(1 - eps) w[t_i] logp[i, t_i] - eps / C sum_c w[c] logp[i, c]."""
    N, C = logits.shape
    logp = _log_softmax(logits)
    valid, t, row_w, w = _class_terms(target, C, weight, ignore_index, logits.dtype)
    nll = -row_w * logp[np.arange(N), t]
    smooth = np.where(valid, -(logp * w).sum(axis=1), 0)
    per_row = (1 - label_smoothing) * nll + label_smoothing / C * smooth
    return _reduce(per_row, row_w.sum(dtype=np.float64), reduction)


def cross_entropy_backward(logits, target, weight=None, ignore_index=-100,
                           reduction="mean", label_smoothing=0.0, grad=None):
    """Chain rule: d loss / d logp, then through log_softmax."""
    N, C = logits.shape
    logp = _log_softmax(logits)
    valid, t, row_w, w = _class_terms(target, C, weight, ignore_index, logits.dtype)
    g = _upstream((N,), row_w.sum(dtype=np.float64), reduction, grad, logits.dtype)
    g = np.where(valid, g, 0)[:, None]
    dlogp = np.zeros_like(logits)
    dlogp[np.arange(N), t] = -(1 - label_smoothing) * row_w
    dlogp = (dlogp - label_smoothing / C * w[None, :] * valid[:, None]) * g
    p = np.exp(logp)
    return dlogp - p * dlogp.sum(axis=1, keepdims=True)


def mse_forward(pred, target, reduction="mean"):
    per = (pred - target) ** 2
    return _reduce(per, per.size, reduction)


def mse_backward(pred, target, reduction="mean", grad=None):
    g = _upstream(pred.shape, pred.size, reduction, grad, pred.dtype)
    return 2 * (pred - target) * g


def bce_with_logits_forward(x, y, weight=None, pos_weight=None, reduction="mean"):
    """-w [pw y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], written stably."""
    log_sig = -np.logaddexp(0, -x)          # log sigmoid(x)
    log_one_minus = -np.logaddexp(0, x)     # log (1 - sigmoid(x))
    pw = 1 if pos_weight is None else pos_weight
    per = -(pw * y * log_sig + (1 - y) * log_one_minus)
    if weight is not None:
        per = per * weight
    per = np.broadcast_to(per, x.shape).astype(x.dtype)
    return _reduce(per, per.size, reduction)


def bce_with_logits_backward(x, y, weight=None, pos_weight=None, reduction="mean",
                             grad=None):
    s = np.exp(-np.logaddexp(0, -x))        # sigmoid(x) without overflow
    pw = 1 if pos_weight is None else pos_weight
    d = -(pw * y * (1 - s) - (1 - y) * s)
    if weight is not None:
        d = d * weight
    g = _upstream(x.shape, x.size, reduction, grad, x.dtype)
    return np.broadcast_to(d * g, x.shape).astype(x.dtype)
