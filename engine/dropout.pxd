# Inverted dropout with a counter-based mask: element i of a call with key k
# is kept iff the top 53 bits of splitmix64(k + (i + 1) * 0x9E3779B97F4A7C15),
# read as a fraction of 2**53, are >= p. The mask depends on (k, i) only, so
# it is the same for any thread count and is recomputable from the key.

from cython cimport floating
from libc.stdint cimport uint8_t, uint64_t


# mask[i] = 1 (keep) or 0 (drop) for i < n. p in [0, 1].
cdef int dropout_mask(uint8_t* mask, Py_ssize_t n, double p, uint64_t key) noexcept nogil

# y = x * mask / (1 - p) (y may be x: in place); mask written as by dropout_mask.
# p == 1 gives y = 0 and an all-zero mask.
cdef int dropout_forward(const floating* x, floating* y, uint8_t* mask,
                         Py_ssize_t n, double p, uint64_t key) noexcept nogil

# grad_x = grad_y * mask / (1 - p) (grad_x may be grad_y); zeros when p == 1.
cdef int dropout_backward(const floating* grad_y, const uint8_t* mask,
                          floating* grad_x, Py_ssize_t n, double p) noexcept nogil
