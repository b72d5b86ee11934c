"""Conv2d: 2-D convolution over NCHW images, as torch.nn.Conv2d."""

import math

import numpy as np

from engine import conv as _conv
from engine._validate import is_plain
from pyengine._random import get_rng
from pyengine import module as _module
from pyengine.module import Module, Parameter, is_grad_enabled

__all__ = ["Conv2d"]

_ALGOS = ("auto", "im2col", "direct", "winograd")


def _int_pair(value, name, minimum):
    """(a, b) from an int or a pair; ValueError naming `name` otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints. Received: {name}={value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Received: {name}={value!r}")
    return pair


def _grad_buffer(p):
    """p.grad, replaced by zeros if p.data's dtype or shape was changed since."""
    g = p.grad
    if (g is None or g.dtype != p.data.dtype or g.shape != p.data.shape
            or not g.flags.c_contiguous or not g.flags.writeable):
        p.grad = np.zeros_like(p.data)
    return p.grad


class Conv2d(Module):
    """2-D convolution (cross-correlation, as torch) with zero padding.

    Args:
        in_channels, out_channels: C and K; both divisible by ``groups``.
        kernel_size, stride, dilation: int or (h, w) pair.
        padding: int, (h, w) pair, ``'valid'`` (no padding) or ``'same'``
            (output size = input size, stride 1 only; an odd total padding
            puts the extra row/column at the bottom/right, as torch).
        groups: channel groups (``groups == in_channels`` is depthwise).
        bias: learn an additive per-channel bias.
        padding_mode: only ``'zeros'``.
        algo: ``'auto'`` (picks per layer shape), ``'im2col'`` (unfold +
            GEMM), ``'direct'`` (no column buffer; for depthwise/grouped
            conv and few input channels) or ``'winograd'`` (F(2x2, 3x3);
            3x3 stride-1 convolutions only; a grad-input with padding > 2
            and the weight gradient of layers with out x in/groups > 65536
            go as 'auto' picks).
        dtype: parameter dtype (float32 or float64); inputs are cast to it.

    Shape:
        input (N, C, H, W) -> output (N, K, OH, OW) with
        OH = (H + pad_top + pad_bottom - dilation*(kh - 1) - 1) // stride + 1.
        weight (K, C // groups, kh, kw), bias (K,).

    Initialisation as torch: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = C // groups * kh * kw.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", algo="auto",
                 dtype=np.float32):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={v!r}")
        if in_channels % groups:
            raise ValueError(f"in_channels must be divisible by groups. Received: "
                             f"in_channels={in_channels}, groups={groups}")
        if out_channels % groups:
            raise ValueError(f"out_channels must be divisible by groups. Received: "
                             f"out_channels={out_channels}, groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (the only mode supported). "
                             f"Received: padding_mode={padding_mode!r}")
        if algo not in _ALGOS:
            raise ValueError(f"algo must be one of {_ALGOS}. Received: algo={algo!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = _int_pair(kernel_size, "kernel_size", 1)
        self.stride = _int_pair(stride, "stride", 1)
        self.dilation = _int_pair(dilation, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair, 'same' or 'valid'. "
                                 f"Received: padding={padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1. Received: stride={stride!r}")
            self.padding = padding
        else:
            self.padding = _int_pair(padding, "padding", 0)
        if algo == "winograd" and (self.kernel_size, self.stride, self.dilation) != (
                (3, 3), (1, 1), (1, 1)):
            raise ValueError(f"algo='winograd' needs kernel_size 3, stride 1 and dilation 1. "
                             f"Received: kernel_size={kernel_size!r}, stride={stride!r}, "
                             f"dilation={dilation!r}")
        self.groups = int(groups)
        self.padding_mode = padding_mode
        self.algo = algo
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((out_channels, in_channels // groups, kh, kw), dtype))
        self.bias = Parameter(np.zeros((out_channels,), dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        # torch: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        fan_in = self.weight.data[0].size
        bound = 1.0 / math.sqrt(fan_in)
        rng = get_rng()
        self.weight.data[...] = rng.uniform(-bound, bound, self.weight.shape)
        if self.bias is not None:
            self.bias.data[...] = rng.uniform(-bound, bound, self.bias.shape)

    def _pads(self):
        """(top, bottom, left, right) zero padding."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            pads = []
            for k, d in zip(self.kernel_size, self.dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def _geometry(self):
        return dict(stride=self.stride, padding=self._pads(), dilation=self.dilation,
                    groups=self.groups, algo=self.algo)

    # Conv2dPlan of the last input shape (geometry validated once); any change
    # of the attributes below drops it.
    _plan = None
    _PLAN_ATTRS = frozenset(("in_channels", "out_channels", "kernel_size", "stride",
                             "padding", "dilation", "groups", "algo"))

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in Conv2d._PLAN_ATTRS:
            self.__dict__["_plan"] = None

    def forward(self, x):
        return self._forward(x, False)

    def _forward(self, x, relu):
        """forward(x), followed by max(., 0) when `relu` (Sequential fuses a
        Conv2d with the ReLU after it; same bits as the two modules)."""
        plan = self._plan
        w = self.weight.data
        b = self.bias.data if self.bias is not None else None
        if (plan is not None and type(x) is np.ndarray and x.shape == plan.x_shape
                and x.dtype == plan.dtype and w.shape == plan.w_shape
                and w.dtype == plan.dtype and is_plain(x) and is_plain(w)
                and (b is None or is_plain(b))):
            y = plan.forward(x, w, b, relu)
            self.__dict__["_x"] = x if is_grad_enabled() else None
            return y
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"Conv2d expects input of shape (N, C, H, W), got {x.shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects input with in_channels={self.in_channels} "
                             f"channels, got input shape {x.shape}")
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        t, b, l, r = self._pads()
        if x.shape[2] + t + b < dh * (kh - 1) + 1 or x.shape[3] + l + r < dw * (kw - 1) + 1:
            raise ValueError(f"kernel_size {self.kernel_size} (dilation {self.dilation}) is "
                             f"larger than the padded input {(x.shape[2] + t + b, x.shape[3] + l + r)}")
        w = self.weight.data
        if x.dtype != w.dtype:
            if x.dtype not in (np.float32, np.float64):
                raise TypeError(f"Conv2d input must be float32 or float64, got {x.dtype}")
            x = x.astype(w.dtype)
        if not is_plain(x):       # the kernels read C-contiguous, writeable buffers
            x = np.array(x, order="C")
        bias = self.bias.data if self.bias is not None else None
        if bias is not None and bias.dtype != w.dtype:
            raise TypeError(f"bias must have dtype {w.dtype} like the weight, got {bias.dtype}")
        plan = _conv.Conv2dPlan(x.shape, w.shape, w.dtype, **self._geometry())
        if is_plain(w) and (bias is None or is_plain(bias)):
            self.__dict__["_plan"] = plan
        else:
            w = np.array(w, order="C")
            bias = None if bias is None else np.array(bias, order="C")
        y = plan.forward(x, w, bias, relu)
        self.__dict__["_x"] = x if is_grad_enabled() else None
        return y

    def backward(self, grad_out, input_grad=True):
        """Accumulate weight.grad / bias.grad; return dL/dx (None if not input_grad)."""
        x = self._saved("_x")
        grad_out = np.asarray(grad_out)
        if grad_out.dtype != x.dtype:
            grad_out = grad_out.astype(x.dtype)
        dx, _, _ = _conv.conv2d_grad(
            x, self.weight.data, grad_out, input_grad=input_grad,
            bias=self.bias is not None, grad_weight=_grad_buffer(self.weight),
            grad_bias=_grad_buffer(self.bias) if self.bias is not None else None,
            **self._geometry())
        return dx

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) \
                else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.algo != "auto":
            s += f", algo={self.algo!r}"
        return s


_module._RELU_PRODUCERS.add(Conv2d)
