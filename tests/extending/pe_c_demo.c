/* A downstream C extension module: conv -> relu -> linear forward through the
   engine's C API header, without the GIL. Built by tests/test_capi.py. */
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
   conv k x k with padding k // 2, relu, flatten, linear. */
static PyObject *forward(PyObject *self, PyObject *args)
{
    PyObject *ox, *ocw, *ocb, *olw, *olb, *oout;
    Py_ssize_t N, C, H, W, K, k, OUT, feat;
    Py_buffer bx, bcw, bcb, blw, blb, bout;
    pe_conv2d_params p;
    float *act;
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
    feat = K * p.OH * p.OW;
    if (get_floats(ox, &bx, N * C * H * W, 0) < 0) return NULL;
    if (get_floats(ocw, &bcw, K * C * k * k, 0) < 0) goto fail_x;
    if (get_floats(ocb, &bcb, K, 0) < 0) goto fail_cw;
    if (get_floats(olw, &blw, OUT * feat, 0) < 0) goto fail_cb;
    if (get_floats(olb, &blb, OUT, 0) < 0) goto fail_lw;
    if (get_floats(oout, &bout, N * OUT, 1) < 0) goto fail_lb;

    Py_BEGIN_ALLOW_THREADS
    act = (float *)malloc((size_t)(N * feat) * sizeof(float));
    if (act == NULL) {
        rc = PE_ENOMEM;
    } else {
        rc = pe_conv2d_forward_f32(&p, bx.buf, bcw.buf, bcb.buf, act);
        if (rc == PE_OK)
            rc = pe_relu_forward_f32(act, act, N * feat);
        if (rc == PE_OK)
            rc = pe_linear_forward_f32(act, blw.buf, blb.buf, bout.buf, N, feat, OUT);
        free(act);
    }
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

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, "conv -> relu -> linear forward"},
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
