"""Activation kernels: element-wise and row-wise (softmax), forward and backward.

Layering: one inline loop per operation over a contiguous range (simple
loops that the compiler vectorises), a driver that cuts the elements into
fixed chunks (or the rows into fixed groups) and runs them under OpenMP, and
thin Python entries that validate arrays and call the drivers without the GIL.
"""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, engine_ftz_enter,
                             engine_ftz_exit, ceil_div)
from engine._threads cimport engine_num_threads
# libm by element type; importing _vecmath also announces the SIMD variants.
from engine._vecmath cimport (ENGINE_VECMATH, vm_exp as _exp, vm_log as _log,
                              vm_log1p as _log1p, vm_tanh as _tanh,
                              vm_erfc as _erfc, vm_fabs as _fabs)
from engine._validate import float_array, out_array

# Elements per chunk (and per row group): 64 KiB of float32, large enough to
# hide the OpenMP scheduling cost, small enough to split a (128, 4096) batch.
cdef Py_ssize_t _CHUNK = 16384

# sqrt(1/2), 1/sqrt(2 pi), sqrt(2/pi) and the cubic coefficient of tanh-GELU.
cdef double _SQRT1_2 = 0.70710678118654752440
cdef double _INV_SQRT_2PI = 0.39894228040143267794
cdef double _SQRT_2_PI = 0.79788456080286535588
cdef double _GELU_KAPPA = 0.044715

cdef enum:
    OP_RELU = 1
    OP_LEAKY_RELU
    OP_SIGMOID
    OP_TANH
    OP_SOFTPLUS
    OP_GELU
    OP_GELU_TANH
    OP_SOFTMAX
    OP_LOG_SOFTMAX


cdef inline floating _sigmoid(floating v) noexcept nogil:
    # exp of a non-positive number never overflows: 1/(1+e) for v >= 0 and
    # e/(1+e) for v < 0, with e = exp(-|v|).
    cdef floating e = _exp(-_fabs(v))
    cdef floating r = 1 / (1 + e)
    return r if v >= 0 else e * r


# ---------------------------------------------------------------------------
# Row reductions with 16 independent partial sums: the compiler keeps them in
# vector registers, and the summation order depends on n only.

cdef floating row_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef floating acc[16]
    cdef floating s
    cdef Py_ssize_t i, j, n16 = n - n % 16
    for j in range(16):
        acc[j] = 0
    for i in range(0, n16, 16):
        for j in range(16):
            acc[j] += x[i + j]
    for j in range(8):
        acc[j] += acc[j + 8]
    for j in range(4):
        acc[j] += acc[j + 4]
    s = (acc[0] + acc[2]) + (acc[1] + acc[3])
    for i in range(n16, n):
        s += x[i]
    return s


cdef extern from *:
    """
    /* Row maximum as an OpenMP SIMD max-reduction: GCC does not vectorise the
       compare-and-select loop by itself (NaN ordering), and the result does
       not depend on the order (a NaN entry may be skipped; it still poisons
       the row through exp(x - max)). Serial without OpenMP: same value. */
    static inline float engine_row_max_f(const float* x, Py_ssize_t n) {
        float m = x[0];
        #pragma omp simd reduction(max:m)
        for (Py_ssize_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
        return m;
    }
    static inline double engine_row_max_d(const double* x, Py_ssize_t n) {
        double m = x[0];
        #pragma omp simd reduction(max:m)
        for (Py_ssize_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
        return m;
    }
    """
    float engine_row_max_f(const float* x, Py_ssize_t n) noexcept nogil
    double engine_row_max_d(const double* x, Py_ssize_t n) noexcept nogil


cdef floating row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return engine_row_max_f(x, n)
    else:
        return engine_row_max_d(x, n)


cdef inline floating _row_sum_exp(const floating* x, floating shift,
                                  Py_ssize_t n) noexcept nogil:
    """sum(exp(x - shift)) in blocks of 256: the exp loop vectorises (it
    calls the SIMD exp), the block sum uses row_sum's fixed order."""
    cdef floating buf[256]
    cdef floating s = 0
    cdef Py_ssize_t lo, j, m
    for lo in range(0, n, 256):
        m = min(256, n - lo)
        for j in range(m):
            buf[j] = _exp(x[lo + j] - shift)
        s += row_sum(buf, m)
    return s


cdef inline floating _row_dot(const floating* a, const floating* b,
                              Py_ssize_t n) noexcept nogil:
    cdef floating acc[16]
    cdef floating s
    cdef Py_ssize_t i, j, n16 = n - n % 16
    for j in range(16):
        acc[j] = 0
    for i in range(0, n16, 16):
        for j in range(16):
            acc[j] += a[i + j] * b[i + j]
    for j in range(8):
        acc[j] += acc[j + 8]
    for j in range(4):
        acc[j] += acc[j + 4]
    s = (acc[0] + acc[2]) + (acc[1] + acc[3])
    for i in range(n16, n):
        s += a[i] * b[i]
    return s


# ---------------------------------------------------------------------------
# Element-wise loops over one contiguous chunk. p0, p1: the operation's
# parameters (negative_slope; beta and threshold).

cdef void _forward_chunk(int op, const floating* x, floating* y, Py_ssize_t n,
                         floating p0, floating p1) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v, z, t
    if op == OP_RELU:
        relu_span(x, y, n)
    elif op == OP_LEAKY_RELU:
        for i in range(n):
            v = x[i]
            y[i] = v if v > 0 else v * p0
    elif op == OP_SIGMOID:
        for i in range(n):
            y[i] = _sigmoid(x[i])
    elif op == OP_TANH:
        for i in range(n):
            y[i] = _tanh(x[i])
    elif op == OP_SOFTPLUS:
        # log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)): no overflow, and
        # accurate for very negative z; linear above the threshold (torch).
        for i in range(n):
            v = x[i]
            z = v * p0
            t = ((z if z > 0 else 0) + _log1p(_exp(-_fabs(z)))) / p0
            y[i] = v if z > p1 else t
    elif op == OP_GELU:
        # Phi(x) = erfc(-x / sqrt 2) / 2: 1 + erf(x / sqrt 2) would cancel
        # for negative x (all digits lost in float32 below x = -4).
        for i in range(n):
            v = x[i]
            y[i] = v * <floating>0.5 * _erfc(-v * <floating>_SQRT1_2)
    elif op == OP_GELU_TANH:
        # 0.5 x (1 + tanh(z)) = x sigmoid(2 z), without the cancellation of
        # 1 + tanh(z) for negative z.
        for i in range(n):
            v = x[i]
            z = 2 * <floating>_SQRT_2_PI * (v + <floating>_GELU_KAPPA * v * v * v)
            y[i] = v * _sigmoid(z)


cdef void _backward_chunk(int op, const floating* a, const floating* dy,
                          floating* dx, Py_ssize_t n,
                          floating p0, floating p1) noexcept nogil:
    # `a` is the forward output y (relu, sigmoid, tanh) or input x (the rest).
    cdef Py_ssize_t i
    cdef floating v, z, t, e, r, s, sc, cdf, pdf, x2
    if op == OP_RELU:
        for i in range(n):
            dx[i] = 0 if a[i] <= 0 else dy[i]   # NaN input passes the gradient (torch)
    elif op == OP_LEAKY_RELU:
        for i in range(n):
            dx[i] = dy[i] if a[i] > 0 else dy[i] * p0
    elif op == OP_SIGMOID:
        for i in range(n):
            v = a[i]
            dx[i] = dy[i] * (1 - v) * v
    elif op == OP_TANH:
        for i in range(n):
            v = a[i]
            dx[i] = dy[i] * (1 - v * v)
    elif op == OP_SOFTPLUS:
        for i in range(n):
            z = a[i] * p0
            t = dy[i] * _sigmoid(z)
            dx[i] = dy[i] if z > p1 else t
    elif op == OP_GELU:
        # d/dx x Phi(x) = Phi(x) + x phi(x)
        for i in range(n):
            v = a[i]
            cdf = <floating>0.5 * _erfc(-v * <floating>_SQRT1_2)
            pdf = <floating>_INV_SQRT_2PI * _exp(<floating>-0.5 * v * v)
            dx[i] = dy[i] * (cdf + v * pdf)
    elif op == OP_GELU_TANH:
        # y = x s, s = sigmoid(z), z = 2 sqrt(2/pi) (x + kappa x^3):
        # dy/dx = s + x s (1 - s) dz/dx (torch's tanh formula rewritten with
        # s = (1 + tanh) / 2; s and 1 - s both from one exp, no cancellation).
        for i in range(n):
            v = a[i]
            x2 = v * v
            z = 2 * <floating>_SQRT_2_PI * (v + <floating>_GELU_KAPPA * x2 * v)
            e = _exp(-_fabs(z))
            r = 1 / (1 + e)
            s = r if z >= 0 else e * r
            sc = e * r if z >= 0 else r
            dx[i] = dy[i] * (s + v * s * sc * 2 * <floating>_SQRT_2_PI
                             * (1 + 3 * <floating>_GELU_KAPPA * x2))


cdef void _rows_chunk(int op, bint backward, const floating* a,
                      const floating* dy, floating* out,
                      Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating* ar
    cdef const floating* dyr
    cdef floating* outr
    cdef floating m, s
    for r in range(rows):
        ar = a + r * cols
        outr = out + r * cols
        if backward:
            dyr = dy + r * cols
            if op == OP_SOFTMAX:
                s = _row_dot(dyr, ar, cols)
                for j in range(cols):
                    outr[j] = ar[j] * (dyr[j] - s)
            else:
                s = row_sum(dyr, cols)
                for j in range(cols):
                    outr[j] = dyr[j] - _exp(ar[j]) * s
        else:
            m = row_max(ar, cols)
            if op == OP_SOFTMAX:
                for j in range(cols):
                    outr[j] = _exp(ar[j] - m)
                s = 1 / row_sum(<const floating*>outr, cols)
                for j in range(cols):
                    outr[j] *= s
            else:
                # (x - max) - log(sum): x - (max + log(sum)) would round the
                # large max + log(sum) first and lose the small differences.
                s = _log(_row_sum_exp(ar, m, cols))
                for j in range(cols):
                    outr[j] = (ar[j] - m) - s


# ---------------------------------------------------------------------------
# Drivers: fixed chunks under OpenMP, FTZ/DAZ per chunk, the caller's mode
# restored afterwards.

cdef int _run_elementwise(int op, bint backward, const floating* a,
                          const floating* dy, floating* out, Py_ssize_t n,
                          double p0, double p1) noexcept nogil:
    cdef Py_ssize_t nchunks, c, lo, hi
    cdef unsigned int mode
    if n < 0:
        return ENGINE_EBADARG
    if n == 0:
        return ENGINE_OK
    if a == NULL or out == NULL or (backward and dy == NULL):
        return ENGINE_EBADARG
    # One chunk runs on the calling thread (waking the team costs more than it).
    nchunks = ceil_div(n, _CHUNK)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * _CHUNK
        hi = min(n, lo + _CHUNK)
        mode = engine_ftz_enter()
        if backward:
            _backward_chunk(op, a + lo, dy + lo, out + lo, hi - lo,
                            <floating>p0, <floating>p1)
        else:
            _forward_chunk(op, a + lo, out + lo, hi - lo, <floating>p0, <floating>p1)
        engine_ftz_exit(mode)
    return ENGINE_OK


cdef int _run_rows(int op, bint backward, const floating* a, const floating* dy,
                   floating* out, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t per_chunk, nchunks, c, lo, hi
    cdef unsigned int mode
    if rows < 0 or cols < 0:
        return ENGINE_EBADARG
    if rows == 0 or cols == 0:
        return ENGINE_OK
    if a == NULL or out == NULL or (backward and dy == NULL):
        return ENGINE_EBADARG
    per_chunk = max(1, _CHUNK // cols)
    nchunks = ceil_div(rows, per_chunk)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads() if nchunks > 1 else 1):
        lo = c * per_chunk
        hi = min(rows, lo + per_chunk)
        mode = engine_ftz_enter()
        _rows_chunk(op, backward, a + lo * cols,
                    (dy + lo * cols) if backward else NULL,
                    out + lo * cols, hi - lo, cols)
        engine_ftz_exit(mode)
    return ENGINE_OK


# ---------------------------------------------------------------------------
# C-level entries (declared in activation.pxd)

cdef int relu_forward(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    return _run_elementwise(OP_RELU, False, x, <const floating*>NULL, y, n, 0, 0)


cdef int relu_backward(const floating* y, const floating* dy, floating* dx,
                       Py_ssize_t n) noexcept nogil:
    return _run_elementwise(OP_RELU, True, y, dy, dx, n, 0, 0)


cdef int leaky_relu_forward(const floating* x, floating* y, Py_ssize_t n,
                            double negative_slope) noexcept nogil:
    return _run_elementwise(OP_LEAKY_RELU, False, x, <const floating*>NULL, y, n,
                            negative_slope, 0)


cdef int leaky_relu_backward(const floating* a, const floating* dy, floating* dx,
                             Py_ssize_t n, double negative_slope) noexcept nogil:
    return _run_elementwise(OP_LEAKY_RELU, True, a, dy, dx, n, negative_slope, 0)


cdef int sigmoid_forward(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    return _run_elementwise(OP_SIGMOID, False, x, <const floating*>NULL, y, n, 0, 0)


cdef int sigmoid_backward(const floating* y, const floating* dy, floating* dx,
                          Py_ssize_t n) noexcept nogil:
    return _run_elementwise(OP_SIGMOID, True, y, dy, dx, n, 0, 0)


cdef int tanh_forward(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    return _run_elementwise(OP_TANH, False, x, <const floating*>NULL, y, n, 0, 0)


cdef int tanh_backward(const floating* y, const floating* dy, floating* dx,
                       Py_ssize_t n) noexcept nogil:
    return _run_elementwise(OP_TANH, True, y, dy, dx, n, 0, 0)


cdef int softplus_forward(const floating* x, floating* y, Py_ssize_t n,
                          double beta, double threshold) noexcept nogil:
    if not beta > 0:
        return ENGINE_EBADARG
    return _run_elementwise(OP_SOFTPLUS, False, x, <const floating*>NULL, y, n,
                            beta, threshold)


cdef int softplus_backward(const floating* x, const floating* dy, floating* dx,
                           Py_ssize_t n, double beta, double threshold) noexcept nogil:
    if not beta > 0:
        return ENGINE_EBADARG
    return _run_elementwise(OP_SOFTPLUS, True, x, dy, dx, n, beta, threshold)


cdef int gelu_forward(const floating* x, floating* y, Py_ssize_t n,
                      bint approximate_tanh) noexcept nogil:
    return _run_elementwise(OP_GELU_TANH if approximate_tanh else OP_GELU, False,
                            x, <const floating*>NULL, y, n, 0, 0)


cdef int gelu_backward(const floating* x, const floating* dy, floating* dx,
                       Py_ssize_t n, bint approximate_tanh) noexcept nogil:
    return _run_elementwise(OP_GELU_TANH if approximate_tanh else OP_GELU, True,
                            x, dy, dx, n, 0, 0)


cdef int softmax_forward(const floating* x, floating* y, Py_ssize_t rows,
                         Py_ssize_t cols) noexcept nogil:
    return _run_rows(OP_SOFTMAX, False, x, <const floating*>NULL, y, rows, cols)


cdef int softmax_backward(const floating* y, const floating* dy, floating* dx,
                          Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    return _run_rows(OP_SOFTMAX, True, y, dy, dx, rows, cols)


cdef int log_softmax_forward(const floating* x, floating* y, Py_ssize_t rows,
                             Py_ssize_t cols) noexcept nogil:
    return _run_rows(OP_LOG_SOFTMAX, False, x, <const floating*>NULL, y, rows, cols)


cdef int log_softmax_backward(const floating* y, const floating* dy, floating* dx,
                              Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    return _run_rows(OP_LOG_SOFTMAX, True, y, dy, dx, rows, cols)


# ---------------------------------------------------------------------------
# Python entries

cdef int _call(int op, bint backward, const floating[::1] a,
               const floating[::1] dy, floating[::1] out, Py_ssize_t rows,
               Py_ssize_t cols, double p0, double p1):
    """rows == 0 marks an element-wise op over all of `a`."""
    cdef Py_ssize_t n = a.shape[0]
    cdef const floating* pa = &a[0] if n > 0 else NULL
    cdef const floating* pd = &dy[0] if (backward and n > 0) else NULL
    cdef floating* po = &out[0] if n > 0 else NULL
    cdef int rc
    with nogil:
        if op == OP_SOFTMAX or op == OP_LOG_SOFTMAX:
            rc = _run_rows(op, backward, pa, pd, po, rows, cols)
        else:
            rc = _run_elementwise(op, backward, pa, pd, po, n, p0, p1)
    return rc


def _apply(int op, a, dy, out, double p0=0, double p1=0, bint rows=False,
           a_name="x", dy_name="grad_y"):
    a = float_array(a, a_name, ndim=2 if rows else None)
    backward = dy is not None
    if backward:
        dy = float_array(dy, dy_name, dtype=a.dtype)
        if dy.shape != a.shape:
            raise ValueError(f"{dy_name} must have the shape of {a_name} {a.shape}, "
                             f"got {dy.shape}")
    out = out_array(out, "out", a.shape, a.dtype)
    nrows, ncols = a.shape if rows else (0, 0)
    af = a.reshape(-1)
    dyf = dy.reshape(-1) if backward else af
    outf = out.reshape(-1)
    if a.dtype == np.float32:
        rc = _call[float](op, backward, af, dyf, outf, nrows, ncols, p0, p1)
    else:
        rc = _call[double](op, backward, af, dyf, outf, nrows, ncols, p0, p1)
    if rc != ENGINE_OK:
        raise ValueError(f"activation kernel rejected its arguments (code {rc})")
    return out


def vector_math_enabled():
    """True when exp/log1p/tanh/erfc loops call glibc's SIMD variants (libmvec)."""
    return bool(ENGINE_VECMATH)


def relu(x, out=None):
    """y = max(x, 0) on any float32/float64 array (out=x runs in place)."""
    return _apply(OP_RELU, x, None, out)


def relu_grad(y, grad_y, out=None):
    """dx from the forward output y: grad_y where y > 0, else 0."""
    return _apply(OP_RELU, y, grad_y, out, a_name="y")


def leaky_relu(x, negative_slope=0.01, out=None):
    """y = x where x > 0, else negative_slope * x."""
    return _apply(OP_LEAKY_RELU, x, None, out, negative_slope)


def leaky_relu_grad(x, grad_y, negative_slope=0.01, out=None):
    """dx from the forward input x (or the output when negative_slope > 0)."""
    return _apply(OP_LEAKY_RELU, x, grad_y, out, negative_slope)


def sigmoid(x, out=None):
    """y = 1 / (1 + exp(-x)), stable for large |x|."""
    return _apply(OP_SIGMOID, x, None, out)


def sigmoid_grad(y, grad_y, out=None):
    """dx = grad_y * y * (1 - y) from the forward output y."""
    return _apply(OP_SIGMOID, y, grad_y, out, a_name="y")


def tanh(x, out=None):
    """y = tanh(x)."""
    return _apply(OP_TANH, x, None, out)


def tanh_grad(y, grad_y, out=None):
    """dx = grad_y * (1 - y^2) from the forward output y."""
    return _apply(OP_TANH, y, grad_y, out, a_name="y")


def _check_softplus(beta, threshold):
    if not beta > 0:
        raise ValueError(f"softplus needs beta > 0. Received: beta={beta}")
    return float(beta), float(threshold)


def softplus(x, beta=1.0, threshold=20.0, out=None):
    """torch's softplus: log(1 + exp(beta x)) / beta, x where beta x > threshold."""
    beta, threshold = _check_softplus(beta, threshold)
    return _apply(OP_SOFTPLUS, x, None, out, beta, threshold)


def softplus_grad(x, grad_y, beta=1.0, threshold=20.0, out=None):
    """dx = grad_y * sigmoid(beta x) from the forward input (grad_y above threshold)."""
    beta, threshold = _check_softplus(beta, threshold)
    return _apply(OP_SOFTPLUS, x, grad_y, out, beta, threshold)


def _gelu_op(approximate):
    if approximate == "none":
        return OP_GELU
    if approximate == "tanh":
        return OP_GELU_TANH
    raise ValueError(f"approximate must be 'none' or 'tanh'. Received: approximate={approximate!r}")


def gelu(x, approximate="none", out=None):
    """GELU: x Phi(x) (erf), or torch's tanh approximation."""
    return _apply(_gelu_op(approximate), x, None, out)


def gelu_grad(x, grad_y, approximate="none", out=None):
    """GELU backward from the forward input x."""
    return _apply(_gelu_op(approximate), x, grad_y, out)


def softmax(x, out=None):
    """Softmax over the last axis of a 2-D (rows, cols) array."""
    return _apply(OP_SOFTMAX, x, None, out, rows=True)


def softmax_grad(y, grad_y, out=None):
    """dx = y * (grad_y - sum(grad_y * y)) per row, from the output y (2-D)."""
    return _apply(OP_SOFTMAX, y, grad_y, out, rows=True, a_name="y")


def log_softmax(x, out=None):
    """log_softmax over the last axis of a 2-D (rows, cols) array."""
    return _apply(OP_LOG_SOFTMAX, x, None, out, rows=True)


def log_softmax_grad(y, grad_y, out=None):
    """dx = grad_y - exp(y) * sum(grad_y) per row, from the output y (2-D)."""
    return _apply(OP_LOG_SOFTMAX, y, grad_y, out, rows=True, a_name="y")
