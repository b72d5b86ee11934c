"""pyengine's compiled kernel layer.

One extension module per kernel family (``blas``, ``dense``, ``activation``,
``loss``, ...). Every kernel has a C-level entry declared in the family's
``.pxd`` (``noexcept nogil``, raw pointers and sizes, returns 0 or a negative
error code) for downstream Cython code, and a validating Python entry on
typed memoryviews. This package never imports ``pyengine``.
"""
