"""Moving weights between pyengine and PyTorch.

Layer names, weight shapes and ``state_dict`` keys match ``torch.nn`` (see
DESIGN.md), so the same architecture written with both libraries exchanges
weights through plain dicts:

    import torch, pyengine as pe
    model.load_state_dict(pe.from_torch(torch_model.state_dict()))   # torch -> here
    torch_model.load_state_dict(pe.to_torch_state_dict(model))       # here -> torch

torch is optional: it is imported only inside these functions.
"""

from collections import OrderedDict

import numpy as np

__all__ = ["from_torch", "to_torch_state_dict"]


def _is_tensor(value):
    return hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy")


def from_torch(state_dict, dtype=None):
    """A PyTorch ``state_dict`` (or ``nn.Module``) as a dict of NumPy arrays.

    Args:
        state_dict: a mapping of names to torch tensors (``module.state_dict()``),
            or an ``nn.Module`` (its ``state_dict()`` is taken).
        dtype: cast floating-point entries to this dtype (e.g. ``np.float32``);
            default keeps torch's dtype. Integer entries (BatchNorm's
            ``num_batches_tracked``) stay integers.

    Returns:
        ``OrderedDict`` name -> ``np.ndarray`` (copies: later changes on either
        side do not leak), ready for ``model.load_state_dict``.
    """
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
        state_dict = state_dict.state_dict()
    out = OrderedDict()
    for key, value in state_dict.items():
        if _is_tensor(value):
            value = value.detach().cpu()
            if str(value.dtype) == "torch.bfloat16":   # no NumPy bfloat16
                value = value.float()
            value = value.numpy()
        arr = np.array(value, copy=True)
        if dtype is not None and arr.dtype.kind == "f":
            arr = arr.astype(dtype)
        out[key] = arr
    return out


def to_torch_state_dict(model, dtype=None):
    """A pyengine model's (or state dict's) weights as torch tensors.

    Args:
        model: a ``pe.Module`` (its ``state_dict()`` is taken) or a mapping of
            names to arrays.
        dtype: optional torch dtype for the floating-point entries (e.g.
            ``torch.float64``); default keeps the NumPy dtype.

    Returns:
        ``OrderedDict`` name -> ``torch.Tensor`` (owning copies), for
        ``torch_module.load_state_dict``. 0-d integer entries such as
        ``num_batches_tracked`` become int64 scalars, as torch stores them.
    """
    import torch   # optional dependency, imported only here

    state = model.state_dict() if hasattr(model, "state_dict") else model
    out = OrderedDict()
    for key, value in state.items():
        arr = np.array(value, copy=True)
        if arr.dtype.kind in "iu" and arr.ndim == 0:
            t = torch.tensor(int(arr), dtype=torch.int64)
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr))
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
        out[key] = t
    return out
