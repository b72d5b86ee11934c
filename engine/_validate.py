"""Thin argument checking shared by the Python entries of every kernel family.

Conversions are documented and never silent misreads:
- float32 and float64 arrays are used as they are when C-contiguous and
  writeable, and so is any other object exposing such a buffer
  (array.array('f'), memoryview, ...): no copy;
  a non-contiguous or read-only array (a broadcast view, a read-only memory
  map) is copied to a C-contiguous one (the kernels' typed memoryviews need a
  writeable buffer; the copy is never written back).
- any other dtype (float16, integers, bool, object) is rejected with TypeError.
- a shape whose byte size overflows Py_ssize_t raises ValueError, and an
  allocation the machine cannot satisfy raises MemoryError naming the array,
  both before any kernel runs.
"""

import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Sizes are passed to BLAS as 32-bit ints and indexed in Py_ssize_t.
BLAS_INT_MAX = 2**31 - 1


def float_array(x, name, ndim=None, dtype=None):
    """Return `x` as a C-contiguous float32/float64 ndarray, or raise.

    `ndim` may be an int or a tuple of allowed ranks; `dtype`, when given, is
    the dtype the array must already have (used to tie several arguments to
    the dtype of the first).
    """
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - report what we received
            raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} like the other "
                        f"arguments, got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must be {want}-dimensional, got shape {x.shape}")
    if not x.flags.c_contiguous or not x.flags.writeable:
        check_size(x.shape, x.dtype, name)
        try:
            x = np.array(x, order="C", copy=True)
        except MemoryError:
            raise MemoryError(f"{name}: cannot allocate {_fmt_bytes(x.size * x.itemsize)} "
                              f"for a contiguous copy of shape {x.shape}") from None
    return x


def is_plain(a):
    """C-contiguous and writeable: what the kernels' typed buffers take as
    they are (layers' fast paths check this, else convert with float_array)."""
    f = a.flags
    return f.c_contiguous and f.writeable


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def check_size(shape, dtype, name):
    """Number of elements of `shape`; ValueError when its bytes overflow Py_ssize_t."""
    n = 1
    for d in shape:
        d = int(d)
        if d < 0:
            raise ValueError(f"{name} must have non-negative dimensions, got shape {tuple(shape)}")
        n *= d
    if n * np.dtype(dtype).itemsize > sys.maxsize:
        raise ValueError(f"{name} of shape {tuple(shape)} would hold {n} elements: its size "
                         f"overflows Py_ssize_t (max {sys.maxsize} bytes)")
    return n


def empty(shape, dtype, name):
    """np.empty with the size checked first and a MemoryError naming the array."""
    shape = tuple(int(d) for d in shape)
    n = check_size(shape, dtype, name)
    try:
        return np.empty(shape, dtype=dtype)
    except MemoryError:
        raise MemoryError(f"{name}: cannot allocate {_fmt_bytes(n * np.dtype(dtype).itemsize)} "
                          f"for shape {shape}") from None


def out_array(out, name, shape, dtype):
    """Validate a caller-supplied output array, or allocate one."""
    if out is None:
        return empty(shape, dtype, name)
    if not isinstance(out, np.ndarray):
        # Any buffer (array.array, memoryview, ...) is written through a view.
        try:
            view = memoryview(out)
        except TypeError:
            raise TypeError(f"{name} must be a numpy array or a writeable buffer, "
                            f"got {type(out).__name__}") from None
        if view.readonly:
            raise ValueError(f"{name} must be a writeable C-contiguous array")
        out = np.asarray(view)
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array")
    return out


def check_blas_size(name, value):
    if value > BLAS_INT_MAX:
        raise ValueError(f"{name}={value} exceeds the BLAS 32-bit size limit {BLAS_INT_MAX}")


def positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}. Received: {name}={value}")
    return int(value)


def export_entries(namespace, **entries):
    """Publish Python entries under the kernels' own names.

    A .pyx cannot hold a `def` and a `cdef` of one name, so a Python entry is
    written as `_name_py` and published here as `name`; the C-level entry of
    that name stays reachable by cimport (it lives in `__pyx_capi__`, not in
    the module dict).
    """
    for name, fn in entries.items():
        fn.__name__ = name
        fn.__qualname__ = name
        namespace[name] = fn
