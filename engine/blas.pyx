"""Row-major sgemm/dgemm over scipy's BLAS, single-call and chunk-parallel."""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

from engine._common cimport work_chunks, ceil_div
from engine._threads cimport engine_num_threads
from engine._validate import float_array, out_array, check_blas_size

# Every chunk repacks the shared operand, so chunks stay large: at least
# _CHUNK_DIM rows (or columns) and _MIN_CHUNK_FLOPS of work. Measured at one
# thread: 16 chunks of 32-64 rows lost 20-35% against one sgemm call, chunks of
# >= 128 rows lose under 10%. 4 MFLOP lets a 128x256x256 layer split in two.
cdef double _MIN_CHUNK_FLOPS = 4.0e6
cdef Py_ssize_t _CHUNK_DIM = 128
cdef Py_ssize_t _MAX_CHUNKS = 8


cdef void gemm(bint trans_a, bint trans_b, int M, int N, int K,
               floating alpha, const floating* A, int lda,
               const floating* B, int ldb,
               floating beta, floating* C, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef Py_ssize_t i, n
    if M <= 0 or N <= 0:
        return
    if K <= 0:
        # BLAS would not touch C with K == 0 only when beta == 1; be explicit.
        for i in range(M):
            for n in range(N):
                C[i * ldc + n] = 0 if beta == 0 else beta * C[i * ldc + n]
        return
    if M == 1 or N == 1:
        # A matrix-vector product: GEMV streams the matrix once, while sgemm
        # packs it first (1x400 @ 400x120 took ~50 us through sgemm, ~3 us
        # as sgemv; batch-1 inference is made of these).
        _gemv(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    # Column-major: C^T (N x M) = op(B)^T (N x K) @ op(A)^T (K x M).
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*>B, &ldb,
              <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*>B, &ldb,
              <double*>A, &lda, &beta, C, &ldc)


cdef void _gemv(bint trans_a, bint trans_b, int M, int N, int K,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb,
                floating beta, floating* C, int ldc) noexcept nogil:
    """gemm for M == 1 or N == 1 (M, N, K > 0) as one column-major GEMV."""
    cdef char tr
    cdef int m, n, ld, incx, incy, i
    cdef const floating* mat
    cdef const floating* vec
    if M == 1:
        # c (1 x N) = a (1 x K) op(B): c^T = op(B)^T a^T. Row-major B seen
        # column-major is B^T, so op(B)^T is that matrix as it is ('N', N x K)
        # without trans_b and transposed ('T' of a K x N matrix) with it.
        mat, ld, vec, incy = B, ldb, A, 1
        incx = lda if trans_a else 1
        if trans_b:
            tr, m, n = b'T', K, N
        else:
            tr, m, n = b'N', N, K
    else:
        # c (M x 1, row stride ldc) = op(A) b. Row-major A seen column-major
        # is A^T: op(A) is it transposed ('T' of a K x M matrix) without
        # trans_a and as it is ('N', M x K) with it.
        mat, ld, vec, incy = A, lda, B, ldc
        incx = 1 if trans_b else ldb
        if trans_a:
            tr, m, n = b'N', M, K
        else:
            tr, m, n = b'T', K, M
    if beta == 0:
        # BLAS may compute beta * y; y can hold garbage (NaN) from np.empty.
        for i in range(M if N == 1 else N):
            C[i * incy] = 0
    if floating is float:
        sgemv(&tr, &m, &n, &alpha, <float*>mat, &ld, <float*>vec, &incx,
              &beta, C, &incy)
    else:
        dgemv(&tr, &m, &n, &alpha, <double*>mat, &ld, <double*>vec, &incx,
              &beta, C, &incy)


cdef void gemm_parallel(bint trans_a, bint trans_b, int M, int N, int K,
                        floating alpha, const floating* A, int lda,
                        const floating* B, int ldb,
                        floating beta, floating* C, int ldc) noexcept nogil:
    cdef double flops = 2.0 * M * N * K
    cdef Py_ssize_t nchunks, step, c, lo, hi
    cdef bint split_rows = M >= N
    nchunks = work_chunks((M if split_rows else N) // _CHUNK_DIM, flops,
                          _MIN_CHUNK_FLOPS, _MAX_CHUNKS)
    if nchunks <= 1:
        gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
        return
    # Chunk edges on multiples of 16 keep each block SIMD-friendly.
    step = ceil_div(ceil_div(M if split_rows else N, nchunks), 16) * 16
    for c in prange(nchunks, nogil=True, schedule='static',
                    num_threads=engine_num_threads()):
        lo = c * step
        if split_rows:
            hi = min(M, lo + step)
            if lo < hi:
                gemm(trans_a, trans_b, <int>(hi - lo), N, K, alpha,
                     A + (lo if trans_a else lo * lda), lda, B, ldb,
                     beta, C + lo * ldc, ldc)
        else:
            hi = min(N, lo + step)
            if lo < hi:
                gemm(trans_a, trans_b, M, <int>(hi - lo), K, alpha, A, lda,
                     B + (lo * ldb if trans_b else lo), ldb,
                     beta, C + lo, ldc)


cdef void _run(bint ta, bint tb, floating alpha, floating[:, ::1] A,
               floating[:, ::1] B, floating beta, floating[:, ::1] C,
               bint parallel) noexcept nogil:
    cdef int M = C.shape[0], N = C.shape[1]
    cdef int K = A.shape[0] if ta else A.shape[1]
    # Empty rows are fine; &X[0, 0] on a zero-size view is not.
    cdef const floating* pa = &A[0, 0] if A.shape[0] * A.shape[1] > 0 else NULL
    cdef const floating* pb = &B[0, 0] if B.shape[0] * B.shape[1] > 0 else NULL
    if M == 0 or N == 0:
        return
    if parallel:
        gemm_parallel(ta, tb, M, N, K, alpha, pa, <int>max(A.shape[1], 1), pb,
                      <int>max(B.shape[1], 1), beta, &C[0, 0], N)
    else:
        gemm(ta, tb, M, N, K, alpha, pa, <int>max(A.shape[1], 1), pb,
             <int>max(B.shape[1], 1), beta, &C[0, 0], N)


def matmul(A, B, out=None, *, trans_a=False, trans_b=False, alpha=1.0,
           beta=0.0, parallel=True):
    """Row-major GEMM: out = alpha * op(A) @ op(B) + beta * out.

    A and B are 2-D float32 or float64 arrays of one dtype (non-contiguous
    input is copied). With beta != 0, `out` must be given. `parallel` runs
    the chunked OpenMP version (same result for every thread count).
    """
    A = float_array(A, "A", ndim=2)
    B = float_array(B, "B", ndim=2, dtype=A.dtype)
    M, K = (A.shape[1], A.shape[0]) if trans_a else A.shape
    Kb, N = (B.shape[1], B.shape[0]) if trans_b else B.shape
    if K != Kb:
        raise ValueError(f"inner dimensions differ: op(A) is {M}x{K}, op(B) is {Kb}x{N}")
    for name, v in (("M", M), ("N", N), ("K", K)):
        check_blas_size(name, v)
    if beta != 0 and out is None:
        raise ValueError("beta != 0 needs an `out` array to accumulate into")
    out = out_array(out, "out", (M, N), A.dtype)
    if A.dtype == np.float32:
        _run[float](trans_a, trans_b, alpha, A, B, beta, out, parallel)
    else:
        _run[double](trans_a, trans_b, alpha, A, B, beta, out, parallel)
    return out
