"""RMSprop (torch.optim.RMSprop), on the fused engine kernel."""

import numpy as np

from engine import optim as _kernels
from pyengine.optim.optimizer import Optimizer, _check_number

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    """RMSprop, optionally centered and with momentum (torch.optim.RMSprop math)::

        g = -g if maximize else g
        g = g + weight_decay * p
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        grad_avg = lerp(grad_avg, g, 1 - alpha)                  (centered)
        avg = sqrt(square_avg - grad_avg**2 if centered else square_avg) + eps
        buf = momentum * buf + g / avg;  p = p - lr * buf       (momentum > 0)
        p = p - lr * g / avg                                     (otherwise)

    Args:
        params: iterable of Parameters or of dicts (parameter groups).
        lr: learning rate (default 1e-2).
        alpha: smoothing constant (default 0.99).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty (default 0).
        momentum: momentum factor (default 0).
        centered: normalise by the estimated variance of the gradient.
        maximize: maximise the objective instead of minimising it.

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (when
    momentum > 0), ``grad_avg`` (when centered).
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, maximize=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        for name in ("lr", "alpha", "eps", "weight_decay", "momentum"):
            _check_number(group[name], name)
        if group["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["eps"] < 0.0:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        if group["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if group["alpha"] < 0.0:
            raise ValueError(f"Invalid alpha value: {group['alpha']}")

    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure()."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            momentum = float(group["momentum"])
            centered = bool(group["centered"])
            for p in params:
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = 0.0
                    state["square_avg"] = np.zeros_like(p.data)
                    if momentum > 0:
                        state["momentum_buffer"] = np.zeros_like(p.data)
                    if centered:
                        state["grad_avg"] = np.zeros_like(p.data)
                # A group may gain momentum/centering after its first step.
                if momentum > 0 and "momentum_buffer" not in state:
                    state["momentum_buffer"] = np.zeros_like(p.data)
                if centered and "grad_avg" not in state:
                    state["grad_avg"] = np.zeros_like(p.data)
                state["step"] += 1
            states = [self.state[p] for p in params]
            _kernels.rmsprop_step(
                [p.data for p in params], [p.grad for p in params],
                [s["square_avg"] for s in states],
                [s["momentum_buffer"] for s in states] if momentum > 0 else None,
                [s["grad_avg"] for s in states] if centered else None,
                lr=float(group["lr"]), alpha=float(group["alpha"]), eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]), momentum=momentum,
                centered=centered, maximize=bool(group["maximize"]))
        return loss
