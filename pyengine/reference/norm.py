"""Reference batch normalisation: the textbook equations in NumPy.

Channels are axis 1 of an (N, C, *) array; statistics are taken over every
other axis.
"""

import numpy as np

__all__ = ["batchnorm_forward", "batchnorm_backward"]


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v, x):
    """Reshape a (C,) vector to broadcast against x: (1, C, 1, ...)."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def batchnorm_forward(x, weight=None, bias=None, running_mean=None, running_var=None,
                      training=True, momentum=0.1, eps=1e-5):
    """Returns (y, mean, invstd, new_running_mean, new_running_var).

    Training: mean and biased variance of the batch normalise x; the running
    statistics (if given) move towards the batch mean and the UNBIASED batch
    variance by `momentum`. Eval: the running statistics normalise x.
    """
    axes = _axes(x)
    if training:
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        count = x.size // x.shape[1]
        if running_mean is not None:
            unbiased = var * count / (count - 1)
            running_mean = (1 - momentum) * running_mean + momentum * mean
            running_var = (1 - momentum) * running_var + momentum * unbiased
    else:
        mean, var = running_mean, running_var
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    y = x_hat
    if weight is not None:
        y = y * _per_channel(weight, x)
    if bias is not None:
        y = y + _per_channel(bias, x)
    return y, mean, invstd, running_mean, running_var


def batchnorm_backward(grad_out, x, weight, mean, invstd, training=True):
    """Returns (grad_x, grad_weight, grad_bias) given forward's mean and invstd.

    Training: the gradient flows through the batch mean and variance:
    dx = w * invstd * (dy - mean(dy) - x_hat * mean(dy * x_hat)).
    Eval: they are constants: dx = w * invstd * dy.
    """
    axes = _axes(x)
    x_hat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    grad_bias = grad_out.sum(axis=axes)
    grad_weight = (grad_out * x_hat).sum(axis=axes)
    w = weight if weight is not None else np.ones_like(mean)
    scale = _per_channel(w * invstd, x)
    if training:
        dy_mean = grad_out.mean(axis=axes, keepdims=True)
        dy_xhat_mean = (grad_out * x_hat).mean(axis=axes, keepdims=True)
        grad_x = scale * (grad_out - dy_mean - x_hat * dy_xhat_mean)
    else:
        grad_x = scale * grad_out
    return grad_x, grad_weight, grad_bias
