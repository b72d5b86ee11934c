"""2-D convolution in plain NumPy: im2col + matrix products, the textbook way.

Layout NCHW; weight (K, C // groups, kh, kw) like torch. ``padding`` is an
int, a pair (ph, pw) or a 4-tuple (top, bottom, left, right) of zeros.
"""

import numpy as np

__all__ = ["conv2d_output_shape", "im2col", "col2im", "conv2d_forward",
           "conv2d_backward"]


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _pads(padding):
    """(top, bottom, left, right) from an int, a pair or a 4-tuple."""
    p = (padding,) * 2 if np.isscalar(padding) else tuple(padding)
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    return tuple(p)


def conv2d_output_shape(H, W, kernel_size, stride=1, padding=0, dilation=1):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    top, bottom, left, right = _pads(padding)
    OH = (H + top + bottom - dh * (kh - 1) - 1) // sh + 1
    OW = (W + left + right - dw * (kw - 1) - 1) // sw + 1
    return OH, OW


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """x (N, C, H, W) -> columns (N, C*kh*kw, OH*OW), rows ordered (c, i, j)."""
    N, C, H, W = x.shape
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    top, bottom, left, right = _pads(padding)
    OH, OW = conv2d_output_shape(H, W, (kh, kw), (sh, sw), padding, (dh, dw))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    cols = np.zeros((N, C, kh, kw, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (OH - 1) + 1, sh)
            colsl = slice(j * dw, j * dw + sw * (OW - 1) + 1, sw)
            cols[:, :, i, j] = xp[:, :, rows, colsl]
    return cols.reshape(N, C * kh * kw, OH * OW)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Adjoint of im2col: sum every column entry back into its input pixel."""
    N, C, H, W = x_shape
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    top, bottom, left, right = _pads(padding)
    OH, OW = conv2d_output_shape(H, W, (kh, kw), (sh, sw), padding, (dh, dw))
    cols = cols.reshape(N, C, kh, kw, OH, OW)
    xp = np.zeros((N, C, H + top + bottom, W + left + right), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (OH - 1) + 1, sh)
            colsl = slice(j * dw, j * dw + sw * (OW - 1) + 1, sw)
            xp[:, :, rows, colsl] += cols[:, :, i, j]
    return xp[:, :, top:top + H, left:left + W].copy()


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, k] = bias[k] + sum over the group's channels and taps of w * x."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = weight.shape
    OH, OW = conv2d_output_shape(H, W, (kh, kw), stride, padding, dilation)
    cols = im2col(x, (kh, kw), stride, padding, dilation)   # (N, C*kh*kw, P)
    Kg, R = K // groups, Cg * kh * kw
    y = np.empty((N, K, OH * OW), dtype=x.dtype)
    for g in range(groups):
        wg = weight[g * Kg:(g + 1) * Kg].reshape(Kg, R)
        y[:, g * Kg:(g + 1) * Kg] = wg @ cols[:, g * R:(g + 1) * R]
    if bias is not None:
        y += bias.reshape(1, K, 1)
    return y.reshape(N, K, OH, OW)


def conv2d_backward(x, weight, grad_out, stride=1, padding=0, dilation=1, groups=1):
    """Gradients (dx, dweight, dbias) of sum(grad_out * conv2d_forward(...))."""
    N, C, H, W = x.shape
    K, Cg, kh, kw = weight.shape
    cols = im2col(x, (kh, kw), stride, padding, dilation)
    Kg, R = K // groups, Cg * kh * kw
    dy = grad_out.reshape(N, K, -1)
    dcols = np.empty_like(cols)
    dw = np.empty_like(weight)
    for g in range(groups):
        wg = weight[g * Kg:(g + 1) * Kg].reshape(Kg, R)
        dyg = dy[:, g * Kg:(g + 1) * Kg]                        # (N, Kg, P)
        colg = cols[:, g * R:(g + 1) * R]                       # (N, R, P)
        dw[g * Kg:(g + 1) * Kg] = np.einsum("nkp,nrp->kr", dyg, colg).reshape(Kg, Cg, kh, kw)
        dcols[:, g * R:(g + 1) * R] = wg.T @ dyg
    dx = col2im(dcols, x.shape, (kh, kw), stride, padding, dilation)
    db = dy.sum(axis=(0, 2))
    return dx, dw, db
