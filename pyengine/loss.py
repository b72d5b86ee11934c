"""Loss functions (torch.nn names and arguments) on the engine.loss kernels.

    loss_fn = pe.CrossEntropyLoss()
    loss = loss_fn(logits, labels)     # a Python float ('mean' / 'sum')
    dlogits = loss_fn.backward()       # same shape and dtype as logits

With ``reduction='none'`` the call returns the per-sample (per-element)
losses as an array and ``backward(grad=None)`` takes their upstream gradient
(default: ones). For 'mean'/'sum', ``backward(grad)`` accepts an optional
scalar multiplier. Totals are summed in double precision.

Empty batches follow torch: 'mean' over zero samples (or over targets that are
all ``ignore_index``) is nan, 'sum' is 0, and backward returns zeros.
"""

import numpy as np

from engine import loss as _k
from engine._validate import float_array
from pyengine.module import Module, is_grad_enabled

__all__ = ["Loss", "CrossEntropyLoss", "NLLLoss", "MSELoss", "BCEWithLogitsLoss"]

_REDUCTIONS = ("mean", "sum", "none")


class Loss(Module):
    """Base class of the losses: ``loss_fn(pred, target)``, ``loss_fn.backward()``.

    Subclasses implement ``forward(pred, target)`` (keeping what backward needs
    in ``self._ctx`` when gradients are enabled) and ``backward(grad=None)``.
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}. "
                             f"Received: reduction={reduction!r}")
        self.reduction = reduction
        self._ctx = None

    def _keep(self, ctx):
        self._ctx = ctx if is_grad_enabled() else None

    def _upstream(self, grad, per_sample_shape, dtype):
        """(scalar multiplier, per-sample gradient array or None) from `grad`."""
        if self.reduction == "none":
            if grad is None:
                return 1.0, None
            g = np.asarray(grad)
            if g.dtype.kind not in "fiu":
                raise TypeError(f"grad must be a float array, got dtype {g.dtype}")
            if g.shape != tuple(per_sample_shape):
                raise ValueError(f"grad must have the shape of the unreduced loss "
                                 f"{tuple(per_sample_shape)}, got {g.shape}")
            return 1.0, np.ascontiguousarray(g, dtype=dtype).reshape(-1)
        if grad is None:
            return 1.0, None
        g = np.asarray(grad)
        if g.size != 1:
            raise ValueError(f"grad for reduction={self.reduction!r} must be a scalar, "
                             f"got shape {g.shape}")
        return float(g.reshape(())), None

    def _reduce(self, loss_sum, divisor, per_sample):
        if self.reduction == "none":
            return per_sample
        if self.reduction == "sum":
            return float(loss_sum)
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(np.float64(loss_sum) / np.float64(divisor))

    def _mean_scale(self, divisor):
        if self.reduction != "mean":
            return 1.0
        return 1.0 / divisor if divisor != 0 else float("inf")

    def forward(self, pred, target):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def backward(self, grad=None, input_grad=True):
        raise NotImplementedError(f"{type(self).__name__} has no backward()")

    def extra_repr(self):
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""


def _class_rows(pred, target):
    """(N, C, d1, ...) scores and (N, d1, ...) labels -> (rows, C) and (rows,).

    Also accepts unbatched (C,) scores with a 0-d label. Returns
    (rows, labels, per_sample_shape, restore) where restore(dx_rows) gives
    the gradient in pred's layout.
    """
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices (int32 or int64), "
                        f"got dtype {target.dtype}; class probabilities are not supported")
    if pred.ndim == 0:
        raise ValueError("input must have a class dimension, got a 0-d array")
    if pred.ndim == 1:
        want = ()
    else:
        want = (pred.shape[0],) + pred.shape[2:]
    if target.shape != want:
        raise ValueError(f"target shape {target.shape} does not match input shape "
                         f"{pred.shape}: expected target of shape {want}")
    C = pred.shape[0] if pred.ndim == 1 else pred.shape[1]
    if pred.ndim <= 2:
        rows = pred.reshape(pred.shape[0] if pred.ndim == 2 else 1, C)
        return rows, target.reshape(-1), want, lambda dx: dx.reshape(pred.shape)
    moved = np.moveaxis(pred, 1, -1)
    moved_shape = moved.shape
    rows = np.ascontiguousarray(moved).reshape(int(np.prod(want, dtype=np.int64)), C)

    def restore(dx):
        return np.ascontiguousarray(np.moveaxis(dx.reshape(moved_shape), -1, 1))

    return rows, target.reshape(-1), want, restore


def _class_weight(weight, name="weight"):
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.dtype.kind not in "fiu" or w.ndim != 1:
        raise ValueError(f"{name} must be a 1-D float array of per-class weights, "
                         f"got shape {w.shape} dtype {w.dtype}")
    return np.array(w, dtype=w.dtype if w.dtype.kind == "f" else np.float32)


class CrossEntropyLoss(Loss):
    """Fused log-softmax + negative log-likelihood over class scores.

    Args:
        weight: optional (C,) class weights; 'mean' divides by the summed
            weights of the non-ignored targets (torch).
        ignore_index: targets equal to it contribute neither loss nor gradient.
        reduction: 'mean' | 'sum' | 'none'.
        label_smoothing: in [0, 1]; the target becomes (1 - eps) onehot + eps / C.

    Shape: input (N, C) or (N, C, d1, ...) or unbatched (C,); target (N,) or
    (N, d1, ...) (or 0-d) integer class indices (int32/int64) in [0, C).
    Float targets raise TypeError; labels out of range raise ValueError.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean",
                 label_smoothing=0.0):
        super().__init__(reduction)
        self.register_buffer("weight", _class_weight(weight))
        self.ignore_index = int(ignore_index)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1]. "
                             f"Received: label_smoothing={label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, pred, target):
        pred = float_array(pred, "input")
        rows, labels, per_sample, restore = _class_rows(pred, target)
        w = None if self.weight is None else self.weight.astype(pred.dtype, copy=False)
        row_loss, loss_sum, weight_sum, prob = _k.cross_entropy(
            rows, labels, w, self.ignore_index, self.label_smoothing)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._keep((prob, labels, w, weight_sum, per_sample, restore, pred.dtype))
        return self._reduce(loss_sum, weight_sum, row_loss.reshape(per_sample))

    def backward(self, grad=None, input_grad=True):
        prob, labels, w, weight_sum, per_sample, restore, dtype = self._saved("_ctx")
        scale, g = self._upstream(grad, per_sample, dtype)
        dx = _k.cross_entropy_grad(prob, labels, w, self.ignore_index,
                                   self.label_smoothing, grad=g,
                                   scale=scale * self._mean_scale(weight_sum))
        return restore(dx)

    def extra_repr(self):
        parts = []
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.reduction != "mean":
            parts.append(f"reduction={self.reduction!r}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)


class NLLLoss(Loss):
    """Negative log-likelihood on log-probabilities (e.g. LogSoftmax output).

    Args:
        weight, ignore_index, reduction: as CrossEntropyLoss.

    Shape: as CrossEntropyLoss.
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", _class_weight(weight))
        self.ignore_index = int(ignore_index)

    def forward(self, pred, target):
        pred = float_array(pred, "input")
        rows, labels, per_sample, restore = _class_rows(pred, target)
        w = None if self.weight is None else self.weight.astype(pred.dtype, copy=False)
        row_loss, loss_sum, weight_sum = _k.nll(rows, labels, w, self.ignore_index)
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        self._keep((labels, rows.shape[1], w, weight_sum, per_sample, restore, pred.dtype))
        return self._reduce(loss_sum, weight_sum, row_loss.reshape(per_sample))

    def backward(self, grad=None, input_grad=True):
        labels, C, w, weight_sum, per_sample, restore, dtype = self._saved("_ctx")
        scale, g = self._upstream(grad, per_sample, dtype)
        dx = _k.nll_grad(labels, C, dtype, w, self.ignore_index, grad=g,
                         scale=scale * self._mean_scale(weight_sum))
        return restore(dx)


def _float_target(target, pred, name="target"):
    """Lists are converted to pred's dtype; arrays must match its dtype and shape."""
    if not isinstance(target, np.ndarray):
        target = np.asarray(target, dtype=pred.dtype)
    if target.dtype != pred.dtype:
        raise ValueError(f"{name} must have the dtype of the input ({pred.dtype}), got "
                         f"{target.dtype}; convert it with .astype(np.{pred.dtype})")
    if target.shape != pred.shape:
        raise ValueError(f"{name} shape {target.shape} does not match input shape "
                         f"{pred.shape}")
    return np.ascontiguousarray(target)


class MSELoss(Loss):
    """Mean squared error (pred - target)^2.

    Args:
        reduction: 'mean' | 'sum' | 'none'.

    Shape: pred and target of the same shape and dtype.
    """

    def forward(self, pred, target):
        pred = float_array(pred, "input")
        target = _float_target(target, pred)
        per, loss_sum = _k.mse(pred, target, per_element=self.reduction == "none")
        self._keep((pred, target))
        return self._reduce(loss_sum, pred.size, per)

    def backward(self, grad=None, input_grad=True):
        pred, target = self._saved("_ctx")
        scale, g = self._upstream(grad, pred.shape, pred.dtype)
        g = None if g is None else g.reshape(pred.shape)
        return _k.mse_grad(pred, target, grad=g, scale=scale * self._mean_scale(pred.size))


def _broadcast_weight(w, pred, name):
    if w is None:
        return None
    w = np.asarray(w)
    if w.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a float array, got dtype {w.dtype}")
    try:
        w = np.broadcast_to(w.astype(pred.dtype, copy=False), pred.shape)
    except ValueError:
        raise ValueError(f"{name} of shape {w.shape} does not broadcast to the input "
                         f"shape {pred.shape}") from None
    return np.ascontiguousarray(w)


class BCEWithLogitsLoss(Loss):
    """Sigmoid + binary cross-entropy in one stable formula.

    loss = w * ((1 - y) * softplus(x) + pos_weight * y * softplus(-x)),
    i.e. -w [pos_weight y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))].

    Args:
        weight: optional rescaling weight broadcast to the input's shape.
        reduction: 'mean' | 'sum' | 'none'.
        pos_weight: optional weight of positive examples, broadcast to the
            input (usually one value per class, shape (C,)).

    Shape: input and target of the same shape and dtype (targets in [0, 1]).
    """

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None else np.array(weight))
        self.register_buffer("pos_weight",
                             None if pos_weight is None else np.array(pos_weight))

    def forward(self, pred, target):
        pred = float_array(pred, "input")
        target = _float_target(target, pred)
        w = _broadcast_weight(self.weight, pred, "weight")
        pw = _broadcast_weight(self.pos_weight, pred, "pos_weight")
        per, loss_sum = _k.bce_with_logits(pred, target, w, pw,
                                           per_element=self.reduction == "none")
        self._keep((pred, target, w, pw))
        return self._reduce(loss_sum, pred.size, per)

    def backward(self, grad=None, input_grad=True):
        pred, target, w, pw = self._saved("_ctx")
        scale, g = self._upstream(grad, pred.shape, pred.dtype)
        g = None if g is None else g.reshape(pred.shape)
        return _k.bce_with_logits_grad(pred, target, w, pw, grad=g,
                                       scale=scale * self._mean_scale(pred.size))
