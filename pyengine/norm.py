"""Batch normalisation layers: BatchNorm1d and BatchNorm2d (torch.nn semantics)."""

import numpy as np

from engine import norm as _kernels
from engine._validate import float_array, positive_int
from pyengine.module import Module, Parameter, is_grad_enabled

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Module):
    _ranks = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        self.num_features = positive_int(num_features, "num_features")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative. Received: eps={eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None. Received: momentum={momentum}")
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, dtype=np.float32))
            self.bias = Parameter(np.zeros(C, dtype=np.float32))
        else:
            self.weight = None
            self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(C, dtype=np.float32))
            self.register_buffer("running_var", np.ones(C, dtype=np.float32))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self._cache = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def _check_input(self, x):
        x = float_array(x, "input")
        if x.ndim not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(f"expected {want} input (got {x.ndim}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (input.shape[1]) "
                             f"but got input of shape {x.shape}")
        if self.affine and x.dtype != self.weight.data.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the parameters' dtype "
                            f"{self.weight.data.dtype}; convert one of them")
        return x

    def forward(self, x):
        """Normalise each channel (axis 1).

        Training (or no running statistics): with the batch mean and biased
        variance; the running statistics move towards the batch mean and the
        unbiased variance by ``momentum`` (``None``: cumulative average).
        Eval: with the running statistics.
        """
        x = self._check_input(x)
        batch_stats = self.training or self.running_mean is None
        values_per_channel = x.size // x.shape[1]
        if batch_stats and values_per_channel <= 1:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input size {x.shape}")
        factor = 0.0
        update = self.training and self.track_running_stats
        if update:
            self.num_batches_tracked[...] += 1
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else float(self.momentum))
        rm, rv = self.running_mean, self.running_var
        cast = rm is not None and rm.dtype != x.dtype
        if cast:  # running statistics kept in their own dtype (float32 by default)
            rm, rv = rm.astype(x.dtype), rv.astype(x.dtype)
        use_running = rm is not None and (update or not batch_stats)
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        y, mean, invstd = _kernels.batch_norm_forward(
            x, w, b, rm if use_running else None, rv if use_running else None,
            training=batch_stats, momentum=factor, eps=self.eps)
        if cast and update:
            self.running_mean[...] = rm
            self.running_var[...] = rv
        self._cache = (x, mean, invstd, batch_stats) if is_grad_enabled() else None
        return y

    def backward(self, grad_out, input_grad=True):
        """Accumulates weight.grad and bias.grad; returns d input (None if not input_grad)."""
        x, mean, invstd, batch_stats = self._saved("_cache")
        grad_out = float_array(grad_out, "grad_out", dtype=x.dtype)
        if grad_out.shape != x.shape:
            raise ValueError(f"grad_out must have the output's shape {x.shape}, "
                             f"got {grad_out.shape}")
        gw = gb = None
        if self.affine:
            for p in (self.weight, self.bias):
                if p.grad is None:
                    p.grad = np.zeros_like(p.data)
            gw, gb = self.weight.grad, self.bias.grad
        return _kernels.batch_norm_backward(
            grad_out, x, self.weight.data if self.affine else None, mean, invstd,
            training=batch_stats, grad_weight=gw, grad_bias=gb, input_grad=input_grad)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over (N, C) or (N, C, L) input, per channel C.

    y = (x - mean) / sqrt(var + eps) * weight + bias, with the batch
    statistics in training mode and the running ones in eval mode.

    Args:
        num_features: C.
        eps: added to the variance (default 1e-5).
        momentum: running statistics factor (default 0.1; None: cumulative average).
        affine: learnable weight (ones) and bias (zeros) (default True).
        track_running_stats: keep running_mean, running_var and
            num_batches_tracked buffers (default True); without them the batch
            statistics are used in eval mode too.

    Shape:
        input (N, C) or (N, C, L); output the same.
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, C, H, W) input, per channel C.

    Same arguments and behaviour as :class:`BatchNorm1d`.

    Shape:
        input (N, C, H, W); output the same.
    """

    _ranks = (4,)
