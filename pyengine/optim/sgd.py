"""Stochastic gradient descent (torch.optim.SGD), on the fused engine kernel."""

import numpy as np

from engine import optim as _kernels
from pyengine.optim.optimizer import Optimizer, _check_number

__all__ = ["SGD"]


class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov momentum and weight decay.

    The update, per parameter ``p`` with gradient ``g`` (as torch.optim.SGD)::

        g = -g if maximize else g
        g = g + weight_decay * p
        buf = g                                   (first step)
        buf = momentum * buf + (1 - dampening) * g  (later steps)
        g = g + momentum * buf if nesterov else buf   (when momentum != 0)
        p = p - lr * g

    runs in one fused pass over each parameter (``engine.optim.sgd_step``).

    Args:
        params: iterable of Parameters or of dicts (parameter groups).
        lr: learning rate (default 1e-3, as torch 2.x).
        momentum: momentum factor (default 0).
        dampening: dampening for momentum (default 0).
        weight_decay: L2 penalty (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
        maximize: maximise the objective instead of minimising it.

    State per parameter: ``momentum_buffer`` (only when momentum != 0).
    """

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            _check_number(group[name], name)
        if group["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {group['lr']}")
        if group["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {group['momentum']}")
        if group["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def step(self, closure=None):
        """One update of every parameter that has a gradient. Returns closure()."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = self._params_with_grad(group)
            if not params:
                continue
            hyper = dict(lr=float(group["lr"]), momentum=float(group["momentum"]),
                         dampening=float(group["dampening"]),
                         weight_decay=float(group["weight_decay"]),
                         nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]))
            if hyper["momentum"] == 0:
                _kernels.sgd_step([p.data for p in params], [p.grad for p in params],
                                  None, **hyper)
                continue
            # Parameters without a buffer yet start it from this step's
            # gradient (torch's lazy buffer), the others do the momentum update.
            has_buf = [self.state.get(p, {}).get("momentum_buffer") is not None for p in params]
            fresh = [p for p, has in zip(params, has_buf) if not has]
            ongoing = [p for p, has in zip(params, has_buf) if has]
            for p in fresh:
                self.state.setdefault(p, {})["momentum_buffer"] = np.empty_like(p.data)
            for subset, init in ((fresh, True), (ongoing, False)):
                if subset:
                    _kernels.sgd_step([p.data for p in subset], [p.grad for p in subset],
                                      [self.state[p]["momentum_buffer"] for p in subset],
                                      init_buffers=init, **hyper)
        return loss
