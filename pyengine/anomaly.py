"""Anomaly detection: find the first module that produced a NaN or an Inf.

    with pe.detect_anomaly():
        loss = loss_fn(model(x), y)        # forward outputs are checked
        model.backward(loss_fn.backward()) # gradients are checked

Inside the context every ``Module.__call__`` checks its inputs and outputs,
and every module that ran a forward has its ``backward`` checked: the
gradient it returns and the ``.grad`` of its own parameters. The first
non-finite value raises :class:`AnomalyError` naming the module by its path
in the model (``Sequential.3 (Linear)``), the phase and the tensor.

Outside the context the cost is one global ``is None`` test per module call.
The switch is process-wide (not per thread): do not turn it on while other
threads run models whose errors you do not want raised.
"""

import threading
from contextlib import contextmanager

import numpy as np

from pyengine import module as _module

__all__ = ["AnomalyError", "detect_anomaly", "is_anomaly_enabled"]


class AnomalyError(FloatingPointError):
    """A NaN or Inf was produced inside ``detect_anomaly()``."""


class _Detector:
    """The state of one active ``detect_anomaly`` (installed as the module hook)."""

    def __init__(self, check_inputs):
        self.check_inputs = check_inputs
        self.lock = threading.Lock()
        self.stack = threading.local()   # the modules being called, per thread
        self.wrapped = []                # modules whose backward we wrapped
        self.parent = {}                 # id(child) -> (parent, name), learned on calls

    # -- naming ------------------------------------------------------------
    def name(self, mod):
        parts = []
        m, seen = mod, set()
        while id(m) in self.parent and id(m) not in seen:
            seen.add(id(m))
            parent, child_name = self.parent[id(m)]
            parts.append(child_name)
            m = parent
        path = ".".join([type(m).__name__] + parts[::-1])
        return f"{path} ({type(mod).__name__})" if parts else path

    def _learn_parent(self, parent, child):
        if id(child) in self.parent:
            return
        for name, c in parent._modules.items():
            if c is child:
                self.parent[id(child)] = (parent, name)
                return

    # -- the hook Module.__call__ runs -------------------------------------
    def call(self, mod, args, kwargs):
        stack = getattr(self.stack, "mods", None)
        if stack is None:
            stack = self.stack.mods = []
        if stack:
            self._learn_parent(stack[-1], mod)
        if self.check_inputs and not stack:
            # Only the outermost call checks its inputs: inside a model an
            # input is some other module's output, already checked.
            for i, a in enumerate(args):
                _check(a, lambda what, i=i: f"input {i} of {self.name(mod)} (given by the "
                       f"caller) {what}; the data itself is not finite")
        self._wrap_backward(mod)
        stack.append(mod)
        try:
            out = mod.forward(*args, **kwargs)
        finally:
            stack.pop()
        _check(out, lambda what: f"forward of {self.name(mod)} produced {what}")
        return out

    def _wrap_backward(self, mod):
        if "backward" in mod.__dict__:
            return
        bound = type(mod).backward.__get__(mod)
        detector = self

        def backward(*args, **kwargs):
            grad = bound(*args, **kwargs)
            _check(grad, lambda what: f"backward of {detector.name(mod)} produced {what} "
                   f"in the gradient it returned")
            for pname, p in mod._parameters.items():
                if p is not None:
                    _check(p.grad, lambda what, pname=pname: f"backward of {detector.name(mod)} "
                           f"produced {what} in {pname}.grad")
            return grad

        with self.lock:
            object.__setattr__(mod, "backward", backward)
            self.wrapped.append(mod)

    def remove(self):
        with self.lock:
            for mod in self.wrapped:
                mod.__dict__.pop("backward", None)
            self.wrapped.clear()


def _first_bad(a):
    """A description of the first non-finite value in `a`, or None."""
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "fc" or a.size == 0:
            return None
        finite = np.isfinite(a)
        if finite.all():
            return None
        idx = np.unravel_index(int(np.argmin(finite)), a.shape)
        value = a[idx]
        kind = "NaN" if np.isnan(value) else "Inf"
        return f"{kind} (first at index {tuple(int(i) for i in idx)} of an array of shape {a.shape})"
    if isinstance(a, (float, np.floating)):
        return None if np.isfinite(a) else ("NaN" if np.isnan(a) else "Inf") + " (a scalar)"
    return None


def _check(value, message):
    if isinstance(value, (tuple, list)):
        for v in value:
            _check(v, message)
        return
    bad = _first_bad(value)
    if bad is not None:
        raise AnomalyError(message(bad))


def is_anomaly_enabled():
    return _module._anomaly_hook is not None


@contextmanager
def detect_anomaly(check_inputs=True):
    """Raise :class:`AnomalyError` at the first module producing a NaN/Inf.

    Args:
        check_inputs: also reject non-finite data given to the outermost
            module (the error then says the input, not a module, was bad).

    Forward outputs (arrays, tuples of arrays, float losses), the gradients
    each ``backward`` returns and the parameter gradients each module
    accumulates are checked. Modules are named by their path, e.g.
    ``Sequential.2 (ReLU)``. Nesting is allowed (the outer detector stays).
    """
    if _module._anomaly_hook is not None:   # already active: nothing to add
        yield
        return
    detector = _Detector(check_inputs)
    _module._anomaly_hook = detector.call
    try:
        yield
    finally:
        _module._anomaly_hook = None
        detector.remove()
