"""Dense layer kernels: GEMM-backed forward and backward of y = x @ W^T + b."""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ceil_div,
                             engine_ftz_enter, engine_ftz_exit)
from engine._threads cimport engine_num_threads
from engine.blas cimport gemm_parallel
from engine.activation cimport relu_span
from engine._validate import (float_array, out_array, check_blas_size, export_entries,
                              BLAS_INT_MAX)

# Column block for the bias-gradient sum: each block is summed by one thread,
# rows in order, so the result does not depend on the thread count.
cdef Py_ssize_t _DB_BLOCK = 64
# Element count below which a pass runs on the calling thread only (waking the
# OpenMP team costs a few microseconds, far more under load).
cdef Py_ssize_t _PAR_MIN = 1 << 16


cdef int linear_forward(const floating* x, const floating* W, const floating* b,
                        floating* y, Py_ssize_t N, Py_ssize_t IN,
                        Py_ssize_t OUT) noexcept nogil:
    cdef Py_ssize_t n, o
    cdef floating beta = 0
    cdef unsigned int fp_mode
    if N < 0 or IN < 0 or OUT < 0:
        return ENGINE_EBADARG
    if N == 0 or OUT == 0:
        return ENGINE_OK
    fp_mode = engine_ftz_enter()
    if b != NULL:
        # Bias first, then accumulate the product on top of it (beta = 1).
        # A parallel region costs more than filling a small output.
        if N * OUT >= _PAR_MIN:
            for n in prange(N, nogil=True, schedule='static',
                            num_threads=engine_num_threads()):
                for o in range(OUT):
                    y[n * OUT + o] = b[o]
        else:
            for n in range(N):
                for o in range(OUT):
                    y[n * OUT + o] = b[o]
        beta = 1
    gemm_parallel(False, True, <int>N, <int>OUT, <int>IN, <floating>1, x, <int>max(IN, 1),
                  W, <int>max(IN, 1), beta, y, <int>OUT)
    engine_ftz_exit(fp_mode)
    return ENGINE_OK


cdef int linear_backward(const floating* x, const floating* W, const floating* dy,
                         floating* dx, floating* dW, floating* db,
                         Py_ssize_t N, Py_ssize_t IN, Py_ssize_t OUT,
                         bint accumulate) noexcept nogil:
    cdef Py_ssize_t blk, nblk, n, o, o0, o1
    cdef floating beta = 1 if accumulate else 0
    cdef unsigned int fp_mode
    if N < 0 or IN < 0 or OUT < 0:
        return ENGINE_EBADARG
    fp_mode = engine_ftz_enter()
    if dx != NULL and N > 0 and IN > 0:
        gemm_parallel(False, False, <int>N, <int>IN, <int>OUT, <floating>1, dy,
                      <int>max(OUT, 1), W, <int>max(IN, 1), <floating>0, dx, <int>IN)
    if dW != NULL and OUT > 0 and IN > 0:
        gemm_parallel(True, False, <int>OUT, <int>IN, <int>N, <floating>1, dy,
                      <int>max(OUT, 1), x, <int>max(IN, 1), beta, dW, <int>IN)
    if db != NULL and OUT > 0:
        nblk = ceil_div(OUT, _DB_BLOCK)
        for blk in prange(nblk, nogil=True, schedule='static',
                          num_threads=engine_num_threads() if N * OUT >= _PAR_MIN else 1):
            o0 = blk * _DB_BLOCK
            o1 = min(OUT, o0 + _DB_BLOCK)
            if not accumulate:
                for o in range(o0, o1):
                    db[o] = 0
            for n in range(N):
                for o in range(o0, o1):
                    db[o] += dy[n * OUT + o]
    engine_ftz_exit(fp_mode)
    return ENGINE_OK


def _check_linear(x, weight, bias):
    x = float_array(x, "x", ndim=2)
    weight = float_array(weight, "weight", ndim=2, dtype=x.dtype)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but weight expects "
                         f"{weight.shape[1]} (weight shape {weight.shape})")
    if bias is not None:
        bias = float_array(bias, "bias", ndim=1, dtype=x.dtype)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} elements, expected "
                             f"{weight.shape[0]} (out_features)")
    for name, v in (("batch", x.shape[0]), ("in_features", x.shape[1]),
                    ("out_features", weight.shape[0])):
        check_blas_size(name, v)
    return x, weight, bias


cdef _forward(floating[:, ::1] x, floating[:, ::1] W, floating[::1] b,
              floating[:, ::1] y, bint relu=False):
    cdef Py_ssize_t N = x.shape[0], IN = x.shape[1], OUT = W.shape[0]
    cdef const floating* px = &x[0, 0] if x.shape[0] * x.shape[1] else NULL
    cdef const floating* pw = &W[0, 0] if W.shape[0] * W.shape[1] else NULL
    cdef const floating* pb = &b[0] if (b is not None and b.shape[0]) else NULL
    cdef floating* py = &y[0, 0] if y.shape[0] * y.shape[1] else NULL
    cdef int rc
    with nogil:
        rc = linear_forward(px, pw, pb, py, N, IN, OUT)
        if relu and rc == ENGINE_OK:
            relu_span(py, py, N * OUT)   # fused ReLU, engine.activation's rule
    if rc != ENGINE_OK:
        raise RuntimeError(f"linear_forward failed with code {rc}")


def _linear_forward_plain(x, weight, bias=None, bint relu=False):
    """Lean entry for pyengine.Linear: linear_forward(x, weight, bias),
    followed by max(., 0) when `relu`, for arrays that already are
    C-contiguous and writeable with one dtype (the typed buffers reject
    anything else with ValueError; nothing is copied)."""
    cdef Py_ssize_t IN = weight.shape[1], OUT = weight.shape[0]
    if x.shape[1] != IN:
        raise ValueError(f"x has {x.shape[1]} features but weight expects "
                         f"{IN} (weight shape {weight.shape})")
    if bias is not None and bias.shape != (OUT,):
        raise ValueError(f"bias has shape {bias.shape}, expected ({OUT},)")
    if x.shape[0] > BLAS_INT_MAX or IN > BLAS_INT_MAX or OUT > BLAS_INT_MAX:
        raise ValueError(f"linear sizes {x.shape} x {weight.shape} exceed the BLAS "
                         f"32-bit size limit {BLAS_INT_MAX}")
    y = np.empty((x.shape[0], OUT), x.dtype)
    if x.dtype == np.float32:
        _forward[float](x, weight, bias, y, relu)
    else:
        _forward[double](x, weight, bias, y, relu)
    return y


def _linear_forward_py(x, weight, bias=None, out=None):
    """y = x @ weight.T + bias.

    Args:
        x: (N, in_features) float32/float64.
        weight: (out_features, in_features), same dtype.
        bias: (out_features,) or None.
        out: optional (N, out_features) output array.
    """
    x, weight, bias = _check_linear(x, weight, bias)
    out = out_array(out, "out", (x.shape[0], weight.shape[0]), x.dtype)
    if x.dtype == np.float32:
        _forward[float](x, weight, bias, out)
    else:
        _forward[double](x, weight, bias, out)
    return out


cdef _backward(floating[:, ::1] x, floating[:, ::1] W, floating[:, ::1] dy,
               floating[:, ::1] dx, floating[:, ::1] dW, floating[::1] db,
               bint accumulate):
    cdef Py_ssize_t N = x.shape[0], IN = x.shape[1], OUT = W.shape[0]
    cdef const floating* px = &x[0, 0] if x.size else NULL
    cdef const floating* pw = &W[0, 0] if W.size else NULL
    cdef const floating* pdy = &dy[0, 0] if dy.size else NULL
    cdef floating* pdx = &dx[0, 0] if (dx is not None and dx.size) else NULL
    cdef floating* pdw = &dW[0, 0] if (dW is not None and dW.size) else NULL
    cdef floating* pdb = &db[0] if (db is not None and db.size) else NULL
    cdef int rc
    with nogil:
        rc = linear_backward(px, pw, pdy, pdx, pdw, pdb, N, IN, OUT, accumulate)
    if rc != ENGINE_OK:
        raise RuntimeError(f"linear_backward failed with code {rc}")


def _linear_backward_py(x, weight, grad_out, *, input_grad=True, weight_grad=True,
                     bias_grad=True, grad_weight=None, grad_bias=None):
    """Gradients of y = x @ weight.T + b.

    Returns (grad_input, grad_weight, grad_bias); an entry is None when not
    requested. When `grad_weight` / `grad_bias` arrays are passed they are
    accumulated into (+=, like parameter .grad) and returned; otherwise fresh
    arrays are returned.
    """
    x, weight, _ = _check_linear(x, weight, None)
    grad_out = float_array(grad_out, "grad_out", ndim=2, dtype=x.dtype)
    N, OUT = x.shape[0], weight.shape[0]
    if grad_out.shape != (N, OUT):
        raise ValueError(f"grad_out must have shape {(N, OUT)}, got {grad_out.shape}")
    dx = np.empty_like(x) if input_grad else None
    dW = db = None
    if weight_grad:
        dW = (out_array(grad_weight, "grad_weight", weight.shape, x.dtype)
              if grad_weight is not None else np.zeros_like(weight))
    if bias_grad:
        db = (out_array(grad_bias, "grad_bias", (OUT,), x.dtype)
              if grad_bias is not None else np.zeros(OUT, x.dtype))
    # Fresh gradients start at zero, so accumulating is right in both cases.
    if x.dtype == np.float32:
        _backward[float](x, weight, grad_out, dx, dW, db, True)
    else:
        _backward[double](x, weight, grad_out, dx, dW, db, True)
    return dx, dW, db



export_entries(globals(), linear_forward=_linear_forward_py,
               linear_backward=_linear_backward_py)
