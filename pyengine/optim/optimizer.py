"""The Optimizer base class: parameter groups, per-parameter state, state_dict.

Mirrors ``torch.optim.Optimizer``: ``param_groups`` is a list of dicts, each
holding ``'params'`` (a list of Parameters) and that group's
hyperparameters; ``state`` maps each Parameter to a dict of its buffers
(created lazily on the first ``step``). ``state_dict()`` uses torch's layout,
with parameters replaced by their index in group order:
``{'state': {0: {...}, 1: {...}}, 'param_groups': [{'lr': ..., 'params': [0, 1]}]}``.
"""

import copy
import numbers

import numpy as np

from pyengine.module import Parameter

__all__ = ["Optimizer"]


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


def _to_numpy(value):
    """Torch tensors (from a torch state_dict) become NumPy; the rest is unchanged."""
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    return value


class Optimizer:
    """Base class of every optimizer.

    Args:
        params: an iterable of Parameters, or of dicts (parameter groups),
            each with a ``'params'`` entry and optional hyperparameters that
            override ``defaults`` for that group.
        defaults: dict of the default hyperparameters.

    Subclasses implement ``step()`` over ``self.param_groups``.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError("params argument given to the optimizer should be an iterable "
                            f"of Parameters or dicts, but got {type(params).__name__}")
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group of parameters (a dict with 'params' and hyperparameters)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered "
                            "collections, but the ordering of sets changes between runs; "
                            "use a list")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize Parameters, got {type(p).__name__}")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        group = dict(param_group)
        group["params"] = params
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        self._check_group(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def _check_group(self, group):
        """Validate one group's hyperparameters (subclasses override)."""

    # -- gradients -------------------------------------------------------
    def zero_grad(self, set_to_none=False):
        """Zero the gradients of every parameter.

        ``set_to_none`` is accepted for PyTorch compatibility, but both values
        zero the gradient arrays in place: modules accumulate into ``p.grad``
        with ``+=`` and the array is reused from step to step (no allocation).
        """
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.fill(0)

    def step(self, closure=None):
        raise NotImplementedError

    def _params_with_grad(self, group):
        return [p for p in group["params"]
                if p.grad is not None and getattr(p, "requires_grad", True)]

    # -- state -----------------------------------------------------------
    def state_dict(self):
        """Torch's layout, with copies of the state arrays.

        ``{'state': {index: {name: value}}, 'param_groups': [{..., 'params': [indices]}]}``,
        indices numbering the parameters across groups in order.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                       for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict from ``state_dict()`` (or torch's, tensors converted).

        Buffers are copied and cast to their parameter's dtype; the groups'
        hyperparameters are replaced by the loaded ones.
        """
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups "
                             f"({len(saved_groups)}) than the optimizer ({len(groups)})")
        for g, sg in zip(groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group ({len(sg['params'])} "
                                 f"vs {len(g['params'])})")
        id_map = {}
        for g, sg in zip(groups, saved_groups):
            for idx, p in zip(sg["params"], g["params"]):
                id_map[idx] = p
        new_state = {}
        for key, values in state_dict["state"].items():
            key = int(_to_numpy(key)) if not isinstance(key, int) else key
            if key not in id_map:
                raise ValueError(f"loaded state dict has state for parameter index {key}, "
                                 "which is in no parameter group")
            p = id_map[key]
            new_state[p] = {name: self._load_value(name, _to_numpy(v), p)
                            for name, v in values.items()}
        new_groups = []
        for g, sg in zip(groups, saved_groups):
            ng = {k: copy.deepcopy(_to_numpy(v)) for k, v in sg.items() if k != "params"}
            if "betas" in ng:
                ng["betas"] = tuple(float(b) for b in ng["betas"])
            ng["params"] = g["params"]
            new_groups.append(ng)
        self.state = new_state
        self.param_groups = new_groups

    @staticmethod
    def _load_value(name, value, p):
        if name == "step":
            return float(np.asarray(value))
        if isinstance(value, np.ndarray):
            if value.shape != p.data.shape:
                raise ValueError(f"state {name!r} has shape {value.shape}, its parameter "
                                 f"has shape {p.data.shape}")
            return np.array(value, dtype=p.data.dtype, order="C", copy=True)
        return copy.deepcopy(value)

    # -- printing --------------------------------------------------------
    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def _check_number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    if value != value:
        raise ValueError(f"Invalid {name}: {value}")
