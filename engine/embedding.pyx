"""Embedding kernels: gather rows of a table, and the deterministic scatter-add back."""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ENGINE_EINDEX, ceil_div,
                             work_chunks, engine_ftz_enter, engine_ftz_exit)
from engine._threads cimport engine_num_threads
from engine._validate import float_array, export_entries

cdef double _MIN_CHUNK_WORK = 65536.0
cdef Py_ssize_t _MAX_CHUNKS = 16


cdef int _check_ids(const int64_t* idx, Py_ssize_t N, Py_ssize_t V,
                    Py_ssize_t* bad) noexcept nogil:
    cdef Py_ssize_t n
    for n in range(N):
        if idx[n] < 0 or idx[n] >= V:
            if bad != NULL:
                bad[0] = n
            return ENGINE_EINDEX
    return ENGINE_OK


cdef int embedding_forward(const floating* weight, Py_ssize_t V, Py_ssize_t D,
                           const int64_t* idx, Py_ssize_t N, floating* out,
                           Py_ssize_t* bad) noexcept nogil:
    cdef Py_ssize_t nchunks, step, c, n, n1
    if V < 0 or D < 0 or N < 0:
        return ENGINE_EBADARG
    if _check_ids(idx, N, V, bad) != ENGINE_OK:
        return ENGINE_EINDEX
    if N == 0 or D == 0:
        return ENGINE_OK
    nchunks = work_chunks(N, <double>N * D, _MIN_CHUNK_WORK, _MAX_CHUNKS)
    step = ceil_div(N, nchunks)
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads()):
        n1 = min(N, (c + 1) * step)
        for n in range(c * step, n1):
            memcpy(out + n * D, weight + idx[n] * D, D * sizeof(floating))
    return ENGINE_OK


cdef void _scatter_rows(const floating* d_out, const int64_t* idx, Py_ssize_t N,
                        Py_ssize_t D, Py_ssize_t v0, Py_ssize_t v1,
                        Py_ssize_t padding_idx, floating* grad_weight) noexcept nogil:
    """Add the gradients of the ids in [v0, v1), in index order."""
    cdef Py_ssize_t n, k, v
    cdef floating* g
    cdef const floating* src
    for n in range(N):
        v = idx[n]
        if v < v0 or v >= v1 or v == padding_idx:
            continue
        g = grad_weight + v * D
        src = d_out + n * D
        for k in range(D):
            g[k] += src[k]


cdef int embedding_backward(const floating* d_out, const int64_t* idx, Py_ssize_t N,
                            Py_ssize_t V, Py_ssize_t D, Py_ssize_t padding_idx,
                            floating* grad_weight, Py_ssize_t* bad) noexcept nogil:
    cdef Py_ssize_t nchunks, step, c
    cdef unsigned int fp_mode
    if V < 0 or D < 0 or N < 0:
        return ENGINE_EBADARG
    if _check_ids(idx, N, V, bad) != ENGINE_OK:
        return ENGINE_EINDEX
    if N == 0 or D == 0 or V == 0:
        return ENGINE_OK
    # Vocabulary rows are partitioned: each chunk owns rows [c*step, (c+1)*step)
    # and is the only writer of them, so no two threads touch one row.
    nchunks = work_chunks(V, <double>N * D, _MIN_CHUNK_WORK, _MAX_CHUNKS)
    step = ceil_div(V, nchunks)
    fp_mode = engine_ftz_enter()
    if nchunks == 1:
        _scatter_rows(d_out, idx, N, D, 0, V, padding_idx, grad_weight)
    else:
        for c in prange(nchunks, nogil=True, schedule='static',
                        num_threads=engine_num_threads()):
            _scatter_rows(d_out, idx, N, D, c * step, min(V, (c + 1) * step),
                          padding_idx, grad_weight)
    engine_ftz_exit(fp_mode)
    return ENGINE_OK


def _index_array(indices, name="indices"):
    """Integer ids of any shape as a C-contiguous int64 array (float -> TypeError)."""
    a = np.asarray(indices)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of token ids, got dtype {a.dtype}")
    return np.asarray(a, dtype=np.int64, order="C")  # keeps 0-d ids 0-d


def _raise_bad_id(ids, pos, V):
    raise IndexError(f"token id {int(ids.reshape(-1)[pos])} at flat position {pos} is out "
                     f"of range for an embedding of {V} rows (valid ids: 0..{V - 1})")


cdef Py_ssize_t _forward_call(floating[:, ::1] weight, const int64_t[::1] ids,
                              floating[:, ::1] out) except -2:
    cdef Py_ssize_t bad = -1
    cdef int rc
    cdef const int64_t* pid = &ids[0] if ids.shape[0] > 0 else NULL
    cdef const floating* pw = &weight[0, 0] if weight.size > 0 else NULL
    cdef floating* po = &out[0, 0] if out.size > 0 else NULL
    with nogil:
        rc = embedding_forward(pw, weight.shape[0], weight.shape[1], pid, ids.shape[0],
                               po, &bad)
    if rc == ENGINE_EINDEX:
        return bad
    if rc != ENGINE_OK:
        raise RuntimeError(f"embedding_forward failed with code {rc}")
    return -1


def _embedding_forward_py(weight, indices):
    """out[..., :] = weight[indices[...], :].

    Args:
        weight: (V, D) float32/float64 table.
        indices: integer array of any shape, ids in [0, V).
    Returns:
        array of shape indices.shape + (D,).
    Raises IndexError naming the first bad id; TypeError for non-integer ids.
    """
    weight = float_array(weight, "weight", ndim=2)
    ids = _index_array(indices)
    out = np.empty(ids.shape + (weight.shape[1],), weight.dtype)
    flat = ids.reshape(-1)
    out2 = out.reshape(flat.shape[0], weight.shape[1])
    if weight.dtype == np.float32:
        bad = _forward_call[float](weight, flat, out2)
    else:
        bad = _forward_call[double](weight, flat, out2)
    if bad >= 0:
        _raise_bad_id(ids, bad, weight.shape[0])
    return out


cdef Py_ssize_t _backward_call(floating[:, ::1] d_out, const int64_t[::1] ids,
                               Py_ssize_t padding_idx, floating[:, ::1] grad) except -2:
    cdef Py_ssize_t bad = -1
    cdef int rc
    cdef const int64_t* pid = &ids[0] if ids.shape[0] > 0 else NULL
    cdef const floating* pd = &d_out[0, 0] if d_out.size > 0 else NULL
    cdef floating* pg = &grad[0, 0] if grad.size > 0 else NULL
    with nogil:
        rc = embedding_backward(pd, pid, ids.shape[0], grad.shape[0], grad.shape[1],
                                padding_idx, pg, &bad)
    if rc == ENGINE_EINDEX:
        return bad
    if rc != ENGINE_OK:
        raise RuntimeError(f"embedding_backward failed with code {rc}")
    return -1


def _embedding_backward_py(d_out, indices, num_embeddings, padding_idx=None,
                           grad_weight=None):
    """grad_weight[indices[...], :] += d_out[..., :] (rows == padding_idx skipped).

    Args:
        d_out: indices.shape + (D,) gradient of the lookup.
        indices: the ids of the forward call.
        num_embeddings: V.
        padding_idx: row that gets no gradient, or None.
        grad_weight: optional (V, D) array to accumulate into (a fresh zero
            array otherwise).
    Returns:
        grad_weight.
    """
    ids = _index_array(indices)
    d_out = float_array(d_out, "d_out")
    # (No negative indices here: the module is compiled with wraparound=False.)
    if d_out.ndim != ids.ndim + 1 or d_out.shape[:ids.ndim] != ids.shape:
        raise ValueError(f"d_out must have shape indices.shape + (embedding_dim,) = "
                         f"{ids.shape} + (D,), got {d_out.shape}")
    V, D = int(num_embeddings), d_out.shape[ids.ndim]
    if grad_weight is None:
        grad_weight = np.zeros((V, D), d_out.dtype)
    elif (not isinstance(grad_weight, np.ndarray) or grad_weight.shape != (V, D)
          or grad_weight.dtype != d_out.dtype or not grad_weight.flags.c_contiguous
          or not grad_weight.flags.writeable):
        raise ValueError(f"grad_weight must be a writeable C-contiguous {d_out.dtype} "
                         f"array of shape {(V, D)}")
    pad = -1 if padding_idx is None else int(padding_idx)
    flat = ids.reshape(-1)
    d2 = d_out.reshape(flat.shape[0], D)
    if d_out.dtype == np.float32:
        bad = _backward_call[float](d2, flat, pad, grad_weight)
    else:
        bad = _backward_call[double](d2, flat, pad, grad_weight)
    if bad >= 0:
        _raise_bad_id(ids, bad, V)
    return grad_weight


export_entries(globals(), embedding_forward=_embedding_forward_py,
               embedding_backward=_embedding_backward_py)
