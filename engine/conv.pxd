# 2-D convolution kernels, NCHW, float32/float64, three algorithms:
#
#   im2col + GEMM : per work item (one image, or a few small images batched
#                   into one GEMM) unfold the input into a column buffer (in
#                   L2-sized tiles of output rows) and multiply by the weight
#                   with a 1-thread sgemm; OpenMP over work items. 1x1
#                   stride-1 unpadded conv skips the unfold (a plain GEMM).
#   direct        : no column buffer; one zero-padded copy of the input planes
#                   per (image, group) and register-tiled vector micro-kernels
#                   (AVX2: 1 row x 6 channels x 2 vectors of accumulators).
#                   Wins for depthwise/grouped conv, 1-3 input channels, and
#                   the forward / stride-1 grad-input of most 3x3 and 5x5
#                   layers (see conv2d_choose_algo in conv.pyx).
#   winograd      : F(2x2, 3x3) for 3x3 stride-1 layers: per block of 2x2
#                   output tiles, input transform, 16 GEMMs over the channels
#                   (on the direct path's micro-kernels), output transform;
#                   2.25x fewer multiplies. Wins from ~48 channels in and out
#                   (the weight gradient: ~64 channels on large maps).
#
# Use from Cython (all entries are nogil; fill OH/OW yourself for asymmetric
# padding, or call conv2d_set_output_size):
#
#     from engine.conv cimport Conv2dParams, conv2d_forward, CONV_ALGO_AUTO, \
#         conv2d_set_output_size
#     cdef Conv2dParams p
#     p.N, p.C, p.H, p.W, p.K = 64, 1, 28, 28, 6
#     p.kh = p.kw = 5; p.sh = p.sw = 1; p.ph = p.pw = 2; p.dh = p.dw = 1
#     p.groups = 1
#     conv2d_set_output_size(&p)
#     with nogil:
#         err = conv2d_forward[float](p, CONV_ALGO_AUTO, x, w, b, y)
#
# Shapes: x (N, C, H, W), weight (K, C/groups, kh, kw) as torch, bias (K,),
# y (N, K, OH, OW). Every entry returns 0 or a negative ENGINE_E* code and
# never reads or writes outside these arrays, whatever the parameters.
# Weight and bias gradients are deterministic for any thread count (chunk
# partials from the shapes only, reduced in chunk order).

from cython cimport floating

ctypedef struct Conv2dParams:
    Py_ssize_t N, C, H, W      # input: batch, channels, height, width
    Py_ssize_t K               # output channels
    Py_ssize_t kh, kw          # kernel size
    Py_ssize_t sh, sw          # stride
    Py_ssize_t ph, pw          # zero padding at the top and at the left
    Py_ssize_t dh, dw          # dilation
    Py_ssize_t groups          # C and K are multiples of groups
    Py_ssize_t OH, OW          # output size; the bottom/right zero padding is
                               # whatever these imply (asymmetric 'same')

cdef enum ConvAlgo:
    CONV_ALGO_AUTO = 0
    CONV_ALGO_IM2COL = 1
    CONV_ALGO_DIRECT = 2
    CONV_ALGO_WINOGRAD = 3     # F(2x2, 3x3): 3x3, stride 1, dilation 1 only

# Fill p.OH, p.OW for symmetric padding (ph, pw on both sides).
# ENGINE_EBADARG when the kernel does not fit the padded input.
cdef int conv2d_set_output_size(Conv2dParams* p) noexcept nogil

# 0 when every size is positive, C and K divide by groups and sizes fit BLAS.
cdef int conv2d_check_params(const Conv2dParams* p) noexcept nogil

cdef enum ConvPass:
    CONV_PASS_FORWARD = 0
    CONV_PASS_BACKWARD_INPUT = 1
    CONV_PASS_BACKWARD_WEIGHT = 2

# The algorithm 'auto' picks for this layer shape and pass (IM2COL, DIRECT or
# WINOGRAD).
cdef ConvAlgo conv2d_choose_algo(const Conv2dParams* p, ConvPass which) noexcept nogil

# cols (N, C*kh*kw, OH*OW), rows ordered (c, i, j); parallel over images.
cdef int im2col_batch(Conv2dParams p, const floating* x, floating* cols) noexcept nogil
# dx (N, C, H, W) = adjoint of im2col (sums overlapping taps); overwrites dx.
cdef int col2im_batch(Conv2dParams p, const floating* cols, floating* dx) noexcept nogil

# y = conv(x, w) + b (b may be NULL).
cdef int conv2d_im2col_forward(Conv2dParams p, const floating* x,
                               const floating* w, const floating* b,
                               floating* y) noexcept nogil
# dx = conv_transpose(dy, w); overwrites dx.
cdef int conv2d_im2col_backward_input(Conv2dParams p, const floating* w,
                                      const floating* dy,
                                      floating* dx) noexcept nogil
# dw (+)= dL/dw, db (+)= dL/db (db may be NULL); `accumulate` adds to the
# arrays' contents (like torch's .grad), otherwise overwrites them.
cdef int conv2d_im2col_backward_weight(Conv2dParams p, const floating* x,
                                       const floating* dy, floating* dw,
                                       floating* db, bint accumulate) noexcept nogil

cdef int conv2d_direct_forward(Conv2dParams p, const floating* x,
                               const floating* w, const floating* b,
                               floating* y) noexcept nogil
cdef int conv2d_direct_backward_input(Conv2dParams p, const floating* w,
                                      const floating* dy,
                                      floating* dx) noexcept nogil
cdef int conv2d_direct_backward_weight(Conv2dParams p, const floating* x,
                                       const floating* dy, floating* dw,
                                       floating* db, bint accumulate) noexcept nogil

# Winograd F(2x2, 3x3) (3x3, stride 1, dilation 1; the grad-input also
# needs padding <= 2): ENGINE_EBADARG for other shapes. conv2d_backward with
# CONV_ALGO_WINOGRAD runs a grad-input with padding > 2, and the weight
# gradient when K * C/groups > 65536, as CONV_ALGO_AUTO picks.
cdef int conv2d_winograd_forward(Conv2dParams p, const floating* x,
                                 const floating* w, const floating* b,
                                 floating* y) noexcept nogil
cdef int conv2d_winograd_backward_input(Conv2dParams p, const floating* w,
                                        const floating* dy,
                                        floating* dx) noexcept nogil
cdef int conv2d_winograd_backward_weight(Conv2dParams p, const floating* x,
                                         const floating* dy, floating* dw,
                                         floating* db, bint accumulate) noexcept nogil

# Dispatch on `algo` (CONV_ALGO_AUTO -> conv2d_choose_algo for each pass).
cdef int conv2d_forward(Conv2dParams p, ConvAlgo algo, const floating* x,
                        const floating* w, const floating* b,
                        floating* y) noexcept nogil
# The same followed by y = max(y, 0) when `relu` (a fused Conv2d + ReLU; the
# bits equal a separate engine.activation.relu pass).
cdef int conv2d_forward_relu(Conv2dParams p, ConvAlgo algo, const floating* x,
                             const floating* w, const floating* b,
                             floating* y, bint relu) noexcept nogil
# dx may be NULL (skip the input gradient: first layer), db may be NULL.
cdef int conv2d_backward(Conv2dParams p, ConvAlgo algo, const floating* x,
                         const floating* w, const floating* dy,
                         floating* dx, floating* dw, floating* db,
                         bint accumulate) noexcept nogil
