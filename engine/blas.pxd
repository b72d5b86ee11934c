# Row-major GEMM over scipy.linalg.cython_blas (no link-time BLAS dependency).
#
#   C[M, N] = alpha * op(A)[M, K] @ op(B)[K, N] + beta * C
#
# op(X) is X or X^T; lda/ldb/ldc are row strides in elements. Row-major C is
# computed as C^T = op(B)^T op(A)^T with column-major BLAS.
#
# gemm          : one single-threaded BLAS call (call it from inside your own
#                 OpenMP region, or for small products).
# gemm_parallel : cuts the larger of M and N into a power-of-two number of
#                 chunks chosen from the shape only and runs them in an OpenMP
#                 loop, each chunk one single-threaded BLAS call. Bitwise
#                 identical results for every thread count.

from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, int M, int N, int K,
               floating alpha, const floating* A, int lda,
               const floating* B, int ldb,
               floating beta, floating* C, int ldc) noexcept nogil

cdef void gemm_parallel(bint trans_a, bint trans_b, int M, int N, int K,
                        floating alpha, const floating* A, int lda,
                        const floating* B, int ldb,
                        floating beta, floating* C, int ldc) noexcept nogil
