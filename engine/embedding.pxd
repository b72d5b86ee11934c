# Embedding lookup: out[n, :] = weight[idx[n], :] (gather) and its backward,
# grad_weight[idx[n], :] += d_out[n, :] (scatter-add).
#
# weight (V, D), idx (N,) int64, out / d_out (N, D), all C-contiguous.
# The backward partitions the vocabulary rows among chunks fixed by the shapes;
# each chunk adds its rows' gradients in index order, so the result is bitwise
# identical for every thread count. Rows equal to padding_idx (>= 0) get no
# gradient; padding_idx < 0 means none.
# Both return ENGINE_EINDEX (and the position of the first bad id in *bad)
# when an id is outside [0, V); nothing is written then.

from cython cimport floating
from libc.stdint cimport int64_t

cdef int embedding_forward(const floating* weight, Py_ssize_t V, Py_ssize_t D,
                           const int64_t* idx, Py_ssize_t N, floating* out,
                           Py_ssize_t* bad) noexcept nogil

cdef int embedding_backward(const floating* d_out, const int64_t* idx, Py_ssize_t N,
                            Py_ssize_t V, Py_ssize_t D, Py_ssize_t padding_idx,
                            floating* grad_weight, Py_ssize_t* bad) noexcept nogil
