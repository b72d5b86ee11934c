"""Parameter initialisation with torch.nn.init's distributions (pe.manual_seed seeds them)."""

import math

import numpy as np

from pyengine._random import get_rng

__all__ = ["calculate_fan_in_and_fan_out", "calculate_gain", "uniform_", "normal_",
           "zeros_", "ones_", "constant_", "kaiming_uniform_", "kaiming_normal_",
           "xavier_uniform_", "xavier_normal_"]


def calculate_fan_in_and_fan_out(shape):
    if len(shape) < 2:
        raise ValueError(f"fan in/out needs at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    if nonlinearity in ("linear", "conv1d", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def _fill(array, values):
    array[...] = values.astype(array.dtype, copy=False)
    return array


def uniform_(array, a=0.0, b=1.0):
    return _fill(array, get_rng().uniform(a, b, size=array.shape))


def normal_(array, mean=0.0, std=1.0):
    return _fill(array, get_rng().normal(mean, std, size=array.shape))


def zeros_(array):
    array[...] = 0
    return array


def ones_(array):
    array[...] = 1
    return array


def constant_(array, value):
    array[...] = value
    return array


def _fan(shape, mode):
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He initialisation, uniform: bound = gain * sqrt(3 / fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(array.shape, mode))
    bound = math.sqrt(3.0) * std
    return uniform_(array, -bound, bound)


def kaiming_normal_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He initialisation, normal: std = gain / sqrt(fan)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(array.shape, mode))
    return normal_(array, 0.0, std)


def xavier_uniform_(array, gain=1.0):
    """Glorot initialisation, uniform: bound = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(array, -bound, bound)


def xavier_normal_(array, gain=1.0):
    fan_in, fan_out = calculate_fan_in_and_fan_out(array.shape)
    return normal_(array, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))
