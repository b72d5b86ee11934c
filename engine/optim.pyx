"""Fused in-place optimizer updates (SGD, RMSprop, Adam/AdamW).

One pass over each parameter buffer: the gradient transform, the state
update and the parameter update happen in one loop, element by element, with
the operations of torch.optim's single-tensor path in the same order. The
elements are cut into fixed chunks (CHUNK_ELEMS, independent of the thread
count) that OpenMP threads take in turn; every element is computed the same
way whatever thread runs it, so results are identical for any thread count.

The Python entries take a list of parameter arrays (and matching lists of
gradients and state buffers) so one call updates a whole parameter group,
which keeps per-parameter Python overhead low.
"""

import numpy as np
from libc.math cimport sqrt
from cython.parallel cimport prange

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, engine_ftz_enter,
                             engine_ftz_exit, ceil_div)
from engine._threads cimport engine_num_threads

# Elements per chunk: large enough that a chunk amortises the scheduling,
# small enough that a 1M-parameter tensor still splits across threads.
cdef enum:
    CHUNK_ELEMS = 32768
CHUNK_SIZE = CHUNK_ELEMS


# ---------------------------------------------------------------- SGD
cdef void _sgd_chunk(floating* p, const floating* g, floating* buf,
                     Py_ssize_t lo, Py_ssize_t hi, const SGDParams* hp) noexcept nogil:
    cdef floating neg_lr = <floating>(-hp.lr)
    cdef floating wd = <floating>hp.weight_decay
    cdef floating mom = <floating>hp.momentum
    cdef floating keep = <floating>(1.0 - hp.dampening)
    cdef floating sign = -1 if hp.maximize else 1
    cdef bint use_wd = hp.weight_decay != 0
    cdef bint use_mom = hp.momentum != 0
    cdef bint init = hp.init_buffer
    cdef bint nesterov = hp.nesterov
    cdef Py_ssize_t i
    cdef floating d
    # The flags are loop-invariant; gcc -O3 unswitches the loop on them.
    for i in range(lo, hi):
        d = sign * g[i]
        if use_wd:
            d = d + wd * p[i]
        if use_mom:
            if init:
                buf[i] = d
            else:
                buf[i] = buf[i] * mom + keep * d
            if nesterov:
                d = d + mom * buf[i]
            else:
                d = buf[i]
        p[i] = p[i] + neg_lr * d


cdef int sgd_update(floating* param, const floating* grad,
                    floating* momentum_buffer, Py_ssize_t n,
                    const SGDParams* hp) noexcept nogil:
    cdef Py_ssize_t nchunks, c, lo
    cdef unsigned int mode
    if n < 0 or (n > 0 and (param == NULL or grad == NULL or
                            (hp.momentum != 0 and momentum_buffer == NULL))):
        return ENGINE_EBADARG
    # One chunk runs on the calling thread (waking the team costs more than it).
    nchunks = ceil_div(n, CHUNK_ELEMS)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * CHUNK_ELEMS
        mode = engine_ftz_enter()
        _sgd_chunk(param, grad, momentum_buffer, lo, min(n, lo + CHUNK_ELEMS), hp)
        engine_ftz_exit(mode)
    return ENGINE_OK


# ---------------------------------------------------------------- RMSprop
cdef inline void _rmsprop_loop(floating* p, const floating* g, floating* sq,
                               floating* buf, floating* gavg,
                               Py_ssize_t lo, Py_ssize_t hi, const RMSpropParams* hp,
                               bint centered, bint use_mom) noexcept nogil:
    # Called with constant `centered` / `use_mom`: after inlining, each call
    # is a branch-free loop that vectorises (the other flags only select values).
    cdef floating neg_lr = <floating>(-hp.lr)
    cdef floating wd = <floating>hp.weight_decay
    cdef floating alpha = <floating>hp.alpha
    cdef floating w = <floating>(1.0 - hp.alpha)
    cdef floating eps = <floating>hp.eps
    cdef floating mom = <floating>hp.momentum
    cdef floating sign = -1 if hp.maximize else 1
    cdef bint use_wd = hp.weight_decay != 0
    cdef bint small = w < 0.5 and w > -0.5           # torch.lerp's formula choice
    cdef Py_ssize_t i
    cdef floating d, s, ga, avg, b
    for i in range(lo, hi):
        d = sign * g[i] + (wd * p[i] if use_wd else 0)
        s = sq[i] * alpha + w * d * d
        sq[i] = s
        if centered:
            ga = gavg[i] + w * (d - gavg[i]) if small else d - (d - gavg[i]) * (1 - w)
            gavg[i] = ga
            avg = sqrt(s + (-1) * ga * ga) + eps
        else:
            avg = sqrt(s) + eps
        if use_mom:
            b = buf[i] * mom + d / avg
            buf[i] = b
            p[i] = p[i] + neg_lr * b
        else:
            p[i] = p[i] + neg_lr * d / avg


cdef void _rmsprop_chunk(floating* p, const floating* g, floating* sq,
                         floating* buf, floating* gavg,
                         Py_ssize_t lo, Py_ssize_t hi,
                         const RMSpropParams* hp) noexcept nogil:
    if hp.centered:
        if hp.momentum > 0:
            _rmsprop_loop(p, g, sq, buf, gavg, lo, hi, hp, True, True)
        else:
            _rmsprop_loop(p, g, sq, buf, gavg, lo, hi, hp, True, False)
    elif hp.momentum > 0:
        _rmsprop_loop(p, g, sq, buf, gavg, lo, hi, hp, False, True)
    else:
        _rmsprop_loop(p, g, sq, buf, gavg, lo, hi, hp, False, False)


cdef int rmsprop_update(floating* param, const floating* grad,
                        floating* square_avg, floating* momentum_buffer,
                        floating* grad_avg, Py_ssize_t n,
                        const RMSpropParams* hp) noexcept nogil:
    cdef Py_ssize_t nchunks, c, lo
    cdef unsigned int mode
    if n < 0 or (n > 0 and (param == NULL or grad == NULL or square_avg == NULL
                            or (hp.momentum > 0 and momentum_buffer == NULL)
                            or (hp.centered and grad_avg == NULL))):
        return ENGINE_EBADARG
    # One chunk runs on the calling thread (waking the team costs more than it).
    nchunks = ceil_div(n, CHUNK_ELEMS)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * CHUNK_ELEMS
        mode = engine_ftz_enter()
        _rmsprop_chunk(param, grad, square_avg, momentum_buffer, grad_avg,
                       lo, min(n, lo + CHUNK_ELEMS), hp)
        engine_ftz_exit(mode)
    return ENGINE_OK


# ---------------------------------------------------------------- Adam / AdamW
cdef void _adam_chunk(floating* p, const floating* g, floating* m, floating* v,
                      floating* vmax, Py_ssize_t lo, Py_ssize_t hi,
                      const AdamParams* hp) noexcept nogil:
    cdef floating wd = <floating>hp.weight_decay
    cdef floating decay = <floating>(1.0 - hp.lr * hp.weight_decay)
    cdef floating w1 = <floating>(1.0 - hp.beta1)        # lerp weight of the gradient
    cdef floating beta2 = <floating>hp.beta2
    cdef floating one_m_beta2 = <floating>(1.0 - hp.beta2)
    cdef floating eps = <floating>hp.eps
    cdef floating neg_step = <floating>(-hp.step_size)
    cdef floating bc2_sqrt = <floating>hp.bias_correction2_sqrt
    cdef floating sign = -1 if hp.maximize else 1
    cdef bint decoupled = hp.decoupled and hp.weight_decay != 0
    cdef bint l2 = (not hp.decoupled) and hp.weight_decay != 0
    cdef bint small = w1 < 0.5 and w1 > -0.5           # torch.lerp's formula choice
    cdef Py_ssize_t i
    cdef floating d, pi, mi, vi, s
    # Every store is unconditional and every flag only selects a value, so
    # the loop if-converts and vectorises; the amsgrad maximum is a select too.
    if hp.amsgrad:
        for i in range(lo, hi):
            pi = p[i]
            d = sign * g[i] + (wd * pi if l2 else 0)
            pi = pi * decay if decoupled else pi
            mi = m[i] + w1 * (d - m[i]) if small else d - (d - m[i]) * (1 - w1)
            vi = v[i] * beta2 + one_m_beta2 * d * d
            s = vmax[i] if vmax[i] >= vi else vi    # torch.maximum for finite values
            m[i] = mi
            v[i] = vi
            vmax[i] = s
            p[i] = pi + neg_step * mi / (sqrt(s) / bc2_sqrt + eps)
    else:
        for i in range(lo, hi):
            pi = p[i]
            d = sign * g[i] + (wd * pi if l2 else 0)
            pi = pi * decay if decoupled else pi
            mi = m[i] + w1 * (d - m[i]) if small else d - (d - m[i]) * (1 - w1)
            vi = v[i] * beta2 + one_m_beta2 * d * d
            m[i] = mi
            v[i] = vi
            p[i] = pi + neg_step * mi / (sqrt(vi) / bc2_sqrt + eps)


cdef int adam_update(floating* param, const floating* grad,
                     floating* exp_avg, floating* exp_avg_sq,
                     floating* max_exp_avg_sq, Py_ssize_t n,
                     const AdamParams* hp) noexcept nogil:
    cdef Py_ssize_t nchunks, c, lo
    cdef unsigned int mode
    if n < 0 or (n > 0 and (param == NULL or grad == NULL or exp_avg == NULL
                            or exp_avg_sq == NULL
                            or (hp.amsgrad and max_exp_avg_sq == NULL))):
        return ENGINE_EBADARG
    if hp.bias_correction2_sqrt <= 0:
        return ENGINE_EBADARG
    # One chunk runs on the calling thread (waking the team costs more than it).
    nchunks = ceil_div(n, CHUNK_ELEMS)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * CHUNK_ELEMS
        mode = engine_ftz_enter()
        _adam_chunk(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
                    lo, min(n, lo + CHUNK_ELEMS), hp)
        engine_ftz_exit(mode)
    return ENGINE_OK


# ---------------------------------------------------------------- Python entries
cdef object _as_list(x, str name):
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return [x]
    return list(x)


cdef object _state_array(x, str name, Py_ssize_t i, p):
    """A state buffer: updated in place, so it must match `p` exactly."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}[{i}] must be a numpy array, got {type(x).__name__}")
    if x.dtype != p.dtype:
        raise TypeError(f"{name}[{i}] must have dtype {p.dtype} like params[{i}], "
                        f"got {x.dtype}")
    if x.shape != p.shape:
        raise ValueError(f"{name}[{i}] must have shape {p.shape} like params[{i}], "
                         f"got {x.shape}")
    if not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError(f"{name}[{i}] must be a writeable C-contiguous array "
                         "(it is updated in place)")
    return x.reshape(-1)


cdef object _param_array(x, Py_ssize_t i):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"params[{i}] must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32 and x.dtype != np.float64:
        raise TypeError(f"params[{i}] must be float32 or float64, got dtype {x.dtype}")
    if not x.flags.c_contiguous or not x.flags.writeable:
        raise ValueError(f"params[{i}] must be a writeable C-contiguous array "
                         "(it is updated in place)")
    return x.reshape(-1)


cdef object _grad_array(x, Py_ssize_t i, p):
    """A gradient is only read: a non-contiguous one is copied."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"grads[{i}] must be a numpy array, got {type(x).__name__}")
    if x.dtype != p.dtype:
        raise TypeError(f"grads[{i}] must have dtype {p.dtype} like params[{i}], "
                        f"got {x.dtype}")
    if x.shape != p.shape:
        raise ValueError(f"grads[{i}] must have shape {p.shape} like params[{i}], "
                         f"got {x.shape}")
    return np.ascontiguousarray(x).reshape(-1)


cdef object _check_lists(params, grads, names_and_lists):
    params = _as_list(params, "params")
    grads = _as_list(grads, "grads")
    if len(grads) != len(params):
        raise ValueError(f"grads has {len(grads)} arrays, params has {len(params)}")
    for name, lst in names_and_lists:
        if lst is not None and len(lst) != len(params):
            raise ValueError(f"{name} has {len(lst)} arrays, params has {len(params)}")
    return params, grads


cdef void _raise_code(int code, str what) except *:
    if code != ENGINE_OK:
        raise ValueError(f"{what}: invalid arguments (engine error {code})")


cdef int _sgd_one(p, g, b, const SGDParams* hp) except -1:
    cdef float[::1] pf, gf, bf
    cdef double[::1] pd, gd, bd
    cdef float* bfp = NULL
    cdef double* bdp = NULL
    cdef int code
    cdef Py_ssize_t n = p.shape[0]
    if n == 0:
        return 0
    if p.dtype == np.float32:
        pf = p
        gf = g
        if b is not None:
            bf = b
            bfp = &bf[0]
        with nogil:
            code = sgd_update(&pf[0], &gf[0], bfp, n, hp)
    else:
        pd = p
        gd = g
        if b is not None:
            bd = b
            bdp = &bd[0]
        with nogil:
            code = sgd_update(&pd[0], &gd[0], bdp, n, hp)
    _raise_code(code, "sgd_step")
    return 0


def sgd_step(params, grads, momentum_buffers=None, *, double lr,
             double momentum=0.0, double dampening=0.0, double weight_decay=0.0,
             bint nesterov=False, bint maximize=False, bint init_buffers=False):
    """In-place SGD step over a list of parameter arrays (torch.optim.SGD math).

    Args:
        params: list of float32/float64 C-contiguous arrays, updated in place.
        grads: list of gradients (same shapes and dtypes; only read).
        momentum_buffers: list of buffers (same shapes), needed when
            momentum != 0; updated in place.
        init_buffers: first step: set buffer = d_p instead of the momentum
            update (torch's lazy buffer creation).
    """
    cdef SGDParams hp
    cdef Py_ssize_t i
    params, grads = _check_lists(params, grads,
                                 [("momentum_buffers", _as_list(momentum_buffers, ""))])
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("momentum != 0 needs momentum_buffers")
    bufs = _as_list(momentum_buffers, "momentum_buffers") if momentum != 0 else None
    hp.lr = lr
    hp.momentum = momentum
    hp.dampening = dampening
    hp.weight_decay = weight_decay
    hp.nesterov = nesterov
    hp.maximize = maximize
    hp.init_buffer = init_buffers
    for i in range(len(params)):
        p = _param_array(params[i], i)
        g = _grad_array(grads[i], i, params[i])
        b = _state_array(bufs[i], "momentum_buffers", i, params[i]) if bufs is not None else None
        _sgd_one(p, g, b, &hp)


cdef int _rmsprop_one(p, g, sq, b, ga, const RMSpropParams* hp) except -1:
    cdef float[::1] pf, gf, sqf, bf, gaf
    cdef double[::1] pd, gd, sqd, bd, gad
    cdef float* bfp = NULL
    cdef float* gafp = NULL
    cdef double* bdp = NULL
    cdef double* gadp = NULL
    cdef int code
    cdef Py_ssize_t n = p.shape[0]
    if n == 0:
        return 0
    if p.dtype == np.float32:
        pf = p
        gf = g
        sqf = sq
        if b is not None:
            bf = b
            bfp = &bf[0]
        if ga is not None:
            gaf = ga
            gafp = &gaf[0]
        with nogil:
            code = rmsprop_update(&pf[0], &gf[0], &sqf[0], bfp, gafp, n, hp)
    else:
        pd = p
        gd = g
        sqd = sq
        if b is not None:
            bd = b
            bdp = &bd[0]
        if ga is not None:
            gad = ga
            gadp = &gad[0]
        with nogil:
            code = rmsprop_update(&pd[0], &gd[0], &sqd[0], bdp, gadp, n, hp)
    _raise_code(code, "rmsprop_step")
    return 0


def rmsprop_step(params, grads, square_avgs, momentum_buffers=None, grad_avgs=None,
                 *, double lr, double alpha=0.99, double eps=1e-8,
                 double weight_decay=0.0, double momentum=0.0, bint centered=False,
                 bint maximize=False):
    """In-place RMSprop step over a list of parameter arrays (torch.optim.RMSprop math).

    square_avgs always; momentum_buffers when momentum > 0; grad_avgs when
    centered. State buffers have the parameters' shapes and are updated in place.
    """
    cdef RMSpropParams hp
    cdef Py_ssize_t i
    sqs = _as_list(square_avgs, "square_avgs")
    bufs = _as_list(momentum_buffers, "momentum_buffers") if momentum > 0 else None
    gas = _as_list(grad_avgs, "grad_avgs") if centered else None
    if momentum > 0 and bufs is None:
        raise ValueError("momentum > 0 needs momentum_buffers")
    if centered and gas is None:
        raise ValueError("centered=True needs grad_avgs")
    params, grads = _check_lists(params, grads, [("square_avgs", sqs),
                                                 ("momentum_buffers", bufs),
                                                 ("grad_avgs", gas)])
    hp.lr = lr
    hp.alpha = alpha
    hp.eps = eps
    hp.weight_decay = weight_decay
    hp.momentum = momentum
    hp.centered = centered
    hp.maximize = maximize
    for i in range(len(params)):
        p = _param_array(params[i], i)
        g = _grad_array(grads[i], i, params[i])
        sq = _state_array(sqs[i], "square_avgs", i, params[i])
        b = _state_array(bufs[i], "momentum_buffers", i, params[i]) if bufs is not None else None
        ga = _state_array(gas[i], "grad_avgs", i, params[i]) if gas is not None else None
        _rmsprop_one(p, g, sq, b, ga, &hp)


cdef int _adam_one(p, g, m, v, vm, const AdamParams* hp) except -1:
    cdef float[::1] pf, gf, mf, vf, vmf
    cdef double[::1] pd, gd, md, vd, vmd
    cdef float* vmfp = NULL
    cdef double* vmdp = NULL
    cdef int code
    cdef Py_ssize_t n = p.shape[0]
    if n == 0:
        return 0
    if p.dtype == np.float32:
        pf = p
        gf = g
        mf = m
        vf = v
        if vm is not None:
            vmf = vm
            vmfp = &vmf[0]
        with nogil:
            code = adam_update(&pf[0], &gf[0], &mf[0], &vf[0], vmfp, n, hp)
    else:
        pd = p
        gd = g
        md = m
        vd = v
        if vm is not None:
            vmd = vm
            vmdp = &vmd[0]
        with nogil:
            code = adam_update(&pd[0], &gd[0], &md[0], &vd[0], vmdp, n, hp)
    _raise_code(code, "adam_step")
    return 0


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, steps=None,
              *, double lr, double beta1=0.9, double beta2=0.999, double eps=1e-8,
              double weight_decay=0.0, bint decoupled=False, bint amsgrad=False,
              bint maximize=False):
    """In-place Adam (decoupled=False) or AdamW (decoupled=True) step.

    `steps` is the list of step counts AFTER incrementing (one per parameter,
    >= 1), from which the bias corrections are computed as torch does.
    max_exp_avg_sqs is needed when amsgrad.
    """
    cdef AdamParams hp
    cdef Py_ssize_t i
    ms = _as_list(exp_avgs, "exp_avgs")
    vs = _as_list(exp_avg_sqs, "exp_avg_sqs")
    vms = _as_list(max_exp_avg_sqs, "max_exp_avg_sqs") if amsgrad else None
    if amsgrad and vms is None:
        raise ValueError("amsgrad=True needs max_exp_avg_sqs")
    params, grads = _check_lists(params, grads, [("exp_avgs", ms), ("exp_avg_sqs", vs),
                                                 ("max_exp_avg_sqs", vms)])
    if steps is None:
        raise ValueError("adam_step needs steps (the step count of each parameter)")
    steps = list(steps) if isinstance(steps, (list, tuple, np.ndarray)) else [steps] * len(params)
    if len(steps) != len(params):
        raise ValueError(f"steps has {len(steps)} entries, params has {len(params)}")
    hp.lr = lr
    hp.beta1 = beta1
    hp.beta2 = beta2
    hp.eps = eps
    hp.weight_decay = weight_decay
    hp.decoupled = decoupled
    hp.amsgrad = amsgrad
    hp.maximize = maximize
    for i in range(len(params)):
        step = float(steps[i])
        if not step >= 1:
            raise ValueError(f"steps[{i}] must be >= 1, got {steps[i]}")
        # Python floats, as torch computes them (bias_correction2 ** 0.5).
        hp.step_size = lr / (1 - beta1 ** step)
        hp.bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        if not hp.bias_correction2_sqrt > 0:
            raise ValueError(f"bias correction 1 - beta2**step is not positive "
                             f"(beta2={beta2}, step={step})")
        p = _param_array(params[i], i)
        g = _grad_array(grads[i], i, params[i])
        m = _state_array(ms[i], "exp_avgs", i, params[i])
        v = _state_array(vs[i], "exp_avg_sqs", i, params[i])
        vm = _state_array(vms[i], "max_exp_avg_sqs", i, params[i]) if vms is not None else None
        _adam_one(p, g, m, v, vm, &hp)
