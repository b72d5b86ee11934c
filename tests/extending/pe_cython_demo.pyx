# A downstream Cython extension: conv -> relu -> maxpool -> flatten -> linear
# forward on the engine's C-level entries, all inside one `with nogil:` block,
# and a one-layer LSTM forward (float64 here: the entries are fused).
# Built by tests/test_capi.py against the installed package's .pxd files.

from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t

from engine._common cimport ENGINE_OK, ENGINE_ENOMEM
from engine.conv cimport (Conv2dParams, CONV_ALGO_AUTO, conv2d_forward,
                          conv2d_set_output_size)
from engine.activation cimport relu_forward
from engine.pool cimport pool2d_params, pool_output_size, max_pool2d_forward
from engine.dense cimport linear_forward
from engine.rnn cimport rnn_dims, RNN_LSTM, rnn_forward


cdef int cnn_forward(const float* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H,
                     Py_ssize_t W, const float* cw, const float* cb, Py_ssize_t K,
                     Py_ssize_t k, const float* dw, const float* db,
                     Py_ssize_t OUT, float* y) noexcept nogil:
    """conv(k x k, padding k//2) -> relu -> maxpool 2 -> linear, N images."""
    cdef Conv2dParams p
    cdef pool2d_params q
    cdef float* a = NULL
    cdef float* pooled = NULL
    cdef int64_t* idx = NULL
    cdef int rc
    p.N = N; p.C = C; p.H = H; p.W = W; p.K = K
    p.kh = k; p.kw = k; p.sh = 1; p.sw = 1; p.ph = k // 2; p.pw = k // 2
    p.dh = 1; p.dw = 1; p.groups = 1
    rc = conv2d_set_output_size(&p)
    if rc != ENGINE_OK:
        return rc
    q.N = N; q.C = K; q.H = p.OH; q.W = p.OW
    q.kh = 2; q.kw = 2; q.sh = 2; q.sw = 2; q.ph = 0; q.pw = 0; q.dh = 1; q.dw = 1
    q.ceil_mode = False; q.count_include_pad = True; q.divisor_override = 0
    q.OH = pool_output_size(q.H, 2, 2, 0, 1, False)
    q.OW = pool_output_size(q.W, 2, 2, 0, 1, False)
    a = <float*>malloc(N * K * p.OH * p.OW * sizeof(float))
    pooled = <float*>malloc(N * K * q.OH * q.OW * sizeof(float))
    idx = <int64_t*>malloc(N * K * q.OH * q.OW * sizeof(int64_t))
    if a == NULL or pooled == NULL or idx == NULL:
        rc = ENGINE_ENOMEM
    else:
        rc = conv2d_forward(p, CONV_ALGO_AUTO, x, cw, cb, a)
        if rc == ENGINE_OK:
            rc = relu_forward(a, a, N * K * p.OH * p.OW)
        if rc == ENGINE_OK:
            rc = max_pool2d_forward(&q, a, pooled, idx)
        if rc == ENGINE_OK:
            rc = linear_forward(pooled, dw, db, y, N, K * q.OH * q.OW, OUT)
    free(a)
    free(pooled)
    free(idx)
    return rc


def forward(const float[:, :, :, ::1] x, const float[:, :, :, ::1] conv_w,
            const float[::1] conv_b, const float[:, ::1] lin_w,
            const float[::1] lin_b, float[:, ::1] out):
    """Python-callable wrapper: validates nothing beyond the memoryview types
    (the test passes consistent arrays); the work runs without the GIL."""
    cdef int rc
    with nogil:
        rc = cnn_forward(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2],
                         x.shape[3], &conv_w[0, 0, 0, 0], &conv_b[0],
                         conv_w.shape[0], conv_w.shape[2], &lin_w[0, 0],
                         &lin_b[0], lin_w.shape[0], &out[0, 0])
    return rc


def lstm(const double[:, :, ::1] x, const double[:, ::1] w_ih,
         const double[:, ::1] w_hh, const double[::1] b_ih, const double[::1] b_hh,
         const double[:, ::1] h0, const double[:, ::1] c0, double[:, :, ::1] y,
         double[:, ::1] h_n, double[:, ::1] c_n):
    """One LSTM layer over x (T, B, I), inference (no training workspace)."""
    cdef rnn_dims d
    cdef int rc
    d.mode = RNN_LSTM
    d.T = x.shape[0]; d.B = x.shape[1]; d.F = x.shape[2]; d.H = h0.shape[1]
    d.ldy = d.H
    d.reverse = False
    with nogil:
        rc = rnn_forward(&d, &x[0, 0, 0], &w_ih[0, 0], &w_hh[0, 0], &b_ih[0], &b_hh[0],
                         &h0[0, 0], &c0[0, 0], &y[0, 0, 0], &h_n[0, 0], &c_n[0, 0],
                         <double*>NULL)
    return rc
