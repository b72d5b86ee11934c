"""Linear (fully connected) layer on the engine's dense kernels."""

import math

import numpy as np

from engine import dense
from engine._validate import is_plain
from pyengine import init
from pyengine import module as _module
from pyengine.module import Module, Parameter, is_grad_enabled

__all__ = ["Linear", "Identity"]


class Linear(Module):
    """y = x @ weight.T + bias, as torch.nn.Linear.

    Args:
        in_features, out_features: sizes of each input and output sample.
        bias: learn an additive bias (default True).
        dtype: float32 (default) or float64.

    Shape: input (*, in_features) -> output (*, out_features).
    Parameters: weight (out_features, in_features) and bias (out_features,),
    both initialised U(-1/sqrt(in_features), 1/sqrt(in_features)) as torch.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer. Received: {name}={v!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        self.bias = Parameter(np.empty(out_features, dtype=dtype)) if bias else None
        self._x = None
        self._shape = None
        self.reset_parameters()

    def reset_parameters(self):
        # kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        init.kaiming_uniform_(self.weight.data, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            init.uniform_(self.bias.data, -bound, bound)

    def forward(self, x):
        return self._forward(x, False)

    def _forward(self, x, relu):
        """forward(x), followed by max(., 0) when `relu` (Sequential fuses a
        Linear with the ReLU after it; same bits as the two modules)."""
        w = self.weight.data
        b = None if self.bias is None else self.bias.data
        if not (type(x) is np.ndarray and x.ndim == 2 and x.dtype == w.dtype
                and x.shape[1] == self.in_features and is_plain(x) and is_plain(w)
                and (b is None or is_plain(b))):
            return self._forward_general(x, relu)
        y = dense._linear_forward_plain(x, w, b, relu)
        d = self.__dict__
        if is_grad_enabled():
            d["_x"], d["_shape"] = x, x.shape
        else:
            d["_x"] = d["_shape"] = None
        return y

    def _forward_general(self, x, relu):
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects input (*, {self.in_features}), got shape {x.shape}")
        if x.dtype != self.weight.data.dtype:
            raise TypeError(f"Linear: input dtype {x.dtype} does not match the layer's "
                            f"{self.weight.data.dtype}")
        x2 = x.reshape(-1, self.in_features)
        if relu:
            w = self.weight.data
            b = None if self.bias is None else self.bias.data
            y = dense._linear_forward_plain(
                x2 if is_plain(x2) else np.array(x2, order="C"),
                w if is_plain(w) else np.array(w, order="C"),
                None if b is None or is_plain(b) else np.array(b, order="C"), True)
        else:
            y = dense.linear_forward(x2, self.weight.data,
                                     None if self.bias is None else self.bias.data)
        if is_grad_enabled():
            self._x, self._shape = x2, x.shape
        else:
            self._x = self._shape = None
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, grad_out, input_grad=True):
        x2 = self._saved("_x")
        g = np.asarray(grad_out)
        if g.shape != (*self._shape[:-1], self.out_features):
            raise ValueError(f"Linear.backward: grad_out shape {g.shape} does not match the "
                             f"output shape {(*self._shape[:-1], self.out_features)}")
        g = g.reshape(-1, self.out_features)
        if g.dtype != x2.dtype:
            g = g.astype(x2.dtype)
        dx, _, _ = dense.linear_backward(
            x2, self.weight.data, g, input_grad=input_grad,
            bias_grad=self.bias is not None,
            grad_weight=self.weight.grad,
            grad_bias=None if self.bias is None else self.bias.grad)
        return None if dx is None else dx.reshape(self._shape)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


_module._RELU_PRODUCERS.add(Linear)


class Identity(Module):
    """Returns its input unchanged."""

    def forward(self, x):
        return x

    def backward(self, grad_out, input_grad=True):
        return grad_out if input_grad else None
