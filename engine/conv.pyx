"""2-D convolution kernels: im2col + GEMM and direct, forward and backward.

See conv.pxd for the C-level API. The Python entries below validate their
arguments and call the C-level entries without the GIL.
"""

import numpy as np
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy, memmove

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ENGINE_ENOMEM,
                             engine_ftz_enter, engine_ftz_exit, work_chunks,
                             ceil_div)
from engine._threads cimport engine_num_threads
from engine.blas cimport gemm, gemm_parallel
from engine.activation cimport relu_span
from engine._validate import (float_array, out_array, check_blas_size, check_size, empty,
                              BLAS_INT_MAX)

# -- tuning constants ---------------------------------------------------------
# im2col: images whose output has fewer pixels than this are batched into one
# GEMM (columns of several images side by side) so that sgemm's N dimension
# stays large; 1-thread sgemm drops from ~100 to ~75 GFLOPS below a few
# hundred columns (PERFORMANCE.md; oneDNN uses 512 output pixels as its cut).
cdef Py_ssize_t _MIN_GEMM_COLS = 256
# im2col: a single image's columns are unfolded and multiplied in tiles of
# output rows holding at most this many elements (512 KB of float32).
cdef Py_ssize_t _COL_TILE_ELEMS = 128 * 1024
# Weight-gradient chunks: at most this many private dW partials, each worth at
# least this many FLOPs (the chunk count depends on the shapes only). The
# direct dW keeps a vector of lane partials per weight and chunk (1.2 MB per
# chunk for 3x3 64->64): 4 chunks ran 2-3% faster than 8 there, 2 no faster.
cdef Py_ssize_t _DW_MAX_CHUNKS = 4
cdef double _DW_CHUNK_FLOPS = 2.0e6
cdef size_t _BLAS_INT_MAX = 2147483647
# Below this much work per thread a kernel runs on fewer threads (results do
# not change: chunks come from the shapes). Waking an OpenMP team for tiny
# work cost up to 25x on the loaded 2-core dev machine.
cdef double _MIN_THREAD_FLOPS = 2.0e5


cdef inline int _team(Py_ssize_t items, double work) noexcept nogil:
    """Threads for `items` independent items worth `work` FLOPs in all."""
    cdef int n = engine_num_threads()
    if items < n:
        n = <int>items
    if work < n * _MIN_THREAD_FLOPS:
        n = <int>(work / _MIN_THREAD_FLOPS)
    return n if n > 1 else 1


cdef inline double _conv_flops(const Conv2dParams* p) noexcept nogil:
    return 2.0 * p.N * p.K * (p.C // p.groups) * p.kh * p.kw * p.OH * p.OW


# -- parameters ---------------------------------------------------------------

cdef int conv2d_set_output_size(Conv2dParams* p) noexcept nogil:
    cdef Py_ssize_t eh = p.dh * (p.kh - 1) + 1, ew = p.dw * (p.kw - 1) + 1
    if p.sh <= 0 or p.sw <= 0 or p.H + 2 * p.ph < eh or p.W + 2 * p.pw < ew:
        return ENGINE_EBADARG
    p.OH = (p.H + 2 * p.ph - eh) // p.sh + 1
    p.OW = (p.W + 2 * p.pw - ew) // p.sw + 1
    return ENGINE_OK


cdef int conv2d_check_params(const Conv2dParams* p) noexcept nogil:
    if (p.N <= 0 or p.C <= 0 or p.H <= 0 or p.W <= 0 or p.K <= 0
            or p.kh <= 0 or p.kw <= 0 or p.sh <= 0 or p.sw <= 0
            or p.ph < 0 or p.pw < 0 or p.dh <= 0 or p.dw <= 0
            or p.groups <= 0 or p.OH <= 0 or p.OW <= 0):
        return ENGINE_EBADARG
    if p.C % p.groups != 0 or p.K % p.groups != 0:
        return ENGINE_EBADARG
    # GEMM sizes are 32-bit ints: the unfolded rows and the batched columns.
    if (<size_t>(p.C // p.groups) * p.kh * p.kw > _BLAS_INT_MAX
            or <size_t>p.OH * p.OW * _MIN_GEMM_COLS > _BLAS_INT_MAX
            or <size_t>p.H * p.W > _BLAS_INT_MAX):
        return ENGINE_EBADARG
    return ENGINE_OK


cdef inline bint _is_pointwise(const Conv2dParams* p) noexcept nogil:
    """1x1, stride 1, no padding: the input planes already are the columns."""
    return (p.kh == 1 and p.kw == 1 and p.sh == 1 and p.sw == 1
            and p.ph == 0 and p.pw == 0 and p.OH == p.H and p.OW == p.W)


cdef ConvAlgo conv2d_choose_algo(const Conv2dParams* p, ConvPass which) noexcept nogil:
    # Quick 1-thread measurements on the (noisy, shared) 2-core dev machine,
    # GFLOPS im2col / direct, float32:
    #   LeNet c1 b64 1->6 5x5 28x28:   fwd 39 / 45   dW 34 / 30
    #   LeNet c2 b64 6->16 5x5 10x10:  fwd 41 / 61   dW 35 / 17   dx 21 / 31
    #   3x3 64->64 b32 32x32 (VGG):    fwd 69 / 95   dW 67 / 31   dx 66 / 97
    #   3x3 64->64 b32 16x16:          fwd 60 / 95   dW 48 / 31   dx 74 / 97
    #   3x3 32->64 b32 12x12:          fwd 60 / 63   dW 53 / 17   dx 39 / 45
    #   3x3 128->128 b32 8x8:          fwd 61 / 52   dW 67 / 10   dx 59 / 50
    #   3x3 256->256 b32 4x4:          fwd 65 / 25   dW 37 /  4   dx 49 / 12
    #   depthwise 3x3 64ch b32 32x32:  fwd  7 / 19   dW  7 / 11   dx  5 / 14
    # sgemm on the im2col GEMM shape ran 75-80 in the same runs (that Zen 4
    # machine's direct dW predates the present kernel). With AVX-512 the
    # direct forward tiles hold 16-24 vector accumulators (2 rows x 8
    # channels or 4 rows x 6 channels, 16 pixels each) when Kg is a multiple
    # of 8 or 6: then direct wins if rows are >= 10 pixels (under 40% of the
    # vector wasted). dx of a stride-1 conv is the direct forward of dy with
    # the channel roles swapped (Cg plays Kg). The Zen 3 (AVX2) measurements
    # behind each rule are next to it.
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    if p.kw > _MAX_TAPS_ROW:
        return CONV_ALGO_IM2COL          # the direct path's tap table limit
    if _is_pointwise(p):
        return CONV_ALGO_IM2COL          # a plain GEMM on the input planes
    if which == CONV_PASS_BACKWARD_WEIGHT:
        # Direct unless rows are short, strided or the GEMM's output is wide:
        # 1 thread on Zen 3, GFLOPS im2col / direct, LeNet c1 (1->6 5x5 28x28)
        # 15 / 41, LeNet c2 (6->16 5x5 10x10) 29 / 32, 3x3 16->16 32x32 42 /
        # 69, 64->64 32x32 69 / 72, 32->32 16x16 49 / 53, but 64->64 16x16
        # 59 / 56, 64->128 32x32 78 / 77, 64->64 8x8 42 / 28, 16->32 stride 2
        # 44 / 37, ResNet's 1x1 stride-2 projection 32->64 to 8x8 1.5 / 0.3.
        if Kg < 4:
            return CONV_ALGO_DIRECT
        # Winograd's weight gradient wins on large maps of ~64 channels only
        # (1 thread, min of 8 interleaved runs on a slow day, ms direct /
        # im2col / winograd: 3x3 64->64 32x32 50.0 / 50.0 / 41.2; level at
        # 128->128 16x16 45.4 / 49.9 / 44.6, 64->128 16x16 23.0 / 24.8 / 23.8,
        # 64->64 16x16 11.8 / 15.2 / 11.9; behind at 128->128 8x8 and
        # 256->256 4x4, where its transforms outweigh the GEMMs).
        if (_winograd_fits(p) and Cg >= 48 and Kg >= 48 and Cg * Kg <= 4096
                and p.OH * p.OW >= 1024):
            return CONV_ALGO_WINOGRAD
        if _dw_channel_lanes(p):         # measurements there
            return CONV_ALGO_DIRECT
        if p.sw == 1 and (Cg * p.kh * p.kw <= 32 or p.OH * p.OW >= 1024
                          or (p.OW >= 10 and Kg <= 32)):
            return CONV_ALGO_DIRECT
        return CONV_ALGO_IM2COL
    # A strided grad-input runs direct as a scalar scatter: only worth it
    # where the GEMM degenerates (ResNet's 1x1 stride-2 projection 32->64 to
    # 8x8: im2col 0.25 ms, direct 4.5).
    if which == CONV_PASS_BACKWARD_INPUT and not _direct_dx_is_forward(p):
        return CONV_ALGO_DIRECT if Kg < 8 else CONV_ALGO_IM2COL
    # A strided 1x1 is a subsampling copy and a GEMM (same projection,
    # forward: 0.33 ms, direct 0.53).
    if p.kh == 1 and p.kw == 1 and Kg >= 8:
        return CONV_ALGO_IM2COL
    # Depthwise / narrow groups / 1-3 input channels: GEMMs of a few rows or
    # a short inner dimension run far below sgemm speed, direct loops do not.
    if Cg * p.kh * p.kw <= 32 or Kg < 8:
        return CONV_ALGO_DIRECT
    # Winograd F(2x2, 3x3) does 16 multiplies where the others do 36, but
    # its input and output transforms cost about as much as a GEMM over 32
    # channels: 1 thread on Zen 3, ms direct / winograd, forward, b32 3x3
    # 64->64 32x32 31.6 / 20.2, 64->64 16x16 9.8 / 7.3, 128->128 8x8 10.1 /
    # 7.3, 256->256 4x4 20.1 (im2col 14.2) / 8.9, 64->128 16x16 14.8 / 10.1,
    # b8 64->64 56x56 26.1 / 18.1; but 32->32 16x16 2.6 / 2.7, 16->16 32x32
    # 2.8 / 3.7, 32->64 8x8 1.3 / 1.6. The stride-1 grad-input is the same
    # convolution with Cg and Kg swapped.
    if _winograd_fits(p) and Cg >= 48 and Kg >= 48 and (
            which == CONV_PASS_FORWARD or _direct_dx_is_forward(p)):
        return CONV_ALGO_WINOGRAD
    # The forward tiles (and the stride-1 grad-input, a forward of dy with
    # Cg and Kg swapped) beat im2col once rows fill a vector: 1 thread on Zen
    # 3 (AVX2), GFLOPS im2col / direct, 3x3 64->64 b32 32x32 54 / 73, 32->64
    # 16x16 50 / 75, 128->128 8x8 41 / 55, but 256->256 4x4 31 / 36 with
    # half of each vector wasted (and im2col batches those small maps). With
    # 16 registers (AVX2) any channel count tiles (blocks of 6, then 4, 2,
    # 1); with 32 the tiles need channels in multiples of 8 or 6.
    if which == CONV_PASS_FORWARD and _direct_tiles_fit(Kg, p.OW):
        return CONV_ALGO_DIRECT
    if (which == CONV_PASS_BACKWARD_INPUT and _direct_tiles_fit(Cg, p.W)
            and _direct_dx_is_forward(p)):
        return CONV_ALGO_DIRECT
    return CONV_ALGO_IM2COL


cdef inline bint _direct_tiles_fit(Py_ssize_t channels, Py_ssize_t width) noexcept nogil:
    """Whether the big forward tiles cover `channels` outputs on rows of `width`."""
    if ENGINE_VREGS < 32:
        return channels >= 6 and width >= 8
    return (channels % 8 == 0 or channels % 6 == 0) and width >= 10


cdef inline bint _direct_dx_is_forward(const Conv2dParams* p) noexcept nogil:
    """Stride 1 and padding within the kernel extent: the direct grad-input
    runs as a direct forward convolution (else a slower scatter)."""
    return (p.sh == 1 and p.sw == 1 and p.ph <= p.dh * (p.kh - 1)
            and p.pw <= p.dw * (p.kw - 1) and p.kw <= _MAX_TAPS_ROW)


# -- small helpers ------------------------------------------------------------

cdef inline void _valid_range(Py_ssize_t off, Py_ssize_t stride, Py_ssize_t size,
                              Py_ssize_t count, Py_ssize_t* lo,
                              Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) with 0 <= o * stride + off < size."""
    cdef Py_ssize_t a = 0, b
    if off < 0:
        a = ceil_div(-off, stride)
    if size - 1 - off < 0:
        b = 0
    else:
        b = (size - 1 - off) // stride + 1
    if b > count:
        b = count
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


cdef inline floating _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum in a fixed order with 16 lane partials (vectorises, deterministic)."""
    cdef floating acc[16]
    cdef Py_ssize_t i, l
    cdef floating s = 0
    for l in range(16):
        acc[l] = 0
    i = 0
    while i + 16 <= n:
        for l in range(16):
            acc[l] += x[i + l]
        i += 16
    for l in range(n - i):
        acc[l] += x[i + l]
    for l in range(16):
        s += acc[l]
    return s


cdef inline void _gemm(bint par, bint ta, bint tb, Py_ssize_t M, Py_ssize_t N,
                       Py_ssize_t K, const floating* A, Py_ssize_t lda,
                       const floating* B, Py_ssize_t ldb, floating beta,
                       floating* C, Py_ssize_t ldc) noexcept nogil:
    if par:
        gemm_parallel(ta, tb, <int>M, <int>N, <int>K, <floating>1, A, <int>lda,
                      B, <int>ldb, beta, C, <int>ldc)
    else:
        gemm(ta, tb, <int>M, <int>N, <int>K, <floating>1, A, <int>lda,
             B, <int>ldb, beta, C, <int>ldc)


cdef void _bias_grad(const Conv2dParams* p, const floating* dy, floating* db,
                     bint accumulate) noexcept nogil:
    """db[k] (+)= sum over images and pixels of dy[n, k]; parallel over k."""
    cdef Py_ssize_t k, n, P = p.OH * p.OW
    cdef floating s
    cdef unsigned int old
    for k in prange(p.K, schedule='static',
                    num_threads=_team(p.K, <double>p.N * p.K * P)):
        s = 0
        for n in range(p.N):
            s = s + _sum(dy + (n * p.K + k) * P, P)
        if accumulate:
            db[k] = db[k] + s
        else:
            db[k] = s


# -- im2col / col2im for one image --------------------------------------------

cdef void _im2col_image(const Conv2dParams* p, const floating* x, Py_ssize_t nch,
                        floating* col, Py_ssize_t ldc, Py_ssize_t oh0,
                        Py_ssize_t oh1) noexcept nogil:
    """Unfold `nch` channel planes of one image into rows of `col` (stride ldc).

    Row (c, i, j) holds x[c, oh*sh + i*dh - ph, ow*sw + j*dw - pw] for the
    output pixels of rows oh0 <= oh < oh1 (zeros where that falls in the
    padding).
    """
    cdef Py_ssize_t H = p.H, W = p.W, OH = p.OH, OW = p.OW
    cdef Py_ssize_t c, i, j, oh, ow, ih, off, lo, hi, sw = p.sw
    cdef const floating* src
    cdef floating* dst
    for c in range(nch):
        for i in range(p.kh):
            for j in range(p.kw):
                dst = col + ((c * p.kh + i) * p.kw + j) * ldc
                off = j * p.dw - p.pw
                _valid_range(off, sw, W, OW, &lo, &hi)
                # Plain loops, no memcpy/memset calls: rows are often short.
                for oh in range(oh0, oh1):
                    ih = oh * p.sh + i * p.dh - p.ph
                    if ih < 0 or ih >= H or lo >= hi:
                        for ow in range(OW):
                            dst[ow] = 0
                    else:
                        for ow in range(lo):
                            dst[ow] = 0
                        src = x + (c * H + ih) * W + lo * sw + off
                        if sw == 1:
                            for ow in range(hi - lo):
                                dst[lo + ow] = src[ow]
                        else:
                            for ow in range(hi - lo):
                                dst[lo + ow] = src[ow * sw]
                        for ow in range(hi, OW):
                            dst[ow] = 0
                    dst += OW


cdef void _col2im_image(const Conv2dParams* p, const floating* col,
                        Py_ssize_t ldc, Py_ssize_t nch, floating* dx,
                        Py_ssize_t oh0, Py_ssize_t oh1) noexcept nogil:
    """dx[c] += the column entries (output rows oh0..oh1) _im2col_image read
    from each pixel."""
    cdef Py_ssize_t H = p.H, W = p.W, OH = p.OH, OW = p.OW
    cdef Py_ssize_t c, i, j, oh, ow, ih, off, lo, hi, sw = p.sw
    cdef const floating* src
    cdef floating* dst
    for c in range(nch):
        for i in range(p.kh):
            for j in range(p.kw):
                src = col + ((c * p.kh + i) * p.kw + j) * ldc
                off = j * p.dw - p.pw
                _valid_range(off, sw, W, OW, &lo, &hi)
                for oh in range(oh0, oh1):
                    ih = oh * p.sh + i * p.dh - p.ph
                    if ih >= 0 and ih < H and lo < hi:
                        dst = dx + (c * H + ih) * W + lo * sw + off
                        if sw == 1:
                            for ow in range(hi - lo):
                                dst[ow] += src[lo + ow]
                        else:
                            for ow in range(hi - lo):
                                dst[ow * sw] += src[lo + ow]
                    src += OW


cdef int im2col_batch(Conv2dParams p, const floating* x, floating* cols) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    cdef Py_ssize_t n, R = p.C * p.kh * p.kw, P = p.OH * p.OW
    if err:
        return err
    for n in prange(p.N, schedule='static', num_threads=_team(p.N, <double>p.N * R * P)):
        _im2col_image(&p, x + n * p.C * p.H * p.W, p.C, cols + n * R * P, P, 0, p.OH)
    return ENGINE_OK


cdef int col2im_batch(Conv2dParams p, const floating* cols, floating* dx) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    cdef Py_ssize_t n, R = p.C * p.kh * p.kw, P = p.OH * p.OW
    cdef unsigned int old
    if err:
        return err
    for n in prange(p.N, schedule='static', num_threads=_team(p.N, <double>p.N * R * P)):
        old = engine_ftz_enter()
        memset(dx + n * p.C * p.H * p.W, 0, p.C * p.H * p.W * sizeof(floating))
        _col2im_image(&p, cols + n * R * P, P, p.C, dx + n * p.C * p.H * p.W, 0, p.OH)
        engine_ftz_exit(old)
    return ENGINE_OK


# -- im2col + GEMM ------------------------------------------------------------
# A work item is `nb` consecutive images starting at n0 (nb = the batching
# factor B except for the last item). With B > 1 their columns sit side by
# side in one buffer (leading dimension nb*P) and one GEMM covers them.

cdef inline Py_ssize_t _images_per_item(const Conv2dParams* p) noexcept nogil:
    cdef Py_ssize_t P = p.OH * p.OW, B
    if _is_pointwise(p) or P >= _MIN_GEMM_COLS:
        return 1
    B = ceil_div(_MIN_GEMM_COLS, P)
    return B if B < p.N else p.N


cdef inline Py_ssize_t _tile_rows(const Conv2dParams* p, Py_ssize_t nb) noexcept nogil:
    """Output rows per column tile of a single-image item (all rows if nb > 1).

    The unfolded columns of a tile stay within _COL_TILE_ELEMS, so they are
    still in L2 when the GEMM packs them (a whole VGG 64-channel 32x32 image
    unfolds to 2.4 MB).
    """
    cdef Py_ssize_t R = (p.C // p.groups) * p.kh * p.kw, rows, ntiles
    if nb > 1 or _is_pointwise(p):
        return p.OH
    rows = _COL_TILE_ELEMS // (R * p.OW)
    if rows < 1:
        rows = 1
    if rows >= p.OH:
        return p.OH
    ntiles = ceil_div(p.OH, rows)
    return ceil_div(p.OH, ntiles)       # equal tiles


cdef void _unfold_item(const Conv2dParams* p, const floating* x, Py_ssize_t n0,
                       Py_ssize_t nb, Py_ssize_t g, floating* col) noexcept nogil:
    cdef Py_ssize_t b, Cg = p.C // p.groups, P = p.OH * p.OW
    for b in range(nb):
        _im2col_image(p, x + ((n0 + b) * p.C + g * Cg) * p.H * p.W, Cg,
                      col + b * P, nb * P, 0, p.OH)


cdef const floating* _gather_dy(const Conv2dParams* p, const floating* dy,
                                Py_ssize_t n0, Py_ssize_t nb, Py_ssize_t g,
                                floating* tmp) noexcept nogil:
    """dy of group g for images n0.. as a (Kg, nb*P) matrix (a copy if nb > 1)."""
    cdef Py_ssize_t b, k, Kg = p.K // p.groups, P = p.OH * p.OW
    if nb == 1:
        return dy + (n0 * p.K + g * Kg) * P
    for k in range(Kg):
        for b in range(nb):
            memcpy(tmp + k * nb * P + b * P, dy + ((n0 + b) * p.K + g * Kg + k) * P,
                   P * sizeof(floating))
    return tmp


cdef void _im2col_forward_item(const Conv2dParams* p, const floating* x,
                               const floating* w, const floating* bias,
                               floating* y, Py_ssize_t n0, Py_ssize_t nb,
                               floating* col, floating* tmp,
                               bint par) noexcept nogil:
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t R = Cg * p.kh * p.kw, P = p.OH * p.OW, ld = nb * P
    cdef Py_ssize_t g, k, b, q
    cdef const floating* cols
    cdef floating* yk
    cdef const floating* src
    cdef floating bk
    cdef Py_ssize_t rows = _tile_rows(p, nb), oh0, nr
    for g in range(p.groups):
        if nb == 1:
            # Bias first, then GEMM with beta = 1 adds the product onto it.
            yk = y + (n0 * p.K + g * Kg) * P
            if bias != NULL:
                for k in range(Kg):
                    bk = bias[g * Kg + k]
                    for q in range(P):
                        yk[k * P + q] = bk
            if _is_pointwise(p):
                _gemm(par, False, False, Kg, P, R, w + g * Kg * R, R,
                      x + (n0 * p.C + g * Cg) * p.H * p.W, P,
                      1 if bias != NULL else 0, yk, P)
                continue
            oh0 = 0
            while oh0 < p.OH:
                nr = min(rows, p.OH - oh0)
                _im2col_image(p, x + (n0 * p.C + g * Cg) * p.H * p.W, Cg, col,
                              nr * p.OW, oh0, oh0 + nr)
                _gemm(par, False, False, Kg, nr * p.OW, R, w + g * Kg * R, R,
                      col, nr * p.OW, 1 if bias != NULL else 0, yk + oh0 * p.OW, P)
                oh0 += nr
        else:
            _unfold_item(p, x, n0, nb, g, col)
            _gemm(par, False, False, Kg, ld, R, w + g * Kg * R, R, col, ld,
                  0, tmp, ld)
            for b in range(nb):
                for k in range(Kg):
                    yk = y + ((n0 + b) * p.K + g * Kg + k) * P
                    src = tmp + k * ld + b * P
                    bk = bias[g * Kg + k] if bias != NULL else 0
                    for q in range(P):
                        yk[q] = src[q] + bk


cdef void _im2col_backward_input_item(const Conv2dParams* p, const floating* w,
                                      const floating* dy, floating* dx,
                                      Py_ssize_t n0, Py_ssize_t nb,
                                      floating* dcol, floating* tmp,
                                      bint par) noexcept nogil:
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t R = Cg * p.kh * p.kw, P = p.OH * p.OW, ld = nb * P
    cdef Py_ssize_t g, b, HW = p.H * p.W
    cdef const floating* dyg
    cdef Py_ssize_t rows = _tile_rows(p, nb), oh0, nr
    cdef floating* dxg
    for g in range(p.groups):
        dyg = _gather_dy(p, dy, n0, nb, g, tmp)
        if nb == 1 and _is_pointwise(p):
            _gemm(par, True, False, Cg, P, Kg, w + g * Kg * R, R, dyg, P, 0,
                  dx + (n0 * p.C + g * Cg) * HW, P)
            continue
        for b in range(nb):
            memset(dx + ((n0 + b) * p.C + g * Cg) * HW, 0, Cg * HW * sizeof(floating))
        if nb == 1:
            dxg = dx + (n0 * p.C + g * Cg) * HW
            oh0 = 0
            while oh0 < p.OH:
                nr = min(rows, p.OH - oh0)
                _gemm(par, True, False, R, nr * p.OW, Kg, w + g * Kg * R, R,
                      dyg + oh0 * p.OW, P, 0, dcol, nr * p.OW)
                _col2im_image(p, dcol, nr * p.OW, Cg, dxg, oh0, oh0 + nr)
                oh0 += nr
            continue
        _gemm(par, True, False, R, ld, Kg, w + g * Kg * R, R, dyg, ld, 0, dcol, ld)
        for b in range(nb):
            _col2im_image(p, dcol + b * P, ld, Cg, dx + ((n0 + b) * p.C + g * Cg) * HW,
                          0, p.OH)


cdef void _im2col_backward_weight_item(const Conv2dParams* p, const floating* x,
                                       const floating* dy, floating* dw_part,
                                       bint first, Py_ssize_t n0, Py_ssize_t nb,
                                       floating* col, floating* tmp,
                                       bint par) noexcept nogil:
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t R = Cg * p.kh * p.kw, P = p.OH * p.OW, ld = nb * P
    cdef Py_ssize_t g, rows = _tile_rows(p, nb), oh0, nr
    cdef const floating* cols
    cdef const floating* dyg
    for g in range(p.groups):
        dyg = _gather_dy(p, dy, n0, nb, g, tmp)
        if nb == 1 and not _is_pointwise(p):
            # dW_g^T[R, Kg] (+)= cols_tile @ dY_g[:, tile]^T, tile by tile
            oh0 = 0
            while oh0 < p.OH:
                nr = min(rows, p.OH - oh0)
                _im2col_image(p, x + (n0 * p.C + g * Cg) * p.H * p.W, Cg, col,
                              nr * p.OW, oh0, oh0 + nr)
                _gemm(par, False, True, R, Kg, nr * p.OW, col, nr * p.OW,
                      dyg + oh0 * p.OW, P, 0 if first and oh0 == 0 else 1,
                      dw_part + g * Kg * R, Kg)
                oh0 += nr
            continue
        if nb == 1:
            cols = x + (n0 * p.C + g * Cg) * p.H * p.W
        else:
            _unfold_item(p, x, n0, nb, g, col)
            cols = col
        # dW_g^T[R, Kg] (+)= cols[R, ld] @ dY_g[Kg, ld]^T. The transposed
        # product runs 10-45% faster in sgemm than dY @ cols^T on these
        # shapes (e.g. 94 vs 67 GFLOPS for 64x576 over 1024 pixels).
        _gemm(par, False, True, R, Kg, ld, cols, ld, dyg, ld,
              0 if first else 1, dw_part + g * Kg * R, Kg)


cdef inline Py_ssize_t _col_size(const Conv2dParams* p, Py_ssize_t B) noexcept nogil:
    """Elements of a column buffer: B whole images, or one tile of one image."""
    cdef Py_ssize_t R = (p.C // p.groups) * p.kh * p.kw
    if B > 1:
        return R * B * p.OH * p.OW
    return R * _tile_rows(p, 1) * p.OW


cdef inline Py_ssize_t _workspace_size(const Conv2dParams* p, Py_ssize_t B) noexcept nogil:
    """Per-thread elements: a column buffer and (when batching) a (Kg, B*P) buffer."""
    cdef Py_ssize_t P = p.OH * p.OW
    return _col_size(p, B) + ((p.K // p.groups) * B * P if B > 1 else 0)


cdef int conv2d_im2col_forward(Conv2dParams p, const floating* x,
                               const floating* w, const floating* b,
                               floating* y) noexcept nogil:
    return _im2col_forward(p, x, w, b, y, False)


cdef int _im2col_forward(Conv2dParams p, const floating* x,
                         const floating* w, const floating* b,
                         floating* y, bint relu) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    cdef Py_ssize_t B = _images_per_item(&p)
    cdef Py_ssize_t items = ceil_div(p.N, B), it, n0, nb
    cdef Py_ssize_t per = _workspace_size(&p, B)
    cdef Py_ssize_t R = (p.C // p.groups) * p.kh * p.kw
    cdef int nthreads = _team(p.N * p.groups, _conv_flops(&p))
    cdef floating* ws
    cdef floating* mine
    cdef unsigned int old
    if items < nthreads:
        nthreads = <int>items
    ws = <floating*>malloc(nthreads * per * sizeof(floating) + 1)
    if ws == NULL:
        return ENGINE_ENOMEM
    if items == 1:
        # One GEMM per group: split its columns across threads instead.
        old = engine_ftz_enter()
        _im2col_forward_item(&p, x, w, b, y, 0, p.N, ws, ws + _col_size(&p, B), True)
        if relu:
            relu_span(y, y, p.N * p.K * p.OH * p.OW)
        engine_ftz_exit(old)
    else:
        with parallel(num_threads=nthreads):
            old = engine_ftz_enter()
            mine = ws + threadid() * per
            for it in prange(items, schedule='static'):
                n0 = it * B
                nb = min(B, p.N - n0)
                _im2col_forward_item(&p, x, w, b, y, n0, nb, mine,
                                     mine + _col_size(&p, B), False)
                if relu:    # the item's images, while they are in cache
                    relu_span(y + n0 * p.K * p.OH * p.OW, y + n0 * p.K * p.OH * p.OW,
                              nb * p.K * p.OH * p.OW)
            engine_ftz_exit(old)
    free(ws)
    return ENGINE_OK


cdef int conv2d_im2col_backward_input(Conv2dParams p, const floating* w,
                                      const floating* dy,
                                      floating* dx) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    cdef Py_ssize_t B = _images_per_item(&p)
    cdef Py_ssize_t items = ceil_div(p.N, B), it, n0, nb
    cdef Py_ssize_t per = _workspace_size(&p, B)
    cdef Py_ssize_t R = (p.C // p.groups) * p.kh * p.kw
    cdef int nthreads = _team(p.N * p.groups, _conv_flops(&p))
    cdef floating* ws
    cdef floating* mine
    cdef unsigned int old
    if items < nthreads:
        nthreads = <int>items
    ws = <floating*>malloc(nthreads * per * sizeof(floating) + 1)
    if ws == NULL:
        return ENGINE_ENOMEM
    if items == 1:
        old = engine_ftz_enter()
        _im2col_backward_input_item(&p, w, dy, dx, 0, p.N, ws,
                                    ws + _col_size(&p, B), True)
        engine_ftz_exit(old)
    else:
        with parallel(num_threads=nthreads):
            old = engine_ftz_enter()
            mine = ws + threadid() * per
            for it in prange(items, schedule='static'):
                n0 = it * B
                nb = min(B, p.N - n0)
                _im2col_backward_input_item(&p, w, dy, dx, n0, nb, mine,
                                            mine + _col_size(&p, B), False)
            engine_ftz_exit(old)
    free(ws)
    return ENGINE_OK


cdef void _reduce_partials(const floating* parts, Py_ssize_t nparts, Py_ssize_t size,
                           floating* out, bint accumulate) noexcept nogil:
    """out (+)= parts[0] + parts[1] + ... in this order (element by element)."""
    cdef Py_ssize_t c, i
    cdef const floating* src
    if not accumulate:
        memset(out, 0, size * sizeof(floating))
    for c in range(nparts):
        src = parts + c * size
        for i in range(size):
            out[i] += src[i]


cdef void _reduce_transposed_partials(const Conv2dParams* p, const floating* parts,
                                      Py_ssize_t nparts, Py_ssize_t rows, floating* dw,
                                      bint accumulate) noexcept nogil:
    """dw[g*Kg + k, r] (+)= sum over chunks, in order, of parts[c][g][r][k],
    for r < R of the `rows` >= R (padding) each group's partial holds."""
    cdef Py_ssize_t Kg = p.K // p.groups, R = (p.C // p.groups) * p.kh * p.kw
    cdef Py_ssize_t size = p.K * rows, g, k, r, c
    cdef floating s
    for g in range(p.groups):
        for k in range(Kg):
            for r in range(R):
                s = dw[(g * Kg + k) * R + r] if accumulate else 0
                for c in range(nparts):
                    s = s + parts[c * size + (g * rows + r) * Kg + k]
                dw[(g * Kg + k) * R + r] = s


cdef int conv2d_im2col_backward_weight(Conv2dParams p, const floating* x,
                                       const floating* dy, floating* dw,
                                       floating* db, bint accumulate) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    cdef Py_ssize_t B = _images_per_item(&p)
    cdef Py_ssize_t items = ceil_div(p.N, B), it, n0, nb, c
    cdef Py_ssize_t per = _workspace_size(&p, B)
    cdef Py_ssize_t R = (p.C // p.groups) * p.kh * p.kw, P = p.OH * p.OW
    cdef Py_ssize_t wsize = p.K * R
    cdef double flops = 2.0 * p.N * p.K * R * P
    # Chunks of consecutive work items, from the shapes only.
    cdef Py_ssize_t nchunks = work_chunks(items, flops, _DW_CHUNK_FLOPS, _DW_MAX_CHUNKS)
    cdef int nthreads = _team(p.N * p.groups, _conv_flops(&p))
    cdef floating* ws
    cdef floating* parts
    cdef floating* mine
    cdef unsigned int old
    if nchunks < nthreads:
        nthreads = <int>nchunks
    ws = <floating*>malloc(nthreads * per * sizeof(floating) + 1)
    parts = <floating*>malloc(nchunks * wsize * sizeof(floating))
    if ws == NULL or parts == NULL:
        free(ws)
        free(parts)
        return ENGINE_ENOMEM
    if nchunks == 1:
        old = engine_ftz_enter()
        for it in range(items):
            n0 = it * B
            _im2col_backward_weight_item(&p, x, dy, parts, it == 0, n0,
                                         min(B, p.N - n0), ws, ws + _col_size(&p, B), True)
        engine_ftz_exit(old)
    else:
        with parallel(num_threads=nthreads):
            old = engine_ftz_enter()
            mine = ws + threadid() * per
            for c in prange(nchunks, schedule='static'):
                # items [c*items/nchunks, (c+1)*items/nchunks): never empty
                for it in range(c * items // nchunks, (c + 1) * items // nchunks):
                    n0 = it * B
                    nb = min(B, p.N - n0)
                    _im2col_backward_weight_item(&p, x, dy, parts + c * wsize,
                                                 it == c * items // nchunks, n0, nb,
                                                 mine, mine + _col_size(&p, B), False)
            engine_ftz_exit(old)
    _reduce_transposed_partials(&p, parts, nchunks, R, dw, accumulate)
    free(parts)
    free(ws)
    if db != NULL:
        _bias_grad(&p, dy, db, accumulate)
    return ENGINE_OK


# -- direct convolution -------------------------------------------------------
# Per (image, group) the group's input planes are copied once into a
# zero-padded buffer whose columns are split by stride phase: padded column
# s*sw + q is stored at [q][s], so every tap of a row of output pixels reads a
# contiguous run whatever the stride. The micro-kernels below keep a tile of
# RB output rows x KB output channels x NV vectors of output pixels in vector
# registers and run one broadcast-FMA per weight and vector, no bounds checks
# (the buffer has slack rows/columns; results that fall outside the output
# are computed and dropped).

cdef extern from *:
    """
    #include <stddef.h>
    /* One vector register of output pixels: 64 bytes with AVX-512 (32
       registers), 32 bytes with AVX/AVX2 and 16 bytes otherwise (16
       registers). A 64-byte vector type on an AVX2 target is split into
       register pairs by GCC and the 16-accumulator tiles then spill on every
       FMA (LeNet's 5x5 layers ran ~10x slower than im2col on Zen 3). */
    #if defined(__AVX512F__)
    #define ENGINE_VL_F32 16
    #define ENGINE_VL_F64 8
    #define ENGINE_VREGS 32
    #elif defined(__AVX__)
    #define ENGINE_VL_F32 8
    #define ENGINE_VL_F64 4
    #define ENGINE_VREGS 16
    #else
    #define ENGINE_VL_F32 4
    #define ENGINE_VL_F64 2
    #define ENGINE_VREGS 16
    #endif
    #if defined(__GNUC__)
    #define ENGINE_FMA_ATTR __attribute__((optimize("fp-contract=fast")))
    #define ENGINE_VEC(T, VL) typedef T vec_t __attribute__((vector_size(VL * sizeof(T))));
    #define ENGINE_VZERO(v) v = (vec_t){0}
    #define ENGINE_VLOAD(v, p) __builtin_memcpy(&(v), (p), sizeof(vec_t))
    #define ENGINE_VSTORE(p, v) __builtin_memcpy((p), &(v), sizeof(vec_t))
    #define ENGINE_VFMA(acc, s, v) acc += (s) * (v)
    #define ENGINE_VADDS(v, s) v += (s)
    #define ENGINE_VADDV(v, a) v += (a)
    /* Keep a loaded vector in a register: without this GCC folds the load
       into both FMAs that use it as a memory operand (14 loads per 12 FMAs
       in the weight-gradient tile, which then waits on loads). */
    #if defined(__x86_64__) || defined(__i386__)
    #define ENGINE_VPIN(v) __asm__("" : "+x"(v))
    #else
    #define ENGINE_VPIN(v) (void)0
    #endif
    #define ENGINE_VFMAV(acc, a, b) acc += (a) * (b)
    #else  /* plain C: arrays of VL lanes (the compiler may still vectorise) */
    #define ENGINE_FMA_ATTR
    #define ENGINE_VEC(T, VL) typedef struct { T e[VL]; } vec_t; enum { vl_ = VL };
    #define ENGINE_VZERO(v) do { for (int l_ = 0; l_ < vl_; l_++) (v).e[l_] = 0; } while (0)
    #define ENGINE_VLOAD(v, p) do { for (int l_ = 0; l_ < vl_; l_++) (v).e[l_] = (p)[l_]; } while (0)
    #define ENGINE_VSTORE(p, v) do { for (int l_ = 0; l_ < vl_; l_++) (p)[l_] = (v).e[l_]; } while (0)
    #define ENGINE_VFMA(acc, s, v) do { for (int l_ = 0; l_ < vl_; l_++) (acc).e[l_] += (s) * (v).e[l_]; } while (0)
    #define ENGINE_VADDS(v, s) do { for (int l_ = 0; l_ < vl_; l_++) (v).e[l_] += (s); } while (0)
    #define ENGINE_VADDV(v, a) do { for (int l_ = 0; l_ < vl_; l_++) (v).e[l_] += (a).e[l_]; } while (0)
    #define ENGINE_VPIN(v) (void)0
    #define ENGINE_VFMAV(acc, a, b) do { for (int l_ = 0; l_ < vl_; l_++) (acc).e[l_] += (a).e[l_] * (b).e[l_]; } while (0)
    #endif

    /* Forward tile: out[r][k][v*VL + 0:VL] = sum over taps t of
       w[t][k] * x[off[t] + r*row_step + v*VL + 0:VL], for RB output rows,
       KB output channels and NV vectors of pixels per row. Tap t is a
       (channel, kernel row, kernel column) triple flattened by the caller
       into one offset table, so the loop runs ntaps = Cg*kh*kw times
       whatever the kernel shape (a 3-trip kw loop cost ~10% in branches and
       address arithmetic). w is packed [ntaps][KB]. Per tap the smaller
       operand set is held in registers first: the RB*NV pixel vectors when
       they are fewer than the KB broadcast weights, else the weights; the
       other order spills with 16 registers (1 row x 6 channels x 2 vectors:
       12 accumulators + 2 pixel vectors + 1 broadcast). */
    #define ENGINE_CONV_FWD_TILE(NAME, T, VL, RB, NV, KB)                        \\
    ENGINE_FMA_ATTR static void NAME(                                           \\
        const T* x, ptrdiff_t row_step, ptrdiff_t ntaps, const ptrdiff_t* off,  \\
        const T* w, const T* bias, T* y, ptrdiff_t y_row, ptrdiff_t y_chan)     \\
    {                                                                           \\
        ENGINE_VEC(T, VL)                                                       \\
        vec_t acc[RB][KB][NV];                                                  \\
        for (int r = 0; r < RB; r++)                                            \\
            for (int k = 0; k < KB; k++)                                        \\
                for (int v = 0; v < NV; v++) ENGINE_VZERO(acc[r][k][v]);        \\
        for (ptrdiff_t t = 0; t < ntaps; t++, w += KB) {                        \\
            const T* xs = x + off[t];                                           \\
            if (RB * NV <= KB) {                                                \\
                vec_t xv[RB][NV];                                               \\
                for (int r = 0; r < RB; r++)                                    \\
                    for (int v = 0; v < NV; v++)                                \\
                        ENGINE_VLOAD(xv[r][v], xs + r * row_step + v * VL);     \\
                for (int k = 0; k < KB; k++) {                                  \\
                    T wk = w[k];                                                \\
                    for (int r = 0; r < RB; r++)                                \\
                        for (int v = 0; v < NV; v++) ENGINE_VFMA(acc[r][k][v], wk, xv[r][v]); \\
                }                                                               \\
            } else {                                                            \\
                for (int r = 0; r < RB; r++)                                    \\
                    for (int v = 0; v < NV; v++) {                              \\
                        vec_t xv;                                               \\
                        ENGINE_VLOAD(xv, xs + r * row_step + v * VL);           \\
                        for (int k = 0; k < KB; k++) ENGINE_VFMA(acc[r][k][v], w[k], xv); \\
                    }                                                           \\
            }                                                                   \\
        }                                                                       \\
        for (int k = 0; k < KB; k++)                                            \\
            for (int r = 0; r < RB; r++)                                        \\
                for (int v = 0; v < NV; v++) {                                  \\
                    ENGINE_VADDS(acc[r][k][v], bias[k]);                        \\
                    ENGINE_VSTORE(y + k * y_chan + r * y_row + v * VL, acc[r][k][v]); \\
                }                                                               \\
    }

    /* Weight-gradient tile: out[k*out_step + t*VL + 0:VL] += lane-wise sum
       over rows and nvec vectors of dy[k*dy_chan_step + row*dy_row_step +
       v*VL + 0:VL] * x[row*x_row_step + toff[t] + v*VL + 0:VL]. The lanes
       are summed by the caller once per chunk (summing them here, per call,
       cost as much as the FMAs on small maps). */
    #define ENGINE_CONV_DW_TILE(NAME, T, VL, KB, TB)                             \\
    ENGINE_FMA_ATTR static void NAME(                                           \\
        const T* dy, ptrdiff_t dy_chan_step, ptrdiff_t dy_row_step,             \\
        const T* x, ptrdiff_t x_row_step, const ptrdiff_t* toff,                \\
        ptrdiff_t rows, ptrdiff_t nvec, T* out, ptrdiff_t out_step)             \\
    {                                                                           \\
        ENGINE_VEC(T, VL)                                                       \\
        vec_t acc[KB][TB];                                                      \\
        for (int k = 0; k < KB; k++)                                            \\
            for (int t = 0; t < TB; t++) ENGINE_VZERO(acc[k][t]);               \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                  \\
            const T* dyr = dy + r * dy_row_step;                                \\
            const T* xr = x + r * x_row_step;                                   \\
            for (ptrdiff_t v = 0; v < nvec; v++) {                              \\
                vec_t d[KB];                                                    \\
                for (int k = 0; k < KB; k++) ENGINE_VLOAD(d[k], dyr + k * dy_chan_step + v * VL); \\
                for (int t = 0; t < TB; t++) {                                  \\
                    vec_t xv;                                                   \\
                    ENGINE_VLOAD(xv, xr + toff[t] + v * VL);                    \\
                    ENGINE_VPIN(xv);                                            \\
                    for (int k = 0; k < KB; k++) ENGINE_VFMAV(acc[k][t], d[k], xv); \\
                }                                                               \\
            }                                                                   \\
        }                                                                       \\
        for (int k = 0; k < KB; k++)                                            \\
            for (int t = 0; t < TB; t++) {                                      \\
                vec_t o;                                                        \\
                ENGINE_VLOAD(o, out + k * out_step + t * VL);                   \\
                ENGINE_VADDV(o, acc[k][t]);                                     \\
                ENGINE_VSTORE(out + k * out_step + t * VL, o);                  \\
            }                                                                   \\
    }

    /* Weight-gradient tile with output channels in the lanes (layers whose
       channel count fills vectors, rows too short for the tile above):
       out[t*out_step + v*VL + 0:VL] += sum over output pixels (r, q) of
       x[off[t] + r*x_row + q] * dyT[(r*cols + q)*ks + v*VL + 0:VL], for TB
       taps and KV vectors of channels. Whole sums, no lane partials. */
    #define ENGINE_CONV_DWK_TILE(NAME, T, VL, TB, KV)                            \\
    ENGINE_FMA_ATTR static void NAME(                                           \\
        const T* x, ptrdiff_t x_row, const ptrdiff_t* off, const T* dyT,        \\
        ptrdiff_t ks, ptrdiff_t rows, ptrdiff_t cols, T* out, ptrdiff_t out_step) \\
    {                                                                           \\
        ENGINE_VEC(T, VL)                                                       \\
        vec_t acc[TB][KV];                                                      \\
        ptrdiff_t o[TB];                                                        \\
        for (int t = 0; t < TB; t++) {                                          \\
            o[t] = off[t];                                                      \\
            for (int v = 0; v < KV; v++) ENGINE_VZERO(acc[t][v]);               \\
        }                                                                       \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                  \\
            const T* xr = x + r * x_row;                                        \\
            const T* dr = dyT + r * cols * ks;                                  \\
            for (ptrdiff_t q = 0; q < cols; q++) {                              \\
                vec_t d[KV];                                                    \\
                for (int v = 0; v < KV; v++) ENGINE_VLOAD(d[v], dr + q * ks + v * VL); \\
                for (int t = 0; t < TB; t++) {                                  \\
                    T s = xr[o[t] + q];                                         \\
                    for (int v = 0; v < KV; v++) ENGINE_VFMA(acc[t][v], s, d[v]); \\
                }                                                               \\
            }                                                                   \\
        }                                                                       \\
        for (int t = 0; t < TB; t++)                                            \\
            for (int v = 0; v < KV; v++) {                                      \\
                vec_t u;                                                        \\
                ENGINE_VLOAD(u, out + t * out_step + v * VL);                   \\
                ENGINE_VADDV(u, acc[t][v]);                                     \\
                ENGINE_VSTORE(out + t * out_step + v * VL, u);                  \\
            }                                                                   \\
    }

    /* The forward tiles built, as (RB, NV, KB): AVX2's 1 row x 2 vectors and
       2 rows x 1 vector with blocks of 6, 4, 2, 1 channels, the narrow-channel
       tiles (4-6 rows x 2 channels, 8 rows x 1) and AVX-512's 2x8 and 4x6. */
    #define ENGINE_CONV_FWD_SHAPES(X)                                           \\
        X(1, 2, 6) X(1, 2, 4) X(1, 2, 2) X(1, 2, 1)                             \\
        X(2, 1, 6) X(2, 1, 4) X(2, 1, 2) X(2, 1, 1)                             \\
        X(4, 1, 2) X(5, 1, 2) X(6, 1, 2) X(8, 1, 1) X(2, 1, 8) X(4, 1, 6)
    #define ENGINE_CONV_FWD_DEFINE(RB, NV, KB)                                  \\
        ENGINE_CONV_FWD_TILE(engine_conv_fwd_f32_r##RB##v##NV##k##KB, float, ENGINE_VL_F32, RB, NV, KB) \\
        ENGINE_CONV_FWD_TILE(engine_conv_fwd_f64_r##RB##v##NV##k##KB, double, ENGINE_VL_F64, RB, NV, KB)
    ENGINE_CONV_FWD_SHAPES(ENGINE_CONV_FWD_DEFINE)
    typedef void (*engine_conv_fwd_f32_fn)(const float*, ptrdiff_t, ptrdiff_t, const ptrdiff_t*, const float*, const float*, float*, ptrdiff_t, ptrdiff_t);
    typedef void (*engine_conv_fwd_f64_fn)(const double*, ptrdiff_t, ptrdiff_t, const ptrdiff_t*, const double*, const double*, double*, ptrdiff_t, ptrdiff_t);
    /* The tile kernel for (RB, NV, KB), NULL where none is built. */
    #define ENGINE_CONV_FWD_PICK_F32(RB, NV, KB)                                \\
        if (rb == RB && nv == NV && kb == KB) return engine_conv_fwd_f32_r##RB##v##NV##k##KB;
    #define ENGINE_CONV_FWD_PICK_F64(RB, NV, KB)                                \\
        if (rb == RB && nv == NV && kb == KB) return engine_conv_fwd_f64_r##RB##v##NV##k##KB;
    static engine_conv_fwd_f32_fn engine_conv_fwd_f32_get(ptrdiff_t rb, ptrdiff_t nv, ptrdiff_t kb)
    {
        ENGINE_CONV_FWD_SHAPES(ENGINE_CONV_FWD_PICK_F32)
        return NULL;
    }
    static engine_conv_fwd_f64_fn engine_conv_fwd_f64_get(ptrdiff_t rb, ptrdiff_t nv, ptrdiff_t kb)
    {
        ENGINE_CONV_FWD_SHAPES(ENGINE_CONV_FWD_PICK_F64)
        return NULL;
    }
    ENGINE_CONV_DW_TILE(engine_conv_dw_f32_k2t6, float, ENGINE_VL_F32, 2, 6)
    ENGINE_CONV_DWK_TILE(engine_conv_dwk_f32_t6v2, float, ENGINE_VL_F32, 6, 2)
    ENGINE_CONV_DWK_TILE(engine_conv_dwk_f32_t12v1, float, ENGINE_VL_F32, 12, 1)
    ENGINE_CONV_DWK_TILE(engine_conv_dwk_f64_t6v2, double, ENGINE_VL_F64, 6, 2)
    ENGINE_CONV_DWK_TILE(engine_conv_dwk_f64_t12v1, double, ENGINE_VL_F64, 12, 1)
    ENGINE_CONV_DW_TILE(engine_conv_dw_f32_k1t8, float, ENGINE_VL_F32, 1, 8)
    ENGINE_CONV_DW_TILE(engine_conv_dw_f64_k2t6, double, ENGINE_VL_F64, 2, 6)
    ENGINE_CONV_DW_TILE(engine_conv_dw_f64_k1t8, double, ENGINE_VL_F64, 1, 8)
    """
    enum: ENGINE_VL_F32
    enum: ENGINE_VL_F64
    enum: ENGINE_VREGS
    ctypedef void (*engine_conv_fwd_f32_fn)(const float*, Py_ssize_t, Py_ssize_t, const Py_ssize_t*, const float*, const float*, float*, Py_ssize_t, Py_ssize_t) noexcept nogil
    ctypedef void (*engine_conv_fwd_f64_fn)(const double*, Py_ssize_t, Py_ssize_t, const Py_ssize_t*, const double*, const double*, double*, Py_ssize_t, Py_ssize_t) noexcept nogil
    engine_conv_fwd_f32_fn engine_conv_fwd_f32_get(Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    engine_conv_fwd_f64_fn engine_conv_fwd_f64_get(Py_ssize_t, Py_ssize_t, Py_ssize_t) noexcept nogil
    void engine_conv_dw_f32_k2t6(const float*, Py_ssize_t, Py_ssize_t, const float*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t, float*, Py_ssize_t) noexcept nogil
    void engine_conv_dw_f32_k1t8(const float*, Py_ssize_t, Py_ssize_t, const float*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t, float*, Py_ssize_t) noexcept nogil
    void engine_conv_dw_f64_k2t6(const double*, Py_ssize_t, Py_ssize_t, const double*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t, double*, Py_ssize_t) noexcept nogil
    void engine_conv_dw_f64_k1t8(const double*, Py_ssize_t, Py_ssize_t, const double*, Py_ssize_t, const Py_ssize_t*, Py_ssize_t, Py_ssize_t, double*, Py_ssize_t) noexcept nogil
    void engine_conv_dwk_f32_t6v2(const float*, Py_ssize_t, const Py_ssize_t*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*, Py_ssize_t) noexcept nogil
    void engine_conv_dwk_f32_t12v1(const float*, Py_ssize_t, const Py_ssize_t*, const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, float*, Py_ssize_t) noexcept nogil
    void engine_conv_dwk_f64_t6v2(const double*, Py_ssize_t, const Py_ssize_t*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*, Py_ssize_t) noexcept nogil
    void engine_conv_dwk_f64_t12v1(const double*, Py_ssize_t, const Py_ssize_t*, const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, double*, Py_ssize_t) noexcept nogil


cdef enum:
    _TILE_MAX = 24 * 16      # RB * KB * NV * VL elements of the largest tile
    _DW_TILE_MAX = 12 * 16   # KB * TB * VL of the largest weight-gradient tile (2 x 6, AVX-512)
    _MAX_TAPS_ROW = 64      # kw limit of the direct path (else im2col)


cdef inline Py_ssize_t _vl(floating* dummy) noexcept nogil:
    """Output pixels per vector register (16 floats / 8 doubles with AVX-512)."""
    if floating is float:
        return ENGINE_VL_F32
    else:
        return ENGINE_VL_F64


cdef struct DirectGeom:
    # Layout of one (image, group) padded input buffer and the tiling.
    Py_ssize_t RB, NV, KB      # forward tile: output rows x vectors per row x channels
    Py_ssize_t TW              # NV * VL: output pixels per tile row
    Py_ssize_t Hp, Wp          # rows / columns the taps reach
    Py_ssize_t Wq              # columns per stride phase (with slack)
    Py_ssize_t rowlen          # sw * Wq: elements per padded row
    Py_ssize_t rows            # padded rows incl. slack for a partial row tile
    Py_ssize_t chan            # rows * rowlen: elements per channel
    Py_ssize_t tap_off[_MAX_TAPS_ROW]   # tap j: phase (j*dw) % sw, shift (j*dw) // sw


cdef inline Py_ssize_t _cols_computed(Py_ssize_t OW, Py_ssize_t tw) noexcept nogil:
    return ceil_div(OW, tw) * tw


cdef void _direct_geom(const Conv2dParams* p, Py_ssize_t vl, DirectGeom* g) noexcept nogil:
    cdef Py_ssize_t Kg = p.K // p.groups, j, q
    g.NV = 1
    if ENGINE_VREGS < 32:
        # 16 vector registers (AVX2): 12 accumulators (6 channels x 2
        # vectors) + the 2 pixel vectors + 1 broadcast weight. 1 thread on
        # Zen 3, GFLOPS of the tile loop of 1 row x 6 ch x 2 vec / 2 rows x
        # 6 ch x 1 vec / the former 2 rows x 4 ch x 1 vec:
        #   3x3 64->64 32x32: 82 / 82 / 51     3x3 32->64 16x16: 94 / 88 / -
        #   3x3 128->128 8x8: 47 / 93 / -      LeNet c1 1->6 5x5 28x28: 57 / 43 / 31
        # (sgemm ~84). Channels beyond the last block of 6 go in blocks of
        # 4, 2, 1 with the same rows x vectors. The 16-pixel row is used
        # unless the rows are narrower or 2 rows of 8 pixels compute fewer
        # wasted outputs.
        if Kg >= 6:
            g.KB = 6
            if p.OW >= 2 * vl and (_cols_computed(p.OW, 2 * vl) * p.OH
                                   <= _cols_computed(p.OW, vl) * ceil_div(p.OH, 2) * 2):
                g.RB, g.NV = 1, 2
            else:
                g.RB = 2
        elif Kg % 4 == 0:
            g.RB, g.KB = 2, 4
        elif Kg % 2 == 0:
            # With KB = 2 the row count of the tile (4-6, 8-12 accumulators)
            # is the one that wastes the fewest rows of this output.
            g.RB, g.KB = 6, 2
            if ceil_div(p.OH, 5) * 5 < ceil_div(p.OH, g.RB) * g.RB:
                g.RB = 5
            if ceil_div(p.OH, 4) * 4 < ceil_div(p.OH, g.RB) * g.RB:
                g.RB = 4
        else:
            g.RB, g.KB = 8, 1
    # 32 registers (AVX-512): tiles of 16 accumulators where the channels
    # allow (VGG 3x3 64->64 forward on Zen 4, 1 thread: 2x8 tile ~95 GFLOPS,
    # 2x4 ~70, while sgemm ran 75-80 on the im2col GEMM shape).
    elif Kg % 8 == 0:
        g.RB, g.KB = 2, 8
    elif Kg % 6 == 0:
        g.RB, g.KB = 4, 6
    elif Kg % 4 == 0:
        g.RB, g.KB = 2, 4
    elif Kg % 2 == 0:
        g.RB, g.KB = 4, 2
    else:
        g.RB, g.KB = 8, 1
    g.TW = g.NV * vl
    g.Hp = (p.OH - 1) * p.sh + (p.kh - 1) * p.dh + 1
    g.Wp = (p.OW - 1) * p.sw + (p.kw - 1) * p.dw + 1
    g.Wq = p.OW + ((p.kw - 1) * p.dw) // p.sw + g.TW
    g.rowlen = p.sw * g.Wq
    g.rows = g.Hp + (g.RB - 1) * p.sh
    g.chan = g.rows * g.rowlen
    for j in range(p.kw):
        q = (j * p.dw) % p.sw
        g.tap_off[j] = q * g.Wq + (j * p.dw) // p.sw


cdef inline Py_ssize_t _tap_offset(const Conv2dParams* p, const DirectGeom* g, Py_ssize_t c,
                                   Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    """Where tap (channel c, kernel row i, kernel column j) of output pixel
    (0, 0) reads the padded input buffer."""
    return c * g.chan + i * p.dh * g.rowlen + g.tap_off[j]


cdef void _dw_tap_offsets(const Conv2dParams* p, const DirectGeom* g,
                          Py_ssize_t* toff) noexcept nogil:
    """toff[(c*kh + i)*kw + j] = _tap_offset(c, i, j): the weight gradients'
    tap order (dw's own layout)."""
    cdef Py_ssize_t c, i, j
    for c in range(p.C // p.groups):
        for i in range(p.kh):
            for j in range(p.kw):
                toff[(c * p.kh + i) * p.kw + j] = _tap_offset(p, g, c, i, j)


cdef inline Py_ssize_t _block_channels(const DirectGeom* g, Py_ssize_t left) noexcept nogil:
    """Output channels of the next forward block when `left` remain."""
    if left >= g.KB:
        return g.KB
    return 4 if left >= 4 else (2 if left >= 2 else 1)


cdef void _pad_phases(const Conv2dParams* p, const DirectGeom* g,
                      const floating* x, Py_ssize_t nch, floating* xq) noexcept nogil:
    """xq[c][r][q][s] = x[c, r - ph, s*sw + q - pw], zero outside x."""
    cdef Py_ssize_t c, r, q, s, ih, lo, hi, sw = p.sw
    cdef floating* dst
    cdef const floating* src
    for c in range(nch):
        for r in range(g.rows):
            ih = r - p.ph
            for q in range(sw):
                dst = xq + c * g.chan + r * g.rowlen + q * g.Wq
                if ih < 0 or ih >= p.H:
                    memset(dst, 0, g.Wq * sizeof(floating))
                    continue
                _valid_range(q - p.pw, sw, p.W, g.Wq, &lo, &hi)
                for s in range(lo):
                    dst[s] = 0
                src = x + (c * p.H + ih) * p.W + lo * sw + q - p.pw
                if sw == 1:
                    memcpy(dst + lo, src, (hi - lo) * sizeof(floating))
                else:
                    for s in range(hi - lo):
                        dst[lo + s] = src[s * sw]
                for s in range(hi, g.Wq):
                    dst[s] = 0


cdef void _pack_weights(const Conv2dParams* p, const DirectGeom* g,
                        const floating* w, floating* wpk) noexcept nogil:
    """Per block of kb channels from k0: wpk[k0*R + t*kb + k] = w[k0 + k, c, i, j]
    with t = (i*Cg + c)*kw + j, the tap order of the offset table (kernel
    rows outermost, so a row band that skips padding rows skips a run of
    taps); k0 counts across groups."""
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t R = Cg * p.kh * p.kw
    cdef Py_ssize_t grp, k0, kb, k, c, i, j, t
    cdef floating* dst
    for grp in range(p.groups):
        k0 = grp * Kg
        while k0 < (grp + 1) * Kg:
            kb = _block_channels(g, (grp + 1) * Kg - k0)
            dst = wpk + k0 * R
            for i in range(p.kh):
                for c in range(Cg):
                    for j in range(p.kw):
                        t = (i * Cg + c) * p.kw + j
                        for k in range(kb):
                            dst[t * kb + k] = w[(k0 + k) * R + (c * p.kh + i) * p.kw + j]
            k0 += kb


cdef bint _tiles_built(const DirectGeom* g, Py_ssize_t Kg, floating* dummy) noexcept nogil:
    """Whether a tile kernel exists for every channel block of a group."""
    cdef Py_ssize_t k0 = 0, kb
    while k0 < Kg:
        kb = _block_channels(g, Kg - k0)
        if floating is float:
            if engine_conv_fwd_f32_get(g.RB, g.NV, kb) == NULL:
                return False
        else:
            if engine_conv_fwd_f64_get(g.RB, g.NV, kb) == NULL:
                return False
        k0 += kb
    return True


cdef inline void _fwd_tile(const DirectGeom* g, Py_ssize_t kb, const floating* x,
                           Py_ssize_t row_step, Py_ssize_t ntaps, const Py_ssize_t* off,
                           const floating* w, const floating* bias, floating* y,
                           Py_ssize_t y_row, Py_ssize_t y_chan) noexcept nogil:
    if floating is float:
        engine_conv_fwd_f32_get(g.RB, g.NV, kb)(x, row_step, ntaps, off, w, bias, y, y_row, y_chan)
    else:
        engine_conv_fwd_f64_get(g.RB, g.NV, kb)(x, row_step, ntaps, off, w, bias, y, y_row, y_chan)


cdef inline Py_ssize_t _tile_start(Py_ssize_t i, Py_ssize_t step, Py_ssize_t size) noexcept nogil:
    """Start of tile i of `step` along `size`: the last tile ends at `size`
    (overlapping the one before), so every tile is whole."""
    return min(i * step, size - step)


cdef void _band_taps(const Conv2dParams* p, Py_ssize_t oh0, Py_ssize_t nr,
                     Py_ssize_t* t0, Py_ssize_t* ntaps) noexcept nogil:
    """The run of taps a band of nr output rows from oh0 needs: kernel rows
    whose input rows are all padding contribute zeros and are skipped (half
    the work of LeNet's 5x5 grad-input, a forward over dy padded by 4)."""
    cdef Py_ssize_t i, r, ih, lo = p.kh, hi = -1
    for i in range(p.kh):
        for r in range(nr):
            ih = (oh0 + r) * p.sh + i * p.dh - p.ph
            if 0 <= ih < p.H:
                lo = min(lo, i)
                hi = max(hi, i)
    if hi < lo:
        t0[0] = 0
        ntaps[0] = 0
        return
    t0[0] = lo * (p.C // p.groups) * p.kw
    ntaps[0] = (hi - lo + 1) * (p.C // p.groups) * p.kw


cdef void _direct_forward_item(const Conv2dParams* p, const DirectGeom* g,
                               const floating* x, const floating* wpk,
                               const Py_ssize_t* off, const floating* bias,
                               floating* y, Py_ssize_t n, Py_ssize_t grp,
                               floating* xq) noexcept nogil:
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t R = Cg * p.kh * p.kw, OHW = p.OH * p.OW
    cdef Py_ssize_t k0, kb, oh0, ow0, r, k, nr, nt, i, j, t0, ntaps
    cdef Py_ssize_t nbands = ceil_div(p.OH, g.RB), ncols = ceil_div(p.OW, g.TW)
    # Tiles are stored straight into y, whole: the last row band / column
    # tile is shifted back to end at the output's edge (recomputing a few
    # pixels, with the same bits). Outputs smaller than one tile go through
    # a buffer.
    cdef bint whole = p.OH >= g.RB and p.OW >= g.TW
    cdef floating tile[_TILE_MAX]
    cdef floating* yk
    _pad_phases(p, g, x + (n * p.C + grp * Cg) * p.H * p.W, Cg, xq)
    # Row bands outside, channel blocks inside: a band's padded input rows
    # and all the packed weights stay in L2 (a 64-channel 32x32 padded image
    # alone nearly fills it).
    for i in range(nbands):
        oh0 = _tile_start(i, g.RB, p.OH) if whole else i * g.RB
        nr = min(g.RB, p.OH - oh0)
        _band_taps(p, oh0, nr, &t0, &ntaps)
        k0 = grp * Kg
        while k0 < (grp + 1) * Kg:
            kb = _block_channels(g, (grp + 1) * Kg - k0)
            yk = y + (n * p.K + k0) * OHW
            for j in range(ncols):
                if whole:
                    ow0 = _tile_start(j, g.TW, p.OW)
                    _fwd_tile(g, kb, xq + oh0 * p.sh * g.rowlen + ow0, p.sh * g.rowlen,
                              ntaps, off + t0, wpk + k0 * R + t0 * kb, bias + k0,
                              yk + oh0 * p.OW + ow0, p.OW, OHW)
                    continue
                ow0 = j * g.TW
                nt = min(g.TW, p.OW - ow0)
                _fwd_tile(g, kb, xq + oh0 * p.sh * g.rowlen + ow0, p.sh * g.rowlen,
                          ntaps, off + t0, wpk + k0 * R + t0 * kb, bias + k0, tile,
                          kb * g.TW, g.TW)
                for k in range(kb):
                    for r in range(nr):
                        memcpy(yk + k * OHW + (oh0 + r) * p.OW + ow0,
                               tile + (r * kb + k) * g.TW, nt * sizeof(floating))
            k0 += kb


cdef int _direct_conv(const Conv2dParams* p, const floating* x, const floating* w,
                      const floating* b, floating* y, bint relu=False) noexcept nogil:
    """y = direct conv(x, w) + b for already checked parameters."""
    cdef DirectGeom g
    cdef Py_ssize_t vl = _vl(y), it, c, i, j
    cdef Py_ssize_t Cg = p.C // p.groups, R = Cg * p.kh * p.kw
    cdef Py_ssize_t items = p.N * p.groups, per
    cdef int nthreads = _team(p.N * p.groups, _conv_flops(p))
    cdef floating* ws
    cdef floating* wpk
    cdef Py_ssize_t* off
    cdef floating* zeros = NULL
    cdef unsigned int old
    if p.kw > _MAX_TAPS_ROW:
        return ENGINE_EBADARG
    _direct_geom(p, vl, &g)
    if not _tiles_built(&g, p.K // p.groups, y):
        return ENGINE_EBADARG
    per = Cg * g.chan
    if items < nthreads:
        nthreads = <int>items
    ws = <floating*>malloc(nthreads * per * sizeof(floating))
    wpk = <floating*>malloc(p.K * R * sizeof(floating))
    off = <Py_ssize_t*>malloc(R * sizeof(Py_ssize_t))
    if ws == NULL or wpk == NULL or off == NULL:
        free(ws)
        free(wpk)
        free(off)
        return ENGINE_ENOMEM
    _pack_weights(p, &g, w, wpk)
    for c in range(Cg):
        for i in range(p.kh):
            for j in range(p.kw):
                off[(i * Cg + c) * p.kw + j] = _tap_offset(p, &g, c, i, j)
    if b == NULL:       # the tiles always add a bias
        zeros = <floating*>calloc(p.K, sizeof(floating))
        if zeros == NULL:
            free(ws)
            free(wpk)
            free(off)
            return ENGINE_ENOMEM
        b = zeros
    with parallel(num_threads=nthreads):
        old = engine_ftz_enter()
        for it in prange(items, schedule='static'):
            _direct_forward_item(p, &g, x, wpk, off, b, y, it // p.groups, it % p.groups,
                                 ws + threadid() * per)
            if relu:
                relu_span(y + it * (p.K // p.groups) * p.OH * p.OW,
                          y + it * (p.K // p.groups) * p.OH * p.OW, (p.K // p.groups) * p.OH * p.OW)
        engine_ftz_exit(old)
    free(zeros)
    free(off)
    free(wpk)
    free(ws)
    return ENGINE_OK


cdef int conv2d_direct_forward(Conv2dParams p, const floating* x,
                               const floating* w, const floating* b,
                               floating* y) noexcept nogil:
    return conv2d_forward_relu(p, CONV_ALGO_DIRECT, x, w, b, y, False)


cdef inline Py_ssize_t _padded_rows(const Conv2dParams* p) noexcept nogil:
    return (p.OH - 1) * p.sh + (p.kh - 1) * p.dh + 1


cdef inline Py_ssize_t _padded_cols(const Conv2dParams* p) noexcept nogil:
    return (p.OW - 1) * p.sw + (p.kw - 1) * p.dw + 1


cdef void _pad_planes(const Conv2dParams* p, const floating* x, Py_ssize_t nch,
                      floating* xp) noexcept nogil:
    """xp[c, r, s] = x[c, r - ph, s - pw], zero outside x."""
    cdef Py_ssize_t Hp = _padded_rows(p), Wp = _padded_cols(p)
    cdef Py_ssize_t c, r, ih, ncopy
    cdef floating* dst
    # Columns of x that land inside the padded row.
    ncopy = Wp - p.pw
    if ncopy > p.W:
        ncopy = p.W
    if ncopy < 0:
        ncopy = 0
    for c in range(nch):
        for r in range(Hp):
            dst = xp + (c * Hp + r) * Wp
            ih = r - p.ph
            if ih < 0 or ih >= p.H or ncopy == 0:
                memset(dst, 0, Wp * sizeof(floating))
            else:
                memset(dst, 0, p.pw * sizeof(floating))
                memcpy(dst + p.pw, x + (c * p.H + ih) * p.W, ncopy * sizeof(floating))
                memset(dst + p.pw + ncopy, 0, (Wp - p.pw - ncopy) * sizeof(floating))


cdef void _crop_planes(const Conv2dParams* p, const floating* xp, Py_ssize_t nch,
                       floating* x) noexcept nogil:
    """x[c, ih, iw] = xp[c, ih + ph, iw + pw] (zero where xp does not reach)."""
    cdef Py_ssize_t Hp = _padded_rows(p), Wp = _padded_cols(p)
    cdef Py_ssize_t c, ih, r, ncopy
    cdef floating* dst
    ncopy = Wp - p.pw
    if ncopy > p.W:
        ncopy = p.W
    if ncopy < 0:
        ncopy = 0
    for c in range(nch):
        for ih in range(p.H):
            dst = x + (c * p.H + ih) * p.W
            r = ih + p.ph
            if r >= Hp or ncopy == 0:
                memset(dst, 0, p.W * sizeof(floating))
            else:
                memcpy(dst, xp + (c * Hp + r) * Wp + p.pw, ncopy * sizeof(floating))
                memset(dst + ncopy, 0, (p.W - ncopy) * sizeof(floating))



cdef void _direct_backward_input_item(const Conv2dParams* p, const floating* w,
                                      const floating* dy, floating* dx,
                                      Py_ssize_t n, Py_ssize_t g,
                                      floating* dxp) noexcept nogil:
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t Hp = _padded_rows(p), Wp = _padded_cols(p), plane = Hp * Wp
    cdef Py_ssize_t OW = p.OW, sw = p.sw, k, c, i, j, oh, ow, kk
    cdef const floating* dyr
    cdef floating* xr
    cdef floating wv
    memset(dxp, 0, Cg * plane * sizeof(floating))
    for c in range(Cg):
        for k in range(Kg):
            kk = g * Kg + k
            for oh in range(p.OH):
                dyr = dy + ((n * p.K + kk) * p.OH + oh) * OW
                for i in range(p.kh):
                    xr = dxp + c * plane + (oh * p.sh + i * p.dh) * Wp
                    for j in range(p.kw):
                        wv = w[((kk * Cg + c) * p.kh + i) * p.kw + j]
                        if sw == 1:
                            for ow in range(OW):
                                xr[ow + j * p.dw] += wv * dyr[ow]
                        else:
                            for ow in range(OW):
                                xr[ow * sw + j * p.dw] += wv * dyr[ow]
    _crop_planes(p, dxp, Cg, dx + (n * p.C + g * Cg) * p.H * p.W)




cdef floating* _dx_forward_weights(const Conv2dParams* p, const floating* w,
                                   Conv2dParams* q) noexcept nogil:
    """For a stride-1 grad-input (_direct_dx_is_forward): dx is the forward
    convolution q of dy (padded by the kernel extent minus ph, pw) with the
    flipped, group-transposed weights, returned in a new buffer (NULL when
    out of memory; the caller frees it)."""
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, grp, c, k, i, j
    cdef floating* w2 = <floating*>malloc(p.C * Kg * p.kh * p.kw * sizeof(floating))
    q[0] = p[0]
    q.C, q.H, q.W, q.K = p.K, p.OH, p.OW, p.C
    q.ph = p.dh * (p.kh - 1) - p.ph
    q.pw = p.dw * (p.kw - 1) - p.pw
    q.OH, q.OW = p.H, p.W
    if w2 == NULL:
        return NULL
    for grp in range(p.groups):
        for c in range(Cg):
            for k in range(Kg):
                for i in range(p.kh):
                    for j in range(p.kw):
                        w2[(((grp * Cg + c) * Kg + k) * p.kh + i) * p.kw + j] = w[
                            (((grp * Kg + k) * Cg + c) * p.kh + p.kh - 1 - i) * p.kw
                            + p.kw - 1 - j]
    return w2


cdef int conv2d_direct_backward_input(Conv2dParams p, const floating* w,
                                      const floating* dy,
                                      floating* dx) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    cdef Py_ssize_t it, per
    cdef Conv2dParams q
    cdef floating* w2
    cdef floating* ws
    cdef int nthreads = _team(p.N * p.groups, _conv_flops(&p))
    cdef unsigned int old
    if _direct_dx_is_forward(&p):
        w2 = _dx_forward_weights(&p, w, &q)
        if w2 == NULL:
            return ENGINE_ENOMEM
        err = _direct_conv(&q, dy, w2, <const floating*>NULL, dx)
        free(w2)
        return err
    # Strided: scatter each output row's taps into a padded dx plane.
    per = (p.C // p.groups) * _padded_rows(&p) * _padded_cols(&p)
    if p.N * p.groups < nthreads:
        nthreads = <int>(p.N * p.groups)
    ws = <floating*>malloc(nthreads * per * sizeof(floating))
    if ws == NULL:
        return ENGINE_ENOMEM
    with parallel(num_threads=nthreads):
        old = engine_ftz_enter()
        for it in prange(p.N * p.groups, schedule='static'):
            _direct_backward_input_item(&p, w, dy, dx, it // p.groups,
                                        it % p.groups, ws + threadid() * per)
        engine_ftz_exit(old)
    free(ws)
    return ENGINE_OK


cdef void _dw_tile(Py_ssize_t KB, const floating* dy, Py_ssize_t dy_chan_step,
                   Py_ssize_t dy_row_step, const floating* x, Py_ssize_t x_row_step,
                   const Py_ssize_t* toff, Py_ssize_t rows, Py_ssize_t nvec,
                   floating* out, Py_ssize_t out_step) noexcept nogil:
    if floating is float:
        if KB == 2:
            engine_conv_dw_f32_k2t6(dy, dy_chan_step, dy_row_step, x, x_row_step, toff, rows, nvec, out, out_step)
        else:
            engine_conv_dw_f32_k1t8(dy, dy_chan_step, dy_row_step, x, x_row_step, toff, rows, nvec, out, out_step)
    else:
        if KB == 2:
            engine_conv_dw_f64_k2t6(dy, dy_chan_step, dy_row_step, x, x_row_step, toff, rows, nvec, out, out_step)
        else:
            engine_conv_dw_f64_k1t8(dy, dy_chan_step, dy_row_step, x, x_row_step, toff, rows, nvec, out, out_step)


cdef inline Py_ssize_t _dw_channels(Py_ssize_t Kg) noexcept nogil:
    """Output channels per weight-gradient tile (the other operand: taps)."""
    return 2 if Kg >= 2 else 1


cdef void _direct_backward_weight_item(const Conv2dParams* p, const DirectGeom* g,
                                       const floating* x, const floating* dy,
                                       floating* dw_part, const Py_ssize_t* toff_all,
                                       Py_ssize_t n, Py_ssize_t grp,
                                       floating* xq, floating* dyq) noexcept nogil:
    """dw_vpart[k, t, 0:VL] += lane-wise sums of dy[n, k] * x[n] shifted by tap t.

    Taps t = (c, i, j) are flattened (toff_all: their offsets, padded with
    dummy taps to a multiple of TB). Channel blocks run outside tap blocks:
    a block's dy rows and its lane partials stay in L1 / L2 while the taps
    stream the padded input (2 channels x 6 taps: 12 accumulators, 8 loads
    per 12 FMAs; 3x3 64->64 32x32 ran 50 GFLOPS this way before ENGINE_VPIN,
    72 with it, 43 with the loops swapped; sgemm on the im2col product: 69).
    """
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t R = Cg * p.kh * p.kw, vl = _vl(xq)
    cdef Py_ssize_t OWp = ceil_div(p.OW, vl) * vl, plane = p.OH * OWp
    cdef Py_ssize_t KB = _dw_channels(Kg), TB = 6 if KB == 2 else 8
    cdef Py_ssize_t k, kb, t, t0, oh, nk, nt, l
    cdef floating out[_DW_TILE_MAX]
    cdef floating* dst
    _pad_phases(p, g, x + (n * p.C + grp * Cg) * p.H * p.W, Cg, xq)
    # dy rows padded with zeros to whole vectors, plus KB - 1 zero channels.
    if OWp == p.OW:
        memcpy(dyq, dy + (n * p.K + grp * Kg) * plane, Kg * plane * sizeof(floating))
        memset(dyq + Kg * plane, 0, (KB - 1) * plane * sizeof(floating))
    else:
        memset(dyq, 0, (Kg + KB - 1) * plane * sizeof(floating))
        for k in range(Kg):
            for oh in range(p.OH):
                memcpy(dyq + k * plane + oh * OWp,
                       dy + ((n * p.K + grp * Kg + k) * p.OH + oh) * p.OW,
                       p.OW * sizeof(floating))
    kb = 0
    while kb < Kg:
        nk = min(KB, Kg - kb)
        t0 = 0
        while t0 < R:
            nt = min(TB, R - t0)
            dst = dw_part + ((grp * Kg + kb) * R + t0) * vl
            if nk == KB and nt == TB:   # a whole tile: straight into the partials
                _dw_tile(KB, dyq + kb * plane, plane, OWp, xq, p.sh * g.rowlen,
                         toff_all + t0, p.OH, OWp // vl, dst, R * vl)
            else:
                memset(out, 0, KB * TB * vl * sizeof(floating))
                _dw_tile(KB, dyq + kb * plane, plane, OWp, xq, p.sh * g.rowlen,
                         toff_all + t0, p.OH, OWp // vl, out, TB * vl)
                for k in range(nk):
                    for t in range(nt):
                        for l in range(vl):
                            dst[k * R * vl + t * vl + l] += out[(k * TB + t) * vl + l]
            t0 += TB
        kb += KB


cdef inline bint _dw_channel_lanes(const Conv2dParams* p) noexcept nogil:
    """Whether the direct weight gradient puts output channels in the lanes
    (the same choice for both dtypes): Kg a multiple of the float32 vector,
    more than 32 taps, and a transposed dy (OH*OW x Kg) that stays in L2.
    1 thread on Zen 3, ms channel lanes / lane partials / im2col: LeNet c2
    (6->16 5x5 10x10) 0.50 / 1.09 / 1.23, 3x3 32->32 16x16 3.0 / 4.8 / 5.2,
    64->64 8x8 2.5 / 5.7 / 3.6, 64->64 16x16 10.0 / 12.5 / 11.5, 16->32
    stride 2 to 16x16 1.7 / 2.2 / 2.0, 16->16 32x32 3.4 / 3.8 / 5.6; but
    64->128 32x32 102 / 93 / 69 (dy 512 KB), 256->256 4x4 35 / 209 / 24,
    3->16 32x32 1.2 / 0.9 / 1.7, 1x1 stride 2 0.66 / 0.85 / 0.35."""
    cdef Py_ssize_t Kg = p.K // p.groups, P = p.OH * p.OW
    return (Kg % ENGINE_VL_F32 == 0 and (p.C // p.groups) * p.kh * p.kw > 32
            and p.kh * p.kw > 1 and P >= 32 and P * Kg <= 32768
            and p.kw <= _MAX_TAPS_ROW)


cdef void _dwk_tile(Py_ssize_t KV, const floating* x, Py_ssize_t x_row, const Py_ssize_t* off,
                    const floating* dyT, Py_ssize_t ks, Py_ssize_t rows, Py_ssize_t cols,
                    floating* out, Py_ssize_t out_step) noexcept nogil:
    if floating is float:
        if KV == 2:
            engine_conv_dwk_f32_t6v2(x, x_row, off, dyT, ks, rows, cols, out, out_step)
        else:
            engine_conv_dwk_f32_t12v1(x, x_row, off, dyT, ks, rows, cols, out, out_step)
    else:
        if KV == 2:
            engine_conv_dwk_f64_t6v2(x, x_row, off, dyT, ks, rows, cols, out, out_step)
        else:
            engine_conv_dwk_f64_t12v1(x, x_row, off, dyT, ks, rows, cols, out, out_step)


cdef void _dwk_item(const Conv2dParams* p, const DirectGeom* g, const floating* x,
                    const floating* dy, floating* part, const Py_ssize_t* toff,
                    Py_ssize_t n, Py_ssize_t grp, floating* xq, floating* dyT) noexcept nogil:
    """part[(grp*(R + 12) + t)*Kg + k] += sum over pixels of dy[n, grp*Kg + k]
    * x[n] shifted by tap t (the transposed gradient, im2col's layout; taps
    padded with dummies)."""
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, vl = _vl(xq)
    cdef Py_ssize_t R = Cg * p.kh * p.kw, P = p.OH * p.OW, KV, TB, k0, t0, k, q
    cdef const floating* src
    _pad_phases(p, g, x + (n * p.C + grp * Cg) * p.H * p.W, Cg, xq)
    for k in range(Kg):          # dyT[q][k] = dy[n, grp*Kg + k][q]
        src = dy + (n * p.K + grp * Kg + k) * P
        for q in range(P):
            dyT[q * Kg + k] = src[q]
    KV = 2 if Kg % (2 * vl) == 0 else 1
    TB = 6 if KV == 2 else 12
    k0 = 0
    while k0 < Kg:
        t0 = 0
        while t0 < R:
            _dwk_tile(KV, xq, p.sh * g.rowlen, toff + t0, dyT + k0, Kg, p.OH, p.OW,
                      part + (grp * (R + 12) + t0) * Kg + k0, Kg)
            t0 += TB
        k0 += KV * vl


cdef int _direct_weight_grad_channel_lanes(const Conv2dParams* p, const floating* x,
                                           const floating* dy, floating* dw,
                                           bint accumulate) noexcept nogil:
    """dw (+)= the direct weight gradient with output channels in the lanes
    (_dw_channel_lanes), per chunk of images, chunks summed in order."""
    cdef DirectGeom g
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, vl = _vl(dw)
    cdef Py_ssize_t R = Cg * p.kh * p.kw, ntoff = R + 12, psize = ntoff * p.K
    cdef Py_ssize_t nchunks = work_chunks(p.N, _conv_flops(p), _DW_CHUNK_FLOPS, _DW_MAX_CHUNKS)
    cdef int nthreads = _team(nchunks, _conv_flops(p))
    cdef Py_ssize_t per, c, n, grp
    cdef floating* ws
    cdef floating* parts
    cdef floating* mine
    cdef Py_ssize_t* toff
    cdef unsigned int old
    _direct_geom(p, vl, &g)
    per = Cg * g.chan + p.OH * p.OW * Kg
    ws = <floating*>malloc(nthreads * per * sizeof(floating))
    parts = <floating*>calloc(nchunks * psize, sizeof(floating))
    toff = <Py_ssize_t*>calloc(ntoff, sizeof(Py_ssize_t))    # dummy taps: offset 0
    if ws == NULL or parts == NULL or toff == NULL:
        free(ws)
        free(parts)
        free(toff)
        return ENGINE_ENOMEM
    _dw_tap_offsets(p, &g, toff)
    with parallel(num_threads=nthreads):
        old = engine_ftz_enter()
        mine = ws + threadid() * per
        for c in prange(nchunks, schedule='static'):
            for n in range(c * p.N // nchunks, (c + 1) * p.N // nchunks):
                for grp in range(p.groups):
                    _dwk_item(p, &g, x, dy, parts + c * psize, toff, n, grp, mine,
                              mine + Cg * g.chan)
        engine_ftz_exit(old)
    _reduce_transposed_partials(p, parts, nchunks, ntoff, dw, accumulate)
    free(toff)
    free(parts)
    free(ws)
    return ENGINE_OK


cdef int conv2d_direct_backward_weight(Conv2dParams p, const floating* x,
                                       const floating* dy, floating* dw,
                                       floating* db, bint accumulate) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    if p.kw > _MAX_TAPS_ROW:
        return ENGINE_EBADARG
    if _dw_channel_lanes(&p):
        err = _direct_weight_grad_channel_lanes(&p, x, dy, dw, accumulate)
        if err == ENGINE_OK and db != NULL:
            _bias_grad(&p, dy, db, accumulate)
        return err
    cdef DirectGeom g
    cdef Py_ssize_t vl = _vl(dw)
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups
    cdef Py_ssize_t wsize = p.K * Cg * p.kh * p.kw, c, n, grp, i, l
    cdef floating s
    cdef Py_ssize_t dyq_size = (Kg + 3) * p.OH * ceil_div(p.OW, vl) * vl, per
    cdef double flops = 2.0 * p.N * wsize * p.OH * p.OW
    cdef Py_ssize_t nchunks = work_chunks(p.N, flops, _DW_CHUNK_FLOPS, _DW_MAX_CHUNKS)
    cdef int nthreads = _team(p.N * p.groups, _conv_flops(&p))
    cdef Py_ssize_t R = Cg * p.kh * p.kw, ntoff = R + 8, t, j
    cdef floating* ws
    cdef floating* parts
    cdef floating* mine
    cdef Py_ssize_t* toff
    cdef unsigned int old
    _direct_geom(&p, vl, &g)
    per = Cg * g.chan + dyq_size
    if nchunks < nthreads:
        nthreads = <int>nchunks
    ws = <floating*>malloc(nthreads * per * sizeof(floating))
    # Per chunk: one vector of lane partials per weight.
    parts = <floating*>malloc(nchunks * wsize * vl * sizeof(floating))
    # Offsets of the flattened taps, then dummy taps (offset 0, results
    # dropped) up to a whole tile of 6 or 8.
    toff = <Py_ssize_t*>malloc(ntoff * sizeof(Py_ssize_t))
    if ws == NULL or parts == NULL or toff == NULL:
        free(ws)
        free(parts)
        free(toff)
        return ENGINE_ENOMEM
    for t in range(ntoff):
        toff[t] = 0
    _dw_tap_offsets(&p, &g, toff)
    memset(parts, 0, nchunks * wsize * vl * sizeof(floating))
    with parallel(num_threads=nthreads):
        old = engine_ftz_enter()
        mine = ws + threadid() * per
        for c in prange(nchunks, schedule='static'):
            for n in range(c * p.N // nchunks, (c + 1) * p.N // nchunks):
                for grp in range(p.groups):
                    _direct_backward_weight_item(&p, &g, x, dy, parts + c * wsize * vl,
                                                 toff, n, grp, mine, mine + Cg * g.chan)
            # Sum the lanes in order: the chunk's partial, compacted in place.
            for i in range(wsize):
                s = 0
                for l in range(vl):
                    s = s + parts[(c * wsize + i) * vl + l]
                parts[c * wsize * vl + i] = s
        engine_ftz_exit(old)
    for c in range(1, nchunks):     # compact: chunk c's sums to parts[c * wsize]
        memmove(parts + c * wsize, parts + c * wsize * vl, wsize * sizeof(floating))
    _reduce_partials(parts, nchunks, wsize, dw, accumulate)
    free(toff)
    free(parts)
    free(ws)
    if db != NULL:
        _bias_grad(&p, dy, db, accumulate)
    return ENGINE_OK


# -- Winograd F(2x2, 3x3) -----------------------------------------------------
# A 3x3 stride-1 convolution computed per 2x2 output tile from the 4x4 input
# patch under it (Lavin & Gray 2015): V = B^T d B per (channel, tile), U =
# G g G^T per (out, in channel), M[xi] = U[xi] V[xi] for the 16 points xi
# (16 GEMMs over the input channels), y = A^T M A + bias. 16 multiplies per
# (tile, channel pair) instead of 36. The GEMMs run on the direct forward's
# tile kernels: a GEMM is a 1x1 convolution whose taps are input channels.
# Tiles go in blocks of whole tile rows (which may span images); one thread
# transforms a block's input, runs its 16 GEMMs and transforms its output,
# so the results do not depend on the thread count.

cdef extern from *:
    """
    /* Even / odd columns of one zero-padded input row: E[s] = xp[2s], O[s] =
       xp[2s + 1] for s <= nt, xp[i] = r[i - pw] inside the row's W columns
       (r NULL: a row of padding). Split once per row, every 1-D transform
       below is a contiguous (vectorisable) loop. */
    #define ENGINE_WINO_SPLIT(NAME, T)                                          \\
    static void NAME(const T* r, ptrdiff_t W, ptrdiff_t pw, ptrdiff_t nt,       \\
                     T* restrict E, T* restrict O)                              \\
    {                                                                           \\
        ptrdiff_t s, lo = (pw + 1) / 2, hi = pw + W - 2 >= 0 ? (pw + W - 2) / 2 + 1 : 0; \\
        if (hi > nt + 1) hi = nt + 1;                                           \\
        if (lo > hi) lo = hi;                                                   \\
        if (r == NULL) {                                                        \\
            for (s = 0; s <= nt; s++) E[s] = O[s] = 0;                          \\
            return;                                                             \\
        }                                                                       \\
        for (s = 0; s <= nt; s++) {                                             \\
            if (s == lo) s = hi;   /* the interior, below */                    \\
            if (s > nt) break;                                                  \\
            ptrdiff_t c0 = 2 * s - pw, c1 = c0 + 1;                             \\
            E[s] = (c0 >= 0 && c0 < W) ? r[c0] : 0;                             \\
            O[s] = (c1 >= 0 && c1 < W) ? r[c1] : 0;                             \\
        }                                                                       \\
        const T* restrict rr = r + 2 * lo - pw;                                 \\
        for (s = 0; s < hi - lo; s++) {                                         \\
            E[lo + s] = rr[2 * s];                                              \\
            O[lo + s] = rr[2 * s + 1];                                          \\
        }                                                                       \\
    }

    /* Input transform of one tile row of one channel: eo holds the split
       rows 2*ty - ph + a, a = 0..3, each [E | O] of 2*(nt + 1). Writes
       v[xi*vs + t] = (B^T d_t B)[xi] for the nt tiles t of the row, with
       B^T d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3): first down the rows
       (into q, 4 rows of [E | O]), then along them. */
    #define ENGINE_WINO_INPUT(NAME, T)                                          \\
    static void NAME(const T* restrict eo, ptrdiff_t nt, T* restrict q,         \\
                     T* restrict v, ptrdiff_t vs)                               \\
    {                                                                           \\
        ptrdiff_t n = 2 * (nt + 1);                                             \\
        const T* restrict d0 = eo;                                              \\
        const T* restrict d1 = eo + n;                                          \\
        const T* restrict d2 = eo + 2 * n;                                      \\
        const T* restrict d3 = eo + 3 * n;                                      \\
        T* restrict q0 = q;                                                     \\
        T* restrict q1 = q + n;                                                 \\
        T* restrict q2 = q + 2 * n;                                             \\
        T* restrict q3 = q + 3 * n;                                             \\
        for (ptrdiff_t s = 0; s < n; s++) {                                     \\
            q0[s] = d0[s] - d2[s];                                              \\
            q1[s] = d1[s] + d2[s];                                              \\
            q2[s] = d2[s] - d1[s];                                              \\
            q3[s] = d1[s] - d3[s];                                              \\
        }                                                                       \\
        for (int a = 0; a < 4; a++) {                                           \\
            const T* restrict E = q + a * n;                                    \\
            const T* restrict O = E + nt + 1;                                   \\
            T* restrict v0 = v + 4 * a * vs;                                    \\
            T* restrict v1 = v0 + vs;                                           \\
            T* restrict v2 = v1 + vs;                                           \\
            T* restrict v3 = v2 + vs;                                           \\
            for (ptrdiff_t t = 0; t < nt; t++) {                                \\
                v0[t] = E[t] - E[t + 1];                                        \\
                v1[t] = O[t] + E[t + 1];                                        \\
                v2[t] = E[t + 1] - O[t];                                        \\
                v3[t] = O[t] - O[t + 1];                                        \\
            }                                                                   \\
        }                                                                       \\
    }

    /* Output transform of one tile row of one output channel: m[xi*ms + t]
       holds M[xi] of tile t; o gets 4 rows of nt: the even and odd pixels
       of output row 2*ty, then of row 2*ty + 1, of A^T M A + bias with
       A^T = [1 1 1 0; 0 1 -1 -1]. */
    #define ENGINE_WINO_OUTPUT(NAME, T)                                         \\
    static void NAME(const T* restrict m, ptrdiff_t ms, ptrdiff_t nt, T bias,   \\
                     T* restrict o)                                             \\
    {                                                                           \\
        T* restrict o0 = o;                                                     \\
        T* restrict o1 = o + nt;                                                \\
        T* restrict o2 = o + 2 * nt;                                            \\
        T* restrict o3 = o + 3 * nt;                                            \\
        for (ptrdiff_t t = 0; t < nt; t++) {                                    \\
            T s0[4], s1[4];                                                     \\
            for (int b = 0; b < 4; b++) {                                       \\
                T m1 = m[(4 + b) * ms + t], m2 = m[(8 + b) * ms + t];           \\
                s0[b] = m[b * ms + t] + m1 + m2;                                \\
                s1[b] = m1 - m2 - m[(12 + b) * ms + t];                         \\
            }                                                                   \\
            o0[t] = s0[0] + s0[1] + s0[2] + bias;                               \\
            o1[t] = s0[1] - s0[2] - s0[3] + bias;                               \\
            o2[t] = s1[0] + s1[1] + s1[2] + bias;                               \\
            o3[t] = s1[1] - s1[2] - s1[3] + bias;                               \\
        }                                                                       \\
    }

    /* y[0:W] = even / odd pixels e, o interleaved. */
    #define ENGINE_WINO_MERGE(NAME, T)                                          \\
    static void NAME(const T* restrict e, const T* restrict o, ptrdiff_t W,     \\
                     T* restrict y)                                             \\
    {                                                                           \\
        for (ptrdiff_t t = 0; t < W / 2; t++) {                                 \\
            y[2 * t] = e[t];                                                    \\
            y[2 * t + 1] = o[t];                                                \\
        }                                                                       \\
        if (W % 2) y[W - 1] = e[W / 2];                                         \\
    }
    /* Weight gradient: dy transform of one tile row of one output channel.
       r0 / r1 hold dy rows 2*ty and 2*ty + 1 split as [E | O] (nt + 1 each,
       zeros past the edge); w[xi*ws + t*ts] = (A dy_t A^T)[xi], the gradient
       of M[xi] (A = A^T's transpose: rows (1 0), (1 1), (1 -1), (0 -1)). */
    #define ENGINE_WINO_DY(NAME, T)                                             \\
    static void NAME(const T* restrict r0, const T* restrict r1, ptrdiff_t nt,  \\
                     T* restrict w, ptrdiff_t ws, ptrdiff_t ts)                 \\
    {                                                                           \\
        const T* restrict e0 = r0;                                              \\
        const T* restrict o0 = r0 + nt + 1;                                     \\
        const T* restrict e1 = r1;                                              \\
        const T* restrict o1 = r1 + nt + 1;                                     \\
        for (ptrdiff_t t = 0; t < nt; t++) {                                    \\
            T e[4] = {e0[t], e0[t] + e1[t], e0[t] - e1[t], -e1[t]};             \\
            T o[4] = {o0[t], o0[t] + o1[t], o0[t] - o1[t], -o1[t]};             \\
            for (int a = 0; a < 4; a++) {                                       \\
                w[(4 * a) * ws + t * ts] = e[a];                                \\
                w[(4 * a + 1) * ws + t * ts] = e[a] + o[a];                     \\
                w[(4 * a + 2) * ws + t * ts] = e[a] - o[a];                     \\
                w[(4 * a + 3) * ws + t * ts] = -o[a];                           \\
            }                                                                   \\
        }                                                                       \\
    }
    ENGINE_WINO_SPLIT(engine_wino_split_f32, float)
    ENGINE_WINO_SPLIT(engine_wino_split_f64, double)
    ENGINE_WINO_INPUT(engine_wino_input_f32, float)
    ENGINE_WINO_INPUT(engine_wino_input_f64, double)
    ENGINE_WINO_OUTPUT(engine_wino_output_f32, float)
    ENGINE_WINO_OUTPUT(engine_wino_output_f64, double)
    ENGINE_WINO_MERGE(engine_wino_merge_f32, float)
    ENGINE_WINO_MERGE(engine_wino_merge_f64, double)
    ENGINE_WINO_DY(engine_wino_dy_f32, float)
    ENGINE_WINO_DY(engine_wino_dy_f64, double)
    """
    void engine_wino_split_f32(const float* r, Py_ssize_t W, Py_ssize_t pw, Py_ssize_t nt,
                               float* E, float* O) noexcept nogil
    void engine_wino_split_f64(const double* r, Py_ssize_t W, Py_ssize_t pw, Py_ssize_t nt,
                               double* E, double* O) noexcept nogil
    void engine_wino_input_f32(const float* eo, Py_ssize_t nt, float* q, float* v,
                               Py_ssize_t vs) noexcept nogil
    void engine_wino_input_f64(const double* eo, Py_ssize_t nt, double* q, double* v,
                               Py_ssize_t vs) noexcept nogil
    void engine_wino_output_f32(const float* m, Py_ssize_t ms, Py_ssize_t nt, float bias,
                                float* o) noexcept nogil
    void engine_wino_output_f64(const double* m, Py_ssize_t ms, Py_ssize_t nt, double bias,
                                double* o) noexcept nogil
    void engine_wino_merge_f32(const float* e, const float* o, Py_ssize_t W,
                               float* y) noexcept nogil
    void engine_wino_merge_f64(const double* e, const double* o, Py_ssize_t W,
                               double* y) noexcept nogil
    void engine_wino_dy_f32(const float* r0, const float* r1, Py_ssize_t nt, float* w,
                            Py_ssize_t ws, Py_ssize_t ts) noexcept nogil
    void engine_wino_dy_f64(const double* r0, const double* r1, Py_ssize_t nt, double* w,
                            Py_ssize_t ws, Py_ssize_t ts) noexcept nogil


cdef enum:
    # Input channels x tiles per block: a block's V[xi] is then 16 KB of
    # float32 and stays in L1 while the GEMM tiles sweep its output channels.
    _WINO_BLOCK_ELEMS = 4096
    # Tiles per weight-gradient block, the sum each tile call runs over (with
    # an earlier kernel, 3x3 64->64 32x32 dW at 1 thread: 64 tiles 34.7 ms,
    # 256 28.3, 512 29.3, 1024 29.6).
    _WINO_DW_TILES = 256
    _WINO_DW_MAX_WEIGHTS = 65536   # K * Cg limit of the Winograd weight gradient


cdef struct WinoGeom:
    Py_ssize_t TH, TWt      # tile rows and tile columns per image
    Py_ssize_t rows         # tile rows per block (a block may span images)
    Py_ssize_t T            # tiles per block, padded to the GEMM tile width
    Py_ssize_t nblocks      # blocks over the batch's N * TH tile rows
    Py_ssize_t GW           # GEMM tile width: 2 vectors of tiles
    Py_ssize_t vs, ms       # strides of V[xi] and M[xi], padded


cdef inline bint _winograd_fits(const Conv2dParams* p) noexcept nogil:
    """3x3, stride 1, dilation 1: the shapes F(2x2, 3x3) computes."""
    return (p.kh == 3 and p.kw == 3 and p.sh == 1 and p.sw == 1
            and p.dh == 1 and p.dw == 1)


cdef void _winograd_geom(const Conv2dParams* p, Py_ssize_t vl, Py_ssize_t tiles,
                         Py_ssize_t mcols, WinoGeom* g) noexcept nogil:
    """Blocks of about `tiles` tiles (whole tile rows); M[xi] (the forward's
    GEMM output, the weight gradient's dy transform) holds mcols x T."""
    cdef Py_ssize_t Cg = p.C // p.groups
    g.TH = ceil_div(p.OH, 2)
    g.TWt = ceil_div(p.OW, 2)
    g.GW = 2 * vl
    g.rows = min(max(<Py_ssize_t>1, tiles // g.TWt), p.N * g.TH)
    g.T = ceil_div(g.rows * g.TWt, g.GW) * g.GW
    g.nblocks = ceil_div(p.N * g.TH, g.rows)
    # V[xi] and M[xi] are 16 KB apart for 64 channels: unpadded, the 16
    # points of one tile fall in one L1 set and the transforms ran 2x slower.
    g.vs = Cg * g.T + 32
    g.ms = mcols * g.T + 32


cdef inline Py_ssize_t _wino_channels(Py_ssize_t left) noexcept nogil:
    """Output channels of the next GEMM tile when `left` remain (6, 4, 2, 1)."""
    if left >= 6:
        return 6
    return 4 if left >= 4 else (2 if left >= 2 else 1)


cdef void _winograd_weights(const Conv2dParams* p, const floating* w, floating* U) noexcept nogil:
    """U[xi*K*Cg + k0*Cg + c*kb + k] = (G w[k0 + k, c] G^T)[xi] for each block
    of kb output channels from k0 (blocks as the GEMM tiles take them), with
    G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]."""
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, KC = p.K * Cg
    cdef Py_ssize_t grp, k0, kb, k, c, i, xi
    cdef floating gw[4][3]
    cdef floating u[4][4]
    cdef const floating* f
    for grp in range(p.groups):
        k0 = grp * Kg
        while k0 < (grp + 1) * Kg:
            kb = _wino_channels((grp + 1) * Kg - k0)
            for k in range(kb):
                for c in range(Cg):
                    f = w + ((k0 + k) * Cg + c) * 9
                    for i in range(3):     # G g: combinations of kernel rows
                        gw[0][i] = f[i]
                        gw[1][i] = (f[i] + f[3 + i] + f[6 + i]) * 0.5
                        gw[2][i] = (f[i] - f[3 + i] + f[6 + i]) * 0.5
                        gw[3][i] = f[6 + i]
                    for i in range(4):     # (G g) G^T: the same over columns
                        u[i][0] = gw[i][0]
                        u[i][1] = (gw[i][0] + gw[i][1] + gw[i][2]) * 0.5
                        u[i][2] = (gw[i][0] - gw[i][1] + gw[i][2]) * 0.5
                        u[i][3] = gw[i][2]
                    for xi in range(16):
                        U[xi * KC + k0 * Cg + c * kb + k] = u[xi // 4][xi % 4]
            k0 += kb


cdef inline Py_ssize_t _wino_scratch(const WinoGeom* g) noexcept nogil:
    """Per-thread scratch after V and M: split rows, q, output rows."""
    cdef Py_ssize_t n = 2 * (g.TWt + 1)
    return (2 * g.rows + 2) * n + 4 * n + 4 * g.TWt


cdef inline void _wino_split(const floating* r, Py_ssize_t W, Py_ssize_t pw, Py_ssize_t nt,
                             floating* eo) noexcept nogil:
    if floating is float:
        engine_wino_split_f32(r, W, pw, nt, eo, eo + nt + 1)
    else:
        engine_wino_split_f64(r, W, pw, nt, eo, eo + nt + 1)


cdef void _winograd_input(const Conv2dParams* p, const WinoGeom* g, const floating* x,
                          Py_ssize_t R0, Py_ssize_t R1, Py_ssize_t grp, floating* V,
                          floating* eo, floating* q) noexcept nogil:
    """V[xi*vs + c*T + (R - R0)*TWt + tx] for the tile rows R0 <= R < R1 (global
    over the batch): per run of tile rows of one image [R, S) and channel,
    each input row is split once (neighbouring tile rows share two)."""
    cdef Py_ssize_t Cg = p.C // p.groups, nt = g.TWt, n2 = 2 * (g.TWt + 1)
    cdef Py_ssize_t R = R0, S, n, ty, c, r, ih
    cdef const floating* xr
    while R < R1:
        n, ty = R // g.TH, R % g.TH
        S = min(R1, (n + 1) * g.TH)
        for c in range(Cg):
            xr = x + (n * p.C + grp * Cg + c) * p.H * p.W
            for r in range(2 * (S - R) + 2):
                ih = 2 * ty - p.ph + r
                _wino_split(xr + ih * p.W if 0 <= ih < p.H else NULL, p.W, p.pw, nt,
                            eo + r * n2)
            for r in range(S - R):
                if floating is float:
                    engine_wino_input_f32(eo + 2 * r * n2, nt, q,
                                          V + c * g.T + (R - R0 + r) * nt, g.vs)
                else:
                    engine_wino_input_f64(eo + 2 * r * n2, nt, q,
                                          V + c * g.T + (R - R0 + r) * nt, g.vs)
        R = S


cdef void _winograd_item(const Conv2dParams* p, const WinoGeom* g, const floating* x,
                         const floating* U, const Py_ssize_t* off, const floating* bias,
                         floating* y, Py_ssize_t blk, Py_ssize_t grp, floating* ws,
                         bint relu) noexcept nogil:
    """y for the tile rows of block blk, group grp. ws: V (16 x vs), M
    (16 x ms), then _wino_scratch."""
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, T = g.T, nt = g.TWt
    cdef Py_ssize_t R0 = blk * g.rows, R1 = min(R0 + g.rows, p.N * g.TH)
    cdef Py_ssize_t n2 = 2 * (nt + 1), k, k0, kb, R, n, ty, xi, j, oh
    cdef floating* V = ws
    cdef floating* M = V + 16 * g.vs
    cdef floating* eo = M + 16 * g.ms
    cdef floating* q = eo + (2 * g.rows + 2) * n2
    cdef floating* o = q + 4 * n2
    cdef floating* yr
    cdef floating zeros[8]
    cdef floating bk
    cdef DirectGeom tile           # the GEMM tile: 1 row x 2 vectors x kb channels
    tile.RB, tile.NV = 1, 2
    for k in range(8):
        zeros[k] = 0
    _winograd_input(p, g, x, R0, R1, grp, V, eo, q)
    for xi in range(16):
        k0 = 0
        while k0 < Kg:
            kb = _wino_channels(Kg - k0)
            for j in range(T // g.GW):
                _fwd_tile(&tile, kb, V + xi * g.vs + j * g.GW, 0, Cg, off,
                          U + xi * p.K * Cg + (grp * Kg + k0) * Cg, zeros,
                          M + xi * g.ms + k0 * T + j * g.GW, 0, T)
            k0 += kb
    for k in range(Kg):
        bk = bias[grp * Kg + k] if bias != NULL else 0
        for R in range(R0, R1):
            n, ty = R // g.TH, R % g.TH
            if floating is float:
                engine_wino_output_f32(M + k * T + (R - R0) * nt, g.ms, nt, bk, o)
            else:
                engine_wino_output_f64(M + k * T + (R - R0) * nt, g.ms, nt, bk, o)
            if relu:
                relu_span(o, o, 4 * nt)
            oh = 2 * ty
            yr = y + ((n * p.K + grp * Kg + k) * p.OH + oh) * p.OW
            if floating is float:
                engine_wino_merge_f32(o, o + nt, p.OW, yr)
                if oh + 1 < p.OH:
                    engine_wino_merge_f32(o + 2 * nt, o + 3 * nt, p.OW, yr + p.OW)
            else:
                engine_wino_merge_f64(o, o + nt, p.OW, yr)
                if oh + 1 < p.OH:
                    engine_wino_merge_f64(o + 2 * nt, o + 3 * nt, p.OW, yr + p.OW)


cdef int _winograd_conv(const Conv2dParams* p, const floating* x, const floating* w,
                        const floating* b, floating* y, bint relu=False) noexcept nogil:
    """y = conv(x, w) + b by F(2x2, 3x3) for checked parameters that fit it."""
    cdef WinoGeom g
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, it, c, per
    cdef Py_ssize_t items
    cdef int nthreads
    cdef floating* ws
    cdef floating* U
    cdef Py_ssize_t* off
    cdef unsigned int old
    if not _winograd_fits(p):
        return ENGINE_EBADARG
    _winograd_geom(p, _vl(y), max(2 * _vl(y), _WINO_BLOCK_ELEMS // Cg), Kg, &g)
    items = g.nblocks * p.groups
    nthreads = _team(items, _conv_flops(p))
    per = 16 * (g.vs + g.ms) + _wino_scratch(&g)
    # calloc: the padding tiles of V are read by the GEMM (results dropped)
    ws = <floating*>calloc(nthreads * per, sizeof(floating))
    U = <floating*>malloc(16 * p.K * Cg * sizeof(floating))
    off = <Py_ssize_t*>malloc(Cg * sizeof(Py_ssize_t))
    if ws == NULL or U == NULL or off == NULL:
        free(ws)
        free(U)
        free(off)
        return ENGINE_ENOMEM
    _winograd_weights(p, w, U)
    for c in range(Cg):
        off[c] = c * g.T
    with parallel(num_threads=nthreads):
        old = engine_ftz_enter()
        for it in prange(items, schedule='static'):
            _winograd_item(p, &g, x, U, off, b, y, it // p.groups, it % p.groups,
                           ws + threadid() * per, relu)
        engine_ftz_exit(old)
    free(off)
    free(U)
    free(ws)
    return ENGINE_OK


cdef int conv2d_winograd_forward(Conv2dParams p, const floating* x,
                                 const floating* w, const floating* b,
                                 floating* y) noexcept nogil:
    return conv2d_forward_relu(p, CONV_ALGO_WINOGRAD, x, w, b, y, False)


cdef inline Py_ssize_t _wino_dw_kpad(const Conv2dParams* p, Py_ssize_t vl) noexcept nogil:
    """Output channels per group padded to the dW tile's 2 vectors."""
    return ceil_div(p.K // p.groups, 2 * vl) * 2 * vl


cdef void _winograd_weight_block(const Conv2dParams* p, const WinoGeom* g,
                                 const floating* x, const floating* dy, Py_ssize_t R0,
                                 Py_ssize_t R1, Py_ssize_t grp, const Py_ssize_t* coff,
                                 floating* parts, floating* ws) noexcept nogil:
    """parts[((xi*groups + grp)*(Cg + 6) + c)*Kp + k] += sum over the tiles t
    of the tile rows R0 <= R < R1 (one block) of (A dy_t A^T)[xi][k] *
    V[xi][c][t]. ws: V (16 x vs), D (16 x ms: per point, tiles x Kp output
    channels), then _wino_scratch."""
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, T = g.T, nt = g.TWt
    cdef Py_ssize_t n2 = 2 * (nt + 1), vl = _vl(ws), Kp = _wino_dw_kpad(p, vl)
    cdef Py_ssize_t used = (R1 - R0) * nt, k, k0, kb, c0, cb, R, n, ty, xi, oh
    cdef floating* V = ws
    cdef floating* D = V + 16 * g.vs
    cdef floating* eo = D + 16 * g.ms
    cdef floating* q = eo + (2 * g.rows + 2) * n2
    cdef const floating* dyr
    _winograd_input(p, g, x, R0, R1, grp, V, eo, q)
    for k in range(Kg):
        for R in range(R0, R1):
            n, ty = R // g.TH, R % g.TH
            oh = 2 * ty
            dyr = dy + ((n * p.K + grp * Kg + k) * p.OH + oh) * p.OW
            _wino_split(dyr, p.OW, 0, nt, eo)
            _wino_split(dyr + p.OW if oh + 1 < p.OH else NULL, p.OW, 0, nt, eo + n2)
            if floating is float:
                engine_wino_dy_f32(eo, eo + n2, nt, D + (R - R0) * nt * Kp + k, g.ms, Kp)
            else:
                engine_wino_dy_f64(eo, eo + n2, nt, D + (R - R0) * nt * Kp + k, g.ms, Kp)
    if used < T:     # tiles past the block's rows: zeros (stale ones would add in)
        for xi in range(16):
            for c0 in range(Cg):
                memset(V + xi * g.vs + c0 * T + used, 0, (T - used) * sizeof(floating))
            memset(D + xi * g.ms + used * Kp, 0, (T - used) * Kp * sizeof(floating))
    # Per point, the direct dW's channel-lane tiles: 6 input channels (its
    # taps, at offsets coff into V) x 2 vectors of output channels, summed
    # over the block's tiles (its pixels).
    for xi in range(16):
        for kb in range(Kp // (2 * vl)):
            k0 = kb * 2 * vl
            for cb in range(ceil_div(Cg, 6)):
                c0 = cb * 6
                _dwk_tile(2, V + xi * g.vs, 0, coff + c0, D + xi * g.ms + k0, Kp, 1, T,
                          parts + ((xi * p.groups + grp) * (Cg + 6) + c0) * Kp + k0, Kp)


cdef int conv2d_winograd_backward_weight(Conv2dParams p, const floating* x,
                                         const floating* dy, floating* dw,
                                         floating* db, bint accumulate) noexcept nogil:
    """dw (+)= G^T dU G with dU[xi] = sum over tiles of (A dy A^T)[xi] V[xi]^T
    (the adjoint of the forward's y = A^T (U . V) A with U = G w G^T)."""
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    if not _winograd_fits(&p):
        return ENGINE_EBADARG
    cdef WinoGeom g
    cdef Py_ssize_t Cg = p.C // p.groups, Kg = p.K // p.groups, vl = _vl(dw)
    cdef Py_ssize_t Kp = _wino_dw_kpad(&p, vl), size = 16 * p.groups * (Cg + 6) * Kp
    cdef Py_ssize_t nchunks, per, c, n0, n1, grp, R0, b, i, k, xi
    cdef int nthreads
    cdef floating* ws
    cdef floating* parts
    cdef floating* dU
    cdef floating* mine
    cdef floating* o
    cdef Py_ssize_t* coff
    cdef floating u[4][4]
    cdef floating t[3][4]
    cdef unsigned int old
    _winograd_geom(&p, vl, _WINO_DW_TILES, Kp, &g)      # D[xi]: tiles x Kp
    nchunks = work_chunks(p.N, _conv_flops(&p), _DW_CHUNK_FLOPS, _DW_MAX_CHUNKS)
    nthreads = _team(nchunks, _conv_flops(&p))
    per = 16 * (g.vs + g.ms) + _wino_scratch(&g)
    ws = <floating*>calloc(nthreads * per, sizeof(floating))
    parts = <floating*>calloc(nchunks * size, sizeof(floating))
    dU = <floating*>malloc(size * sizeof(floating))
    coff = <Py_ssize_t*>calloc(Cg + 6, sizeof(Py_ssize_t))   # + dummy channels at 0
    if ws == NULL or parts == NULL or dU == NULL or coff == NULL:
        free(ws)
        free(parts)
        free(dU)
        free(coff)
        return ENGINE_ENOMEM
    for c in range(Cg):
        coff[c] = c * g.T
    with parallel(num_threads=nthreads):
        old = engine_ftz_enter()
        mine = ws + threadid() * per
        for c in prange(nchunks, schedule='static'):
            n0, n1 = c * p.N // nchunks, (c + 1) * p.N // nchunks
            for grp in range(p.groups):
                for b in range(ceil_div((n1 - n0) * g.TH, g.rows)):
                    R0 = n0 * g.TH + b * g.rows
                    _winograd_weight_block(&p, &g, x, dy, R0, min(R0 + g.rows, n1 * g.TH),
                                           grp, coff, parts + c * size, mine)
        engine_ftz_exit(old)
    _reduce_partials(parts, nchunks, size, dU, False)
    # dw[k, c] (+)= G^T dU[k, c] G, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1].
    if not accumulate:
        memset(dw, 0, p.K * Cg * 9 * sizeof(floating))
    for grp in range(p.groups):
        for k in range(Kg):
            for c in range(Cg):
                for xi in range(16):
                    u[xi // 4][xi % 4] = dU[((xi * p.groups + grp) * (Cg + 6) + c) * Kp + k]
                for i in range(4):
                    t[0][i] = u[0][i] + (u[1][i] + u[2][i]) * 0.5
                    t[1][i] = (u[1][i] - u[2][i]) * 0.5
                    t[2][i] = (u[1][i] + u[2][i]) * 0.5 + u[3][i]
                o = dw + ((grp * Kg + k) * Cg + c) * 9
                for i in range(3):
                    o[i * 3] += t[i][0] + (t[i][1] + t[i][2]) * 0.5
                    o[i * 3 + 1] += (t[i][1] - t[i][2]) * 0.5
                    o[i * 3 + 2] += (t[i][1] + t[i][2]) * 0.5 + t[i][3]
    free(coff)
    free(dU)
    free(parts)
    free(ws)
    if db != NULL:
        _bias_grad(&p, dy, db, accumulate)
    return ENGINE_OK


cdef int conv2d_winograd_backward_input(Conv2dParams p, const floating* w,
                                        const floating* dy,
                                        floating* dx) noexcept nogil:
    cdef int err = conv2d_check_params(&p)
    if err:
        return err
    if not _winograd_fits(&p) or not _direct_dx_is_forward(&p):
        return ENGINE_EBADARG
    cdef Conv2dParams q
    cdef floating* w2 = _dx_forward_weights(&p, w, &q)
    if w2 == NULL:
        return ENGINE_ENOMEM
    err = _winograd_conv(&q, dy, w2, <const floating*>NULL, dx)
    free(w2)
    return err


# -- dispatch -----------------------------------------------------------------

cdef int conv2d_forward(Conv2dParams p, ConvAlgo algo, const floating* x,
                        const floating* w, const floating* b,
                        floating* y) noexcept nogil:
    return conv2d_forward_relu(p, algo, x, w, b, y, False)


cdef int conv2d_forward_relu(Conv2dParams p, ConvAlgo algo, const floating* x,
                             const floating* w, const floating* b,
                             floating* y, bint relu) noexcept nogil:
    cdef int err
    if algo == CONV_ALGO_AUTO:
        algo = conv2d_choose_algo(&p, CONV_PASS_FORWARD)
    if algo == CONV_ALGO_DIRECT:
        err = conv2d_check_params(&p)
        if err:
            return err
        return _direct_conv(&p, x, w, b, y, relu)
    if algo == CONV_ALGO_IM2COL:
        return _im2col_forward(p, x, w, b, y, relu)
    if algo == CONV_ALGO_WINOGRAD:
        err = conv2d_check_params(&p)
        if err:
            return err
        return _winograd_conv(&p, x, w, b, y, relu)
    return ENGINE_EBADARG


cdef int conv2d_backward(Conv2dParams p, ConvAlgo algo, const floating* x,
                         const floating* w, const floating* dy,
                         floating* dx, floating* dw, floating* db,
                         bint accumulate) noexcept nogil:
    cdef int err
    cdef ConvAlgo a = algo
    if (algo != CONV_ALGO_AUTO and algo != CONV_ALGO_IM2COL and algo != CONV_ALGO_DIRECT
            and algo != CONV_ALGO_WINOGRAD):
        return ENGINE_EBADARG
    # Winograd's weight gradient keeps 16 x K x Cg partial sums per chunk:
    # wider layers go as auto picks.
    if algo == CONV_ALGO_AUTO or (algo == CONV_ALGO_WINOGRAD
                                  and p.K * (p.C // p.groups) > _WINO_DW_MAX_WEIGHTS):
        a = conv2d_choose_algo(&p, CONV_PASS_BACKWARD_WEIGHT)
    if a == CONV_ALGO_WINOGRAD:
        err = conv2d_winograd_backward_weight(p, x, dy, dw, db, accumulate)
    elif a == CONV_ALGO_DIRECT:
        err = conv2d_direct_backward_weight(p, x, dy, dw, db, accumulate)
    else:
        err = conv2d_im2col_backward_weight(p, x, dy, dw, db, accumulate)
    if err or dx == NULL:
        return err
    a = algo
    # Winograd's grad-input is a forward over dy padded by 2 - padding:
    # padding > 2 goes as auto picks.
    if algo == CONV_ALGO_AUTO or (algo == CONV_ALGO_WINOGRAD and not _direct_dx_is_forward(&p)):
        a = conv2d_choose_algo(&p, CONV_PASS_BACKWARD_INPUT)
    if a == CONV_ALGO_WINOGRAD:
        return conv2d_winograd_backward_input(p, w, dy, dx)
    if a == CONV_ALGO_DIRECT:
        return conv2d_direct_backward_input(p, w, dy, dx)
    return conv2d_im2col_backward_input(p, w, dy, dx)


# -- Python entries -----------------------------------------------------------

_ALGOS = {"auto": CONV_ALGO_AUTO, "im2col": CONV_ALGO_IM2COL, "direct": CONV_ALGO_DIRECT,
          "winograd": CONV_ALGO_WINOGRAD}
_ALGO_NAMES = {CONV_ALGO_IM2COL: "im2col", CONV_ALGO_DIRECT: "direct",
               CONV_ALGO_WINOGRAD: "winograd"}


def _pair(value, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


def _pads(padding):
    """(top, bottom, left, right) from an int, a pair or a 4-tuple."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(int(v) for v in padding)
    else:
        ph, pw = _pair(padding, "padding")
        pads = (ph, ph, pw, pw)
    if min(pads) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pads


cdef Conv2dParams _make_params(x_shape, w_shape, stride, padding, dilation,
                               groups) except *:
    """Validate a convolution's geometry and fill the parameter struct."""
    cdef Conv2dParams p
    N, C, H, W = x_shape
    K, Cg, kh, kw = w_shape
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    top, bottom, left, right = _pads(padding)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if dh < 1 or dw < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation!r}")
    if K < 1 or kh < 1 or kw < 1 or Cg < 1:
        raise ValueError(f"weight must have a non-empty shape (K, C/groups, kh, kw), got {w_shape}")
    if C != Cg * groups:
        raise ValueError(f"input has {C} channels but weight {w_shape} with "
                         f"groups={groups} expects {Cg * groups}")
    if K % groups:
        raise ValueError(f"weight's out channels {K} not divisible by groups={groups}")
    if N < 1 or H < 1 or W < 1:
        raise ValueError(f"input must be non-empty, got shape {x_shape}")
    # Sizes the kernel indexes in Py_ssize_t: reject overflow before any
    # arithmetic below is stored in the C struct.
    check_size(x_shape, np.float64, "x")
    check_size(w_shape, np.float64, "weight")
    if max(sh, sw, dh, dw, top, bottom, left, right) > BLAS_INT_MAX:
        raise ValueError(f"stride, padding and dilation must be < 2**31, got stride={stride!r}, "
                         f"padding={padding!r}, dilation={dilation!r}")
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if H + top + bottom < eh or W + left + right < ew:
        raise ValueError(f"kernel ({kh}, {kw}) with dilation ({dh}, {dw}) is larger than "
                         f"the padded input ({H + top + bottom}, {W + left + right})")
    p.N, p.C, p.H, p.W, p.K = N, C, H, W, K
    p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw = kh, kw, sh, sw, top, left, dh, dw
    p.groups = groups
    p.OH = (H + top + bottom - eh) // sh + 1
    p.OW = (W + left + right - ew) // sw + 1
    for name, v in (("C/groups*kh*kw", Cg * kh * kw), ("H*W", H * W),
                    ("OH*OW*256", p.OH * p.OW * _MIN_GEMM_COLS)):
        check_blas_size(name, v)
    return p


def _algo(algo, w_shape, stride=1, dilation=1):
    if not isinstance(algo, str) or algo not in _ALGOS:
        raise ValueError(f"algo must be one of 'auto', 'im2col', 'direct', 'winograd', "
                         f"got {algo!r}")
    if algo == "direct" and w_shape[3] > _MAX_TAPS_ROW:
        raise ValueError(f"algo='direct' supports kernel widths up to {_MAX_TAPS_ROW}, "
                         f"got weight shape {w_shape}; use 'im2col' or 'auto'")
    if algo == "winograd" and (tuple(w_shape[2:]) != (3, 3)
                               or _pair(stride, "stride") != (1, 1)
                               or _pair(dilation, "dilation") != (1, 1)):
        raise ValueError(f"algo='winograd' needs a 3x3 kernel, stride 1 and dilation 1, "
                         f"got weight shape {w_shape}, stride={stride!r}, "
                         f"dilation={dilation!r}; use 'auto', 'im2col' or 'direct'")
    return _ALGOS[algo]


def _raise(err, what):
    if err == ENGINE_ENOMEM:
        raise MemoryError(f"{what}: could not allocate the workspace")
    if err:
        raise ValueError(f"{what}: invalid convolution parameters (code {err})")


def output_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """(N, K, OH, OW) of a convolution; raises ValueError on a bad geometry."""
    cdef Conv2dParams p = _make_params(tuple(x_shape), tuple(w_shape), stride,
                                       padding, dilation, groups)
    return (p.N, p.K, p.OH, p.OW)


_PASSES = {"forward": CONV_PASS_FORWARD, "backward_input": CONV_PASS_BACKWARD_INPUT,
           "backward_weight": CONV_PASS_BACKWARD_WEIGHT}


def choose_algo(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1,
                which="forward"):
    """The algorithm 'auto' uses for this layer and pass: 'im2col', 'direct'
    or 'winograd'.

    which: 'forward', 'backward_input' or 'backward_weight'.
    """
    cdef Conv2dParams p = _make_params(tuple(x_shape), tuple(w_shape), stride,
                                       padding, dilation, groups)
    if which not in _PASSES:
        raise ValueError(f"which must be one of {tuple(_PASSES)}, got {which!r}")
    return _ALGO_NAMES[conv2d_choose_algo(&p, _PASSES[which])]


def simd_info():
    """The direct kernels' vector build: {'vector_bytes', 'registers'}
    (64 / 32 with AVX-512, 32 / 16 with AVX2, 16 / 16 otherwise). choose_algo's
    picks for large 3x3 layers depend on it."""
    return {"vector_bytes": ENGINE_VL_F32 * 4, "registers": ENGINE_VREGS}


def _check_inputs(x, weight):
    x = float_array(x, "x", ndim=4)
    weight = float_array(weight, "weight", ndim=4, dtype=x.dtype)
    return x, weight


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1,
                   groups=1, algo="auto", out=None):
    """y = conv2d(x, weight) + bias (cross-correlation, as torch).

    Args:
        x: (N, C, H, W) float32/float64; weight: (K, C/groups, kh, kw);
        bias: (K,) or None. padding: int, (ph, pw) or (top, bottom, left, right).
        algo: 'auto', 'im2col', 'direct' or 'winograd' (F(2x2, 3x3): 3x3,
            stride 1, dilation 1 only).
    Returns: y (N, K, OH, OW).
    """
    x, weight = _check_inputs(x, weight)
    cdef ConvAlgo a = _algo(algo, weight.shape, stride, dilation)
    cdef Conv2dParams p = _make_params(x.shape, weight.shape, stride, padding,
                                       dilation, groups)
    if bias is not None:
        bias = float_array(bias, "bias", ndim=1, dtype=x.dtype)
        if bias.shape[0] != p.K:
            raise ValueError(f"bias must have shape ({p.K},), got {bias.shape}")
    y = out_array(out, "out", (p.N, p.K, p.OH, p.OW), x.dtype)
    cdef int err
    if x.dtype == np.float32:
        err = _forward[float](p, a, x, weight, bias, y)
    else:
        err = _forward[double](p, a, x, weight, bias, y)
    _raise(err, "conv2d")
    return y


cdef int _forward(Conv2dParams p, ConvAlgo a, floating[:, :, :, ::1] x,
                  floating[:, :, :, ::1] w, floating[::1] b,
                  floating[:, :, :, ::1] y, bint relu=False):
    cdef const floating* pb = &b[0] if b is not None else NULL
    cdef int err
    with nogil:
        err = conv2d_forward_relu(p, a, &x[0, 0, 0, 0], &w[0, 0, 0, 0], pb,
                                  &y[0, 0, 0, 0], relu)
    return err


cdef class Conv2dPlan:
    """A convolution geometry validated once for one input shape and dtype.

    ``Conv2dPlan(x_shape, w_shape, dtype, stride, padding, dilation, groups,
    algo)`` runs conv2d's checks (same errors); ``plan.forward(x, weight,
    bias=None, relu=False)`` then only checks that the arrays match the plan
    (shapes; dtype and C-contiguity through the typed buffers) and returns
    conv2d(...) -- followed by max(., 0) when ``relu`` -- with the bits of
    conv2d. pyengine's Conv2d keeps one per input shape: the per-call Python
    work of a batch-1 layer was most of its time.
    """
    cdef Conv2dParams p
    cdef ConvAlgo algo
    cdef bint f32
    cdef readonly tuple x_shape, w_shape, y_shape
    cdef readonly object dtype

    def __init__(self, x_shape, w_shape, dtype, stride=1, padding=0, dilation=1,
                 groups=1, algo="auto"):
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.x_shape = tuple(int(v) for v in x_shape)
        self.w_shape = tuple(int(v) for v in w_shape)
        if len(self.x_shape) != 4 or len(self.w_shape) != 4:
            raise ValueError(f"x_shape and w_shape must have 4 entries, got "
                             f"{self.x_shape} and {self.w_shape}")
        self.algo = _algo(algo, self.w_shape, stride, dilation)
        self.p = _make_params(self.x_shape, self.w_shape, stride, padding, dilation, groups)
        self.y_shape = (self.p.N, self.p.K, self.p.OH, self.p.OW)
        check_size(self.y_shape, dt, "output")
        self.dtype = dt
        self.f32 = dt == np.float32

    def forward(self, x, weight, bias=None, bint relu=False):
        if x.shape != self.x_shape:
            raise ValueError(f"x must have shape {self.x_shape} (the plan's), got {x.shape}")
        if weight.shape != self.w_shape:
            raise ValueError(f"weight must have shape {self.w_shape}, got {weight.shape}")
        if bias is not None and bias.shape != (self.p.K,):
            raise ValueError(f"bias must have shape ({self.p.K},), got {bias.shape}")
        y = np.empty(self.y_shape, self.dtype)
        cdef int err
        if self.f32:
            err = _forward[float](self.p, self.algo, x, weight, bias, y, relu)
        else:
            err = _forward[double](self.p, self.algo, x, weight, bias, y, relu)
        _raise(err, "conv2d")
        return y


def conv2d_grad(x, weight, grad_out, stride=1, padding=0, dilation=1,
                    groups=1, algo="auto", input_grad=True, bias=True,
                    grad_weight=None, grad_bias=None):
    """Gradients of a convolution: (dx, dweight, dbias).

    dx is None when input_grad is False (its GEMM and col2im are skipped);
    dbias is None when bias is False. When grad_weight / grad_bias arrays are
    given the gradients are ADDED to them in place (like torch's .grad) and
    those arrays are returned; otherwise new arrays are returned.
    """
    x, weight = _check_inputs(x, weight)
    grad_out = float_array(grad_out, "grad_out", ndim=4, dtype=x.dtype)
    cdef ConvAlgo a = _algo(algo, weight.shape, stride, dilation)
    cdef Conv2dParams p = _make_params(x.shape, weight.shape, stride, padding,
                                       dilation, groups)
    want = (p.N, p.K, p.OH, p.OW)
    if grad_out.shape != want:
        raise ValueError(f"grad_out must have shape {want}, got {grad_out.shape}")
    cdef bint accumulate = grad_weight is not None
    if (grad_bias is not None) != accumulate and bias:
        raise ValueError("pass both grad_weight and grad_bias to accumulate, or neither")
    dw = out_array(grad_weight, "grad_weight", weight.shape, x.dtype)
    db = None
    if bias:
        db = out_array(grad_bias, "grad_bias", (p.K,), x.dtype)
    dx = np.empty(x.shape, x.dtype) if input_grad else None
    cdef int err
    if x.dtype == np.float32:
        err = _backward[float](p, a, x, weight, grad_out, dx, dw, db, accumulate)
    else:
        err = _backward[double](p, a, x, weight, grad_out, dx, dw, db, accumulate)
    _raise(err, "conv2d_grad")
    return dx, dw, db


cdef int _backward(Conv2dParams p, ConvAlgo a, floating[:, :, :, ::1] x,
                   floating[:, :, :, ::1] w, floating[:, :, :, ::1] dy,
                   floating[:, :, :, ::1] dx, floating[:, :, :, ::1] dw,
                   floating[::1] db, bint accumulate):
    cdef floating* pdx = &dx[0, 0, 0, 0] if dx is not None else NULL
    cdef floating* pdb = &db[0] if db is not None else NULL
    cdef int err
    with nogil:
        err = conv2d_backward(p, a, &x[0, 0, 0, 0], &w[0, 0, 0, 0], &dy[0, 0, 0, 0],
                              pdx, &dw[0, 0, 0, 0], pdb, accumulate)
    return err


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Unfold x (N, C, H, W) into columns (N, C*kh*kw, OH*OW)."""
    x = float_array(x, "x", ndim=4)
    kh, kw = _pair(kernel_size, "kernel_size")
    cdef Conv2dParams p = _make_params(x.shape, (1, x.shape[1], kh, kw), stride,
                                       padding, dilation, 1)
    cols = empty((p.N, p.C * p.kh * p.kw, p.OH * p.OW), x.dtype, "cols")
    cdef int err
    if x.dtype == np.float32:
        err = _im2col[float](p, x, cols)
    else:
        err = _im2col[double](p, x, cols)
    _raise(err, "im2col")
    return cols


cdef int _im2col(Conv2dParams p, floating[:, :, :, ::1] x, floating[:, :, ::1] cols):
    cdef int err
    with nogil:
        err = im2col_batch(p, &x[0, 0, 0, 0], &cols[0, 0, 0])
    return err


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Adjoint of im2col: columns (N, C*kh*kw, OH*OW) -> (N, C, H, W)."""
    cols = float_array(cols, "cols", ndim=3)
    kh, kw = _pair(kernel_size, "kernel_size")
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must have 4 entries, got {x_shape}")
    cdef Conv2dParams p = _make_params(x_shape, (1, x_shape[1], kh, kw), stride,
                                       padding, dilation, 1)
    want = (p.N, p.C * p.kh * p.kw, p.OH * p.OW)
    if cols.shape != want:
        raise ValueError(f"cols must have shape {want}, got {cols.shape}")
    dx = empty(x_shape, cols.dtype, "grad_input")
    cdef int err
    if cols.dtype == np.float32:
        err = _col2im[float](p, cols, dx)
    else:
        err = _col2im[double](p, cols, dx)
    _raise(err, "col2im")
    return dx


cdef int _col2im(Conv2dParams p, floating[:, :, ::1] cols, floating[:, :, :, ::1] dx):
    cdef int err
    with nogil:
        err = col2im_batch(p, &cols[0, 0, 0], &dx[0, 0, 0, 0])
    return err



def _set_tuning(min_gemm_cols=None, col_tile_elems=None, min_thread_flops=None):
    """Tests and benchmarks only: change the im2col batching / tiling sizes
    and the work below which kernels use fewer threads.

    Returns the previous values as a dict (pass it back to restore).
    """
    global _MIN_GEMM_COLS, _COL_TILE_ELEMS, _MIN_THREAD_FLOPS
    old = dict(min_gemm_cols=_MIN_GEMM_COLS, col_tile_elems=_COL_TILE_ELEMS,
               min_thread_flops=_MIN_THREAD_FLOPS)
    if min_gemm_cols is not None:
        _MIN_GEMM_COLS = max(1, int(min_gemm_cols))
    if col_tile_elems is not None:
        _COL_TILE_ELEMS = max(1, int(col_tile_elems))
    if min_thread_flops is not None:
        _MIN_THREAD_FLOPS = max(0.0, float(min_thread_flops))
    return old
