"""2-D pooling kernels (NCHW): max with argmax indices, average, adaptive average.

One OpenMP loop over the N * C planes; each plane is computed (forward) or
scattered into (backward) by one thread, so backward needs no atomics and
results are bitwise identical for any thread count.
"""

import numpy as np
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset

from libc.stdlib cimport malloc, free

from engine._common cimport (ENGINE_OK, ENGINE_EBADARG, ENGINE_EINDEX, ENGINE_ENOMEM,
                             engine_ftz_enter, engine_ftz_exit, ceil_div)
from engine._threads cimport engine_num_threads
from engine._validate import float_array, empty


# Below this many element visits a call runs on the calling thread: waking the
# OpenMP team costs microseconds (far more on a loaded machine), more than the
# work. Results do not change: each plane is computed the same way either way.
cdef double _PARALLEL_MIN_WORK = 65536.0


cdef inline int _team(double work) noexcept nogil:
    return engine_num_threads() if work >= _PARALLEL_MIN_WORK else 1


# ---------------------------------------------------------------------------
# Shapes and parameter checks

cdef inline Py_ssize_t _floor_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # C division truncates toward zero; torch's div_rtn rounds toward -inf.
    cdef Py_ssize_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef Py_ssize_t pool_output_size(Py_ssize_t size, Py_ssize_t kernel,
                                 Py_ssize_t stride, Py_ssize_t pad,
                                 Py_ssize_t dilation, bint ceil_mode) noexcept nogil:
    cdef Py_ssize_t span = size + 2 * pad - dilation * (kernel - 1) - 1
    cdef Py_ssize_t out
    if stride <= 0:
        return 0
    if ceil_mode:
        span += stride - 1
    out = _floor_div(span, stride) + 1
    # The last window must start inside the input or the left padding.
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


cdef int pool2d_check(const pool2d_params* p) noexcept nogil:
    if p.N < 0 or p.C < 0 or p.H < 1 or p.W < 1:
        return ENGINE_EBADARG
    if p.kh < 1 or p.kw < 1 or p.sh < 1 or p.sw < 1 or p.dh < 1 or p.dw < 1:
        return ENGINE_EBADARG
    if p.ph < 0 or p.pw < 0 or p.ph > p.kh // 2 or p.pw > p.kw // 2:
        return ENGINE_EBADARG
    if p.divisor_override < 0:
        return ENGINE_EBADARG
    if p.OH < 1 or p.OW < 1:
        return ENGINE_EBADARG
    if p.OH != pool_output_size(p.H, p.kh, p.sh, p.ph, p.dh, p.ceil_mode):
        return ENGINE_EBADARG
    if p.OW != pool_output_size(p.W, p.kw, p.sw, p.pw, p.dw, p.ceil_mode):
        return ENGINE_EBADARG
    return ENGINE_OK


cdef inline int _shape_check(const pool2d_params* p) noexcept nogil:
    # Backward passes read only the shape fields.
    if p.N < 0 or p.C < 0 or p.H < 1 or p.W < 1 or p.OH < 1 or p.OW < 1:
        return ENGINE_EBADARG
    return ENGINE_OK


cdef inline void _taps(Py_ssize_t start, Py_ssize_t kernel, Py_ssize_t dilation,
                       Py_ssize_t size, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Tap range [lo, hi) of a dilated window whose positions start + t * dilation
    fall inside [0, size)."""
    cdef Py_ssize_t a = 0, b
    if start < 0:
        a = ceil_div(-start, dilation)
    if size - 1 - start < 0:
        b = 0
    else:
        b = min(kernel, (size - 1 - start) // dilation + 1)
    lo[0] = a
    hi[0] = b if b > a else a


# ---------------------------------------------------------------------------
# Max pooling

cdef inline void _out_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                            Py_ssize_t n_out, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) whose tap o * stride + offset falls inside [0, size)."""
    cdef Py_ssize_t a = 0, b
    if offset < 0:
        a = ceil_div(-offset, stride)
    if size - 1 - offset < 0:
        b = 0
    else:
        b = min(n_out, (size - 1 - offset) // stride + 1)
    lo[0] = a
    hi[0] = b if b > a else a


cdef void _max_plane(const pool2d_params* p, const floating* x, floating* y,
                     int64_t* ind) noexcept nogil:
    """General window. For each output row the taps are visited in (th, tw)
    order, each tap as one branch-free pass along the output row (the compiler
    vectorises it), so every output still sees its taps in torch's scan order:
    the first maximum wins, a NaN wins."""
    # Locals, not p->fields: stores to `ind` may alias the struct otherwise.
    cdef Py_ssize_t H = p.H, W = p.W, OW = p.OW, kh = p.kh, kw = p.kw
    cdef Py_ssize_t sh = p.sh, sw = p.sw, ph = p.ph, pw = p.pw, dh = p.dh, dw = p.dw
    cdef Py_ssize_t oh, ow, th, tw, th0, th1, ow0, ow1, ih, off
    cdef floating* yrow
    cdef int64_t* irow
    cdef const floating* xrow
    cdef floating v
    cdef bint take
    for oh in range(p.OH):
        yrow = y + oh * OW
        irow = ind + oh * OW
        for ow in range(OW):
            yrow[ow] = -INFINITY
            irow[ow] = -1      # stays -1 only for an empty window (cannot
                               # happen with parameters pool2d_check accepts)
        _taps(oh * sh - ph, kh, dh, H, &th0, &th1)
        for th in range(th0, th1):
            ih = oh * sh - ph + th * dh
            xrow = x + ih * W
            for tw in range(kw):
                off = tw * dw - pw
                _out_range(off, sw, W, OW, &ow0, &ow1)
                for ow in range(ow0, ow1):
                    v = xrow[ow * sw + off]
                    take = (v > yrow[ow]) | (v != v) | (irow[ow] < 0)
                    yrow[ow] = v if take else yrow[ow]
                    irow[ow] = ih * W + ow * sw + off if take else irow[ow]


cdef void _max_plane_2x2(const pool2d_params* p, const floating* x, floating* y,
                         int64_t* ind) noexcept nogil:
    """kernel 2, stride 2, no padding or dilation: the common CNN case."""
    cdef Py_ssize_t W = p.W, OW = p.OW
    cdef Py_ssize_t oh, ow, pos, best_pos
    cdef const floating* r0
    cdef const floating* r1
    cdef floating best, v
    for oh in range(p.OH):
        r0 = x + 2 * oh * W
        r1 = r0 + W
        for ow in range(OW):
            best = r0[2 * ow]
            best_pos = 2 * oh * W + 2 * ow
            v = r0[2 * ow + 1]
            if v > best or v != v:
                best = v
                best_pos = 2 * oh * W + 2 * ow + 1
            v = r1[2 * ow]
            if v > best or v != v:
                best = v
                best_pos = (2 * oh + 1) * W + 2 * ow
            v = r1[2 * ow + 1]
            if v > best or v != v:
                best = v
                best_pos = (2 * oh + 1) * W + 2 * ow + 1
            y[oh * OW + ow] = best
            ind[oh * OW + ow] = best_pos


cdef void _max_plane_2x2_values(const pool2d_params* p, const floating* x,
                                floating* y) noexcept nogil:
    """_max_plane_2x2 without the indices (inference): the same selections,
    so the same values, as branch-free selects the compiler can vectorise."""
    cdef Py_ssize_t W = p.W, OW = p.OW
    cdef Py_ssize_t oh, ow
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* yr
    cdef floating best, v
    for oh in range(p.OH):
        r0 = x + 2 * oh * W
        r1 = r0 + W
        yr = y + oh * OW
        for ow in range(OW):
            best = r0[2 * ow]
            v = r0[2 * ow + 1]
            best = v if (v > best) | (v != v) else best
            v = r1[2 * ow]
            best = v if (v > best) | (v != v) else best
            v = r1[2 * ow + 1]
            best = v if (v > best) | (v != v) else best
            yr[ow] = best


cdef int max_pool2d_forward(const pool2d_params* p, const floating* x,
                            floating* y, int64_t* indices) noexcept nogil:
    cdef int err = pool2d_check(p)
    cdef Py_ssize_t plane, planes = p.N * p.C
    cdef Py_ssize_t HW = p.H * p.W, OHW = p.OH * p.OW
    cdef unsigned int mode
    cdef bint fast = (p.kh == 2 and p.kw == 2 and p.sh == 2 and p.sw == 2
                      and p.ph == 0 and p.pw == 0 and p.dh == 1 and p.dw == 1
                      and 2 * p.OH <= p.H and 2 * p.OW <= p.W)
    cdef int64_t* scratch
    cdef bint failed = False
    if err != ENGINE_OK:
        return err
    with parallel(num_threads=_team(<double>planes * OHW * p.kh * p.kw)):
        mode = engine_ftz_enter()
        scratch = NULL
        if indices == NULL and not fast:
            scratch = <int64_t*>malloc(OHW * sizeof(int64_t))
        for plane in prange(planes, schedule='static'):
            if indices == NULL:
                if fast:
                    _max_plane_2x2_values(p, x + plane * HW, y + plane * OHW)
                elif scratch != NULL:
                    _max_plane(p, x + plane * HW, y + plane * OHW, scratch)
                else:
                    failed = True
            elif fast:
                _max_plane_2x2(p, x + plane * HW, y + plane * OHW, indices + plane * OHW)
            else:
                _max_plane(p, x + plane * HW, y + plane * OHW, indices + plane * OHW)
        free(scratch)
        engine_ftz_exit(mode)
    return ENGINE_ENOMEM if failed else ENGINE_OK


cdef Py_ssize_t _max_back_plane(Py_ssize_t HW, Py_ssize_t OHW, const floating* gy,
                                const int64_t* ind, floating* gx) noexcept nogil:
    """Scatter one plane; returns how many indices were out of range."""
    cdef Py_ssize_t o, bad = 0
    cdef int64_t i
    memset(gx, 0, HW * sizeof(floating))
    for o in range(OHW):
        i = ind[o]
        if i >= 0 and i < HW:
            gx[i] += gy[o]
        elif i != -1:      # -1 marks an empty window: no input to credit
            bad += 1
    return bad


cdef int max_pool2d_backward(const pool2d_params* p, const floating* grad_y,
                             const int64_t* indices, floating* grad_x) noexcept nogil:
    cdef int err = _shape_check(p)
    cdef Py_ssize_t plane, planes = p.N * p.C
    cdef Py_ssize_t HW = p.H * p.W, OHW = p.OH * p.OW
    cdef Py_ssize_t bad = 0
    cdef unsigned int mode
    if err != ENGINE_OK:
        return err
    with parallel(num_threads=_team(<double>planes * (HW + OHW))):
        mode = engine_ftz_enter()
        for plane in prange(planes, schedule='static'):
            bad += _max_back_plane(HW, OHW, grad_y + plane * OHW,
                                   indices + plane * OHW, grad_x + plane * HW)
        engine_ftz_exit(mode)
    return ENGINE_EINDEX if bad else ENGINE_OK


# ---------------------------------------------------------------------------
# Average pooling

cdef inline void _avg_window(const pool2d_params* p, Py_ssize_t oh, Py_ssize_t ow,
                             Py_ssize_t* h0, Py_ssize_t* h1, Py_ssize_t* w0,
                             Py_ssize_t* w1, Py_ssize_t* divisor) noexcept nogil:
    """torch's window: clipped to the padded input for the count_include_pad
    divisor, then to the input for the sum."""
    cdef Py_ssize_t hs = oh * p.sh - p.ph, ws = ow * p.sw - p.pw
    cdef Py_ssize_t he = min(hs + p.kh, p.H + p.ph), we = min(ws + p.kw, p.W + p.pw)
    cdef Py_ssize_t padded = (he - hs) * (we - ws)
    hs = max(hs, 0)
    ws = max(ws, 0)
    he = min(he, p.H)
    we = min(we, p.W)
    h0[0] = hs
    h1[0] = he
    w0[0] = ws
    w1[0] = we
    if p.divisor_override > 0:
        divisor[0] = p.divisor_override
    elif p.count_include_pad:
        divisor[0] = padded
    else:
        divisor[0] = (he - hs) * (we - ws)


cdef void _avg_plane(const pool2d_params* p, const floating* x, floating* y) noexcept nogil:
    """Window sums accumulated tap by tap along each output row (vectorisable
    passes; each output still sums its taps in (th, tw) order), then divided."""
    cdef Py_ssize_t H = p.H, W = p.W, OW = p.OW, kh = p.kh, kw = p.kw
    cdef Py_ssize_t sh = p.sh, sw = p.sw, ph = p.ph, pw = p.pw
    cdef Py_ssize_t oh, ow, th, tw, h0, h1, w0, w1, ow0, ow1, off, divisor
    cdef floating* yrow
    cdef const floating* xrow
    for oh in range(p.OH):
        yrow = y + oh * OW
        for ow in range(OW):
            yrow[ow] = 0
        h0 = max(oh * sh - ph, 0)
        h1 = min(oh * sh - ph + kh, H)
        for th in range(h0, h1):
            xrow = x + th * W
            for tw in range(kw):
                off = tw - pw
                _out_range(off, sw, W, OW, &ow0, &ow1)
                for ow in range(ow0, ow1):
                    yrow[ow] = yrow[ow] + xrow[ow * sw + off]
        for ow in range(OW):
            _avg_window(p, oh, ow, &h0, &h1, &w0, &w1, &divisor)
            if h0 >= h1 or w0 >= w1 or divisor == 0:
                yrow[ow] = 0
            else:
                yrow[ow] = yrow[ow] / <floating>divisor


cdef void _avg_back_plane(const pool2d_params* p, const floating* gy,
                          floating* gx) noexcept nogil:
    cdef Py_ssize_t W = p.W, oh, ow, ih, iw, h0, h1, w0, w1, divisor
    cdef floating g
    memset(gx, 0, p.H * W * sizeof(floating))
    for oh in range(p.OH):
        for ow in range(p.OW):
            _avg_window(p, oh, ow, &h0, &h1, &w0, &w1, &divisor)
            if h0 >= h1 or w0 >= w1 or divisor == 0:
                continue
            g = gy[oh * p.OW + ow] / <floating>divisor
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    gx[ih * W + iw] += g


cdef int avg_pool2d_forward(const pool2d_params* p, const floating* x,
                            floating* y) noexcept nogil:
    cdef int err = pool2d_check(p)
    cdef Py_ssize_t plane, planes = p.N * p.C
    cdef Py_ssize_t HW = p.H * p.W, OHW = p.OH * p.OW
    cdef unsigned int mode
    if err == ENGINE_OK and (p.dh != 1 or p.dw != 1):
        err = ENGINE_EBADARG
    if err != ENGINE_OK:
        return err
    with parallel(num_threads=_team(<double>planes * (OHW * p.kh * p.kw + OHW))):
        mode = engine_ftz_enter()
        for plane in prange(planes, schedule='static'):
            _avg_plane(p, x + plane * HW, y + plane * OHW)
        engine_ftz_exit(mode)
    return ENGINE_OK


cdef int avg_pool2d_backward(const pool2d_params* p, const floating* grad_y,
                             floating* grad_x) noexcept nogil:
    cdef int err = pool2d_check(p)
    cdef Py_ssize_t plane, planes = p.N * p.C
    cdef Py_ssize_t HW = p.H * p.W, OHW = p.OH * p.OW
    cdef unsigned int mode
    if err == ENGINE_OK and (p.dh != 1 or p.dw != 1):
        err = ENGINE_EBADARG
    if err != ENGINE_OK:
        return err
    with parallel(num_threads=_team(<double>planes * (OHW * p.kh * p.kw + HW))):
        mode = engine_ftz_enter()
        for plane in prange(planes, schedule='static'):
            _avg_back_plane(p, grad_y + plane * OHW, grad_x + plane * HW)
        engine_ftz_exit(mode)
    return ENGINE_OK


# ---------------------------------------------------------------------------
# Adaptive average pooling

cdef inline floating _plane_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of x[0:n] with 16 running partial sums (a vectorisable loop; the
    summation order depends on n only)."""
    cdef floating acc[16]
    cdef floating s = 0
    cdef Py_ssize_t i, k, n16 = n - n % 16
    for k in range(16):
        acc[k] = 0
    for i in range(0, n16, 16):
        for k in range(16):
            acc[k] = acc[k] + x[i + k]
    for k in range(16):
        s = s + acc[k]
    for i in range(n16, n):
        s = s + x[i]
    return s


cdef void _adaptive_plane(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                          const floating* x, floating* y) noexcept nogil:
    cdef Py_ssize_t oh, ow, ih, iw, h0, h1, w0, w1
    cdef floating s
    if OH == 1 and OW == 1:
        y[0] = _plane_sum(x, H * W) / <floating>(H * W)
        return
    for oh in range(OH):
        h0 = (oh * H) // OH
        h1 = ceil_div((oh + 1) * H, OH)
        for ow in range(OW):
            w0 = (ow * W) // OW
            w1 = ceil_div((ow + 1) * W, OW)
            s = 0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    s = s + x[ih * W + iw]
            y[oh * OW + ow] = s / <floating>((h1 - h0) * (w1 - w0))


cdef void _adaptive_back_plane(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                               const floating* gy, floating* gx) noexcept nogil:
    cdef Py_ssize_t oh, ow, ih, iw, h0, h1, w0, w1
    cdef floating g
    if OH == 1 and OW == 1:
        g = gy[0] / <floating>(H * W)
        for ih in range(H * W):
            gx[ih] = g
        return
    memset(gx, 0, H * W * sizeof(floating))
    for oh in range(OH):
        h0 = (oh * H) // OH
        h1 = ceil_div((oh + 1) * H, OH)
        for ow in range(OW):
            w0 = (ow * W) // OW
            w1 = ceil_div((ow + 1) * W, OW)
            g = gy[oh * OW + ow] / <floating>((h1 - h0) * (w1 - w0))
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    gx[ih * W + iw] += g


cdef int adaptive_avg_pool2d_forward(Py_ssize_t planes, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t OH, Py_ssize_t OW,
                                     const floating* x, floating* y) noexcept nogil:
    cdef Py_ssize_t plane
    cdef unsigned int mode
    if planes < 0 or H < 1 or W < 1 or OH < 1 or OW < 1:
        return ENGINE_EBADARG
    with parallel(num_threads=_team(<double>planes * (H * W + OH * OW))):
        mode = engine_ftz_enter()
        for plane in prange(planes, schedule='static'):
            _adaptive_plane(H, W, OH, OW, x + plane * H * W, y + plane * OH * OW)
        engine_ftz_exit(mode)
    return ENGINE_OK


cdef int adaptive_avg_pool2d_backward(Py_ssize_t planes, Py_ssize_t H, Py_ssize_t W,
                                      Py_ssize_t OH, Py_ssize_t OW,
                                      const floating* grad_y,
                                      floating* grad_x) noexcept nogil:
    cdef Py_ssize_t plane
    cdef unsigned int mode
    if planes < 0 or H < 1 or W < 1 or OH < 1 or OW < 1:
        return ENGINE_EBADARG
    with parallel(num_threads=_team(<double>planes * (H * W + OH * OW))):
        mode = engine_ftz_enter()
        for plane in prange(planes, schedule='static'):
            _adaptive_back_plane(H, W, OH, OW, grad_y + plane * OH * OW,
                                 grad_x + plane * H * W)
        engine_ftz_exit(mode)
    return ENGINE_OK


# ---------------------------------------------------------------------------
# Python entries

def _pair(value, name, minimum):
    """An int or a pair of ints -> (a, b), each >= minimum."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints. Received: {name}={value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int or a pair of ints. Received: {name}={value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}. Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def pool_params(input_shape, kernel_size, stride=None, padding=0, dilation=1,
                ceil_mode=False):
    """Validate pooling arguments for an NCHW input shape.

    Returns ``(kernel, stride, padding, dilation, (OH, OW))`` as int pairs;
    raises ValueError (naming the argument) when a value is out of range or
    the window does not fit the padded input.
    """
    kernel = _pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding must be at most half of kernel_size. Received: "
                         f"padding={padding}, kernel_size={kernel}")
    N, C, H, W = input_shape
    out = []
    for axis, size in ((0, H), (1, W)):
        o = pool_output_size(size, kernel[axis], stride[axis], padding[axis],
                             dilation[axis], bool(ceil_mode))
        if o < 1:
            raise ValueError(
                f"kernel_size {kernel} (dilation {dilation}) is larger than the padded "
                f"input {H + 2 * padding[0]}x{W + 2 * padding[1]} (input {H}x{W}, "
                f"padding {padding}): output size would be {o}")
        out.append(int(o))
    return kernel, stride, padding, dilation, tuple(out)


cdef pool2d_params _make_params(shape, kernel, stride, padding, dilation, out_hw,
                                bint ceil_mode, bint count_include_pad,
                                Py_ssize_t divisor_override):
    cdef pool2d_params p
    p.N, p.C, p.H, p.W = shape
    p.OH, p.OW = out_hw
    p.kh, p.kw = kernel
    p.sh, p.sw = stride
    p.ph, p.pw = padding
    p.dh, p.dw = dilation
    p.ceil_mode = ceil_mode
    p.count_include_pad = count_include_pad
    p.divisor_override = divisor_override
    return p


def _check_code(int err, what):
    if err == ENGINE_EINDEX:
        raise ValueError(f"{what}: an index is outside its plane")
    if err != ENGINE_OK:
        raise ValueError(f"{what}: invalid arguments (code {err})")


def _input_shape(input_shape, grad_out, name="input_shape"):
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"{name} must have 4 entries (N, C, H, W), got {input_shape!r}")
    if shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"grad_out batch/channels {grad_out.shape[:2]} do not match "
                         f"{name} {shape}")
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"{name} spatial size must be positive, got {shape}")
    return shape


cdef class MaxPool2dPlan:
    """Max-pooling arguments validated once for one input shape and dtype.

    ``MaxPool2dPlan(x_shape, dtype, kernel_size, stride, padding, dilation,
    ceil_mode)`` runs max_pool2d's checks (same errors); ``plan.forward(x,
    indices=True)`` then only checks x's shape (dtype and C-contiguity through
    the typed buffer) and returns max_pool2d(x, ...)'s (y, indices) --
    indices None when not asked for (inference skips computing them; the
    values are the same bits). pyengine's MaxPool2d keeps one per input shape.
    """
    cdef pool2d_params p
    cdef bint f32
    cdef readonly tuple x_shape, y_shape
    cdef readonly object dtype

    def __init__(self, x_shape, dtype, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False):
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        shape = tuple(int(v) for v in x_shape)
        if len(shape) != 4:
            raise ValueError(f"x must be 4-dimensional, got shape {shape}")
        kernel, stride, padding, dilation, out_hw = pool_params(
            shape, kernel_size, stride, padding, dilation, ceil_mode)
        self.y_shape = shape[:2] + out_hw
        empty(self.y_shape, dt, "output")      # the size checks, once
        self.p = _make_params(shape, kernel, stride, padding, dilation, out_hw,
                              ceil_mode, True, 0)
        self.x_shape = shape
        self.dtype = dt
        self.f32 = dt == np.float32

    def forward(self, x, bint indices=True):
        if x.shape != self.x_shape:
            raise ValueError(f"x must have shape {self.x_shape} (the plan's), got {x.shape}")
        y = np.empty(self.y_shape, self.dtype)
        ind = np.empty(self.y_shape, np.int64) if indices else None
        if y.size == 0:
            return y, ind
        cdef int err
        if self.f32:
            err = _max_fwd_opt[float](&self.p, x, y, ind)
        else:
            err = _max_fwd_opt[double](&self.p, x, y, ind)
        _check_code(err, "max_pool2d")
        return y, ind


cdef int _max_fwd_opt(pool2d_params* p, floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                      int64_t[:, :, :, ::1] ind):
    cdef int64_t* pi = &ind[0, 0, 0, 0] if ind is not None else NULL
    cdef int err
    with nogil:
        err = max_pool2d_forward(p, &x[0, 0, 0, 0], &y[0, 0, 0, 0], pi)
    return err


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1,
                       ceil_mode=False):
    """Max pooling with argmax indices.

    Args:
        x: (N, C, H, W) float32/float64 (non-contiguous input is copied).
        kernel_size, stride (default kernel_size), padding, dilation: int or pair.
        ceil_mode: ceil instead of floor when computing the output size.

    Returns:
        (y, indices): y (N, C, OH, OW) of x's dtype; indices int64, the flat
        position ih * W + iw of each maximum within its plane.
    """
    x = float_array(x, "x", ndim=4)
    kernel, stride, padding, dilation, out_hw = pool_params(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = empty(x.shape[:2] + out_hw, x.dtype, "output")
    ind = np.empty(y.shape, dtype=np.int64)
    cdef pool2d_params p = _make_params(x.shape, kernel, stride, padding, dilation,
                                        out_hw, ceil_mode, True, 0)
    cdef int err
    if y.size == 0:
        return y, ind
    if x.dtype == np.float32:
        err = _max_fwd[float](&p, x, y, ind)
    else:
        err = _max_fwd[double](&p, x, y, ind)
    _check_code(err, "max_pool2d")
    return y, ind


cdef int _max_fwd(pool2d_params* p, floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                  int64_t[:, :, :, ::1] ind):
    cdef int err
    with nogil:
        err = max_pool2d_forward(p, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &ind[0, 0, 0, 0])
    return err


def max_pool2d_grad(grad_out, indices, input_shape):
    """Gradient of max pooling: grad_out scattered to the argmax positions.

    Args:
        grad_out: (N, C, OH, OW) float32/float64.
        indices: (N, C, OH, OW) int64 from max_pool2d.
        input_shape: (N, C, H, W) of the forward input.

    Returns:
        grad_x (N, C, H, W) of grad_out's dtype.
    """
    grad_out = float_array(grad_out, "grad_out", ndim=4)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        raise TypeError(f"indices must be an int64 array, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.shape != grad_out.shape:
        raise ValueError(f"indices shape {indices.shape} must equal grad_out shape "
                         f"{grad_out.shape}")
    if not indices.flags.c_contiguous or not indices.flags.writeable:
        indices = np.array(indices, order="C")   # the int64 memoryview needs a writeable buffer
    shape = _input_shape(input_shape, grad_out)
    grad_x = empty(shape, grad_out.dtype, "input_shape")
    if grad_x.size == 0:
        return grad_x
    cdef pool2d_params p = _make_params(shape, (1, 1), (1, 1), (0, 0), (1, 1),
                                        grad_out.shape[2:], False, True, 0)
    cdef int err
    if grad_out.dtype == np.float32:
        err = _max_bwd[float](&p, grad_out, indices, grad_x)
    else:
        err = _max_bwd[double](&p, grad_out, indices, grad_x)
    _check_code(err, "max_pool2d_grad")
    return grad_x


cdef int _max_bwd(pool2d_params* p, floating[:, :, :, ::1] gy, int64_t[:, :, :, ::1] ind,
                  floating[:, :, :, ::1] gx):
    cdef int err
    with nogil:
        err = max_pool2d_backward(p, &gy[0, 0, 0, 0], &ind[0, 0, 0, 0], &gx[0, 0, 0, 0])
    return err


def _avg_params(shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                divisor_override):
    kernel, stride, padding, _, out_hw = pool_params(
        shape, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is None:
        divisor = 0
    else:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, (int, np.integer)):
            raise TypeError(f"divisor_override must be an int or None. Received: "
                            f"divisor_override={divisor_override!r}")
        if divisor_override < 1:
            raise ValueError(f"divisor_override must be >= 1. Received: "
                             f"divisor_override={divisor_override}")
        divisor = int(divisor_override)
    return kernel, stride, padding, out_hw, divisor


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    """Average pooling with torch's divisor rules.

    Args:
        x: (N, C, H, W) float32/float64.
        kernel_size, stride (default kernel_size), padding: int or pair.
        ceil_mode: ceil instead of floor when computing the output size.
        count_include_pad: padded zeros count in the divisor.
        divisor_override: a fixed divisor (int >= 1) instead of the window size.

    Returns:
        y (N, C, OH, OW).
    """
    x = float_array(x, "x", ndim=4)
    kernel, stride, padding, out_hw, divisor = _avg_params(
        x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override)
    cdef pool2d_params p = _make_params(x.shape, kernel, stride, padding, (1, 1), out_hw,
                                        ceil_mode, count_include_pad, divisor)
    y = empty(x.shape[:2] + out_hw, x.dtype, "output")
    cdef int err
    if y.size == 0:
        return y
    if x.dtype == np.float32:
        err = _avg_fwd[float](&p, x, y)
    else:
        err = _avg_fwd[double](&p, x, y)
    _check_code(err, "avg_pool2d")
    return y


cdef int _avg_fwd(pool2d_params* p, floating[:, :, :, ::1] x, floating[:, :, :, ::1] y):
    cdef int err
    with nogil:
        err = avg_pool2d_forward(p, &x[0, 0, 0, 0], &y[0, 0, 0, 0])
    return err


def avg_pool2d_grad(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    """Gradient of avg_pool2d with the same arguments.

    Args:
        grad_out: (N, C, OH, OW) float32/float64.
        input_shape: (N, C, H, W) of the forward input.

    Returns:
        grad_x (N, C, H, W).
    """
    grad_out = float_array(grad_out, "grad_out", ndim=4)
    shape = _input_shape(input_shape, grad_out)
    kernel, stride, padding, out_hw, divisor = _avg_params(
        shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override)
    cdef pool2d_params p = _make_params(shape, kernel, stride, padding, (1, 1), out_hw,
                                        ceil_mode, count_include_pad, divisor)
    if grad_out.shape[2:] != out_hw:
        raise ValueError(f"grad_out spatial size {grad_out.shape[2:]} does not match the "
                         f"pooled size {out_hw} of input_shape {shape}")
    grad_x = empty(shape, grad_out.dtype, "input_shape")
    cdef int err
    if grad_x.size == 0:
        return grad_x
    if grad_out.dtype == np.float32:
        err = _avg_bwd[float](&p, grad_out, grad_x)
    else:
        err = _avg_bwd[double](&p, grad_out, grad_x)
    _check_code(err, "avg_pool2d_grad")
    return grad_x


cdef int _avg_bwd(pool2d_params* p, floating[:, :, :, ::1] gy, floating[:, :, :, ::1] gx):
    cdef int err
    with nogil:
        err = avg_pool2d_backward(p, &gy[0, 0, 0, 0], &gx[0, 0, 0, 0])
    return err


def adaptive_avg_pool2d(x, output_size):
    """Adaptive average pooling to output_size (int or pair of ints >= 1).

    Window of output cell i along an axis of length L: rows floor(i L / O)
    to ceil((i + 1) L / O) - 1 (torch's). output_size 1 is global average
    pooling (a fast path).

    Args:
        x: (N, C, H, W) float32/float64.

    Returns:
        y (N, C, OH, OW).
    """
    x = float_array(x, "x", ndim=4)
    OH, OW = _pair(output_size, "output_size", 1)
    N, C, H, W = x.shape
    if H < 1 or W < 1:
        raise ValueError(f"x spatial size must be positive, got shape {x.shape}")
    y = empty((N, C, OH, OW), x.dtype, "output_size")
    cdef int err
    if y.size == 0:
        return y
    if x.dtype == np.float32:
        err = _adapt_fwd[float](x, y)
    else:
        err = _adapt_fwd[double](x, y)
    _check_code(err, "adaptive_avg_pool2d")
    return y


cdef int _adapt_fwd(floating[:, :, :, ::1] x, floating[:, :, :, ::1] y):
    cdef int err
    with nogil:
        err = adaptive_avg_pool2d_forward(x.shape[0] * x.shape[1], x.shape[2], x.shape[3],
                                          y.shape[2], y.shape[3], &x[0, 0, 0, 0],
                                          &y[0, 0, 0, 0])
    return err


def adaptive_avg_pool2d_grad(grad_out, input_shape):
    """Gradient of adaptive_avg_pool2d.

    Args:
        grad_out: (N, C, OH, OW) float32/float64.
        input_shape: (N, C, H, W) of the forward input.

    Returns:
        grad_x (N, C, H, W).
    """
    grad_out = float_array(grad_out, "grad_out", ndim=4)
    shape = _input_shape(input_shape, grad_out)
    grad_x = empty(shape, grad_out.dtype, "input_shape")
    cdef int err
    if grad_x.size == 0 or grad_out.size == 0:
        grad_x[...] = 0
        return grad_x
    if grad_out.dtype == np.float32:
        err = _adapt_bwd[float](grad_out, grad_x)
    else:
        err = _adapt_bwd[double](grad_out, grad_x)
    _check_code(err, "adaptive_avg_pool2d_grad")
    return grad_x


cdef int _adapt_bwd(floating[:, :, :, ::1] gy, floating[:, :, :, ::1] gx):
    cdef int err
    with nogil:
        err = adaptive_avg_pool2d_backward(gx.shape[0] * gx.shape[1], gx.shape[2],
                                           gx.shape[3], gy.shape[2], gy.shape[3],
                                           &gy[0, 0, 0, 0], &gx[0, 0, 0, 0])
    return err
