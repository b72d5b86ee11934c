"""Loss kernels: fused softmax cross-entropy, NLL, MSE and BCE-with-logits.

Totals are summed per fixed chunk (rows or elements; bounds from the sizes
only) in double and the chunk partials added in chunk order afterwards, so a
loss is bitwise identical for any thread count.
"""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, log, logf, log1p, log1pf, fabs, fabsf
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ENGINE_ENOMEM,
                             ENGINE_EINDEX, engine_ftz_enter, engine_ftz_exit,
                             ceil_div)
from engine._threads cimport engine_num_threads
from engine._vecmath cimport ENGINE_VECMATH  # noqa: F401 (SIMD exp/log1p declarations)
from engine.activation cimport row_max, row_sum
from engine._validate import float_array, out_array

# Elements per chunk (rows per chunk = _CHUNK // C, at least 1).
cdef Py_ssize_t _CHUNK = 16384


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _log(floating v) noexcept nogil:
    if floating is float:
        return logf(v)
    else:
        return log(v)


cdef inline floating _log1p(floating v) noexcept nogil:
    if floating is float:
        return log1pf(v)
    else:
        return log1p(v)


cdef inline floating _fabs(floating v) noexcept nogil:
    if floating is float:
        return fabsf(v)
    else:
        return fabs(v)


cdef inline floating _sum_lse_minus(const floating* x, const floating* w,
                                    floating m, floating log_s,
                                    Py_ssize_t n) noexcept nogil:
    """sum_c w[c] (lse - x[c]), lse = m + log_s (w NULL: all ones), as
    sum_c w[c] ((m - x[c]) + log_s) with 16 partial sums."""
    cdef floating acc[16]
    cdef floating s
    cdef Py_ssize_t i, j, n16 = n - n % 16
    for j in range(16):
        acc[j] = 0
    if w == NULL:
        for i in range(0, n16, 16):
            for j in range(16):
                acc[j] += (m - x[i + j]) + log_s
    else:
        for i in range(0, n16, 16):
            for j in range(16):
                acc[j] += w[i + j] * ((m - x[i + j]) + log_s)
    for j in range(8):
        acc[j] += acc[j + 8]
    for j in range(4):
        acc[j] += acc[j + 4]
    s = (acc[0] + acc[2]) + (acc[1] + acc[3])
    for i in range(n16, n):
        s += ((m - x[i]) + log_s) if w == NULL else w[i] * ((m - x[i]) + log_s)
    return s


cdef inline bint _valid(int64_t t, Py_ssize_t C) noexcept nogil:
    return 0 <= t < C


# ---------------------------------------------------------------------------
# Chunk bodies. Each writes its partial sums to part[0] (loss), part[1]
# (weight), part[2] (count of out-of-range labels).

cdef void _ce_forward_rows(const ClassLossParams* p, Py_ssize_t lo, Py_ssize_t hi,
                           const floating* logits, const int64_t* target,
                           const floating* weight, floating* prob,
                           floating* row_loss, double* part) noexcept nogil:
    cdef Py_ssize_t C = p.C, r, j
    cdef const floating* xr
    cdef floating* pr
    cdef floating m, s, inv, log_s, wt, loss
    cdef floating eps = <floating>p.label_smoothing
    cdef int64_t t
    cdef double loss_acc = 0, w_acc = 0, bad = 0
    for r in range(lo, hi):
        xr = logits + r * C
        pr = prob + r * C
        m = row_max(xr, C)
        for j in range(C):
            pr[j] = _exp(xr[j] - m)
        s = row_sum(<const floating*>pr, C)
        inv = 1 / s
        for j in range(C):
            pr[j] *= inv
        t = target[r]
        if t == p.ignore_index:
            row_loss[r] = 0
            continue
        if not _valid(t, C):
            row_loss[r] = 0
            bad += 1
            continue
        log_s = _log(s)
        wt = weight[t] if weight != NULL else 1
        # lse - x[t] as (max - x[t]) + log(sum): no rounding of a large lse.
        loss = (1 - eps) * wt * ((m - xr[t]) + log_s)
        if eps != 0:
            loss += eps / C * _sum_lse_minus(xr, weight, m, log_s, C)
        row_loss[r] = loss
        loss_acc += loss
        w_acc += wt
    part[0] = loss_acc
    part[1] = w_acc
    part[2] = bad


cdef void _ce_backward_rows(const ClassLossParams* p, Py_ssize_t lo, Py_ssize_t hi,
                            const floating* prob, const int64_t* target,
                            const floating* weight, floating weight_total,
                            const floating* grad, floating scale,
                            floating* dx) noexcept nogil:
    cdef Py_ssize_t C = p.C, r, j
    cdef const floating* pr
    cdef floating* dr
    cdef floating g, wt, a, smooth
    cdef floating eps = <floating>p.label_smoothing
    cdef int64_t t
    for r in range(lo, hi):
        pr = prob + r * C
        dr = dx + r * C
        t = target[r]
        if t == p.ignore_index or not _valid(t, C):
            for j in range(C):
                dr[j] = 0
            continue
        g = scale * (grad[r] if grad != NULL else 1)
        wt = weight[t] if weight != NULL else 1
        a = ((1 - eps) * wt + eps * weight_total / C) * g
        if eps == 0:
            for j in range(C):
                dr[j] = pr[j] * a
        elif weight == NULL:
            smooth = eps / C * g
            for j in range(C):
                dr[j] = pr[j] * a - smooth
        else:
            smooth = eps / C * g
            for j in range(C):
                dr[j] = pr[j] * a - smooth * weight[j]
        dr[t] -= (1 - eps) * wt * g


cdef void _nll_forward_rows(const ClassLossParams* p, Py_ssize_t lo, Py_ssize_t hi,
                            const floating* logp, const int64_t* target,
                            const floating* weight, floating* row_loss,
                            double* part) noexcept nogil:
    cdef Py_ssize_t C = p.C, r
    cdef floating wt, loss
    cdef int64_t t
    cdef double loss_acc = 0, w_acc = 0, bad = 0
    for r in range(lo, hi):
        t = target[r]
        if t == p.ignore_index:
            row_loss[r] = 0
            continue
        if not _valid(t, C):
            row_loss[r] = 0
            bad += 1
            continue
        wt = weight[t] if weight != NULL else 1
        loss = -wt * logp[r * C + t]
        row_loss[r] = loss
        loss_acc += loss
        w_acc += wt
    part[0] = loss_acc
    part[1] = w_acc
    part[2] = bad


cdef void _nll_backward_rows(const ClassLossParams* p, Py_ssize_t lo, Py_ssize_t hi,
                             const int64_t* target, const floating* weight,
                             const floating* grad, floating scale,
                             floating* dx) noexcept nogil:
    cdef Py_ssize_t C = p.C, r, j
    cdef int64_t t
    for r in range(lo, hi):
        for j in range(C):
            dx[r * C + j] = 0
        t = target[r]
        if t == p.ignore_index or not _valid(t, C):
            continue
        dx[r * C + t] = -(weight[t] if weight != NULL else 1) * scale * (
            grad[r] if grad != NULL else 1)


# ---------------------------------------------------------------------------
# Class-loss drivers

cdef int _class_loss_check(const ClassLossParams* p, const void* a,
                           const int64_t* target, const void* out) noexcept nogil:
    if p.N < 0 or p.C <= 0 or not (0 <= p.label_smoothing <= 1):
        return ENGINE_EBADARG
    if p.N > 0 and (a == NULL or target == NULL or out == NULL):
        return ENGINE_EBADARG
    return ENGINE_OK


cdef int _class_loss_forward(bint fused_softmax, const ClassLossParams* p,
                             const floating* x, const int64_t* target,
                             const floating* weight, floating* prob,
                             floating* row_loss, double* loss_sum,
                             double* weight_sum) noexcept nogil:
    cdef Py_ssize_t per_chunk, nchunks, c, lo, hi
    cdef double* part
    cdef double total_loss = 0, total_w = 0, bad = 0
    cdef unsigned int mode
    cdef int rc = _class_loss_check(p, x, target, row_loss)
    if rc != ENGINE_OK:
        return rc
    if fused_softmax and p.N > 0 and prob == NULL:
        return ENGINE_EBADARG
    per_chunk = max(1, _CHUNK // p.C)
    nchunks = ceil_div(p.N, per_chunk)
    part = <double*>malloc(3 * max(nchunks, 1) * sizeof(double))
    if part == NULL:
        return ENGINE_ENOMEM
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * per_chunk
        hi = min(p.N, lo + per_chunk)
        mode = engine_ftz_enter()
        if fused_softmax:
            _ce_forward_rows(p, lo, hi, x, target, weight, prob, row_loss, part + 3 * c)
        else:
            _nll_forward_rows(p, lo, hi, x, target, weight, row_loss, part + 3 * c)
        engine_ftz_exit(mode)
    for c in range(nchunks):
        total_loss += part[3 * c]
        total_w += part[3 * c + 1]
        bad += part[3 * c + 2]
    free(part)
    loss_sum[0] = total_loss
    weight_sum[0] = total_w
    return ENGINE_EINDEX if bad > 0 else ENGINE_OK


cdef int softmax_cross_entropy_forward(const ClassLossParams* p,
                                       const floating* logits,
                                       const int64_t* target,
                                       const floating* weight,
                                       floating* prob, floating* row_loss,
                                       double* loss_sum,
                                       double* weight_sum) noexcept nogil:
    return _class_loss_forward(True, p, logits, target, weight, prob, row_loss,
                               loss_sum, weight_sum)


cdef int nll_forward(const ClassLossParams* p, const floating* logp,
                     const int64_t* target, const floating* weight,
                     floating* row_loss, double* loss_sum,
                     double* weight_sum) noexcept nogil:
    return _class_loss_forward(False, p, logp, target, weight, <floating*>NULL,
                               row_loss, loss_sum, weight_sum)


cdef int _class_loss_backward(bint fused_softmax, const ClassLossParams* p,
                              const floating* prob, const int64_t* target,
                              const floating* weight, const floating* grad,
                              double scale, floating* dx) noexcept nogil:
    cdef Py_ssize_t per_chunk, nchunks, c, lo, hi, r
    cdef floating weight_total
    cdef unsigned int mode
    cdef int rc = _class_loss_check(p, prob if fused_softmax else <const floating*>target,
                                    target, dx)
    if rc != ENGINE_OK:
        return rc
    if weight != NULL:
        weight_total = row_sum(weight, p.C)
    else:
        weight_total = <floating>p.C
    per_chunk = max(1, _CHUNK // p.C)
    nchunks = ceil_div(p.N, per_chunk)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * per_chunk
        hi = min(p.N, lo + per_chunk)
        mode = engine_ftz_enter()
        if fused_softmax:
            _ce_backward_rows(p, lo, hi, prob, target, weight, weight_total,
                              grad, <floating>scale, dx)
        else:
            _nll_backward_rows(p, lo, hi, target, weight, grad, <floating>scale, dx)
        engine_ftz_exit(mode)
    for r in range(p.N):
        if target[r] != p.ignore_index and not _valid(target[r], p.C):
            return ENGINE_EINDEX
    return ENGINE_OK


cdef int softmax_cross_entropy_backward(const ClassLossParams* p,
                                        const floating* prob,
                                        const int64_t* target,
                                        const floating* weight,
                                        const floating* grad, double scale,
                                        floating* grad_logits) noexcept nogil:
    return _class_loss_backward(True, p, prob, target, weight, grad, scale,
                                grad_logits)


cdef int nll_backward(const ClassLossParams* p, const int64_t* target,
                      const floating* weight, const floating* grad,
                      double scale, floating* grad_logp) noexcept nogil:
    return _class_loss_backward(False, p, <const floating*>NULL, target, weight,
                                grad, scale, grad_logp)


# ---------------------------------------------------------------------------
# Element-wise losses (MSE, BCE-with-logits)

cdef enum:
    LOSS_MSE = 1
    LOSS_BCE


cdef void _elem_loss_block(int kind, const floating* x, const floating* y,
                           const floating* w, const floating* pw,
                           Py_ssize_t n, floating* out) noexcept nogil:
    """out[k] = loss of element k. One branch-free loop per variant, so each
    vectorises (the SIMD exp/log1p are called from the BCE loops)."""
    cdef Py_ssize_t k
    cdef floating d, tail
    if kind == LOSS_MSE:
        for k in range(n):
            d = x[k] - y[k]
            out[k] = d * d
        return
    # (1 - y) softplus(x) + pos_weight y softplus(-x): two non-negative terms,
    # so no cancellation (torch's (1 - y) x + l softplus(-x) rounds e.g.
    # x = -50, y = 0 to 0 in float32); softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)).
    if pw == NULL:
        for k in range(n):
            d = x[k]
            tail = _log1p(_exp(-_fabs(d)))
            out[k] = ((1 - y[k]) * ((d if d > 0 else 0) + tail)
                      + y[k] * ((-d if d < 0 else 0) + tail))
    else:
        for k in range(n):
            d = x[k]
            tail = _log1p(_exp(-_fabs(d)))
            out[k] = ((1 - y[k]) * ((d if d > 0 else 0) + tail)
                      + pw[k] * y[k] * ((-d if d < 0 else 0) + tail))
    if w != NULL:
        for k in range(n):
            out[k] *= w[k]


cdef double _sum_double(const floating* v, Py_ssize_t n) noexcept nogil:
    """Sum in double with 8 partial sums (vectorises; order fixed by n)."""
    cdef double acc[8]
    cdef Py_ssize_t i, j, n8 = n - n % 8
    for j in range(8):
        acc[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            acc[j] += v[i + j]
    for i in range(n8, n):
        acc[i - n8] += v[i]
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))


cdef double _elem_forward_chunk(int kind, const floating* x, const floating* y,
                                const floating* w, const floating* pw,
                                Py_ssize_t n, floating* loss) noexcept nogil:
    """Loss of n elements into loss[] (if not NULL); returns their sum,
    taken per block of 256 in a fixed order."""
    cdef floating buf[256]
    cdef floating* dst
    cdef double s = 0
    cdef Py_ssize_t lo, m
    for lo in range(0, n, 256):
        m = min(256, n - lo)
        dst = (loss + lo) if loss != NULL else buf
        _elem_loss_block(kind, x + lo, y + lo, (w + lo) if w != NULL else NULL,
                         (pw + lo) if pw != NULL else NULL, m, dst)
        s += _sum_double(<const floating*>dst, m)
    return s


cdef void _elem_backward_chunk(int kind, const floating* x, const floating* y,
                               const floating* w, const floating* pw,
                               Py_ssize_t n, const floating* grad,
                               floating scale, floating* dx) noexcept nogil:
    """dx = d loss / d x * scale (* grad); one branch-free loop per variant."""
    cdef Py_ssize_t k
    cdef floating e, r, sig
    if kind == LOSS_MSE:
        for k in range(n):
            dx[k] = 2 * (x[k] - y[k]) * scale
    elif pw == NULL:
        for k in range(n):
            e = _exp(-_fabs(x[k]))
            r = 1 / (1 + e)
            sig = r if x[k] >= 0 else e * r
            dx[k] = (sig - y[k]) * scale
    else:
        # (1 + (pw - 1) y) sigmoid(x) - pw y
        for k in range(n):
            e = _exp(-_fabs(x[k]))
            r = 1 / (1 + e)
            sig = r if x[k] >= 0 else e * r
            dx[k] = ((1 + (pw[k] - 1) * y[k]) * sig - pw[k] * y[k]) * scale
    if kind != LOSS_MSE and w != NULL:
        for k in range(n):
            dx[k] *= w[k]
    if grad != NULL:
        for k in range(n):
            dx[k] *= grad[k]


cdef int _elem_forward(int kind, const floating* x, const floating* y,
                       const floating* w, const floating* pw, Py_ssize_t n,
                       floating* loss, double* loss_sum) noexcept nogil:
    cdef Py_ssize_t nchunks, c, lo, hi
    cdef double* part
    cdef double total = 0
    cdef unsigned int mode
    if n < 0 or loss_sum == NULL:
        return ENGINE_EBADARG
    if n > 0 and (x == NULL or y == NULL):
        return ENGINE_EBADARG
    nchunks = ceil_div(n, _CHUNK)
    part = <double*>malloc(max(nchunks, 1) * sizeof(double))
    if part == NULL:
        return ENGINE_ENOMEM
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        mode = engine_ftz_enter()
        part[c] = _elem_forward_chunk(kind, x + lo, y + lo,
                                      (w + lo) if w != NULL else NULL,
                                      (pw + lo) if pw != NULL else NULL, hi - lo,
                                      (loss + lo) if loss != NULL else NULL)
        engine_ftz_exit(mode)
    for c in range(nchunks):
        total += part[c]
    free(part)
    loss_sum[0] = total
    return ENGINE_OK


cdef int _elem_backward(int kind, const floating* x, const floating* y,
                        const floating* w, const floating* pw, Py_ssize_t n,
                        const floating* grad, double scale,
                        floating* dx) noexcept nogil:
    cdef Py_ssize_t nchunks, c, lo, hi
    cdef unsigned int mode
    if n < 0:
        return ENGINE_EBADARG
    if n > 0 and (x == NULL or y == NULL or dx == NULL):
        return ENGINE_EBADARG
    nchunks = ceil_div(n, _CHUNK)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        mode = engine_ftz_enter()
        _elem_backward_chunk(kind, x + lo, y + lo,
                             (w + lo) if w != NULL else NULL,
                             (pw + lo) if pw != NULL else NULL, hi - lo,
                             (grad + lo) if grad != NULL else NULL,
                             <floating>scale, dx + lo)
        engine_ftz_exit(mode)
    return ENGINE_OK


cdef int mse_forward(const floating* pred, const floating* target, Py_ssize_t n,
                     floating* loss, double* loss_sum) noexcept nogil:
    return _elem_forward(LOSS_MSE, pred, target, <const floating*>NULL,
                         <const floating*>NULL, n, loss, loss_sum)


cdef int mse_backward(const floating* pred, const floating* target, Py_ssize_t n,
                      const floating* grad, double scale,
                      floating* grad_pred) noexcept nogil:
    return _elem_backward(LOSS_MSE, pred, target, <const floating*>NULL,
                          <const floating*>NULL, n, grad, scale, grad_pred)


cdef int bce_with_logits_forward(const floating* x, const floating* y,
                                 const floating* weight,
                                 const floating* pos_weight, Py_ssize_t n,
                                 floating* loss, double* loss_sum) noexcept nogil:
    return _elem_forward(LOSS_BCE, x, y, weight, pos_weight, n, loss, loss_sum)


cdef int bce_with_logits_backward(const floating* x, const floating* y,
                                  const floating* weight,
                                  const floating* pos_weight, Py_ssize_t n,
                                  const floating* grad, double scale,
                                  floating* grad_x) noexcept nogil:
    return _elem_backward(LOSS_BCE, x, y, weight, pos_weight, n, grad, scale, grad_x)


# ---------------------------------------------------------------------------
# Python entries

def _check_raise(rc, what):
    if rc == ENGINE_OK:
        return
    if rc == ENGINE_ENOMEM:
        raise MemoryError(f"{what}: could not allocate the partial-sum buffer")
    if rc == ENGINE_EINDEX:
        raise ValueError(f"{what}: a target class index is out of range")
    raise ValueError(f"{what}: kernel rejected its arguments (code {rc})")


def class_targets(target, N, C, ignore_index, name="target"):
    """Validate integer class labels; return them as a contiguous int64 (N,) array.

    Raises TypeError for non-integer labels (float, NaN, bool) and ValueError
    naming the first label outside [0, C) that is not ignore_index.
    """
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices (int32 or int64), "
                        f"got dtype {target.dtype}")
    if target.ndim != 1 or target.shape[0] != N:
        raise ValueError(f"{name} must have shape ({N},), got {target.shape}")
    target = np.ascontiguousarray(target, dtype=np.int64)
    bad = (target != ignore_index) & ((target < 0) | (target >= C))
    if bad.any():
        label = int(target[np.argmax(bad)])
        raise ValueError(f"{name} contains class index {label}, out of range "
                         f"[0, {C}) (ignore_index={ignore_index})")
    return target


def _class_weight(weight, C, dtype):
    if weight is None:
        return None
    weight = float_array(weight, "weight", ndim=1, dtype=dtype)
    if weight.shape[0] != C:
        raise ValueError(f"weight must have one value per class ({C},), got {weight.shape}")
    return weight


cdef ClassLossParams _params(Py_ssize_t N, Py_ssize_t C, ignore_index,
                             double label_smoothing):
    cdef ClassLossParams p
    p.N = N
    p.C = C
    p.ignore_index = ignore_index
    p.label_smoothing = label_smoothing
    return p


cdef const floating* _ptr(const floating[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] > 0 else NULL


cdef tuple _ce_forward_call(bint fused, ClassLossParams p, const floating[::1] x,
                            const int64_t[::1] t, const floating[::1] w,
                            floating[::1] prob, floating[::1] row_loss):
    cdef double loss_sum = 0, weight_sum = 0
    cdef int rc
    cdef const floating* px = _ptr(x)
    cdef const int64_t* pt = &t[0] if t.shape[0] > 0 else NULL
    cdef const floating* pw = _ptr(w)
    cdef floating* pp = &prob[0] if prob is not None and prob.shape[0] > 0 else NULL
    cdef floating* pl = &row_loss[0] if row_loss.shape[0] > 0 else NULL
    with nogil:
        if fused:
            rc = softmax_cross_entropy_forward(&p, px, pt, pw, pp, pl,
                                               &loss_sum, &weight_sum)
        else:
            rc = nll_forward(&p, px, pt, pw, pl, &loss_sum, &weight_sum)
    return rc, loss_sum, weight_sum


cdef int _ce_backward_call(bint fused, ClassLossParams p, const floating[::1] prob,
                           const int64_t[::1] t, const floating[::1] w,
                           const floating[::1] grad, double scale,
                           floating[::1] dx):
    cdef int rc
    cdef const floating* pp = _ptr(prob)
    cdef const int64_t* pt = &t[0] if t.shape[0] > 0 else NULL
    cdef const floating* pw = _ptr(w)
    cdef const floating* pg = _ptr(grad)
    cdef floating* pd = &dx[0] if dx.shape[0] > 0 else NULL
    with nogil:
        if fused:
            rc = softmax_cross_entropy_backward(&p, pp, pt, pw, pg, scale, pd)
        else:
            rc = nll_backward(&p, pt, pw, pg, scale, pd)
    return rc


def _rows_grad(grad, N, dtype):
    if grad is None:
        return None
    grad = float_array(grad, "grad", ndim=1, dtype=dtype)
    if grad.shape[0] != N:
        raise ValueError(f"grad must have shape ({N},), got {grad.shape}")
    return grad


def _smoothing(label_smoothing):
    label_smoothing = float(label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]. "
                         f"Received: label_smoothing={label_smoothing}")
    return label_smoothing


def cross_entropy(logits, target, weight=None, ignore_index=-100,
                  label_smoothing=0.0, prob_out=None):
    """Fused softmax cross-entropy over rows of (N, C) logits.

    Returns (row_loss (N,), loss_sum, weight_sum, prob (N, C)); the 'mean'
    loss is loss_sum / weight_sum, 'sum' is loss_sum. prob is kept for
    cross_entropy_grad.
    """
    logits = float_array(logits, "logits", ndim=2)
    N, C = logits.shape
    if C == 0:
        raise ValueError("logits must have at least one class (C >= 1)")
    target = class_targets(target, N, C, ignore_index)
    weight = _class_weight(weight, C, logits.dtype)
    eps = _smoothing(label_smoothing)
    prob = out_array(prob_out, "prob_out", (N, C), logits.dtype)
    row_loss = np.empty(N, logits.dtype)
    p = _params(N, C, ignore_index, eps)
    if logits.dtype == np.float32:
        rc, s, ws = _ce_forward_call[float](True, p, logits.reshape(-1), target,
                                            weight, prob.reshape(-1), row_loss)
    else:
        rc, s, ws = _ce_forward_call[double](True, p, logits.reshape(-1), target,
                                             weight, prob.reshape(-1), row_loss)
    _check_raise(rc, "cross_entropy")
    return row_loss, s, ws, prob


def cross_entropy_grad(prob, target, weight=None, ignore_index=-100,
                       label_smoothing=0.0, grad=None, scale=1.0, out=None):
    """d logits of the fused cross-entropy from the kept probabilities.

    The upstream gradient is `scale` (1 / weight_sum for 'mean', 1 for
    'sum') times `grad[i]` per row when given (reduction 'none').
    out=prob overwrites the probabilities in place.
    """
    prob = float_array(prob, "prob", ndim=2)
    N, C = prob.shape
    target = class_targets(target, N, C, ignore_index)
    weight = _class_weight(weight, C, prob.dtype)
    grad = _rows_grad(grad, N, prob.dtype)
    out = out_array(out, "out", (N, C), prob.dtype)
    p = _params(N, C, ignore_index, _smoothing(label_smoothing))
    if prob.dtype == np.float32:
        rc = _ce_backward_call[float](True, p, prob.reshape(-1), target, weight,
                                      grad, scale, out.reshape(-1))
    else:
        rc = _ce_backward_call[double](True, p, prob.reshape(-1), target, weight,
                                       grad, scale, out.reshape(-1))
    _check_raise(rc, "cross_entropy_grad")
    return out


def nll(logp, target, weight=None, ignore_index=-100):
    """NLL over rows of (N, C) log-probabilities: (row_loss, loss_sum, weight_sum)."""
    logp = float_array(logp, "logp", ndim=2)
    N, C = logp.shape
    if C == 0:
        raise ValueError("logp must have at least one class (C >= 1)")
    target = class_targets(target, N, C, ignore_index)
    weight = _class_weight(weight, C, logp.dtype)
    row_loss = np.empty(N, logp.dtype)
    p = _params(N, C, ignore_index, 0.0)
    if logp.dtype == np.float32:
        rc, s, ws = _ce_forward_call[float](False, p, logp.reshape(-1), target,
                                            weight, None, row_loss)
    else:
        rc, s, ws = _ce_forward_call[double](False, p, logp.reshape(-1), target,
                                             weight, None, row_loss)
    _check_raise(rc, "nll")
    return row_loss, s, ws


def nll_grad(target, num_classes, dtype=np.float32, weight=None, ignore_index=-100,
             grad=None, scale=1.0, out=None):
    """d logp of the NLL loss: (N, num_classes), -w[t] * scale * grad[i] at the target."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    t = np.asarray(target)
    N, C = (t.shape[0] if t.ndim == 1 else -1), int(num_classes)
    if C <= 0:
        raise ValueError(f"num_classes must be >= 1. Received: num_classes={num_classes}")
    target = class_targets(target, N, C, ignore_index)
    weight = _class_weight(weight, C, dtype)
    grad = _rows_grad(grad, N, dtype)
    out = out_array(out, "out", (N, C), dtype)
    p = _params(N, C, ignore_index, 0.0)
    if dtype == np.float32:
        rc = _ce_backward_call[float](False, p, None, target, weight, grad, scale,
                                      out.reshape(-1))
    else:
        rc = _ce_backward_call[double](False, p, None, target, weight, grad, scale,
                                       out.reshape(-1))
    _check_raise(rc, "nll_grad")
    return out


cdef double _elem_forward_call(int kind, const floating[::1] x, const floating[::1] y,
                               const floating[::1] w, const floating[::1] pw,
                               floating[::1] loss) except? -1.0:
    cdef double s = 0
    cdef int rc
    cdef Py_ssize_t n = x.shape[0]
    cdef const floating* px = _ptr(x)
    cdef const floating* py = _ptr(y)
    cdef const floating* pww = _ptr(w)
    cdef const floating* ppw = _ptr(pw)
    cdef floating* pl = &loss[0] if loss is not None and n > 0 else NULL
    with nogil:
        rc = _elem_forward(kind, px, py, pww, ppw, n, pl, &s)
    _check_raise(rc, "loss")
    return s


cdef int _elem_backward_call(int kind, const floating[::1] x, const floating[::1] y,
                             const floating[::1] w, const floating[::1] pw,
                             const floating[::1] grad, double scale,
                             floating[::1] dx) except -1:
    cdef int rc
    cdef Py_ssize_t n = x.shape[0]
    cdef const floating* px = _ptr(x)
    cdef const floating* py = _ptr(y)
    cdef const floating* pww = _ptr(w)
    cdef const floating* ppw = _ptr(pw)
    cdef const floating* pg = _ptr(grad)
    cdef floating* pd = &dx[0] if n > 0 else NULL
    with nogil:
        rc = _elem_backward(kind, px, py, pww, ppw, n, pg, scale, pd)
    _check_raise(rc, "loss backward")
    return 0


def _same_as(a, x, name):
    """`a` as a contiguous array of x's shape and dtype (None stays None)."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != x.dtype:
        raise ValueError(f"{name} must have the dtype of the prediction ({x.dtype}), "
                         f"got {a.dtype}; convert it with .astype(np.{x.dtype})")
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of the prediction {x.shape}, "
                         f"got {a.shape}")
    return np.ascontiguousarray(a).reshape(-1)


def _elementwise(kind, pred, target, weight, pos_weight, per_element):
    pred = float_array(pred, "pred")
    x = pred.reshape(-1)
    y = _same_as(target, pred, "target")
    w = _same_as(weight, pred, "weight")
    pw = _same_as(pos_weight, pred, "pos_weight")
    loss = np.empty(x.shape[0], pred.dtype) if per_element else None
    if pred.dtype == np.float32:
        s = _elem_forward_call[float](kind, x, y, w, pw, loss)
    else:
        s = _elem_forward_call[double](kind, x, y, w, pw, loss)
    return (loss.reshape(pred.shape) if per_element else None), s


def _elementwise_grad(kind, pred, target, weight, pos_weight, grad, scale, out):
    pred = float_array(pred, "pred")
    x = pred.reshape(-1)
    y = _same_as(target, pred, "target")
    w = _same_as(weight, pred, "weight")
    pw = _same_as(pos_weight, pred, "pos_weight")
    g = _same_as(grad, pred, "grad")
    out = out_array(out, "out", pred.shape, pred.dtype)
    if pred.dtype == np.float32:
        _elem_backward_call[float](kind, x, y, w, pw, g, scale, out.reshape(-1))
    else:
        _elem_backward_call[double](kind, x, y, w, pw, g, scale, out.reshape(-1))
    return out


def mse(pred, target, per_element=False):
    """Squared error: (per-element loss or None, sum of the losses)."""
    return _elementwise(LOSS_MSE, pred, target, None, None, per_element)


def mse_grad(pred, target, grad=None, scale=1.0, out=None):
    """d pred = 2 (pred - target) * scale * grad (grad: per element, or None)."""
    return _elementwise_grad(LOSS_MSE, pred, target, None, None, grad, scale, out)


def bce_with_logits(x, y, weight=None, pos_weight=None, per_element=False):
    """Stable binary cross-entropy on logits; weight/pos_weight already broadcast
    to x's shape. Returns (per-element loss or None, sum of the losses)."""
    return _elementwise(LOSS_BCE, x, y, weight, pos_weight, per_element)


def bce_with_logits_grad(x, y, weight=None, pos_weight=None, grad=None, scale=1.0,
                         out=None):
    """d x = w (l sigmoid(x) - pos_weight y) * scale * grad."""
    return _elementwise_grad(LOSS_BCE, x, y, weight, pos_weight, grad, scale, out)
