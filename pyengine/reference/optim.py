"""Reference optimizer updates: torch.optim's single-tensor formulas in NumPy.

Each function takes the parameter, its gradient and its state as arrays and
returns NEW arrays (nothing is modified in place), one line per equation.
"""

import numpy as np

__all__ = ["sgd_update", "rmsprop_update", "adam_update", "adamw_update"]


def sgd_update(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0,
               weight_decay=0.0, nesterov=False, maximize=False):
    """One SGD step. Returns (new_param, new_momentum_buffer or None).

    Pass momentum_buffer=None on the first step (the buffer starts as d_p).
    """
    d_p = -grad if maximize else grad
    if weight_decay != 0:
        d_p = d_p + weight_decay * param
    buf = None
    if momentum != 0:
        if momentum_buffer is None:
            buf = d_p.copy()
        else:
            buf = momentum * momentum_buffer + (1 - dampening) * d_p
        d_p = d_p + momentum * buf if nesterov else buf
    return param - lr * d_p, buf


def rmsprop_update(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *,
                   lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                   centered=False, maximize=False):
    """One RMSprop step. Returns (param, square_avg, momentum_buffer, grad_avg).

    State starts at zeros; momentum_buffer is used when momentum > 0, grad_avg
    when centered.
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg = alpha * square_avg + (1 - alpha) * g * g
    if centered:
        grad_avg = grad_avg + (1 - alpha) * (g - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        momentum_buffer = momentum * momentum_buffer + g / avg
        param = param - lr * momentum_buffer
    else:
        param = param - lr * g / avg
    return param, square_avg, momentum_buffer, grad_avg


def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
                beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False,
                maximize=False, decoupled=False):
    """One Adam step (AdamW when decoupled). `step` counts from 1.

    Returns (param, exp_avg, exp_avg_sq, max_exp_avg_sq).
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg = beta1 * exp_avg + (1 - beta1) * g
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    if amsgrad:
        max_exp_avg_sq = np.maximum(max_exp_avg_sq, exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    denom = np.sqrt(second) / np.sqrt(bias_correction2) + eps
    param = param - (lr / bias_correction1) * exp_avg / denom
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


def adamw_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
                 beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
    """One AdamW step: Adam with decoupled weight decay p *= 1 - lr * weight_decay."""
    return adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr,
                       beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                       amsgrad=amsgrad, maximize=maximize, decoupled=True)
