"""pyengine's compiled kernel layer.

One extension module per kernel family (``blas``, ``dense``, ``activation``,
``loss``, ...). Every kernel has a C-level entry declared in the family's
``.pxd`` (``noexcept nogil``, raw pointers and sizes, returns 0 or a negative
error code) for downstream Cython code, and a validating Python entry on
typed memoryviews. This package never imports ``pyengine``.
"""


def get_include():
    """The directory to put on the include path of a downstream build.

    It holds ``engine/*.pxd`` (``from engine.conv cimport conv2d_forward``)
    and ``engine/pyengine_capi.h`` (``#include <engine/pyengine_capi.h>``).
    For a regular install that is site-packages; for an editable (dev.py)
    install it is the source tree, where this file lives.
    """
    import os
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
