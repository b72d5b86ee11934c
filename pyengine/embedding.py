"""Embedding lookup table on the engine's embedding kernels, as torch.nn.Embedding."""

import numpy as np

from engine import embedding as _k
from pyengine import init
from pyengine.module import Module, Parameter, is_grad_enabled

__all__ = ["Embedding"]


class Embedding(Module):
    """A table of num_embeddings vectors of size embedding_dim, looked up by id.

    Args:
        num_embeddings: size of the vocabulary V.
        embedding_dim: size D of each vector.
        padding_idx: id whose row is zeroed at initialisation and never gets a
            gradient (negative values count from the end, as torch).
        dtype: float32 (default) or float64.

    Shape: integer ids of any shape (*) -> (*, embedding_dim). Float ids raise
    TypeError; ids outside [0, V) raise IndexError naming the bad id.
    Parameter: weight (num_embeddings, embedding_dim) ~ N(0, 1).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32):
        super().__init__()
        for name, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={v!r}")
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings. Received: "
                                 f"padding_idx={padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx = padding_idx
        self.weight = Parameter(np.empty((self.num_embeddings, self.embedding_dim), dtype))
        self._ids = None
        self.reset_parameters()

    def reset_parameters(self):
        init.normal_(self.weight.data)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, indices):
        out = _k.embedding_forward(self.weight.data, indices)
        self._ids = np.array(indices, dtype=np.int64) if is_grad_enabled() else None
        return out

    def backward(self, grad_out, input_grad=True):
        """Accumulates into weight.grad; ids have no gradient, so this returns None."""
        ids = self._saved("_ids")
        g = np.asarray(grad_out)
        want = ids.shape + (self.embedding_dim,)
        if g.shape != want:
            raise ValueError(f"Embedding.backward: grad_out must have shape {want}, "
                             f"got {g.shape}")
        w = self.weight
        if w.grad.shape != w.data.shape or w.grad.dtype != w.data.dtype:
            w.grad = np.zeros_like(w.data)
        _k.embedding_backward(g.astype(w.data.dtype, copy=False), ids, self.num_embeddings,
                              self.padding_idx, grad_weight=w.grad)
        return None

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s
