"""Plain NumPy 2-D pooling (NCHW), forward and backward: the yardstick for engine.pool.

Loops over output positions, vectorised over batch and channels only, with
the window rules spelled out as in torch's documentation.
"""

import numpy as np

__all__ = [
    "pool_output_size",
    "max_pool2d_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward",
    "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def pool_output_size(size, kernel, stride, pad, dilation=1, ceil_mode=False):
    """torch's rule: floor/ceil((size + 2 pad - dilation (kernel - 1) - 1) / stride) + 1,
    and in ceil mode the last window must start inside the input or left padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def _geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    p = _pair(padding)
    d = _pair(dilation)
    H, W = x_shape[2], x_shape[3]
    OH = pool_output_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    OW = pool_output_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    return k, s, p, d, OH, OW


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Returns (y, indices); indices are flat positions ih * W + iw within the plane
    (the first maximum of the window in row-major order)."""
    N, C, H, W = x.shape
    k, s, p, d, OH, OW = _geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    ind = np.empty((N, C, OH, OW), dtype=np.int64)
    for oh in range(OH):
        for ow in range(OW):
            rows = [oh * s[0] - p[0] + i * d[0] for i in range(k[0])]
            cols = [ow * s[1] - p[1] + j * d[1] for j in range(k[1])]
            rows = [r for r in rows if 0 <= r < H]
            cols = [c for c in cols if 0 <= c < W]
            flat = np.array([r * W + c for r in rows for c in cols], dtype=np.int64)
            window = x.reshape(N, C, H * W)[:, :, flat]
            best = np.argmax(window, axis=2)
            ind[:, :, oh, ow] = flat[best]
            y[:, :, oh, ow] = np.take_along_axis(window, best[:, :, None], axis=2)[:, :, 0]
    return y, ind


def max_pool2d_backward(grad_out, indices, input_shape):
    N, C, H, W = input_shape
    grad_x = np.zeros((N, C, H * W), dtype=grad_out.dtype)
    g = grad_out.reshape(N, C, -1)
    i = indices.reshape(N, C, -1)
    for n in range(N):
        for c in range(C):
            np.add.at(grad_x[n, c], i[n, c], g[n, c])
    return grad_x.reshape(N, C, H, W)


def _avg_window(oh, ow, H, W, k, s, p, count_include_pad, divisor_override):
    h0, w0 = oh * s[0] - p[0], ow * s[1] - p[1]
    h1, w1 = min(h0 + k[0], H + p[0]), min(w0 + k[1], W + p[1])
    padded_count = (h1 - h0) * (w1 - w0)
    h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, H), min(w1, W)
    if divisor_override:
        divisor = divisor_override
    elif count_include_pad:
        divisor = padded_count
    else:
        divisor = (h1 - h0) * (w1 - w0)
    return h0, h1, w0, w1, divisor


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):
    N, C, H, W = x.shape
    k, s, p, _, OH, OW = _geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
    y = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for oh in range(OH):
        for ow in range(OW):
            h0, h1, w0, w1, divisor = _avg_window(oh, ow, H, W, k, s, p,
                                                  count_include_pad, divisor_override)
            if h0 < h1 and w0 < w1:
                y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) / divisor
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None):
    N, C, H, W = input_shape
    k, s, p, _, OH, OW = _geometry(input_shape, kernel_size, stride, padding, 1, ceil_mode)
    grad_x = np.zeros(input_shape, dtype=grad_out.dtype)
    for oh in range(OH):
        for ow in range(OW):
            h0, h1, w0, w1, divisor = _avg_window(oh, ow, H, W, k, s, p,
                                                  count_include_pad, divisor_override)
            if h0 < h1 and w0 < w1:
                grad_x[:, :, h0:h1, w0:w1] += (grad_out[:, :, oh, ow] / divisor)[:, :, None, None]
    return grad_x


def _adaptive_bounds(i, size, out):
    return (i * size) // out, -(-((i + 1) * size) // out)


def adaptive_avg_pool2d_forward(x, output_size):
    N, C, H, W = x.shape
    OH, OW = _pair(output_size)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for oh in range(OH):
        h0, h1 = _adaptive_bounds(oh, H, OH)
        for ow in range(OW):
            w0, w1 = _adaptive_bounds(ow, W, OW)
            y[:, :, oh, ow] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_backward(grad_out, input_shape):
    N, C, H, W = input_shape
    OH, OW = grad_out.shape[2:]
    grad_x = np.zeros(input_shape, dtype=grad_out.dtype)
    for oh in range(OH):
        h0, h1 = _adaptive_bounds(oh, H, OH)
        for ow in range(OW):
            w0, w1 = _adaptive_bounds(ow, W, OW)
            count = (h1 - h0) * (w1 - w0)
            grad_x[:, :, h0:h1, w0:w1] += (grad_out[:, :, oh, ow] / count)[:, :, None, None]
    return grad_x
