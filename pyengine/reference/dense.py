"""Dense layer: y = x W^T + b."""

import numpy as np

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, weight, bias=None):
    """x (N, in), weight (out, in), bias (out,) -> y (N, out)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def linear_backward(x, weight, grad_out):
    """Returns (dx, dW, db) for y = x W^T + b and upstream gradient dy."""
    dx = grad_out @ weight
    dW = grad_out.T @ x
    db = grad_out.sum(axis=0)
    return dx, dW, db
