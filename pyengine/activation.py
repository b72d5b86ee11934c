"""Activation layers (torch.nn names and arguments) on the engine.activation kernels.

Inputs are float32 or float64 arrays of any shape (a non-contiguous input is
copied; other dtypes, float16 included, raise TypeError). Upstream gradients
are converted to the dtype of the forward pass. What backward needs is kept
only when gradients are enabled (not under ``pe.no_grad()``): the output for
ReLU, Sigmoid, Tanh, Softmax and LogSoftmax, the input for LeakyReLU,
Softplus and GELU.
"""

import math
import warnings

import numpy as np

from engine import activation as _k
from engine._validate import float_array
from pyengine import module as _module
from pyengine.module import Module, is_grad_enabled

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softplus", "GELU",
           "Softmax", "LogSoftmax", "Flatten"]


def _grad_like(grad_out, saved, name="grad_out"):
    """grad_out as a C-contiguous array of the saved array's shape and dtype."""
    g = np.asarray(grad_out)
    if g.dtype.kind != "f" or g.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {g.dtype}")
    if g.shape != saved.shape:
        raise ValueError(f"{name} must have the shape of the forward output "
                         f"{saved.shape}, got {g.shape}")
    return np.ascontiguousarray(g, dtype=saved.dtype)


def _forward_maybe_inplace(kernel, x, inplace, *args):
    """Run `kernel(x, *args, out=...)`; with inplace, the result lands in x.

    Returns (result, input array used). In-place on a non-contiguous float
    array computes into a contiguous copy and writes it back into x.
    """
    if inplace and isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
        if not x.flags.writeable:
            raise ValueError("inplace=True needs a writeable input array")
        if x.flags.c_contiguous:
            return kernel(x, *args, out=x), x
        y = kernel(np.ascontiguousarray(x), *args)
        x[...] = y
        return x, y
    x = float_array(x, "input")
    return kernel(x, *args), x


class _Elementwise(Module):
    """Shared forward/backward bookkeeping of the element-wise activations."""

    keeps_output = True   # backward from the output (else from the input)

    def __init__(self):
        super().__init__()
        self._kept = None

    def _forward(self, x):
        raise NotImplementedError

    def _backward(self, kept, g):
        raise NotImplementedError

    def forward(self, x):
        y, x_used = self._forward(x)
        if is_grad_enabled():
            self._kept = y if self.keeps_output else x_used
        else:
            self._kept = None
        return y

    def backward(self, grad_out, input_grad=True):
        kept = self._saved("_kept")
        if not input_grad:
            return None
        return self._backward(kept, _grad_like(grad_out, kept))


class ReLU(_Elementwise):
    """max(x, 0) element-wise.

    Args:
        inplace: overwrite the input with the result (the input must then be a
            writeable float32/float64 array).

    Shape: any; output same shape as input.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def _forward(self, x):
        return _forward_maybe_inplace(_k.relu, x, self.inplace)

    def _backward(self, y, g):
        return _k.relu_grad(y, g)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class LeakyReLU(_Elementwise):
    """x where x > 0, else negative_slope * x.

    Args:
        negative_slope: slope for negative inputs (default 0.01).
        inplace: overwrite the input with the result.

    Shape: any; output same shape as input.
    """

    keeps_output = False

    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__()
        self.negative_slope = float(negative_slope)
        self.inplace = bool(inplace)

    def _forward(self, x):
        if self.inplace and self.negative_slope <= 0 and is_grad_enabled():
            # y > 0 exactly where x > 0 only for a positive slope: keep the input.
            x_copy = float_array(np.array(x, copy=True), "input")
            y, _ = _forward_maybe_inplace(_k.leaky_relu, x, True, self.negative_slope)
            return y, x_copy
        y, x_used = _forward_maybe_inplace(_k.leaky_relu, x, self.inplace,
                                           self.negative_slope)
        # In place with a positive slope, the output marks the same signs as the input.
        return y, (y if self.inplace else x_used)

    def _backward(self, x, g):
        return _k.leaky_relu_grad(x, g, self.negative_slope)

    def extra_repr(self):
        s = f"negative_slope={self.negative_slope}"
        return s + (", inplace=True" if self.inplace else "")


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), stable for large |x|. Shape: any."""

    def _forward(self, x):
        x = float_array(x, "input")
        return _k.sigmoid(x), x

    def _backward(self, y, g):
        return _k.sigmoid_grad(y, g)


class Tanh(_Elementwise):
    """tanh(x). Shape: any."""

    def _forward(self, x):
        x = float_array(x, "input")
        return _k.tanh(x), x

    def _backward(self, y, g):
        return _k.tanh_grad(y, g)


class Softplus(_Elementwise):
    """log(1 + exp(beta * x)) / beta, reverting to x where beta * x > threshold.

    Args:
        beta: sharpness (> 0, default 1.0).
        threshold: above beta * x > threshold the output is x (default 20.0).

    Shape: any.
    """

    keeps_output = False

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"Softplus needs beta > 0. Received: beta={beta}")
        self.beta = float(beta)
        self.threshold = float(threshold)

    def _forward(self, x):
        x = float_array(x, "input")
        return _k.softplus(x, self.beta, self.threshold), x

    def _backward(self, x, g):
        return _k.softplus_grad(x, g, self.beta, self.threshold)

    def extra_repr(self):
        return f"beta={self.beta}, threshold={self.threshold}"


class GELU(_Elementwise):
    """Gaussian error linear unit x * Phi(x).

    Args:
        approximate: 'none' (exact, with erf) or 'tanh' (torch's tanh formula).

    Shape: any.
    """

    keeps_output = False

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh'. "
                             f"Received: approximate={approximate!r}")
        self.approximate = approximate

    def _forward(self, x):
        x = float_array(x, "input")
        return _k.gelu(x, self.approximate), x

    def _backward(self, x, g):
        return _k.gelu_grad(x, g, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


def _softmax_dim(dim, ndim, name):
    """Normalised dim; dim=None picks torch's legacy implicit dim with a warning."""
    if dim is None:
        dim = 0 if ndim in (0, 1, 3) else 1
        warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                      "Change the call to include dim=X as an argument.",
                      UserWarning, stacklevel=4)
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise ValueError(f"dim must be in [{-size}, {size - 1}] for a {ndim}-d input. "
                         f"Received: dim={dim}")
    return dim % size


def _to_rows(a, dim):
    """Move `dim` last and view as (rows, cols); returns (rows2d, moved_shape)."""
    moved = np.moveaxis(a, dim, -1)
    cols = moved.shape[-1]
    rows = int(np.prod(moved.shape[:-1], dtype=np.int64))
    return np.ascontiguousarray(moved).reshape(rows, cols), moved.shape


def _from_rows(r, moved_shape, dim):
    return np.ascontiguousarray(np.moveaxis(r.reshape(moved_shape), -1, dim))


class _RowSoftmax(Module):
    _kernel = _grad_kernel = None
    _name = ""

    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim
        self._kept = None

    def forward(self, x):
        x = float_array(x, "input")
        shape = x.shape
        if x.ndim == 0:
            x = x.reshape(1)
        dim = _softmax_dim(self.dim, len(shape), self._name)
        rows, moved_shape = _to_rows(x, dim)
        y_rows = type(self)._kernel(rows)
        self._kept = (y_rows, moved_shape, dim, shape) if is_grad_enabled() else None
        return _from_rows(y_rows, moved_shape, dim).reshape(shape)

    def backward(self, grad_out, input_grad=True):
        y_rows, moved_shape, dim, shape = self._saved("_kept")
        if not input_grad:
            return None
        g = _grad_like(grad_out, np.empty(shape, y_rows.dtype))
        if g.ndim == 0:
            g = g.reshape(1)
        g_rows, _ = _to_rows(g, dim)
        dx = type(self)._grad_kernel(y_rows, g_rows)
        return _from_rows(dx, moved_shape, dim).reshape(shape)

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_RowSoftmax):
    """exp(x) / sum(exp(x)) along `dim` (max subtracted first).

    Args:
        dim: the axis that sums to one. None picks torch's legacy implicit
            axis (0 for 0-, 1- and 3-d inputs, else 1) with a warning.

    Shape: any; output same shape as input.
    """

    _kernel = staticmethod(_k.softmax)
    _grad_kernel = staticmethod(_k.softmax_grad)
    _name = "softmax"


class LogSoftmax(_RowSoftmax):
    """log(softmax(x)) along `dim`, computed as x - max - log(sum(exp(x - max))).

    Args:
        dim: as for Softmax.

    Shape: any; output same shape as input.
    """

    _kernel = staticmethod(_k.log_softmax)
    _grad_kernel = staticmethod(_k.log_softmax_grad)
    _name = "log_softmax"


class Flatten(Module):
    """Flatten dims start_dim..end_dim into one (a view when the input is contiguous).

    Args:
        start_dim: first dim to flatten (default 1: keep the batch).
        end_dim: last dim to flatten (default -1).

    Shape: (N, *dims) -> (N, prod(dims)) with the defaults. Backward reshapes
    the gradient back to the input's shape.
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)
        self._kept = None

    def forward(self, x):
        x = np.asarray(x)
        shape = x.shape
        nd = max(x.ndim, 1)
        s, e = self.start_dim, self.end_dim
        if not (-nd <= s < nd and -nd <= e < nd):
            raise ValueError(f"Flatten(start_dim={s}, end_dim={e}) is out of range for "
                             f"an input of shape {shape}")
        s, e = s % nd, e % nd
        if s > e:
            raise ValueError(f"Flatten: start_dim {self.start_dim} comes after "
                             f"end_dim {self.end_dim} for input shape {shape}")
        full = shape if x.ndim else (1,)
        merged = math.prod(full[s:e + 1])   # Python ints: no overflow, ~10x cheaper than np.prod
        y = x.reshape(full[:s] + (merged,) + full[e + 1:])
        self._kept = shape if is_grad_enabled() else None
        return y

    def backward(self, grad_out, input_grad=True):
        shape = self._saved("_kept")
        if not input_grad:
            return None
        return np.asarray(grad_out).reshape(shape)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


_module._RELU_TYPES.add(ReLU)   # Sequential may fuse it into the layer before
