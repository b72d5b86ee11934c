"""Reference dropout: the mask is an input (1 = keep), so the reference is exact."""

import numpy as np

__all__ = ["dropout_forward", "dropout_backward"]


def dropout_forward(x, mask, p):
    """y = x * mask / (1 - p); zeros when p == 1."""
    if p == 1:
        return np.zeros_like(x)
    return x * mask / (1 - p)


def dropout_backward(grad_out, mask, p):
    """d x = grad_out * mask / (1 - p); zeros when p == 1."""
    if p == 1:
        return np.zeros_like(grad_out)
    return grad_out * mask / (1 - p)
