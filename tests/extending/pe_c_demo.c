/* A downstream C extension module: conv -> relu -> maxpool -> linear forward
   and an LSTM forward through the engine's C API header, without the GIL.
   Built by tests/test_capi.py. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <engine/pyengine_capi.h>

/* Borrow a C-contiguous float32 buffer of exactly `count` floats. */
static int get_floats(PyObject *obj, Py_buffer *view, Py_ssize_t count, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->format == NULL || strcmp(view->format, "f") != 0 ||
        view->len != count * (Py_ssize_t)sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "expected %zd float32 values", count);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* forward(x, conv_w, conv_b, lin_w, lin_b, out, N, C, H, W, K, k, OUT) -> rc
   conv k x k with padding k // 2, relu, maxpool 2, flatten, linear. */
static PyObject *forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *ocw, *ocb, *olw, *olb, *oout;
    Py_ssize_t N, C, H, W, K, k, OUT, feat;
    Py_buffer bx, bcw, bcb, blw, blb, bout;
    pe_conv2d_params p;
    pe_pool2d_params q;
    float *act, *pooled;
    int rc;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOnnnnnnn", &ox, &ocw, &ocb, &olw, &olb, &oout,
                          &N, &C, &H, &W, &K, &k, &OUT))
        return NULL;
    p.N = N; p.C = C; p.H = H; p.W = W; p.K = K; p.kh = k; p.kw = k;
    p.sh = 1; p.sw = 1; p.ph = k / 2; p.pw = k / 2; p.dh = 1; p.dw = 1; p.groups = 1;
    if (pe_conv2d_output_size(&p) != PE_OK) {
        PyErr_SetString(PyExc_ValueError, "bad convolution parameters");
        return NULL;
    }
    q.N = N; q.C = K; q.H = p.OH; q.W = p.OW; q.kh = 2; q.kw = 2; q.sh = 2; q.sw = 2;
    q.ph = 0; q.pw = 0; q.dh = 1; q.dw = 1; q.ceil_mode = 0; q.count_include_pad = 1;
    q.divisor_override = 0;
    q.OH = pe_pool_output_size(q.H, 2, 2, 0, 1, 0);
    q.OW = pe_pool_output_size(q.W, 2, 2, 0, 1, 0);
    feat = K * q.OH * q.OW;
    if (get_floats(ox, &bx, N * C * H * W, 0) < 0) return NULL;
    if (get_floats(ocw, &bcw, K * C * k * k, 0) < 0) goto fail_x;
    if (get_floats(ocb, &bcb, K, 0) < 0) goto fail_cw;
    if (get_floats(olw, &blw, OUT * feat, 0) < 0) goto fail_cb;
    if (get_floats(olb, &blb, OUT, 0) < 0) goto fail_lw;
    if (get_floats(oout, &bout, N * OUT, 1) < 0) goto fail_lb;

    Py_BEGIN_ALLOW_THREADS
    act = (float *)malloc((size_t)(N * K * p.OH * p.OW) * sizeof(float));
    pooled = (float *)malloc((size_t)(N * feat) * sizeof(float));
    if (act == NULL || pooled == NULL) {
        rc = PE_ENOMEM;
    } else {
        rc = pe_conv2d_forward_f32(&p, bx.buf, bcw.buf, bcb.buf, act);
        if (rc == PE_OK)
            rc = pe_relu_forward_f32(act, act, N * K * p.OH * p.OW);
        if (rc == PE_OK)
            rc = pe_max_pool2d_forward_f32(&q, act, pooled, NULL);
        if (rc == PE_OK)
            rc = pe_linear_forward_f32(pooled, blw.buf, blb.buf, bout.buf, N, feat, OUT);
    }
    free(act);
    free(pooled);
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&bout);
    PyBuffer_Release(&blb); PyBuffer_Release(&blw); PyBuffer_Release(&bcb);
    PyBuffer_Release(&bcw); PyBuffer_Release(&bx);
    return PyLong_FromLong(rc);
fail_lb: PyBuffer_Release(&blb);
fail_lw: PyBuffer_Release(&blw);
fail_cb: PyBuffer_Release(&bcb);
fail_cw: PyBuffer_Release(&bcw);
fail_x:  PyBuffer_Release(&bx);
    return NULL;
}

/* softmax(x, out, rows, cols) -> rc, on any float32 buffers. */
static PyObject *softmax(PyObject *self, PyObject *args)
{
    PyObject *ox, *oout;
    Py_ssize_t rows, cols;
    Py_buffer bx, bout;
    int rc;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOnn", &ox, &oout, &rows, &cols))
        return NULL;
    if (get_floats(ox, &bx, rows * cols, 0) < 0) return NULL;
    if (get_floats(oout, &bout, rows * cols, 1) < 0) { PyBuffer_Release(&bx); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    rc = pe_softmax_forward_f32(bx.buf, bout.buf, rows, cols);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&bout);
    PyBuffer_Release(&bx);
    return PyLong_FromLong(rc);
}

/* lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, y, h_n, c_n, T, B, I, H) -> rc */
static PyObject *lstm(PyObject *self, PyObject *args)
{
    PyObject *o[10];
    Py_buffer b[10];
    pe_rnn_dims d;
    Py_ssize_t counts[10];
    int i, n = 0, rc = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOnnnn", &o[0], &o[1], &o[2], &o[3], &o[4],
                          &o[5], &o[6], &o[7], &o[8], &o[9], &d.T, &d.B, &d.F, &d.H))
        return NULL;
    d.mode = PE_RNN_LSTM; d.ldy = d.H; d.reverse = 0;
    counts[0] = d.T * d.B * d.F; counts[1] = 4 * d.H * d.F; counts[2] = 4 * d.H * d.H;
    counts[3] = counts[4] = 4 * d.H; counts[5] = counts[6] = d.B * d.H;
    counts[7] = d.T * d.B * d.H; counts[8] = counts[9] = d.B * d.H;
    for (n = 0; n < 10; n++)
        if (get_floats(o[n], &b[n], counts[n], n >= 7) < 0) { rc = -100; break; }
    if (rc == 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = pe_rnn_forward_f32(&d, b[0].buf, b[1].buf, b[2].buf, b[3].buf, b[4].buf,
                                b[5].buf, b[6].buf, b[7].buf, b[8].buf, b[9].buf);
        Py_END_ALLOW_THREADS
    }
    for (i = 0; i < n; i++)
        PyBuffer_Release(&b[i]);
    return rc == -100 ? NULL : PyLong_FromLong(rc);
}

static PyMethodDef methods[] = {
    {"lstm", lstm, METH_VARARGS, "one-layer LSTM forward"},
    {"forward", forward, METH_VARARGS, "conv -> relu -> maxpool -> linear forward"},
    {"softmax", softmax, METH_VARARGS, "row softmax"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "pe_c_demo", NULL, -1, methods};

PyMODINIT_FUNC PyInit_pe_c_demo(void)
{
    if (pyengine_import_capi() < 0)
        return NULL;
    return PyModule_Create(&moddef);
}
