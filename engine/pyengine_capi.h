/* pyengine C API for C extension modules.
 *
 *   #include <engine/pyengine_capi.h>      (include dir: engine.get_include())
 *
 *   // once, with the GIL held, e.g. in your module's init function:
 *   if (pyengine_import_capi() < 0) return NULL;   // Python error set
 *   // then, from any thread, with or without the GIL:
 *   int rc = pe_conv2d_forward_f32(&params, x, w, b, y);
 *
 * Hand-written, not generated: pyengine_import_capi() imports the Python
 * module `engine.capi` and fetches each function pointer from its
 * `__pyx_capi__` table (one PyCapsule per exported cdef function, as
 * Cython's own cimport does), by name. No link-time dependency on the
 * engine. It also checks the table's version and that the parameter structs
 * below have the sizes the engine was compiled with.
 *
 * Families: dense (pe_linear_*), activation (relu, sigmoid, tanh, softmax),
 * conv (pe_conv2d_*), pool (max, average, adaptive average), rnn (RNN, LSTM,
 * GRU forward), embedding. Inference (forward) entries only: training code
 * should use the Cython API (the fused entries in the families' .pxd files).
 *
 * Every entry is float32, runs without the GIL (OpenMP inside), touches no
 * Python object, and returns 0 or a negative error code:
 *   PE_EBADARG (-1) a size or argument out of range, PE_ENOMEM (-2) a
 *   workspace could not be allocated, PE_EINDEX (-3) an index out of range.
 * Arrays are C-contiguous (row-major), images NCHW; see docs/c-api.md.
 */
#ifndef PYENGINE_CAPI_H
#define PYENGINE_CAPI_H

#include <Python.h>
#include <stdint.h>

#define PYENGINE_CAPI_VERSION 1

#define PE_OK 0
#define PE_EBADARG (-1)
#define PE_ENOMEM (-2)
#define PE_EINDEX (-3)

/* Mirror of engine/conv.pxd Conv2dParams (same fields, same order). */
typedef struct {
    Py_ssize_t N, C, H, W;   /* input: batch, channels, height, width */
    Py_ssize_t K;            /* output channels */
    Py_ssize_t kh, kw;       /* kernel size */
    Py_ssize_t sh, sw;       /* stride */
    Py_ssize_t ph, pw;       /* zero padding (top/bottom, left/right) */
    Py_ssize_t dh, dw;       /* dilation */
    Py_ssize_t groups;
    Py_ssize_t OH, OW;       /* output size: fill with pe_conv2d_output_size */
} pe_conv2d_params;

/* Mirror of engine/pool.pxd pool2d_params (bint is a C int). */
typedef struct {
    Py_ssize_t N, C, H, W;        /* input shape (NCHW) */
    Py_ssize_t OH, OW;            /* output size: pe_pool_output_size per axis */
    Py_ssize_t kh, kw;            /* window */
    Py_ssize_t sh, sw;            /* stride */
    Py_ssize_t ph, pw;            /* padding on each side (<= kernel / 2) */
    Py_ssize_t dh, dw;            /* dilation (max pooling; 1 for average) */
    int ceil_mode;                /* ceil instead of floor in the output size */
    int count_include_pad;        /* average: padded zeros count in the divisor */
    Py_ssize_t divisor_override;  /* average: fixed divisor when > 0 */
} pe_pool2d_params;

/* Mirror of engine/rnn.pxd rnn_dims. Layout as torch: x (T, B, F),
   w_ih (G*H, F), w_hh (G*H, H), biases (G*H) or NULL, h0/c0/h_n/c_n (B, H),
   y (T, B, ldy); G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n). */
#define PE_RNN_TANH 0
#define PE_RNN_RELU 1
#define PE_RNN_LSTM 2
#define PE_RNN_GRU 3
typedef struct {
    int mode;          /* PE_RNN_TANH, PE_RNN_RELU, PE_RNN_LSTM or PE_RNN_GRU */
    Py_ssize_t T, B, F, H;   /* steps, batch, input features, hidden size */
    Py_ssize_t ldy;    /* row stride of y in elements (>= H) */
    int reverse;       /* run t = T-1 down to 0 */
} pe_rnn_dims;

/* The function pointers, filled by pyengine_import_capi(). */
static int (*pe_capi_version)(void);
static Py_ssize_t (*pe_capi_struct_size)(int which);
/* y (N, OUT) = x (N, IN) @ W (OUT, IN)^T + b (OUT, or NULL) */
static int (*pe_linear_forward_f32)(const float *x, const float *W, const float *b,
                                    float *y, Py_ssize_t N, Py_ssize_t IN,
                                    Py_ssize_t OUT);
/* element-wise on n values (y may be x) */
static int (*pe_relu_forward_f32)(const float *x, float *y, Py_ssize_t n);
static int (*pe_sigmoid_forward_f32)(const float *x, float *y, Py_ssize_t n);
static int (*pe_tanh_forward_f32)(const float *x, float *y, Py_ssize_t n);
/* softmax over the last axis of x (rows, cols) */
static int (*pe_softmax_forward_f32)(const float *x, float *y, Py_ssize_t rows,
                                     Py_ssize_t cols);
/* fills p->OH, p->OW from the other fields */
static int (*pe_conv2d_output_size)(pe_conv2d_params *p);
/* y (N, K, OH, OW) = conv2d(x (N, C, H, W), w (K, C/groups, kh, kw)) + b (K, or NULL) */
static int (*pe_conv2d_forward_f32)(const pe_conv2d_params *p, const float *x,
                                    const float *w, const float *b, float *y);

/* torch's pooled length along one axis (may be <= 0); -1 for bad arguments */
static Py_ssize_t (*pe_pool_output_size)(Py_ssize_t size, Py_ssize_t kernel,
                                         Py_ssize_t stride, Py_ssize_t pad,
                                         Py_ssize_t dilation, int ceil_mode);
/* y (N, C, OH, OW) = window max; indices (int64, same shape) may be NULL */
static int (*pe_max_pool2d_forward_f32)(const pe_pool2d_params *p, const float *x,
                                        float *y, int64_t *indices);
static int (*pe_avg_pool2d_forward_f32)(const pe_pool2d_params *p, const float *x,
                                        float *y);
/* planes = N * C; OH = OW = 1 is global average pooling */
static int (*pe_adaptive_avg_pool2d_forward_f32)(Py_ssize_t planes, Py_ssize_t H,
                                                 Py_ssize_t W, Py_ssize_t OH,
                                                 Py_ssize_t OW, const float *x,
                                                 float *y);
/* one layer, one direction, inference; c0/c_n only for the LSTM (else NULL) */
static int (*pe_rnn_forward_f32)(const pe_rnn_dims *d, const float *x,
                                 const float *w_ih, const float *w_hh,
                                 const float *b_ih, const float *b_hh,
                                 const float *h0, const float *c0, float *y,
                                 float *h_n, float *c_n);
/* out (N, D) = weight (V, D)[idx (N)]; PE_EINDEX for an id outside [0, V) */
static int (*pe_embedding_forward_f32)(const float *weight, Py_ssize_t V, Py_ssize_t D,
                                       const int64_t *idx, Py_ssize_t N, float *out);

/* Fetch one function pointer from a __pyx_capi__ dict; -1 with an error set. */
static int pyengine__fetch(PyObject *table, const char *name, void **fn)
{
    PyObject *cap = PyDict_GetItemString(table, name);   /* borrowed */
    if (cap == NULL || !PyCapsule_CheckExact(cap)) {
        PyErr_Format(PyExc_ImportError,
                     "engine.capi does not export %s (pyengine too old?)", name);
        return -1;
    }
    *fn = PyCapsule_GetPointer(cap, PyCapsule_GetName(cap));
    return *fn == NULL ? -1 : 0;
}

/* Import engine.capi and fill the pointers above. Call with the GIL held.
   Returns 0, or -1 with a Python exception set. */
static int pyengine_import_capi(void)
{
    static const struct { const char *name; void **fn; } entries[] = {
        {"pe_capi_version", (void **)&pe_capi_version},
        {"pe_capi_struct_size", (void **)&pe_capi_struct_size},
        {"pe_linear_forward_f32", (void **)&pe_linear_forward_f32},
        {"pe_relu_forward_f32", (void **)&pe_relu_forward_f32},
        {"pe_sigmoid_forward_f32", (void **)&pe_sigmoid_forward_f32},
        {"pe_tanh_forward_f32", (void **)&pe_tanh_forward_f32},
        {"pe_softmax_forward_f32", (void **)&pe_softmax_forward_f32},
        {"pe_conv2d_output_size", (void **)&pe_conv2d_output_size},
        {"pe_conv2d_forward_f32", (void **)&pe_conv2d_forward_f32},
        {"pe_pool_output_size", (void **)&pe_pool_output_size},
        {"pe_max_pool2d_forward_f32", (void **)&pe_max_pool2d_forward_f32},
        {"pe_avg_pool2d_forward_f32", (void **)&pe_avg_pool2d_forward_f32},
        {"pe_adaptive_avg_pool2d_forward_f32", (void **)&pe_adaptive_avg_pool2d_forward_f32},
        {"pe_rnn_forward_f32", (void **)&pe_rnn_forward_f32},
        {"pe_embedding_forward_f32", (void **)&pe_embedding_forward_f32},
    };
    PyObject *module, *table;
    size_t i;
    int rc = 0;
    module = PyImport_ImportModule("engine.capi");
    if (module == NULL)
        return -1;
    table = PyObject_GetAttrString(module, "__pyx_capi__");
    Py_DECREF(module);
    if (table == NULL)
        return -1;
    if (!PyDict_Check(table)) {
        PyErr_SetString(PyExc_ImportError, "engine.capi.__pyx_capi__ is not a dict");
        rc = -1;
    }
    for (i = 0; rc == 0 && i < sizeof(entries) / sizeof(entries[0]); i++)
        rc = pyengine__fetch(table, entries[i].name, entries[i].fn);
    Py_DECREF(table);
    if (rc != 0)
        return -1;
    if (pe_capi_version() != PYENGINE_CAPI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "pyengine C API version %d, this header expects %d",
                     pe_capi_version(), PYENGINE_CAPI_VERSION);
        return -1;
    }
    if (pe_capi_struct_size(0) != (Py_ssize_t)sizeof(pe_conv2d_params) ||
        pe_capi_struct_size(1) != (Py_ssize_t)sizeof(pe_pool2d_params) ||
        pe_capi_struct_size(2) != (Py_ssize_t)sizeof(pe_rnn_dims)) {
        PyErr_SetString(PyExc_ImportError,
                        "pyengine C API: a parameter struct does not match the engine's");
        return -1;
    }
    return 0;
}

#endif /* PYENGINE_CAPI_H */
