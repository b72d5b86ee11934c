"""Inverted dropout forward/backward with a counter-based random mask.

Each element's keep/drop decision is a hash of (key, element index): the
splitmix64 finaliser applied to key + (i + 1) * golden gamma, i.e. the i-th
output of a splitmix64 stream started at `key`. There is no generator state
to share between threads, so the mask is identical for any thread count and
any chunking. The Python layer draws one key per forward call from
pe.manual_seed's sequence (pyengine._random.next_seed).
"""

import numpy as np
from libc.stdint cimport uint8_t, uint64_t
from cython.parallel cimport prange

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, engine_ftz_enter,
                             engine_ftz_exit, ceil_div)
from engine._threads cimport engine_num_threads
from engine._validate import float_array

cdef enum:
    CHUNK_ELEMS = 65536

cdef uint64_t GAMMA = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t _mix(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t _threshold(double p) noexcept nogil:
    # keep iff (hash >> 11) >= p * 2**53; exact for p = 0 (keep all).
    return <uint64_t>(p * 9007199254740992.0)


cdef void _mask_chunk(uint8_t* mask, Py_ssize_t lo, Py_ssize_t hi, uint64_t thr,
                      uint64_t key) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(lo, hi):
        mask[i] = (_mix(key + <uint64_t>(i + 1) * GAMMA) >> 11) >= thr


cdef int dropout_mask(uint8_t* mask, Py_ssize_t n, double p, uint64_t key) noexcept nogil:
    cdef Py_ssize_t c, lo
    cdef uint64_t thr
    if n < 0 or not (0.0 <= p <= 1.0) or (n > 0 and mask == NULL):
        return ENGINE_EBADARG
    if p >= 1.0:
        for c in range(n):
            mask[c] = 0
        return ENGINE_OK
    thr = _threshold(p)
    for c in prange(ceil_div(n, CHUNK_ELEMS), nogil=True, schedule='static',
                    num_threads=engine_num_threads() if n > CHUNK_ELEMS else 1):
        lo = c * CHUNK_ELEMS
        _mask_chunk(mask, lo, min(n, lo + CHUNK_ELEMS), thr, key)
    return ENGINE_OK


cdef void _scale_chunk(const floating* x, floating* y, const uint8_t* mask,
                       Py_ssize_t lo, Py_ssize_t hi, floating scale) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(lo, hi):
        y[i] = x[i] * (mask[i] * scale)


cdef int _apply_mask(const floating* x, floating* y, const uint8_t* mask,
                     Py_ssize_t n, double p) noexcept nogil:
    cdef Py_ssize_t c, lo
    cdef unsigned int mode
    cdef floating scale = <floating>(1.0 / (1.0 - p)) if p < 1.0 else 0
    for c in prange(ceil_div(n, CHUNK_ELEMS), nogil=True, schedule='static',
                    num_threads=engine_num_threads() if n > CHUNK_ELEMS else 1):
        lo = c * CHUNK_ELEMS
        mode = engine_ftz_enter()
        _scale_chunk(x, y, mask, lo, min(n, lo + CHUNK_ELEMS), scale)
        engine_ftz_exit(mode)
    return ENGINE_OK


cdef int dropout_forward(const floating* x, floating* y, uint8_t* mask,
                         Py_ssize_t n, double p, uint64_t key) noexcept nogil:
    cdef int code
    if n > 0 and (x == NULL or y == NULL):
        return ENGINE_EBADARG
    code = dropout_mask(mask, n, p, key)
    if code != ENGINE_OK:
        return code
    return _apply_mask(x, y, mask, n, p)


cdef int dropout_backward(const floating* grad_y, const uint8_t* mask,
                          floating* grad_x, Py_ssize_t n, double p) noexcept nogil:
    if n < 0 or not (0.0 <= p <= 1.0):
        return ENGINE_EBADARG
    if n > 0 and (grad_y == NULL or mask == NULL or grad_x == NULL):
        return ENGINE_EBADARG
    return _apply_mask(grad_y, grad_x, mask, n, p)


# ---------------------------------------------------------------- Python entries
cdef double _check_p(p) except -1:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return p


cdef uint64_t _check_key(key) except? 0:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise TypeError(f"key must be an int, got {type(key).__name__}")
    if not 0 <= key < 2**64:
        raise ValueError(f"key must be in [0, 2**64), got {key}")
    return <uint64_t>int(key)


def keep_mask(shape, double p, key):
    """The keep mask (uint8, 1 = keep) that dropout() uses for `key`."""
    _check_p(p)
    cdef uint64_t k = _check_key(key)
    mask = np.empty(shape, dtype=np.uint8)
    cdef uint8_t[::1] m = mask.reshape(-1)
    cdef Py_ssize_t n = m.shape[0]
    cdef int code
    with nogil:
        code = dropout_mask(&m[0] if n > 0 else NULL, n, p, k)
    if code != ENGINE_OK:
        raise ValueError(f"dropout_mask: invalid arguments (engine error {code})")
    return mask


cdef int _fwd(floating[::1] x, floating[::1] y, uint8_t[::1] m, double p,
              uint64_t key) except -1:
    cdef Py_ssize_t n = x.shape[0]
    cdef int code
    if n == 0:
        return 0
    with nogil:
        code = dropout_forward(&x[0], &y[0], &m[0], n, p, key)
    if code != ENGINE_OK:
        raise ValueError(f"dropout_forward: invalid arguments (engine error {code})")
    return 0


def dropout(x, double p, key, out=None):
    """Inverted dropout: y = x * mask / (1 - p). Returns (y, mask).

    Args:
        x: float32/float64 array (non-contiguous input is copied).
        p: probability of dropping an element, in [0, 1] (1: all zeros).
        key: 64-bit key of the counter-based mask (pyengine._random.next_seed()).
        out: optional output array (x's shape and dtype, C-contiguous; may be x).
    """
    _check_p(p)
    cdef uint64_t k = _check_key(key)
    x = float_array(x, "x")
    if out is None:
        out = np.empty_like(x)
    elif (not isinstance(out, np.ndarray) or out.dtype != x.dtype or out.shape != x.shape
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous {x.dtype} array of shape "
                         f"{x.shape}")
    mask = np.empty(x.shape, dtype=np.uint8)
    if x.dtype == np.float32:
        _fwd[float](x.reshape(-1), out.reshape(-1), mask.reshape(-1), p, k)
    else:
        _fwd[double](x.reshape(-1), out.reshape(-1), mask.reshape(-1), p, k)
    return out, mask


cdef int _bwd(floating[::1] gy, uint8_t[::1] m, floating[::1] gx, double p) except -1:
    cdef Py_ssize_t n = gy.shape[0]
    cdef int code
    if n == 0:
        return 0
    with nogil:
        code = dropout_backward(&gy[0], &m[0], &gx[0], n, p)
    if code != ENGINE_OK:
        raise ValueError(f"dropout_backward: invalid arguments (engine error {code})")
    return 0


def dropout_grad(grad_out, mask, double p):
    """grad_x = grad_out * mask / (1 - p), with the mask dropout() returned."""
    _check_p(p)
    grad_out = float_array(grad_out, "grad_out")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8:
        raise TypeError("mask must be the uint8 array dropout() returned")
    if mask.shape != grad_out.shape:
        raise ValueError(f"mask has shape {mask.shape}, grad_out has shape {grad_out.shape}")
    mask = np.ascontiguousarray(mask)
    grad_x = np.empty_like(grad_out)
    if grad_out.dtype == np.float32:
        _bwd[float](grad_out.reshape(-1), mask.reshape(-1), grad_x.reshape(-1), p)
    else:
        _bwd[double](grad_out.reshape(-1), mask.reshape(-1), grad_x.reshape(-1), p)
    return grad_x
