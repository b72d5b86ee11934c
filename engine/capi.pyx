"""C API table for C extension modules (see capi.pxd and docs/c-api.md).

Thin float32 wrappers over the kernel families' fused C-level entries, with
parameters passed as plain C types (or a pointer to a parameter struct that
<engine/pyengine_capi.h> mirrors). They exist so that a C program, which
cannot instantiate Cython fused functions, gets stable function pointers.
"""

from engine._common cimport ENGINE_OK, ENGINE_EBADARG
from engine.dense cimport linear_forward
from engine.activation cimport (relu_forward, sigmoid_forward, tanh_forward,
                                softmax_forward)
from engine.conv cimport (Conv2dParams, CONV_ALGO_AUTO, conv2d_forward,
                          conv2d_set_output_size, conv2d_check_params)

# Keep in step with PYENGINE_CAPI_VERSION in pyengine_capi.h.
cdef int _VERSION = 1
cdef Py_ssize_t _INT_MAX = 2147483647


cdef int pe_capi_version() noexcept nogil:
    return _VERSION


cdef Py_ssize_t pe_capi_struct_size(int which) noexcept nogil:
    if which == 0:
        return sizeof(Conv2dParams)
    return -1


cdef int pe_linear_forward_f32(const float* x, const float* W, const float* b,
                               float* y, Py_ssize_t N, Py_ssize_t IN,
                               Py_ssize_t OUT) noexcept nogil:
    # GEMM sizes are 32-bit ints (the Python entry checks this too).
    if N > _INT_MAX or IN > _INT_MAX or OUT > _INT_MAX:
        return ENGINE_EBADARG
    return linear_forward(x, W, b, y, N, IN, OUT)


cdef int pe_relu_forward_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil:
    return relu_forward(x, y, n)


cdef int pe_sigmoid_forward_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil:
    return sigmoid_forward(x, y, n)


cdef int pe_tanh_forward_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil:
    return tanh_forward(x, y, n)


cdef int pe_softmax_forward_f32(const float* x, float* y, Py_ssize_t rows,
                                Py_ssize_t cols) noexcept nogil:
    return softmax_forward(x, y, rows, cols)


cdef int pe_conv2d_output_size(Conv2dParams* p) noexcept nogil:
    if p == NULL:
        return ENGINE_EBADARG
    return conv2d_set_output_size(p)


cdef int pe_conv2d_forward_f32(const Conv2dParams* p, const float* x,
                               const float* w, const float* b,
                               float* y) noexcept nogil:
    cdef int err
    if p == NULL or x == NULL or w == NULL or y == NULL:
        return ENGINE_EBADARG
    err = conv2d_check_params(p)
    if err != ENGINE_OK:
        return err
    return conv2d_forward(p[0], CONV_ALGO_AUTO, x, w, b, y)
