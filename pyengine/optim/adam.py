"""Adam and AdamW (torch.optim.Adam / AdamW), on the fused engine kernel."""

import numpy as np

from engine import optim as _kernels
from pyengine.optim.optimizer import Optimizer, _check_number

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (torch.optim.Adam math)::

        g = -g if maximize else g
        g = g + weight_decay * p               (Adam: L2 in the gradient)
        p = p * (1 - lr * weight_decay)         (AdamW: decoupled decay instead)
        m = lerp(m, g, 1 - beta1)
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                   (amsgrad; used instead of v below)
        denom = sqrt(v) / sqrt(1 - beta2**step) + eps
        p = p - lr / (1 - beta1**step) * m / denom

    Args:
        params: iterable of Parameters or of dicts (parameter groups).
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty (default 0).
        amsgrad: use the running maximum of v (AMSGrad).
        maximize: maximise the objective instead of minimising it.

    State per parameter: ``step`` (a float, as torch's), ``exp_avg``,
    ``exp_avg_sq`` and ``max_exp_avg_sq`` (when amsgrad).
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, maximize=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        for name in ("lr", "eps", "weight_decay"):
            _check_number(group[name], name)
        if group["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["eps"] < 0.0:
            raise ValueError(f"Invalid epsilon value: {group['eps']}")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            _check_number(beta, f"betas[{i}]")
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        group["betas"] = (float(betas[0]), float(betas[1]))
        if group["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")

    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure()."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            amsgrad = bool(group["amsgrad"])
            for p in params:
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = 0.0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                    if amsgrad:
                        state["max_exp_avg_sq"] = np.zeros_like(p.data)
                if amsgrad and "max_exp_avg_sq" not in state:
                    state["max_exp_avg_sq"] = np.zeros_like(p.data)
                state["step"] += 1
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            _kernels.adam_step(
                [p.data for p in params], [p.grad for p in params],
                [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if amsgrad else None,
                [s["step"] for s in states],
                lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]), decoupled=self._decoupled,
                amsgrad=amsgrad, maximize=bool(group["maximize"]))
        return loss


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay ``p *= 1 - lr * weight_decay``
    applied before the Adam update (torch.optim.AdamW math).

    Same arguments as :class:`Adam`; ``weight_decay`` defaults to 1e-2.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
