# 2-D pooling over NCHW planes: max (with argmax indices), average, adaptive average.
#
# Every entry works plane by plane (N * C independent planes, one OpenMP loop
# over them), so results are bitwise identical for any thread count and the
# backward scatters never race. Entries return 0 or a negative ENGINE_E* code
# (engine/_common.pxd); nothing is read or written out of bounds whatever the
# parameters, because pool2d_check rejects inconsistent ones first.

from cython cimport floating
from libc.stdint cimport int64_t


# Shape and window parameters shared by max and average pooling.
cdef struct pool2d_params:
    Py_ssize_t N, C, H, W          # input shape (NCHW)
    Py_ssize_t OH, OW              # output spatial size (must equal pool_output_size)
    Py_ssize_t kh, kw              # window
    Py_ssize_t sh, sw              # stride
    Py_ssize_t ph, pw              # implicit padding on each side (<= kernel / 2)
    Py_ssize_t dh, dw              # dilation (max pooling only; 1 for average)
    bint ceil_mode                 # ceil instead of floor in the output size
    bint count_include_pad         # average: padded zeros count in the divisor
    Py_ssize_t divisor_override    # average: fixed divisor when > 0


# Output length along one axis with torch's rule: floor (or ceil) of
# (size + 2 pad - dilation (kernel - 1) - 1) / stride + 1; in ceil mode the
# last window must start inside the input or the left padding. May be <= 0.
cdef Py_ssize_t pool_output_size(Py_ssize_t size, Py_ssize_t kernel,
                                 Py_ssize_t stride, Py_ssize_t pad,
                                 Py_ssize_t dilation, bint ceil_mode) noexcept nogil

# ENGINE_OK when the parameters are consistent (positive sizes, padding at most
# half the kernel, OH/OW equal to pool_output_size), ENGINE_EBADARG otherwise.
cdef int pool2d_check(const pool2d_params* p) noexcept nogil

# y[N, C, OH, OW] = window max of x[N, C, H, W]; indices[N, C, OH, OW] the flat
# position (ih * W + iw) of the max within its plane, as torch's return_indices.
# NaN propagates (a NaN in the window wins). indices may be NULL (values only;
# the same y).
cdef int max_pool2d_forward(const pool2d_params* p, const floating* x,
                            floating* y, int64_t* indices) noexcept nogil

# grad_x[N, C, H, W] = 0, then grad_x[plane][indices] += grad_y. Uses only the
# shape fields of p. ENGINE_EINDEX if an index lies outside [0, H * W).
cdef int max_pool2d_backward(const pool2d_params* p, const floating* grad_y,
                             const int64_t* indices, floating* grad_x) noexcept nogil

# y = window sum / divisor (torch's count_include_pad / divisor_override rules;
# a window entirely in the padding gives 0). p.dh and p.dw must be 1.
cdef int avg_pool2d_forward(const pool2d_params* p, const floating* x,
                            floating* y) noexcept nogil

# grad_x[N, C, H, W] = the transpose of avg_pool2d_forward applied to grad_y.
cdef int avg_pool2d_backward(const pool2d_params* p, const floating* grad_y,
                             floating* grad_x) noexcept nogil

# Adaptive average pooling of `planes` planes H x W to OH x OW: output cell
# (i, j) averages rows floor(i H / OH) .. ceil((i + 1) H / OH) - 1 and the same
# for columns (torch's windows). OH = OW = 1 is global average pooling.
cdef int adaptive_avg_pool2d_forward(Py_ssize_t planes, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t OH, Py_ssize_t OW,
                                     const floating* x, floating* y) noexcept nogil

# grad_x[planes, H, W] from grad_y[planes, OH, OW] (overwrites grad_x).
cdef int adaptive_avg_pool2d_backward(Py_ssize_t planes, Py_ssize_t H, Py_ssize_t W,
                                      Py_ssize_t OH, Py_ssize_t OW,
                                      const floating* grad_y,
                                      floating* grad_x) noexcept nogil
