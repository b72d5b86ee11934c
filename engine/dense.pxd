# Dense (fully connected) layer kernels: y = x @ W^T + b, as torch.nn.Linear.
#
# Shapes (row-major, C-contiguous): x (N, IN), W (OUT, IN), b (OUT) or NULL,
# y / dy (N, OUT). Return 0, or ENGINE_EBADARG for negative sizes.

from cython cimport floating

# y = x @ W^T + b   (bias pre-filled, then one chunk-parallel GEMM with beta=1)
cdef int linear_forward(const floating* x, const floating* W, const floating* b,
                        floating* y, Py_ssize_t N, Py_ssize_t IN,
                        Py_ssize_t OUT) noexcept nogil

# dx = dy @ W            (skipped when dx is NULL)
# dW (+)= dy^T @ x       (skipped when dW is NULL; accumulate=1 adds into dW)
# db (+)= sum_rows(dy)   (skipped when db is NULL; deterministic column sums)
cdef int linear_backward(const floating* x, const floating* W, const floating* dy,
                         floating* dx, floating* dW, floating* db,
                         Py_ssize_t N, Py_ssize_t IN, Py_ssize_t OUT,
                         bint accumulate) noexcept nogil
