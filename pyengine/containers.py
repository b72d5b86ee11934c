"""Containers beyond Sequential: Residual (skip connections) and Concat (branches).

Both feed one input to several paths, so their backward sums the input
gradients of the paths (the input fans out), and both pass ``input_grad``
on: with ``input_grad=False`` every path still accumulates its parameter
gradients but none computes a gradient for the shared input.
"""

import numpy as np

from pyengine.module import Module, is_grad_enabled

__all__ = ["Residual", "Concat"]


class Residual(Module):
    """``block(x) + shortcut(x)``; the shortcut is the identity when None.

    Args:
        block: the residual branch (any Module, usually a Sequential).
        shortcut: a Module for the skip path (e.g. a strided 1x1 conv +
            BatchNorm projection when the block changes the shape), or None.

    Children are named ``block`` and ``shortcut`` (state_dict keys
    ``block.0.weight``, ``shortcut.0.weight``, ...). The two outputs must have
    the same shape.
    """

    def __init__(self, block, shortcut=None):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"Residual: block must be a Module, got {type(block).__name__}")
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"Residual: shortcut must be a Module or None, "
                            f"got {type(shortcut).__name__}")
        self.block = block
        self.shortcut = shortcut

    def forward(self, x):
        y = self.block(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if np.shape(y) != np.shape(s):
            raise ValueError(f"Residual: block output shape {np.shape(y)} differs from "
                             f"shortcut output shape {np.shape(s)}")
        return y + s

    def backward(self, grad_out, input_grad=True):
        grad_block = self.block.backward(grad_out, input_grad=input_grad)
        if self.shortcut is None:
            grad_skip = grad_out
        else:
            grad_skip = self.shortcut.backward(grad_out, input_grad=input_grad)
        if not input_grad:
            return None
        return grad_block + grad_skip   # a new array: grad_out may be returned as is

    def extra_repr(self):
        return "identity shortcut" if self.shortcut is None else ""


class Concat(Module):
    """Runs every branch on the same input and concatenates the outputs.

    Args:
        *branches: Modules (children named ``0``, ``1``, ...).
        axis: the axis to concatenate along (default 1: channels for NCHW,
            features for (N, F)). The outputs must agree on every other axis.
    """

    def __init__(self, *branches, axis=1):
        super().__init__()
        if not branches:
            raise ValueError("Concat needs at least one branch")
        for i, b in enumerate(branches):
            if not isinstance(b, Module):
                raise TypeError(f"Concat: branch {i} is not a Module: {type(b).__name__}")
            self.add_module(str(i), b)
        self.axis = axis
        self._sizes = None

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, idx):
        return list(self._modules.values())[idx]

    def forward(self, x):
        outs = [b(x) for b in self._modules.values()]
        y = np.concatenate(outs, axis=self.axis)
        ax = self.axis % y.ndim
        self._sizes = [o.shape[ax] for o in outs] if is_grad_enabled() else None
        return y

    def backward(self, grad_out, input_grad=True):
        sizes = self._saved("_sizes")
        grad_out = np.asarray(grad_out)
        ax = self.axis % grad_out.ndim
        if grad_out.shape[ax] != sum(sizes):
            raise ValueError(f"Concat.backward: grad_out has {grad_out.shape[ax]} entries "
                             f"along axis {self.axis}, the forward output had {sum(sizes)}")
        pieces = np.split(grad_out, np.cumsum(sizes)[:-1], axis=ax)
        grad_x = None
        for branch, g in zip(self._modules.values(), pieces):
            gi = branch.backward(np.ascontiguousarray(g), input_grad=input_grad)
            if input_grad:
                grad_x = gi.copy() if grad_x is None else grad_x + gi
        return grad_x

    def extra_repr(self):
        return f"axis={self.axis}"
