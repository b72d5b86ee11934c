"""Thread control for the engine.

One threading runtime does the parallel work: the engine's OpenMP regions.
The BLAS the kernels call (scipy's, through ``scipy.linalg.cython_blas``) is
held at one thread so that it never competes with our OpenMP threads; NumPy's
own BLAS (a separate library in the PyPI wheels) is left untouched.
"""

import os

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int engine_openmp_enabled(void) { return 1; }
    static int engine_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int engine_openmp_enabled(void) { return 0; }
    static int engine_omp_max_threads(void) { return 1; }
    #endif
    """
    int engine_openmp_enabled() noexcept nogil
    int engine_omp_max_threads() noexcept nogil

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int engine_malloc_keep(size_t mmap_threshold, size_t trim_threshold) {
        return mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold) == 1
               && mallopt(M_TRIM_THRESHOLD, (int)trim_threshold) == 1;
    }
    #else
    static int engine_malloc_keep(size_t mmap_threshold, size_t trim_threshold) {
        (void)mmap_threshold; (void)trim_threshold;
        return 0;
    }
    #endif
    """
    int engine_malloc_keep(size_t mmap_threshold, size_t trim_threshold) noexcept nogil

cdef int _num_threads = 1


cdef int engine_num_threads() noexcept nogil:
    return _num_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(engine_openmp_enabled())


def available_cores():
    """Cores this process may run on (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """The number of OpenMP threads engine kernels use."""
    return _num_threads


def set_num_threads(n):
    """Set the number of OpenMP threads engine kernels use (>= 1).

    Results do not depend on this number: work is cut into chunks whose
    boundaries depend on the shapes only.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}: {n!r}")
    if n < 1:
        raise ValueError(f"set_num_threads expects a positive integer. Received: n={n}")
    _num_threads = n if engine_openmp_enabled() else 1


def _blas_controllers():
    """threadpoolctl controllers for the BLAS that scipy.linalg.cython_blas uses."""
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's BLAS)
    from threadpoolctl import ThreadpoolController
    scipy_dir = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    ctl = ThreadpoolController()
    ours = [lib for lib in ctl.lib_controllers
            if lib.user_api == "blas"
            and os.path.abspath(lib.filepath).startswith(os.path.join(scipy_dir, "scipy"))]
    return ours


def limit_blas_threads():
    """Hold scipy's BLAS at one thread (the engine calls it from its own threads).

    Returns the list of (filepath, previous thread count) that were changed.
    """
    changed = []
    for lib in _blas_controllers():
        prev = lib.num_threads
        if prev != 1:
            lib.set_num_threads(1)
        changed.append((lib.filepath, prev))
    return changed


def blas_info():
    """Describe the BLAS the kernels call: filepath, kernel architecture, threads."""
    return [dict(filepath=lib.filepath, internal_api=lib.internal_api,
                 version=lib.version, architecture=getattr(lib, "architecture", None),
                 num_threads=lib.num_threads)
            for lib in _blas_controllers()]


def keep_freed_memory():
    """Ask glibc's malloc to serve arrays up to 32 MB from its heap and to keep
    up to 128 MB of freed heap instead of returning it to the OS at once.

    Every layer returns a fresh NumPy array. With glibc's defaults a training
    step's activations and gradients (above the 128 KB-32 MB adaptive mmap
    threshold, or trimmed off the heap top when the step frees them) come back
    as new zero pages next step, and the page faults cost a quarter of a
    LeNet-5 step (6.2 -> 4.7 ms at batch 64, 1 thread on Zen 3). The setting
    is process-wide (other libraries' allocations are served the same way).
    Returns False where the C library is not glibc (nothing changed). Called
    at import unless PYENGINE_MALLOC_TUNING=0.
    """
    return bool(engine_malloc_keep(32 * 1024 * 1024, 128 * 1024 * 1024))


def _init_from_env():
    value = os.environ.get("PYENGINE_NUM_THREADS", "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(
                f"PYENGINE_NUM_THREADS must be a positive integer. Received: {value!r}") from None
        set_num_threads(n)
    else:
        set_num_threads(available_cores())
    if os.environ.get("PYENGINE_MALLOC_TUNING", "").strip() != "0":
        keep_freed_memory()


_init_from_env()
limit_blas_threads()
