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

from engine.conv cimport Conv2dParams

# Version of this table; bumped when an entry changes.
cdef int pe_capi_version() noexcept nogil
# sizeof(Conv2dParams) etc., for the header's ABI check.
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
