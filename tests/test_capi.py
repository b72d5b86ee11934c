"""The C-level API used from outside: a downstream Cython extension that
cimports the kernels, a C extension through <engine/pyengine_capi.h>, and
zero-copy Python entries on any C-contiguous buffer.

The extensions are compiled in a temp dir against ``engine.get_include()``:
site-packages for a regular ``pip install .``, the source tree for the
editable dev install (whose compiled modules then provide the C functions at
import time through their ``__pyx_capi__`` capsules). No setuptools needed:
Cython, then the C compiler Python was built with.
"""

import array
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import engine
import pyengine as pe
from engine import activation, dense

HERE = os.path.dirname(os.path.abspath(__file__))
EXTENDING = os.path.join(HERE, "extending")


def _compiler():
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    ldshared = shlex.split(sysconfig.get_config_var("LDSHARED") or "cc -shared")
    if shutil.which(cc[0]) is None or shutil.which(ldshared[0]) is None:
        pytest.skip(f"no C compiler found ({cc[0]!r}): cannot build a downstream extension")
    return cc, ldshared


def _build(tmp_path, name, c_file):
    """Compile c_file into extension module `name` in tmp_path and import it."""
    cc, ldshared = _compiler()
    include = [engine.get_include(), sysconfig.get_paths()["include"]]
    obj = tmp_path / (name + ".o")
    so = tmp_path / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    # -O0: the glue compiles fast; the kernels it calls are the engine's, optimised.
    flags = ["-O0", "-fPIC", "-Wall", "-Wno-unused-function"]
    if sys.platform == "darwin":
        flags += ["-undefined", "dynamic_lookup"]
    _run(cc + flags + [f"-I{d}" for d in include] + ["-c", str(c_file), "-o", str(obj)])
    _run(ldshared + [str(obj), "-o", str(so)])
    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


def _include_has_pxd():
    return os.path.exists(os.path.join(engine.get_include(), "engine", "conv.pxd"))


def _cnn_weights(rng, N=3, C=2, H=9, W=8, K=4, k=3, OUT=5):
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    conv = pe.Conv2d(C, K, k, padding=k // 2)
    feat = K * (H // 2) * (W // 2)
    lin = pe.Linear(feat, OUT)
    return x, conv, lin


@pytest.mark.slow
def test_downstream_cython_extension(tmp_path, rng):
    pytest.importorskip("Cython")
    if not _include_has_pxd():
        pytest.skip("engine/*.pxd not found next to the engine package")
    pyx = tmp_path / "pe_cython_demo.pyx"
    shutil.copy(os.path.join(EXTENDING, "pe_cython_demo.pyx"), pyx)
    c_file = tmp_path / "pe_cython_demo.c"
    _run([sys.executable, "-m", "cython", "-3", "-I", engine.get_include(),
          str(pyx), "-o", str(c_file)])
    demo = _build(tmp_path, "pe_cython_demo", c_file)

    x, conv, lin = _cnn_weights(rng)
    model = pe.Sequential(conv, pe.ReLU(), pe.MaxPool2d(2), pe.Flatten(), lin)
    with pe.no_grad():
        want = model(x)
    out = np.zeros_like(want)
    rc = demo.forward(x, conv.weight.data, conv.bias.data, lin.weight.data,
                      lin.bias.data, out)
    assert rc == 0
    np.testing.assert_array_equal(out, want)

    T, B, I, H = 4, 2, 3, 5
    lstm = pe.LSTM(I, H, dtype=np.float64)
    xs = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, 1, B, H))
    with pe.no_grad():
        y_want, (hn_want, cn_want) = lstm(xs, (h0, c0))
    y, hn, cn = np.zeros((T, B, H)), np.zeros((B, H)), np.zeros((B, H))
    p = {n: q.data for n, q in lstm.named_parameters()}
    assert demo.lstm(xs, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"],
                     p["bias_hh_l0"], h0[0], c0[0], y, hn, cn) == 0
    np.testing.assert_array_equal(y, y_want)
    np.testing.assert_array_equal(hn, hn_want[0])
    np.testing.assert_array_equal(cn, cn_want[0])


@pytest.mark.slow
def test_downstream_c_extension(tmp_path, rng):
    header = os.path.join(engine.get_include(), "engine", "pyengine_capi.h")
    if not os.path.exists(header):
        pytest.skip(f"{header} is not installed")
    demo = _build(tmp_path, "pe_c_demo", os.path.join(EXTENDING, "pe_c_demo.c"))

    N, C, H, W, K, k, OUT = 2, 3, 7, 6, 4, 3, 5
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    conv = pe.Conv2d(C, K, k, padding=k // 2)
    lin = pe.Linear(K * (H // 2) * (W // 2), OUT)
    model = pe.Sequential(conv, pe.ReLU(), pe.MaxPool2d(2), pe.Flatten(), lin)
    with pe.no_grad():
        want = model(x)
    out = np.zeros_like(want)
    rc = demo.forward(x, conv.weight.data, conv.bias.data, lin.weight.data,
                      lin.bias.data, out, N, C, H, W, K, k, OUT)
    assert rc == 0
    np.testing.assert_array_equal(out, want)

    T, B, I, Hd = 5, 3, 4, 6
    lstm = pe.LSTM(I, Hd)
    xs = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, Hd)).astype(np.float32)
    c0 = rng.standard_normal((1, B, Hd)).astype(np.float32)
    with pe.no_grad():
        y_want, (hn_want, cn_want) = lstm(xs, (h0, c0))
    y = np.zeros((T, B, Hd), np.float32)
    hn = np.zeros((B, Hd), np.float32)
    cn = np.zeros((B, Hd), np.float32)
    p = {n: q.data for n, q in lstm.named_parameters()}
    rc = demo.lstm(xs, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"],
                   p["bias_hh_l0"], h0[0], c0[0], y, hn, cn, T, B, I, Hd)
    assert rc == 0
    np.testing.assert_array_equal(y, y_want)
    np.testing.assert_array_equal(hn, hn_want[0])
    np.testing.assert_array_equal(cn, cn_want[0])

    # Any buffer works: array.array in, array.array out, no NumPy involved.
    z = rng.standard_normal((3, 4)).astype(np.float32)
    src = array.array("f", z.ravel().tolist())
    dst = array.array("f", [0.0] * 12)
    assert demo.softmax(src, dst, 3, 4) == 0
    np.testing.assert_array_equal(np.asarray(dst).reshape(3, 4), activation.softmax(z))
    # Empty input is fine; a bad size is the kernel's EBADARG, not a crash.
    assert demo.softmax(array.array("f"), array.array("f"), 0, 0) == 0
    assert demo.softmax(array.array("f"), array.array("f"), 0, -1) == -1
    with pytest.raises(ValueError, match="float32"):
        demo.softmax(array.array("d", [0.0] * 12), dst, 3, 4)


def test_capi_table_matches_the_header():
    """Every exported entry is fetched by the header with the C type it declares."""
    from engine import capi
    header = os.path.join(os.path.dirname(engine.__file__), "pyengine_capi.h")
    text = open(header).read()
    table = capi.__pyx_capi__
    for name in table:
        assert f'"{name}"' in text, f"{name} is exported but not in pyengine_capi.h"
    # The capsule names are Cython's C signatures of the exported functions.
    act = "int (float const *, float *, Py_ssize_t)"
    pool = "struct __pyx_t_6engine_4pool_pool2d_params"
    want = {
        "pe_capi_version": "int (void)",
        "pe_capi_struct_size": "Py_ssize_t (int)",
        "pe_linear_forward_f32": "int (float const *, float const *, float const *, "
                                 "float *, Py_ssize_t, Py_ssize_t, Py_ssize_t)",
        "pe_relu_forward_f32": act, "pe_sigmoid_forward_f32": act,
        "pe_tanh_forward_f32": act,
        "pe_softmax_forward_f32": "int (float const *, float *, Py_ssize_t, Py_ssize_t)",
        "pe_conv2d_output_size": "int (__pyx_t_6engine_4conv_Conv2dParams *)",
        "pe_conv2d_forward_f32": "int (__pyx_t_6engine_4conv_Conv2dParams const *, "
                                 "float const *, float const *, float const *, float *)",
        "pe_pool_output_size": "Py_ssize_t (Py_ssize_t, Py_ssize_t, Py_ssize_t, "
                               "Py_ssize_t, Py_ssize_t, int)",
        "pe_max_pool2d_forward_f32": f"int ({pool} const *, float const *, float *, "
                                     "int64_t *)",
        "pe_avg_pool2d_forward_f32": f"int ({pool} const *, float const *, float *)",
        "pe_adaptive_avg_pool2d_forward_f32": "int (Py_ssize_t, Py_ssize_t, Py_ssize_t, "
                                              "Py_ssize_t, Py_ssize_t, float const *, "
                                              "float *)",
        "pe_rnn_forward_f32": "int (__pyx_t_6engine_3rnn_rnn_dims const *, float const *, "
                              "float const *, float const *, float const *, float const *, "
                              "float const *, float const *, float *, float *, float *)",
        "pe_embedding_forward_f32": "int (float const *, Py_ssize_t, Py_ssize_t, "
                                    "int64_t const *, Py_ssize_t, float *)",
    }
    got = {name: repr(cap).split('"')[1] for name, cap in table.items()}
    assert got == want


# -- zero-copy Python entries -------------------------------------------------

def test_python_entries_read_buffers_without_copying(rng):
    from engine._validate import float_array
    z = rng.standard_normal((3, 5)).astype(np.float32)
    buf = array.array("f", z.ravel().tolist())
    view = memoryview(buf).cast("B").cast("f", (3, 5))
    a = float_array(view, "x", ndim=2)
    assert a.shape == (3, 5) and np.shares_memory(a, np.frombuffer(buf, np.float32))
    # A non-contiguous input is the documented copy.
    nc = z[:, ::2]
    assert not np.shares_memory(float_array(nc, "x"), z)


def test_kernels_on_array_and_memoryview(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    xv = memoryview(array.array("f", x.ravel().tolist())).cast("B").cast("f", (4, 6))
    wv = memoryview(w)                       # a memoryview of an ndarray
    bv = array.array("f", b.tolist())        # 1-d array.array
    np.testing.assert_array_equal(dense.linear_forward(xv, wv, bv),
                                  dense.linear_forward(x, w, b))
    # out= may be any writeable C-contiguous buffer: results land in it.
    out = array.array("f", [0.0] * 24)
    res = activation.relu(array.array("f", x.ravel().tolist()), out=out)
    np.testing.assert_array_equal(np.frombuffer(out, np.float32), np.maximum(x.ravel(), 0))
    assert np.shares_memory(res, np.frombuffer(out, np.float32))
    # float64 buffers work too; wrong-typed buffers are rejected, not misread.
    d = array.array("d", x.ravel().tolist())
    np.testing.assert_array_equal(activation.relu(d), np.maximum(x.ravel().astype(np.float64), 0))
    with pytest.raises(TypeError, match="float32 or float64"):
        activation.relu(array.array("i", [1, 2, 3]))
    with pytest.raises(ValueError, match="writeable"):
        activation.relu(x.ravel(), out=bytes(x.ravel().tobytes()))
