"""Batch normalisation forward (training and eval) and backward.

The input is viewed as (N, C, S): S = 1 for (N, C), L for (N, C, L), H*W for
(N, C, H, W).

S > 1 (images, sequences): OpenMP splits the channels into blocks of up to
CHANNEL_BLOCK adjacent channels (sized from C alone), and one thread does a
block start to finish:
its reductions, its per-channel coefficients, its elementwise pass. Loops
run over n outside and the block's channels inside, so each n reads one
contiguous run of memory (one channel's rows, a page each for 32x32 floats
and C*S apart, defeat the hardware prefetcher: reading channel by channel
was 1.5x slower here).

- forward: one pass over memory for the statistics: each 512-value segment
  of a row gets its mean and squared deviations (two passes over values
  still in L1: no cancellation), merged into the channel's running ones with
  Chan, Golub and LeVeque's pairwise update; then y = (x - mean) * scale + shift.
- backward: sum(dy) and sum(dy * (x - mean)) in one pass, then
  dx = a * dy + b * (x - mean) + k.

Row sums run in blocks of partial sums in the input's type, added up in
double (see "reductions"). Every channel adds its rows in ascending n
whatever the blocking.

S == 1 ((N, C) input): fixed blocks of channels are reduced together so that
rows are read contiguously, then OpenMP splits the rows for the elementwise
pass.

No temporaries proportional to the input; results do not depend on the
thread count.
"""

import numpy as np
from libc.math cimport sqrt
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ENGINE_ENOMEM,
                             engine_ftz_enter, engine_ftz_exit, ceil_div)
from engine._threads cimport engine_num_threads
from engine._validate import float_array

cdef enum:
    BLOCK_C = 128          # channels per reduction block when S == 1
    PARALLEL_MIN = 32768   # fewer elements: run on the calling thread
    LANES = 32             # interleaved partial sums per row reduction
    SUM_BLOCK = 512        # values per block of partial sums (see reductions)
    CHANNEL_BLOCK = 16     # at most this many adjacent channels per block when S > 1


cdef inline int _threads_for(Py_ssize_t elements) noexcept nogil:
    # Waking the OpenMP team costs more than small inputs take (and much more
    # on a loaded machine); the result is the same either way.
    return engine_num_threads() if elements >= PARALLEL_MIN else 1


# ---------------------------------------------------------------- reductions
# A row is reduced in blocks of SUM_BLOCK values: within a block, LANES
# independent partial sums in the input's own type (several add chains, so
# the loop runs at the adds' throughput, not their latency, and float input
# is never widened element by element); each block's lanes are then folded
# pairwise (_fold) into a double total. A float lane sums SUM_BLOCK / LANES = 16
# values, so the float rounding stays at the level of a few ulps of the block's
# total.
cdef inline double _fold(floating* acc) noexcept nogil:
    """Pairwise total of acc[:LANES] (overwritten), in a fixed order: halved
    down to 8 partial sums in the input's type (vector adds; per segment this
    was as costly as the segment's own loop in double), those added in double."""
    cdef Py_ssize_t w = LANES // 2, j
    while w >= 8:
        for j in range(w):
            acc[j] += acc[j + w]
        w //= 2
    return ((<double>acc[0] + acc[4]) + (<double>acc[2] + acc[6])) + \
           ((<double>acc[1] + acc[5]) + (<double>acc[3] + acc[7]))


cdef inline void _segment_stats(const floating* x, Py_ssize_t n, double* mean,
                                double* m2) noexcept nogil:
    """Mean and sum of squared deviations of x[:n], n <= SUM_BLOCK: two passes
    (no cancellation) over values that are still in L1 for the second."""
    cdef floating acc[LANES]
    cdef floating d, m
    cdef floating k = x[0]   # sums of x - k stay small whatever the offset of x
    cdef Py_ssize_t i = 0, j
    for j in range(LANES):
        acc[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            acc[j] += x[i + j] - k
        i += LANES
    for j in range(n - i):
        acc[j] += x[i + j] - k
    mean[0] = k + _fold(acc) / n
    m = <floating>mean[0]
    i = 0
    for j in range(LANES):
        acc[j] = 0
    while i + LANES <= n:
        for j in range(LANES):
            d = x[i + j] - m
            acc[j] += d * d
        i += LANES
    for j in range(n - i):
        d = x[i + j] - m
        acc[j] += d * d
    # deviations were taken from m, the mean rounded to the input's type
    m2[0] = max(_fold(acc) - n * (mean[0] - m) * (mean[0] - m), 0.0)


cdef inline void _row_stats(const floating* x, Py_ssize_t n, Py_ssize_t count,
                            double* mean, double* m2) noexcept nogil:
    """Merge x[:n] into (mean, m2), the statistics of the `count` values seen so
    far, segment by segment (Chan, Golub and LeVeque's pairwise update)."""
    cdef Py_ssize_t i = 0, k
    cdef double seg_mean, seg_m2, delta, share
    while i < n:
        k = min(n - i, SUM_BLOCK)
        _segment_stats(x + i, k, &seg_mean, &seg_m2)
        share = k / <double>(count + k)
        delta = seg_mean - mean[0]
        mean[0] += delta * share
        m2[0] += seg_m2 + delta * delta * (count * share)
        count += k
        i += k


cdef inline void _row_grad_sums(const floating* dy, const floating* x, Py_ssize_t n,
                                floating mean, double* sum_dy,
                                double* sum_dy_xmu) noexcept nogil:
    """sum(dy) and sum(dy * (x - mean)) over one row, added to the outputs."""
    cdef floating a[LANES]
    cdef floating b[LANES]
    cdef Py_ssize_t i = 0, j, end
    while i < n:
        end = min(n, i + SUM_BLOCK)
        for j in range(LANES):
            a[j] = 0
            b[j] = 0
        while i + LANES <= end:
            for j in range(LANES):
                a[j] += dy[i + j]
                b[j] += dy[i + j] * (x[i + j] - mean)
            i += LANES
        for j in range(end - i):
            a[j] += dy[i + j]
            b[j] += dy[i + j] * (x[i + j] - mean)
        i = end
        sum_dy[0] += _fold(a)
        sum_dy_xmu[0] += _fold(b)


cdef void _stats_block(const floating* x, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t c0, Py_ssize_t c1,
                       double* mean, double* sqdev) noexcept nogil:
    """S == 1: channels [c0, c1) reduced together, reading rows contiguously."""
    cdef Py_ssize_t n, c
    cdef const floating* row
    cdef double d
    for c in range(c0, c1):
        mean[c] = 0
        sqdev[c] = 0
    for n in range(N):
        row = x + n * C
        for c in range(c0, c1):
            mean[c] += row[c]
    for c in range(c0, c1):
        mean[c] = mean[c] / N
    for n in range(N):
        row = x + n * C
        for c in range(c0, c1):
            d = row[c] - mean[c]
            sqdev[c] += d * d


cdef void _grad_sums_block(const floating* dy, const floating* x, const floating* mean,
                           Py_ssize_t N, Py_ssize_t C, Py_ssize_t c0, Py_ssize_t c1,
                           double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    cdef Py_ssize_t n, c
    for c in range(c0, c1):
        sum_dy[c] = 0
        sum_dy_xmu[c] = 0
    for n in range(N):
        for c in range(c0, c1):
            sum_dy[c] += dy[n * C + c]
            sum_dy_xmu[c] += dy[n * C + c] * (x[n * C + c] - <double>mean[c])


cdef void _reduce_stats(const floating* x, Py_ssize_t N, Py_ssize_t C,
                        double* mean, double* sqdev) noexcept nogil:
    """S == 1: per-channel mean and squared deviations of an (N, C) input."""
    cdef Py_ssize_t blk
    cdef unsigned int mode
    for blk in prange(ceil_div(C, BLOCK_C), nogil=True, schedule='static',
                      num_threads=_threads_for(N * C)):
        mode = engine_ftz_enter()
        _stats_block(x, N, C, blk * BLOCK_C, min(C, (blk + 1) * BLOCK_C), mean, sqdev)
        engine_ftz_exit(mode)


cdef void _reduce_grad_sums(const floating* dy, const floating* x, const floating* mean,
                            Py_ssize_t N, Py_ssize_t C,
                            double* sum_dy, double* sum_dy_xmu) noexcept nogil:
    """S == 1: per-channel sum(dy) and sum(dy * (x - mean)) of an (N, C) input."""
    cdef Py_ssize_t blk
    cdef unsigned int mode
    for blk in prange(ceil_div(C, BLOCK_C), nogil=True, schedule='static',
                      num_threads=_threads_for(N * C)):
        mode = engine_ftz_enter()
        _grad_sums_block(dy, x, mean, N, C, blk * BLOCK_C, min(C, (blk + 1) * BLOCK_C),
                         sum_dy, sum_dy_xmu)
        engine_ftz_exit(mode)


# ---------------------------------------------------------------- per-channel coefficients
cdef inline void _train_coefficients(Py_ssize_t c, const double* mean, const double* sqdev,
                                     double M, const floating* weight, const floating* bias,
                                     double eps, double factor, floating* save_mean,
                                     floating* save_invstd, floating* running_mean,
                                     floating* running_var, floating* scale,
                                     floating* shift) noexcept nogil:
    """Channel c's batch statistics -> save_*, y's scale/shift, running stats."""
    cdef double invstd = 1.0 / sqrt(sqdev[c] / M + eps)
    cdef double w = weight[c] if weight != NULL else 1.0
    save_mean[c] = <floating>mean[c]
    save_invstd[c] = <floating>invstd
    scale[c] = <floating>(w * invstd)
    shift[c] = bias[c] if bias != NULL else 0
    if running_mean != NULL:
        running_mean[c] = <floating>((1.0 - factor) * running_mean[c] + factor * mean[c])
        running_var[c] = <floating>((1.0 - factor) * running_var[c]
                                    + factor * (sqdev[c] / (M - 1)))


cdef inline void _grad_coefficients(Py_ssize_t c, const double* sum_dy,
                                    const double* sum_dy_xmu, double M,
                                    const floating* weight, const floating* invstd,
                                    bint batch_stats, floating* coef,
                                    Py_ssize_t C) noexcept nogil:
    """dx = coef[c] * dy + coef[C + c] * (x - mean) + coef[2C + c] for channel c."""
    cdef double w = weight[c] if weight != NULL else 1.0
    cdef double inv = invstd[c]
    cdef double a = w * inv
    coef[c] = <floating>a
    if batch_stats:
        # d/dx through the batch mean and variance.
        coef[C + c] = <floating>(-a * inv * inv * sum_dy_xmu[c] / M)
        coef[2 * C + c] = <floating>(-a * sum_dy[c] / M)
    else:
        coef[C + c] = 0
        coef[2 * C + c] = 0


# ---------------------------------------------------------------- elementwise passes
cdef inline void _normalize_row(const floating* x, floating* y, Py_ssize_t n,
                                floating m, floating scale, floating shift) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = (x[i] - m) * scale + shift


cdef void _normalize(const floating* x, floating* y, const floating* m,
                     const floating* scale, const floating* shift,
                     Py_ssize_t N, Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    """y[n, c, :] = (x[n, c, :] - m[c]) * scale[c] + shift[c]."""
    cdef Py_ssize_t n, c, r
    cdef unsigned int mode
    if S == 1:
        for n in prange(N, nogil=True, schedule='static', num_threads=_threads_for(N * C * S)):
            mode = engine_ftz_enter()
            for c in range(C):
                y[n * C + c] = (x[n * C + c] - m[c]) * scale[c] + shift[c]
            engine_ftz_exit(mode)
    else:
        for r in prange(N * C, nogil=True, schedule='static', num_threads=_threads_for(N * C * S)):
            mode = engine_ftz_enter()
            c = r % C
            _normalize_row(x + r * S, y + r * S, S, m[c], scale[c], shift[c])
            engine_ftz_exit(mode)


cdef inline void _grad_row(const floating* dy, const floating* x, floating* dx,
                           Py_ssize_t n, floating a, floating b, floating m,
                           floating k) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dx[i] = a * dy[i] + b * (x[i] - m) + k


cdef void _input_grad(const floating* dy, const floating* x, floating* dx,
                      const floating* a, const floating* b, const floating* m,
                      const floating* k, Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    """S == 1: dx[n, c] = a[c] * dy + b[c] * (x - m[c]) + k[c]."""
    cdef Py_ssize_t n, c
    cdef unsigned int mode
    for n in prange(N, nogil=True, schedule='static', num_threads=_threads_for(N * C)):
        mode = engine_ftz_enter()
        for c in range(C):
            dx[n * C + c] = a[c] * dy[n * C + c] + b[c] * (x[n * C + c] - m[c]) + k[c]
        engine_ftz_exit(mode)


# ---------------------------------------------------------------- fused channel-block passes
# S > 1: one thread does a block of adjacent channels [c0, c1) start to
# finish: the reductions, the coefficients, the elementwise pass. Loops run
# over n outside and the block's channels inside, so for each n the block is
# one contiguous run of memory (a single channel's rows are short and far
# apart, which defeats the hardware prefetcher). Each channel still adds its
# rows in ascending n: the result does not depend on the blocking.
cdef inline Py_ssize_t _channel_block(Py_ssize_t C) noexcept nogil:
    """Channels per block: CHANNEL_BLOCK, halved until there are at least 4
    blocks (for the threads). Longer contiguous runs measured faster than
    blocks small enough to stay in L2 (16 vs 4 channels of 32 x 32x32
    floats: forward 4%, backward 7% faster on Zen 3)."""
    cdef Py_ssize_t cb = CHANNEL_BLOCK
    while cb > 1 and C < 4 * cb:
        cb //= 2
    return cb


cdef void _train_block(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1, double* mean,
                       double* sqdev, const floating* weight, const floating* bias, double eps,
                       double factor, floating* save_mean, floating* save_invstd,
                       floating* running_mean, floating* running_var, floating* scale,
                       floating* shift) noexcept nogil:
    # One pass over memory: segment statistics merged row by row (_row_stats).
    cdef Py_ssize_t n, c, r
    for c in range(c0, c1):
        mean[c] = 0
        sqdev[c] = 0
    for n in range(N):
        for c in range(c0, c1):
            _row_stats(x + (n * C + c) * S, S, n * S, &mean[c], &sqdev[c])
    for c in range(c0, c1):
        _train_coefficients(c, mean, sqdev, <double>N * S, weight, bias, eps, factor,
                            save_mean, save_invstd, running_mean, running_var, scale, shift)
    for n in range(N):
        for c in range(c0, c1):
            r = (n * C + c) * S
            _normalize_row(x + r, y + r, S, save_mean[c], scale[c], shift[c])


cdef void _backward_block(const floating* dy, const floating* x, const floating* weight,
                          const floating* mean, const floating* invstd, floating* dx,
                          floating* grad_weight, floating* grad_bias, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t S, Py_ssize_t c0, Py_ssize_t c1,
                          bint batch_stats, double* sum_dy, double* sum_dy_xmu,
                          floating* coef) noexcept nogil:
    cdef Py_ssize_t n, c, r
    if grad_weight != NULL or grad_bias != NULL or (dx != NULL and batch_stats):
        for c in range(c0, c1):
            sum_dy[c] = 0
            sum_dy_xmu[c] = 0
        for n in range(N):
            for c in range(c0, c1):
                r = (n * C + c) * S
                _row_grad_sums(dy + r, x + r, S, mean[c], &sum_dy[c], &sum_dy_xmu[c])
        for c in range(c0, c1):
            if grad_weight != NULL:
                grad_weight[c] += <floating>(sum_dy_xmu[c] * invstd[c])
            if grad_bias != NULL:
                grad_bias[c] += <floating>sum_dy[c]
    if dx == NULL:
        return
    for c in range(c0, c1):
        _grad_coefficients(c, sum_dy, sum_dy_xmu, <double>N * S, weight, invstd, batch_stats,
                           coef, C)
    for n in range(N):
        for c in range(c0, c1):
            r = (n * C + c) * S
            _grad_row(dy + r, x + r, dx + r, S, coef[c], coef[C + c], mean[c],
                      coef[2 * C + c])


# ---------------------------------------------------------------- C-level entries
cdef int batchnorm_forward_train(const floating* x, const floating* weight,
                                 const floating* bias, floating* y,
                                 floating* save_mean, floating* save_invstd,
                                 floating* running_mean, floating* running_var,
                                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                 double eps, double factor) noexcept nogil:
    cdef Py_ssize_t c, blk, cb
    cdef double* mean
    cdef double* sqdev
    cdef floating* scale
    cdef floating* shift
    cdef unsigned int mode
    if N < 0 or C < 0 or S < 0 or N * S < 2 or not eps >= 0:
        return ENGINE_EBADARG
    if (running_mean == NULL) != (running_var == NULL):
        return ENGINE_EBADARG
    if C == 0:
        return ENGINE_OK
    mean = <double*>malloc(2 * C * sizeof(double))
    scale = <floating*>malloc(2 * C * sizeof(floating))
    if mean == NULL or scale == NULL:
        free(mean)
        free(scale)
        return ENGINE_ENOMEM
    sqdev = mean + C
    shift = scale + C
    if S > 1:
        cb = _channel_block(C)
        for blk in prange(ceil_div(C, cb), nogil=True, schedule='static',
                          num_threads=_threads_for(N * C * S)):
            mode = engine_ftz_enter()
            _train_block(x, y, N, C, S, blk * cb, min(C, (blk + 1) * cb), mean, sqdev, weight,
                         bias, eps, factor, save_mean, save_invstd, running_mean,
                         running_var, scale, shift)
            engine_ftz_exit(mode)
    else:
        _reduce_stats(x, N, C, mean, sqdev)
        mode = engine_ftz_enter()
        for c in range(C):
            _train_coefficients(c, mean, sqdev, <double>N * S, weight, bias, eps, factor,
                                save_mean, save_invstd, running_mean, running_var, scale,
                                shift)
        engine_ftz_exit(mode)
        _normalize(x, y, save_mean, scale, shift, N, C, S)
    free(mean)
    free(scale)
    return ENGINE_OK


cdef int batchnorm_forward_eval(const floating* x, const floating* weight,
                                const floating* bias, floating* y,
                                const floating* running_mean,
                                const floating* running_var,
                                Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                double eps) noexcept nogil:
    cdef Py_ssize_t c
    cdef double w
    cdef floating* scale
    cdef floating* shift
    if N < 0 or C < 0 or S < 0 or not eps >= 0:
        return ENGINE_EBADARG
    if running_mean == NULL or running_var == NULL:
        return ENGINE_EBADARG
    if C == 0 or N * S == 0:
        return ENGINE_OK
    scale = <floating*>malloc(2 * C * sizeof(floating))
    if scale == NULL:
        return ENGINE_ENOMEM
    shift = scale + C
    for c in range(C):
        w = weight[c] if weight != NULL else 1.0
        scale[c] = <floating>(w / sqrt(running_var[c] + eps))
        shift[c] = bias[c] if bias != NULL else 0
    _normalize(x, y, running_mean, scale, shift, N, C, S)
    free(scale)
    return ENGINE_OK


cdef int batchnorm_backward(const floating* grad_y, const floating* x,
                            const floating* weight, const floating* mean,
                            const floating* invstd, floating* grad_x,
                            floating* grad_weight, floating* grad_bias,
                            Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                            bint batch_stats) noexcept nogil:
    cdef Py_ssize_t c, blk, cb
    cdef double* sum_dy
    cdef double* sum_dy_xmu
    cdef floating* coef
    cdef unsigned int mode
    if N < 0 or C < 0 or S < 0 or (batch_stats and N * S < 1):
        return ENGINE_EBADARG
    if C == 0 or N * S == 0:
        return ENGINE_OK
    sum_dy = <double*>malloc(2 * C * sizeof(double))
    coef = <floating*>malloc(3 * C * sizeof(floating))
    if sum_dy == NULL or coef == NULL:
        free(sum_dy)
        free(coef)
        return ENGINE_ENOMEM
    sum_dy_xmu = sum_dy + C
    if S > 1:
        cb = _channel_block(C)
        for blk in prange(ceil_div(C, cb), nogil=True, schedule='static',
                          num_threads=_threads_for(N * C * S)):
            mode = engine_ftz_enter()
            _backward_block(grad_y, x, weight, mean, invstd, grad_x, grad_weight, grad_bias,
                            N, C, S, blk * cb, min(C, (blk + 1) * cb), batch_stats, sum_dy,
                            sum_dy_xmu, coef)
            engine_ftz_exit(mode)
    else:
        if grad_weight != NULL or grad_bias != NULL or (grad_x != NULL and batch_stats):
            _reduce_grad_sums(grad_y, x, mean, N, C, sum_dy, sum_dy_xmu)
            for c in range(C):
                if grad_weight != NULL:
                    grad_weight[c] += <floating>(sum_dy_xmu[c] * invstd[c])
                if grad_bias != NULL:
                    grad_bias[c] += <floating>sum_dy[c]
        if grad_x != NULL:
            for c in range(C):
                _grad_coefficients(c, sum_dy, sum_dy_xmu, <double>N * S, weight, invstd,
                                   batch_stats, coef, C)
            _input_grad(grad_y, x, grad_x, coef, coef + C, mean, coef + 2 * C, N, C)
    free(sum_dy)
    free(coef)
    return ENGINE_OK


# ---------------------------------------------------------------- Python entries
cdef object _channel_vector(v, str name, Py_ssize_t C, dtype, bint writeable):
    if v is None:
        return None
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or None, got {type(v).__name__}")
    if v.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} like the input, got {v.dtype}")
    if v.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) (one value per channel), got {v.shape}")
    if writeable and (not v.flags.c_contiguous or not v.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous array (updated in place)")
    return np.ascontiguousarray(v)


cdef tuple _ncs(x):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = 1, d
    for d in x.shape[2:]:
        S *= d
    return N, C, S


cdef floating* _ptr(floating[::1] v) noexcept:
    return &v[0] if v is not None and v.shape[0] > 0 else NULL


cdef int _fwd(floating[::1] x, floating[::1] w, floating[::1] b, floating[::1] y,
              floating[::1] sm, floating[::1] si, floating[::1] rm, floating[::1] rv,
              Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, bint training, double eps,
              double factor) except -1:
    cdef const floating* px = _ptr(x)
    cdef const floating* pw = _ptr(w)
    cdef const floating* pb = _ptr(b)
    cdef floating* py = _ptr(y)
    cdef floating* psm = _ptr(sm)
    cdef floating* psi = _ptr(si)
    cdef floating* prm = _ptr(rm)
    cdef floating* prv = _ptr(rv)
    cdef int code
    with nogil:
        if training:
            code = batchnorm_forward_train(px, pw, pb, py, psm, psi, prm, prv, N, C, S,
                                           eps, factor)
        else:
            code = batchnorm_forward_eval(px, pw, pb, py, prm, prv, N, C, S, eps)
    if code == ENGINE_ENOMEM:
        raise MemoryError("batchnorm_forward: workspace allocation failed")
    if code != ENGINE_OK:
        raise ValueError(f"batchnorm_forward: invalid arguments (engine error {code})")
    return 0


def batch_norm_forward(x, weight=None, bias=None, running_mean=None, running_var=None, *,
                      bint training=True, double momentum=0.1, double eps=1e-5):
    """Batch normalisation forward over axis 1 of an (N, C, *) array.

    Args:
        x: (N, C) or (N, C, *) float32/float64 (non-contiguous input is copied).
        weight, bias: (C,) arrays or None (affine=False: 1 and 0).
        running_mean, running_var: (C,) arrays updated IN PLACE in training
            mode (pass both or neither); used to normalise in eval mode.
        training: True: normalise with the batch statistics (needs more than
            one value per channel) and update the running ones with factor
            `momentum` (unbiased variance). False: use the running statistics.
        eps: added to the variance.

    Returns:
        (y, save_mean, save_invstd): training mode returns the batch mean and
        1/sqrt(var + eps) per channel (what backward needs); eval mode returns
        the running mean and 1/sqrt(running_var + eps).
    """
    x = float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-dimensional (N, C, ...), got shape {x.shape}")
    N, C, S = _ncs(x)
    weight = _channel_vector(weight, "weight", C, x.dtype, False)
    bias = _channel_vector(bias, "bias", C, x.dtype, False)
    running_mean = _channel_vector(running_mean, "running_mean", C, x.dtype, True)
    running_var = _channel_vector(running_var, "running_var", C, x.dtype, True)
    if (running_mean is None) != (running_var is None):
        raise ValueError("pass both running_mean and running_var, or neither")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if training:
        if N * S < 2:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input size {x.shape}")
    elif running_mean is None:
        raise ValueError("eval mode needs running_mean and running_var")
    y = np.empty_like(x)
    save_mean = np.empty(C, dtype=x.dtype) if training else None
    save_invstd = np.empty(C, dtype=x.dtype) if training else None
    flat = [a.reshape(-1) if a is not None else None
            for a in (x, weight, bias, y, save_mean, save_invstd, running_mean, running_var)]
    if x.dtype == np.float32:
        _fwd[float](*flat, N, C, S, training, eps, momentum)
    else:
        _fwd[double](*flat, N, C, S, training, eps, momentum)
    if not training:
        save_mean = running_mean.copy()
        save_invstd = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(x.dtype)
    return y, save_mean, save_invstd


cdef int _bwd(floating[::1] gy, floating[::1] x, floating[::1] w, floating[::1] m,
              floating[::1] inv, floating[::1] gx, floating[::1] gw, floating[::1] gb,
              Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, bint batch_stats) except -1:
    cdef const floating* pgy = _ptr(gy)
    cdef const floating* px = _ptr(x)
    cdef const floating* pw = _ptr(w)
    cdef const floating* pm = _ptr(m)
    cdef const floating* pinv = _ptr(inv)
    cdef floating* pgx = _ptr(gx)
    cdef floating* pgw = _ptr(gw)
    cdef floating* pgb = _ptr(gb)
    cdef int code
    with nogil:
        code = batchnorm_backward(pgy, px, pw, pm, pinv, pgx, pgw, pgb, N, C, S, batch_stats)
    if code == ENGINE_ENOMEM:
        raise MemoryError("batchnorm_backward: workspace allocation failed")
    if code != ENGINE_OK:
        raise ValueError(f"batchnorm_backward: invalid arguments (engine error {code})")
    return 0


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, *, bint training=True,
                       grad_weight=None, grad_bias=None, bint input_grad=True):
    """Batch normalisation backward.

    Args:
        grad_out: dL/dy, the shape of x.
        x: the forward input.
        weight: (C,) or None (affine=False).
        save_mean, save_invstd: what batch_norm_forward returned.
        training: the forward used batch statistics (the gradient flows
            through them); False: they were the running constants.
        grad_weight, grad_bias: (C,) arrays ACCUMULATED into in place, or None.
        input_grad: compute and return dL/dx (else return None).
    """
    x = float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be at least 2-dimensional (N, C, ...), got shape {x.shape}")
    grad_out = float_array(grad_out, "grad_out", dtype=x.dtype)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have the input's shape {x.shape}, got {grad_out.shape}")
    N, C, S = _ncs(x)
    weight = _channel_vector(weight, "weight", C, x.dtype, False)
    save_mean = _channel_vector(save_mean, "save_mean", C, x.dtype, False)
    save_invstd = _channel_vector(save_invstd, "save_invstd", C, x.dtype, False)
    if save_mean is None or save_invstd is None:
        raise ValueError("save_mean and save_invstd are required")
    grad_weight = _channel_vector(grad_weight, "grad_weight", C, x.dtype, True)
    grad_bias = _channel_vector(grad_bias, "grad_bias", C, x.dtype, True)
    grad_x = np.empty_like(x) if input_grad else None
    flat = [a.reshape(-1) if a is not None else None
            for a in (grad_out, x, weight, save_mean, save_invstd, grad_x, grad_weight,
                      grad_bias)]
    if x.dtype == np.float32:
        _bwd[float](*flat, N, C, S, training)
    else:
        _bwd[double](*flat, N, C, S, training)
    return grad_x
