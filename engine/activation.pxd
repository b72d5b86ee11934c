# Activation functions, forward and backward, on flat contiguous buffers.
#
# Element-wise entries take n elements; the row-wise entries (softmax,
# log_softmax) take a row-major (rows, cols) block and work over its last
# axis. Every entry may run in place (y == x, or dx == dy): each output
# element depends only on the same element (or the same row) of the inputs.
# Elements are cut into fixed chunks (rows into fixed groups) whose bounds
# depend on the sizes only, so results are bitwise identical for any thread
# count. Entries return ENGINE_OK, or ENGINE_EBADARG for a negative size or a
# NULL pointer with a non-zero size (engine/_common.pxd). NaN propagates.
#
# Backward entries take what is cheapest to keep: relu, sigmoid, tanh,
# softmax and log_softmax the forward OUTPUT y; leaky_relu, softplus and gelu
# the forward INPUT x (leaky_relu may also take y when negative_slope > 0,
# since y > 0 exactly where x > 0).

from cython cimport floating


# y = max(x, 0) (NaN stays NaN).  dx = dy where y > 0, else 0 (torch: 0 at x == 0).
# relu_span: the same rule as a plain loop on the calling thread (y may be x),
# for other kernels' epilogues (conv, dense fuse a following ReLU with it).
cdef inline void relu_span(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v
    for i in range(n):
        v = x[i]
        y[i] = 0 if v <= 0 else v          # NaN <= 0 is false: NaN passes

cdef int relu_forward(const floating* x, floating* y, Py_ssize_t n) noexcept nogil
cdef int relu_backward(const floating* y, const floating* dy, floating* dx,
                       Py_ssize_t n) noexcept nogil

# y = x if x > 0 else negative_slope * x.  dx = dy if a > 0 else negative_slope * dy,
# where a is the input x (or the output y when negative_slope > 0).
cdef int leaky_relu_forward(const floating* x, floating* y, Py_ssize_t n,
                            double negative_slope) noexcept nogil
cdef int leaky_relu_backward(const floating* a, const floating* dy, floating* dx,
                             Py_ssize_t n, double negative_slope) noexcept nogil

# y = 1 / (1 + exp(-x)), stable for large |x|.  dx = dy * y * (1 - y).
cdef int sigmoid_forward(const floating* x, floating* y, Py_ssize_t n) noexcept nogil
cdef int sigmoid_backward(const floating* y, const floating* dy, floating* dx,
                          Py_ssize_t n) noexcept nogil

# y = tanh(x).  dx = dy * (1 - y * y).
cdef int tanh_forward(const floating* x, floating* y, Py_ssize_t n) noexcept nogil
cdef int tanh_backward(const floating* y, const floating* dy, floating* dx,
                       Py_ssize_t n) noexcept nogil

# torch's Softplus: y = log(1 + exp(beta x)) / beta, and y = x where
# beta x > threshold.  dx = dy * sigmoid(beta x) (dy above the threshold).
cdef int softplus_forward(const floating* x, floating* y, Py_ssize_t n,
                          double beta, double threshold) noexcept nogil
cdef int softplus_backward(const floating* x, const floating* dy, floating* dx,
                           Py_ssize_t n, double beta, double threshold) noexcept nogil

# GELU: y = x Phi(x) with the exact normal CDF (computed as erfc(-x/sqrt 2)/2)
# when approximate_tanh is false, torch's tanh approximation
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) when true (computed as
# x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the same function without the
# cancellation of 1 + tanh for negative x).  Backward from the input x.
cdef int gelu_forward(const floating* x, floating* y, Py_ssize_t n,
                      bint approximate_tanh) noexcept nogil
cdef int gelu_backward(const floating* x, const floating* dy, floating* dx,
                       Py_ssize_t n, bint approximate_tanh) noexcept nogil

# Row-wise softmax over the last axis of x[rows, cols] (max subtracted first).
# Backward from the output: dx = y * (dy - sum(dy * y)) per row.
cdef int softmax_forward(const floating* x, floating* y, Py_ssize_t rows,
                         Py_ssize_t cols) noexcept nogil
cdef int softmax_backward(const floating* y, const floating* dy, floating* dx,
                          Py_ssize_t rows, Py_ssize_t cols) noexcept nogil

# Row-wise log_softmax: y = x - max - log(sum(exp(x - max))).
# Backward from the output: dx = dy - exp(y) * sum(dy) per row.
cdef int log_softmax_forward(const floating* x, floating* y, Py_ssize_t rows,
                             Py_ssize_t cols) noexcept nogil
cdef int log_softmax_backward(const floating* y, const floating* dy, floating* dx,
                              Py_ssize_t rows, Py_ssize_t cols) noexcept nogil

# Sum of n values with 16 independent partial sums (vectorisable, fixed order,
# so the result depends on n only). Used by the loss kernels too.
cdef floating row_sum(const floating* x, Py_ssize_t n) noexcept nogil
# Largest of n >= 1 values, NaN entries skipped (a NaN still poisons the
# softmax of its row through exp(x - max)).
cdef floating row_max(const floating* x, Py_ssize_t n) noexcept nogil
