"""2-D pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (torch.nn's API).

Inputs are (N, C, H, W) or unbatched (C, H, W), float32 or float64. The work
is done by engine.pool (one OpenMP loop over the N * C planes).
"""

import numpy as np

from engine import pool as _pool
from engine._validate import is_plain
from pyengine import module as _module
from pyengine.activation import _grad_like
from pyengine.module import Module, is_grad_enabled

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


def _as_batched(x):
    """(C, H, W) -> (1, C, H, W); returns the array and whether it was unbatched."""
    x = np.asarray(x)
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {x.shape}")
    return x, False


class _Pool2d(Module):
    """Shared forward/backward plumbing: batching and what backward keeps."""

    def _keep(self, unbatched, input_shape, **saved):
        if is_grad_enabled():
            self._unbatched = unbatched
            self._input_shape = input_shape
            for k, v in saved.items():
                object.__setattr__(self, k, v)
        else:
            self._input_shape = None

    def _grad_in(self, grad_out):
        grad_out = np.asarray(grad_out)
        input_shape = self._saved("_input_shape")
        if self._unbatched and grad_out.ndim == 3:
            grad_out = grad_out[None]
        return grad_out, input_shape

    def _grad_out(self, grad_x):
        return grad_x[0] if self._unbatched else grad_x


class MaxPool2d(_Pool2d):
    """Max pooling over (kernel_size) windows.

    Args:
        kernel_size: int or (kh, kw).
        stride: int or pair; default kernel_size.
        padding: implicit -inf padding on each side, at most kernel_size / 2.
        dilation: spacing between window taps.
        return_indices: forward returns (y, indices) (int64 flat positions
            ih * W + iw within each plane, as torch).
        ceil_mode: ceil instead of floor for the output size.

    Shape:
        input (N, C, H, W) or (C, H, W) -> output (N, C, OH, OW) with
        OH = floor((H + 2 padding - dilation (kernel - 1) - 1) / stride) + 1.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode
        self._indices = None

    _plan = None     # MaxPool2dPlan of the last input shape and arguments

    def forward(self, x):
        plan = self._plan
        if (plan is None or type(x) is not np.ndarray or x.shape != plan.x_shape
                or x.dtype != plan.dtype or not is_plain(x) or self._plan_args != (
                    self.kernel_size, self.stride, self.padding, self.dilation,
                    self.ceil_mode)):
            return self._forward_general(x)
        keep = is_grad_enabled()
        y, ind = plan.forward(x, keep or self.return_indices)
        d = self.__dict__
        if keep:
            d["_unbatched"], d["_input_shape"], d["_indices"] = False, x.shape, ind
            d["_y"] = y
        else:
            d["_input_shape"] = d["_y"] = None
        return (y, ind) if self.return_indices else y

    def _forward_general(self, x):
        x4, unbatched = _as_batched(x)
        if x4.dtype in (np.float32, np.float64):
            if not is_plain(x4):      # the kernel reads C-contiguous, writeable buffers
                x4 = np.array(x4, order="C")
            args = (self.kernel_size, self.stride, self.padding, self.dilation,
                    self.ceil_mode)
            plan = _pool.MaxPool2dPlan(x4.shape, x4.dtype, *args)
            if not unbatched:
                d = self.__dict__
                d["_plan"], d["_plan_args"] = plan, args
            y, ind = plan.forward(x4, is_grad_enabled() or self.return_indices)
        else:   # max_pool2d's dtype error
            y, ind = _pool.max_pool2d(x4, self.kernel_size, self.stride, self.padding,
                                      self.dilation, self.ceil_mode)
        self._keep(unbatched, x4.shape, _indices=ind)
        if unbatched:
            y = y[0]
            ind = None if ind is None else ind[0]
        self.__dict__["_y"] = y if is_grad_enabled() else None
        return (y, ind) if self.return_indices else y

    def backward(self, grad_out, input_grad=True):
        grad_out, input_shape = self._grad_in(grad_out)
        if not input_grad:
            return None
        grad_x = _pool.max_pool2d_grad(grad_out, self._saved("_indices"), input_shape)
        return self._grad_out(grad_x)

    def _backward_after_relu(self, grad_out, relu, input_grad=True):
        """relu.backward(self.backward(grad_out)) with the ReLU's mask applied
        to grad_out: each window's gradient goes to its argmax, where the
        ReLU's output is the pooled value, so masking by pooled > 0 first is
        the same (a pass over the pooled map, not the 4x larger input)."""
        y = self.__dict__.get("_y")
        if y is None or relu.__dict__.get("_kept") is None:
            return relu.backward(self.backward(grad_out), input_grad)
        if not input_grad:
            return self.backward(grad_out, False)
        return self.backward(relu._backward(y, _grad_like(grad_out, y)))

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(_Pool2d):
    """Average pooling over (kernel_size) windows.

    Args:
        kernel_size: int or (kh, kw).
        stride: int or pair; default kernel_size.
        padding: implicit zero padding on each side, at most kernel_size / 2.
        ceil_mode: ceil instead of floor for the output size.
        count_include_pad: padded zeros count in the divisor (torch's default).
        divisor_override: if given, every window sum is divided by it.

    Shape:
        input (N, C, H, W) or (C, H, W) -> output (N, C, OH, OW) with
        OH = floor((H + 2 padding - kernel) / stride) + 1.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def _args(self):
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode,
                self.count_include_pad, self.divisor_override)

    def forward(self, x):
        x4, unbatched = _as_batched(x)
        y = _pool.avg_pool2d(x4, *self._args())
        self._keep(unbatched, x4.shape)
        return y[0] if unbatched else y

    def backward(self, grad_out, input_grad=True):
        grad_out, input_shape = self._grad_in(grad_out)
        if not input_grad:
            return None
        grad_x = _pool.avg_pool2d_grad(grad_out, input_shape, *self._args())
        return self._grad_out(grad_x)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else "")
                + ("" if self.count_include_pad else ", count_include_pad=False")
                + ("" if self.divisor_override is None
                   else f", divisor_override={self.divisor_override}"))


class AdaptiveAvgPool2d(_Pool2d):
    """Average pooling to a fixed output size, whatever the input size.

    Output cell i along an axis of length L averages positions
    floor(i L / O) .. ceil((i + 1) L / O) - 1 (torch's windows, which overlap
    when O does not divide L). ``AdaptiveAvgPool2d(1)`` is global average
    pooling.

    Args:
        output_size: int or (OH, OW); a None entry keeps that input size.

    Shape:
        input (N, C, H, W) or (C, H, W) -> output (N, C, OH, OW).
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def _target(self, H, W):
        size = self.output_size
        oh, ow = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        return (H if oh is None else oh, W if ow is None else ow)

    def forward(self, x):
        x4, unbatched = _as_batched(x)
        y = _pool.adaptive_avg_pool2d(x4, self._target(*x4.shape[2:]))
        self._keep(unbatched, x4.shape)
        return y[0] if unbatched else y

    def backward(self, grad_out, input_grad=True):
        grad_out, input_shape = self._grad_in(grad_out)
        if not input_grad:
            return None
        grad_x = _pool.adaptive_avg_pool2d_grad(grad_out, input_shape)
        return self._grad_out(grad_x)

    def extra_repr(self):
        return f"output_size={self.output_size}"


_module._RELU_CONSUMERS.add(MaxPool2d)   # Sequential may fuse the ReLU before it
