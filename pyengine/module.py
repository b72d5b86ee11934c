"""Parameter, Module, Sequential and the no_grad switch.

A Module's ``forward`` keeps what its ``backward`` needs on the module itself
(until the next forward). ``backward(grad_out)`` returns the gradient with
respect to the module's input and *accumulates* into ``p.grad`` of its
parameters, like PyTorch's autograd accumulates into ``.grad``.
"""

import threading
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

__all__ = ["Parameter", "Module", "Sequential", "no_grad", "is_grad_enabled"]

_grad_state = threading.local()

# Set by pyengine.anomaly.detect_anomaly() to a checker; None on the normal
# path, so Module.__call__ pays one global test.
_anomaly_hook = None

# Sequential runs a layer of a type in _RELU_PRODUCERS followed by a module of
# a type in _RELU_TYPES as one kernel call: `layer._forward(x, True)` returns
# max(layer(x), 0) (the same bits) and the ReLU keeps what its backward needs.
# Exact types only (a subclass may change forward); filled by conv.py,
# linear.py and activation.py.
_RELU_PRODUCERS = set()
_RELU_TYPES = set()
# Sequential.backward hands a module of a type in _RELU_CONSUMERS that follows
# a ReLU both gradients in one call, `m._backward_after_relu(g, relu,
# input_grad)` (max pooling masks its small output gradient instead of the
# ReLU masking the large input one; the same bits). Filled by pool.py.
_RELU_CONSUMERS = set()


def is_grad_enabled():
    """False inside ``with pe.no_grad():`` (per Python thread)."""
    return getattr(_grad_state, "enabled", True)


@contextmanager
def no_grad():
    """Inference mode: forward keeps nothing for backward (lean, thread-safe).

    The flag is per Python thread, so one thread may run inference while
    another trains a different model.
    """
    prev = is_grad_enabled()
    _grad_state.enabled = False
    try:
        yield
    finally:
        _grad_state.enabled = prev


class Parameter:
    """A trainable array: ``.data`` and ``.grad`` (same shape and dtype)."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data, requires_grad=True):
        data = np.asarray(data)
        if data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter data must be float32 or float64, got {data.dtype}")
        # np.ascontiguousarray would turn a 0-d array into shape (1,).
        self.data = data if data.flags.c_contiguous else data.copy(order="C")
        self.grad = np.zeros_like(self.data)
        self.requires_grad = requires_grad

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and container.

    Subclasses set parameters and sub-modules as attributes (they register
    themselves, in assignment order) and implement ``forward(x)`` and
    ``backward(grad_out, input_grad=True)``. Buffers (running statistics
    and other state that is saved but not trained) are registered with
    ``register_buffer(name, array)``.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    # Per-shape caches of validated kernel arguments (Conv2d, MaxPool2d,
    # Sequential): rebuilt on the next forward, so copies and pickles leave
    # them out.
    _CACHE_ATTRS = ("_plan", "_plan_args", "_steps_cache")

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in Module._CACHE_ATTRS:
            state.pop(name, None)
        return state

    # -- registration ---------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}.__init__ must call super().__init__() "
                "before assigning attributes")
        params, modules, buffers = self._parameters, self._modules, self._buffers
        if isinstance(value, Parameter):
            modules.pop(name, None)
            buffers.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in buffers:  # reassigning a buffer keeps it a buffer
            buffers[name] = value
        elif name in params or name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: "
                                "it is a registered Parameter/Module (use None to remove)")
            (params if name in params else modules)[name] = None
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for d in (self._parameters, self._modules, self._buffers):
            d.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, value):
        """Register saved, non-trained state (appears in state_dict)."""
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name} is not a Module: {type(module).__name__}")
        setattr(self, str(name), module)

    # -- computation ----------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def backward(self, grad_out, input_grad=True):
        raise NotImplementedError(f"{type(self).__name__} has no backward()")

    def __call__(self, *args, **kwargs):
        if _anomaly_hook is not None:
            return _anomaly_hook(self, args, kwargs)
        return self.forward(*args, **kwargs)

    def _saved(self, attr):
        """Fetch what forward kept for backward, or raise a clear error."""
        value = self.__dict__.get(attr)
        if value is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called without a forward pass "
                "that kept its inputs (was forward run under pe.no_grad(), or "
                "backward already consumed it?)")
        return value

    # -- traversal ------------------------------------------------------
    def children(self):
        return iter(m for m in self._modules.values() if m is not None)

    def named_children(self):
        return iter((n, m) for n, m in self._modules.items() if m is not None)

    def modules(self):
        yield self
        for child in self.children():
            yield from child.modules()

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        seen = set()
        for mod_prefix, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mod_prefix, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    # -- modes ----------------------------------------------------------
    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    # -- state ----------------------------------------------------------
    def state_dict(self):
        """Parameters and buffers by dotted name, as copies (PyTorch's keys)."""
        out = OrderedDict()
        for mod_prefix, mod in self.named_modules():
            for name, p in mod._parameters.items():
                if p is not None:
                    out[f"{mod_prefix}.{name}" if mod_prefix else name] = p.data.copy()
            for name, b in mod._buffers.items():
                if b is not None:
                    out[f"{mod_prefix}.{name}" if mod_prefix else name] = np.array(b, copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays into parameters and buffers in place.

        Values may be NumPy arrays, anything ``np.asarray`` accepts, or 0-d
        integers (BatchNorm's ``num_batches_tracked``). Shapes must match.
        Nothing is changed if any key or shape is wrong (strict) or any shape
        is wrong (non-strict). Returns ``(missing_keys, unexpected_keys)``.
        """
        targets = OrderedDict()
        for mod_prefix, mod in self.named_modules():
            for name, p in mod._parameters.items():
                if p is not None:
                    targets[f"{mod_prefix}.{name}" if mod_prefix else name] = (mod, name, "param")
            for name, b in mod._buffers.items():
                if b is not None:
                    targets[f"{mod_prefix}.{name}" if mod_prefix else name] = (mod, name, "buffer")
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        staged, bad = [], []
        for key, (mod, name, kind) in targets.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            current = mod._parameters[name].data if kind == "param" else np.asarray(mod._buffers[name])
            if value.shape != current.shape:
                bad.append(f"{key}: expected {current.shape}, got {value.shape}")
                continue
            if kind == "param" and value.dtype.kind not in "fiu":
                bad.append(f"{key}: dtype {value.dtype} is not numeric")
                continue
            staged.append((mod, name, kind, value, current))
        if bad:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(bad))
        for mod, name, kind, value, current in staged:
            if kind == "param":
                mod._parameters[name].data[...] = value
            elif isinstance(current, np.ndarray) and current.ndim > 0:
                current[...] = value
            else:
                b = mod._buffers[name]
                new = np.array(value, dtype=np.asarray(b).dtype)
                mod._buffers[name] = new
                object.__setattr__(mod, name, new)
        return missing, unexpected

    # -- printing -------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ")
                 for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class Sequential(Module):
    """Chain of modules; backward runs them in reverse.

    ``backward(g, input_grad=False)`` passes the flag to the first child only
    (the others must return the gradient for their predecessor).
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: element {name} is not a Module: {type(m).__name__}")
            self.add_module(name, m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return Sequential(*mods[idx])
        return mods[idx]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def _steps(self):
        """[(module, fused ReLU or None)], rebuilt when the children change."""
        mods = tuple(self._modules.values())
        cached = self.__dict__.get("_steps_cache")
        if cached is not None and cached[0] == mods:
            return cached[1]
        steps, i = [], 0
        while i < len(mods):
            m = mods[i]
            r = mods[i + 1] if i + 1 < len(mods) else None
            if type(m) in _RELU_PRODUCERS and type(r) in _RELU_TYPES:
                steps.append((m, r))
                i += 2
            else:
                steps.append((m, None))
                i += 1
        self.__dict__["_steps_cache"] = (mods, steps)
        return steps

    def forward(self, x):
        if _anomaly_hook is not None:   # check every module's own output
            for m in self._modules.values():
                x = m(x)
            return x
        for m, relu in self._steps():
            if relu is None:
                x = m(x)
            else:
                x = m._forward(x, True)
                relu.__dict__["_kept"] = x if is_grad_enabled() else None
        return x

    def backward(self, grad_out, input_grad=True):
        mods = list(self._modules.values())
        g = grad_out
        i = len(mods) - 1
        while i >= 0:
            m = mods[i]
            if (i >= 1 and _anomaly_hook is None and type(m) in _RELU_CONSUMERS
                    and type(mods[i - 1]) in _RELU_TYPES):
                g = m._backward_after_relu(g, mods[i - 1], input_grad if i == 1 else True)
                i -= 2
            else:
                g = m.backward(g, input_grad=input_grad if i == 0 else True)
                i -= 1
        return g
