"""Activations in plain NumPy: forward and backward, the textbook formulas.

Backward functions take the forward input ``x`` and the upstream gradient
``dy`` and return ``dx`` (softmax and log_softmax work over the last axis).
"""

import math

import numpy as np

__all__ = [
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward",
    "tanh_forward", "tanh_backward",
    "softplus_forward", "softplus_backward",
    "gelu_forward", "gelu_backward",
    "softmax_forward", "softmax_backward",
    "log_softmax_forward", "log_softmax_backward",
]

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def relu_forward(x):
    return np.where(x > 0, x, 0).astype(x.dtype)


def relu_backward(x, dy):
    return np.where(x > 0, dy, 0).astype(x.dtype)


def leaky_relu_forward(x, negative_slope=0.01):
    return np.where(x > 0, x, negative_slope * x).astype(x.dtype)


def leaky_relu_backward(x, dy, negative_slope=0.01):
    return np.where(x > 0, dy, negative_slope * dy).astype(x.dtype)


def sigmoid_forward(x):
    # exp(-|x|) cannot overflow: x >= 0 -> 1/(1+e), x < 0 -> e/(1+e)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def sigmoid_backward(x, dy):
    s = sigmoid_forward(x)
    return dy * s * (1 - s)


def tanh_forward(x):
    return np.tanh(x)


def tanh_backward(x, dy):
    return dy * (1 - np.tanh(x) ** 2)


def softplus_forward(x, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta; x itself where beta x > threshold (torch)."""
    z = beta * x
    soft = np.logaddexp(0, z) / beta
    return np.where(z > threshold, x, soft).astype(x.dtype)


def softplus_backward(x, dy, beta=1.0, threshold=20.0):
    z = beta * x
    return np.where(z > threshold, dy, dy * sigmoid_forward(z)).astype(x.dtype)


def gelu_forward(x, approximate="none"):
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)
    cdf = 0.5 * _erfc(-x / math.sqrt(2))      # Phi(x), accurate for x < 0 too
    return (x * cdf).astype(x.dtype)


def gelu_backward(x, dy, approximate="none"):
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        t = np.tanh(k * (x + 0.044715 * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * k * (1 + 3 * 0.044715 * x ** 2)
        return (dy * d).astype(x.dtype)
    cdf = 0.5 * _erfc(-x / math.sqrt(2))      # Phi(x), accurate for x < 0 too
    pdf = np.exp(-0.5 * x ** 2) / math.sqrt(2 * math.pi)
    return (dy * (cdf + x * pdf)).astype(x.dtype)


def softmax_forward(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(x, dy):
    """dx_i = y_i (dy_i - sum_j dy_j y_j): the softmax Jacobian times dy."""
    y = softmax_forward(x)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax_forward(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_backward(x, dy):
    return dy - softmax_forward(x) * dy.sum(axis=-1, keepdims=True)
