# Shared C-level helpers for every kernel family: the fused float type,
# error codes, the floating-point mode guard and the deterministic chunking rule.
# Header-only (inline functions), so cimporting it costs nothing at run time.

from cython cimport floating

# Error codes returned by the C-level entries (0 means success).
cdef enum:
    ENGINE_OK = 0
    ENGINE_EBADARG = -1    # a size or argument out of range
    ENGINE_ENOMEM = -2     # a workspace could not be allocated
    ENGINE_EINDEX = -3     # an index (class label, token id) out of range

cdef extern from *:
    """
    /* Flush-to-zero + denormals-are-zero for the calling thread. Saturating
       kernels (sigmoid/tanh gates, decaying gradients) otherwise slow down up
       to 20x on denormals. The previous mode is returned so it can be restored:
       user code outside the engine must not see a changed mode. */
    #if defined(__SSE__) || defined(_M_X64) || defined(__x86_64__)
    #include <xmmintrin.h>
    static inline unsigned int engine_ftz_enter(void) {
        unsigned int old = _mm_getcsr();
        _mm_setcsr(old | 0x8040u);  /* FTZ (bit 15) | DAZ (bit 6) */
        return old;
    }
    static inline void engine_ftz_exit(unsigned int old) { _mm_setcsr(old); }
    #else
    static inline unsigned int engine_ftz_enter(void) { return 0u; }
    static inline void engine_ftz_exit(unsigned int old) { (void)old; }
    #endif
    """
    unsigned int engine_ftz_enter() noexcept nogil
    void engine_ftz_exit(unsigned int old) noexcept nogil


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t work_chunks(Py_ssize_t rows, double flops_total,
                                   double flops_per_chunk_min,
                                   Py_ssize_t max_chunks) noexcept nogil:
    """How many chunks to cut `rows` into: a power of two, from the shape only.

    Chunk boundaries must never depend on the thread count, so that results
    are bitwise identical whatever the number of threads. Powers of two
    divide evenly among 1, 2, 4 or 8 threads.
    """
    cdef Py_ssize_t n = 1
    while (n * 2 <= max_chunks and n * 2 <= rows
           and flops_total / (n * 2) >= flops_per_chunk_min):
        n *= 2
    return n
