# The engine's OpenMP thread count, readable from nogil code in every kernel family.

cdef int engine_num_threads() noexcept nogil
