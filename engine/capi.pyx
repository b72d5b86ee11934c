"""C API table for C extension modules (see capi.pxd and docs/c-api.md).

Thin float32 wrappers over the kernel families' fused C-level entries, with
parameters passed as plain C types (or a pointer to a parameter struct that
<engine/pyengine_capi.h> mirrors). They exist so that a C program, which
cannot instantiate Cython fused functions, gets stable function pointers.
"""

from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

from engine._common cimport ENGINE_OK, ENGINE_EBADARG, ENGINE_ENOMEM
from engine.dense cimport linear_forward
from engine.activation cimport (relu_forward, sigmoid_forward, tanh_forward,
                                softmax_forward)
from engine.conv cimport (Conv2dParams, CONV_ALGO_AUTO, conv2d_forward,
                          conv2d_set_output_size, conv2d_check_params)
from engine.pool cimport (pool2d_params, pool_output_size, max_pool2d_forward,
                          avg_pool2d_forward, adaptive_avg_pool2d_forward)
from engine.rnn cimport rnn_dims, rnn_forward
from engine.embedding cimport embedding_forward

# Keep in step with PYENGINE_CAPI_VERSION in pyengine_capi.h.
cdef int _VERSION = 1
cdef Py_ssize_t _INT_MAX = 2147483647


cdef int pe_capi_version() noexcept nogil:
    return _VERSION


cdef Py_ssize_t pe_capi_struct_size(int which) noexcept nogil:
    if which == 0:
        return sizeof(Conv2dParams)
    if which == 1:
        return sizeof(pool2d_params)
    if which == 2:
        return sizeof(rnn_dims)
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


cdef Py_ssize_t pe_pool_output_size(Py_ssize_t size, Py_ssize_t kernel,
                                    Py_ssize_t stride, Py_ssize_t pad,
                                    Py_ssize_t dilation, int ceil_mode) noexcept nogil:
    if kernel <= 0 or stride <= 0 or dilation <= 0 or pad < 0:
        return -1
    return pool_output_size(size, kernel, stride, pad, dilation, ceil_mode != 0)


cdef int pe_max_pool2d_forward_f32(const pool2d_params* p, const float* x, float* y,
                                   int64_t* indices) noexcept nogil:
    cdef int err
    cdef int64_t* scratch = NULL
    if p == NULL or x == NULL or y == NULL:
        return ENGINE_EBADARG
    if indices == NULL:
        # The kernel always records argmax positions; inference discards them.
        if p.N <= 0 or p.C <= 0 or p.OH <= 0 or p.OW <= 0:
            return ENGINE_EBADARG
        scratch = <int64_t*>malloc(<size_t>(p.N * p.C * p.OH * p.OW) * sizeof(int64_t))
        if scratch == NULL:
            return ENGINE_ENOMEM
        indices = scratch
    err = max_pool2d_forward(p, x, y, indices)
    free(scratch)
    return err


cdef int pe_avg_pool2d_forward_f32(const pool2d_params* p, const float* x,
                                   float* y) noexcept nogil:
    if p == NULL or x == NULL or y == NULL:
        return ENGINE_EBADARG
    return avg_pool2d_forward(p, x, y)


cdef int pe_adaptive_avg_pool2d_forward_f32(Py_ssize_t planes, Py_ssize_t H,
                                            Py_ssize_t W, Py_ssize_t OH,
                                            Py_ssize_t OW, const float* x,
                                            float* y) noexcept nogil:
    if x == NULL or y == NULL:
        return ENGINE_EBADARG
    return adaptive_avg_pool2d_forward(planes, H, W, OH, OW, x, y)


cdef int pe_rnn_forward_f32(const rnn_dims* d, const float* x, const float* w_ih,
                            const float* w_hh, const float* b_ih, const float* b_hh,
                            const float* h0, const float* c0, float* y, float* h_n,
                            float* c_n) noexcept nogil:
    if d == NULL:
        return ENGINE_EBADARG
    return rnn_forward(d, x, w_ih, w_hh, b_ih, b_hh, h0, c0, y, h_n, c_n, <float*>NULL)


cdef int pe_embedding_forward_f32(const float* weight, Py_ssize_t V, Py_ssize_t D,
                                  const int64_t* idx, Py_ssize_t N,
                                  float* out) noexcept nogil:
    cdef Py_ssize_t bad = -1
    if N > 0 and (idx == NULL or (D > 0 and (weight == NULL or out == NULL))):
        return ENGINE_EBADARG
    return embedding_forward(weight, V, D, idx, N, out, &bad)
