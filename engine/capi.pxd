# C API for C (not Cython) callers: monomorphic float32 entries with plain C
# argument types, exported through this module's __pyx_capi__ capsule table.
#
# Cython callers should rather cimport the fused entries from the families
# (engine.dense, engine.activation, engine.conv, ...). C callers include
# <engine/pyengine_capi.h> and call pyengine_import_capi() once (with the GIL
# held); the header fetches every function pointer below from the capsules by
# name and checks the parameter-struct sizes against its own mirrors.
#
# Every entry is noexcept nogil, returns 0 or a negative ENGINE_E* code
# (engine/_common.pxd) and never touches a Python object.

from libc.stdint cimport int64_t

from engine.conv cimport Conv2dParams
from engine.pool cimport pool2d_params
from engine.rnn cimport rnn_dims

# Version of this table; bumped when an entry changes.
cdef int pe_capi_version() noexcept nogil
# sizeof(Conv2dParams) (which=0), pool2d_params (1), rnn_dims (2); -1 otherwise.
# The header checks them against its mirrors.
cdef Py_ssize_t pe_capi_struct_size(int which) noexcept nogil

# Dense: y (N, OUT) = x (N, IN) @ W (OUT, IN)^T + b (OUT, or NULL).
cdef int pe_linear_forward_f32(const float* x, const float* W, const float* b,
                               float* y, Py_ssize_t N, Py_ssize_t IN,
                               Py_ssize_t OUT) noexcept nogil

# Activations on n elements (y may be x), softmax over rows of (rows, cols).
cdef int pe_relu_forward_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil
cdef int pe_sigmoid_forward_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil
cdef int pe_tanh_forward_f32(const float* x, float* y, Py_ssize_t n) noexcept nogil
cdef int pe_softmax_forward_f32(const float* x, float* y, Py_ssize_t rows,
                                Py_ssize_t cols) noexcept nogil

# Conv: fills p.OH, p.OW from the other fields (symmetric padding).
cdef int pe_conv2d_output_size(Conv2dParams* p) noexcept nogil
# y (N, K, OH, OW) = conv2d(x (N, C, H, W), w (K, C/groups, kh, kw)) + b (K or NULL),
# algorithm chosen as Conv2d(algo='auto') does.
cdef int pe_conv2d_forward_f32(const Conv2dParams* p, const float* x,
                               const float* w, const float* b,
                               float* y) noexcept nogil

# Pooling (engine/pool.pxd). Output length along one axis, torch's rule.
cdef Py_ssize_t pe_pool_output_size(Py_ssize_t size, Py_ssize_t kernel,
                                    Py_ssize_t stride, Py_ssize_t pad,
                                    Py_ssize_t dilation, int ceil_mode) noexcept nogil
# y (N, C, OH, OW) = window max; indices (same shape, int64) may be NULL.
cdef int pe_max_pool2d_forward_f32(const pool2d_params* p, const float* x, float* y,
                                   int64_t* indices) noexcept nogil
cdef int pe_avg_pool2d_forward_f32(const pool2d_params* p, const float* x,
                                   float* y) noexcept nogil
# planes = N * C; OH = OW = 1 is global average pooling.
cdef int pe_adaptive_avg_pool2d_forward_f32(Py_ssize_t planes, Py_ssize_t H,
                                            Py_ssize_t W, Py_ssize_t OH,
                                            Py_ssize_t OW, const float* x,
                                            float* y) noexcept nogil

# Recurrent layer forward, one layer and direction, inference (engine/rnn.pxd).
cdef int pe_rnn_forward_f32(const rnn_dims* d, const float* x, const float* w_ih,
                            const float* w_hh, const float* b_ih, const float* b_hh,
                            const float* h0, const float* c0, float* y, float* h_n,
                            float* c_n) noexcept nogil

# Embedding gather: out (N, D) = weight (V, D)[idx (N,)]; PE_EINDEX for a bad id.
cdef int pe_embedding_forward_f32(const float* weight, Py_ssize_t V, Py_ssize_t D,
                                  const int64_t* idx, Py_ssize_t N,
                                  float* out) noexcept nogil
