import numpy as np
import pytest

import pyengine as pe


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change the thread count must not leak it into others."""
    n = pe.get_num_threads()
    yield
    pe.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tol(dtype):
    """(rtol, atol) for comparing engine results with the reference."""
    return (1e-5, 1e-5) if np.dtype(dtype) == np.float32 else (1e-11, 1e-11)
