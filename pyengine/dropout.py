"""Dropout (torch.nn.Dropout semantics) on the counter-based engine kernel."""

import numbers

import numpy as np

from engine import dropout as _kernels
from engine._validate import float_array
from pyengine import _random
from pyengine.module import Module, is_grad_enabled

__all__ = ["Dropout"]


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability ``p``
    and scale the rest by ``1 / (1 - p)``; in eval mode, the identity.

    Masks come from a counter-based generator keyed by ``pe.manual_seed``:
    the same seed gives the same masks, whatever the thread count; every
    forward call draws a new key, so successive calls get different masks.

    Args:
        p: probability of zeroing an element (default 0.5), in [0, 1];
            p = 1 zeroes everything.
        inplace: write the result into the input array (when it is a
            float32/float64 array).

    Shape:
        any; output the same as the input.
    """

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"dropout probability must be a number, got {type(p).__name__}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.inplace = bool(inplace)
        self._mask = None
        self._eval_cache = None

    def forward(self, x):
        if not self.training:
            self._mask = None
            self._eval_cache = True if is_grad_enabled() else None
            return x
        original = x
        x = float_array(x, "input")
        write_back = self.inplace and x is not original   # a copy was made
        out = x if self.inplace and x is original else None
        y, mask = _kernels.dropout(x, self.p, _random.next_seed(), out=out)
        if write_back and isinstance(original, np.ndarray) and original.flags.writeable:
            original[...] = y
            y = original
        self._mask = mask if is_grad_enabled() else None
        self._eval_cache = None
        return y

    def backward(self, grad_out, input_grad=True):
        """d input = grad_out * mask / (1 - p) with forward's mask (identity in eval)."""
        if self._mask is None:
            self._saved("_eval_cache")   # raises when forward kept nothing
            return grad_out if input_grad else None
        if not input_grad:
            return None
        grad_out = float_array(grad_out, "grad_out")
        if grad_out.shape != self._mask.shape:
            raise ValueError(f"grad_out must have the output's shape {self._mask.shape}, "
                             f"got {grad_out.shape}")
        return _kernels.dropout_grad(grad_out, self._mask, self.p)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"
