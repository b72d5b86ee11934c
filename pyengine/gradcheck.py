"""Finite-difference gradient checking in float64 (central differences)."""

import numpy as np

from pyengine.module import Module

__all__ = ["gradcheck", "GradcheckError"]


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def _numeric_grad(f, x, eps):
    """d f() / d x by central differences, perturbing x in place."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def _compare(analytic, numeric, rtol, atol):
    """(worst relative error, passed) for one gradient.

    Passes when every |a - n| <= atol + rtol * |n| (torch.autograd.gradcheck's
    criterion). The relative error reported is |a - n| / max(|a|, |n|) over
    the elements whose magnitude exceeds atol (tiny ones are judged by atol).
    """
    if analytic.shape != numeric.shape:
        raise GradcheckError(f"gradient shape {analytic.shape} != input shape {numeric.shape}")
    if analytic.size == 0:
        return 0.0, True
    diff = np.abs(analytic - numeric)
    passed = bool(np.all(diff <= atol + rtol * np.abs(numeric)))
    mag = np.maximum(np.abs(analytic), np.abs(numeric))
    big = mag > atol
    rel = float(np.max(diff[big] / mag[big])) if np.any(big) else 0.0
    return rel, passed


def gradcheck(module_or_fn, inputs, grad_fn=None, *, eps=1e-6, rtol=1e-5, atol=1e-6,
              check_params=True, raise_exception=True, seed=0):
    """Compare analytic gradients with central finite differences in float64.

    The scalar checked is ``L = sum(w * output)`` for a fixed random ``w``, so
    every output element contributes with its own weight.

    module_or_fn: a ``pe.Module`` (its ``backward`` supplies the gradient of
        each input array and its parameters' ``.grad``), or a function
        ``fn(*inputs) -> array`` together with ``grad_fn(w, *inputs)`` that
        returns the gradients of ``sum(w * fn(*inputs))`` with respect to
        each input (a tuple; ``None`` for an input not to check).
    inputs: an array or a tuple of arrays; float arrays are converted to
        float64 copies (integer arrays, such as class labels, pass unchanged).
        For a module, only the first input is differentiated.

    Passes when every element satisfies ``|a - n| <= atol + rtol * |n|``.
    Returns the worst relative error ``|a - n| / max(|a|, |n|)`` seen (over
    elements larger than atol). Raises GradcheckError on failure unless
    ``raise_exception=False``.
    """
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    inputs = [np.array(x, dtype=np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x)
              for x in inputs]
    rng = np.random.default_rng(seed)
    report = {}

    if isinstance(module_or_fn, Module):
        module = module_or_fn
        params = list(module.named_parameters()) if check_params else []
        for _, p in params:
            if p.data.dtype != np.float64:
                raise TypeError("gradcheck needs a float64 module: convert its parameters "
                                "(e.g. pe.reference-style `p.data = p.data.astype(np.float64)`)")
        out = module(*inputs)
        w = rng.standard_normal(np.shape(out))
        module.zero_grad()
        dx = module.backward(w)

        def loss():
            return float(np.sum(w * module(*inputs)))

        report["input"] = _compare(np.asarray(dx), _numeric_grad(loss, inputs[0], eps),
                                   rtol, atol)
        for name, p in params:
            analytic = p.grad.copy()
            report[name] = _compare(analytic, _numeric_grad(loss, p.data, eps), rtol, atol)
    else:
        fn = module_or_fn
        if grad_fn is None:
            raise ValueError("gradcheck on a function needs grad_fn(w, *inputs)")
        out = fn(*inputs)
        w = rng.standard_normal(np.shape(out))
        grads = grad_fn(w, *inputs)
        if not isinstance(grads, (tuple, list)):
            grads = (grads,)
        for i, (x, g) in enumerate(zip(inputs, grads)):
            if g is None or x.dtype.kind != "f":
                continue

            def loss():
                return float(np.sum(w * fn(*inputs)))

            report[f"input{i}"] = _compare(np.asarray(g, np.float64),
                                           _numeric_grad(loss, x, eps), rtol, atol)

    worst = max((rel for rel, _ in report.values()), default=0.0)
    bad = {k: rel for k, (rel, ok) in report.items() if not ok}
    if raise_exception and bad:
        raise GradcheckError(f"gradcheck failed (rtol={rtol}, atol={atol}): "
                             f"worst relative errors {bad}")
    return worst
