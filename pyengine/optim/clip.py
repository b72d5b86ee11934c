"""Gradient clipping: ``clip_grad_norm_`` and ``clip_grad_value_`` (torch.nn.utils)."""

import math

import numpy as np

from pyengine.module import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(parameters):
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale the gradients in place so that their joint norm is at most ``max_norm``.

    The norm is taken over all gradients together, as if concatenated into
    one vector (``norm_type`` may be ``inf``). Gradients are multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))``, as torch does.

    Args:
        parameters: a Parameter or an iterable of Parameters.
        max_norm: the largest allowed norm.
        norm_type: p of the p-norm (default 2.0; ``float('inf')`` for the max).
        error_if_nonfinite: raise if the total norm is nan or inf.

    Returns:
        the total norm of the gradients before clipping (a float).
    """
    grads = _grads(parameters)
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if not grads:
        return 0.0
    if norm_type == math.inf:
        norms = [np.max(np.abs(g)) if g.size else 0.0 for g in grads]
        total = float(max(norms))
    else:
        # Per-tensor norms in float64, then the norm of those (torch's order).
        norms = [np.linalg.norm(g.ravel().astype(np.float64, copy=False), ord=norm_type)
                 if g.size else 0.0 for g in grads]
        total = float(np.linalg.norm(np.asarray(norms, dtype=np.float64), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite, "
                           "so it cannot be clipped")
    clip_coef = max_norm / (total + 1e-6)
    if not clip_coef >= 1.0:  # torch clamps to 1 and multiplies (x1 is a no-op; nan spreads)
        for g in grads:
            g *= g.dtype.type(clip_coef)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
