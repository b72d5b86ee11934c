import numpy as np
import pytest

import pyengine as pe
from engine import blas


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 53, 71), (300, 129, 257), (5, 2000, 3)])
def test_matmul_matches_numpy(dtype, ta, tb, shape, rng):
    M, K, N = shape
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    want = (A.T if ta else A).astype(np.float64) @ (B.T if tb else B).astype(np.float64)
    for parallel in (False, True):
        got = blas.matmul(A, B, trans_a=ta, trans_b=tb, parallel=parallel)
        rtol = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.sqrt(K))


def test_matmul_alpha_beta_accumulates(rng):
    A = rng.standard_normal((64, 32))
    B = rng.standard_normal((32, 48))
    C = rng.standard_normal((64, 48))
    want = 0.5 * A @ B + 2.0 * C
    blas.matmul(A, B, out=C, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(C, want, rtol=1e-12, atol=1e-12)


def test_matmul_same_bits_for_any_thread_count(rng):
    A = rng.standard_normal((1024, 300)).astype(np.float32)
    B = rng.standard_normal((300, 700)).astype(np.float32)
    outs = []
    for t in (1, 2, 3):
        pe.set_num_threads(t)
        outs.append(blas.matmul(A, B))
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_matmul_non_contiguous_is_copied_not_misread(rng):
    A = rng.standard_normal((40, 60))[:, ::2]
    B = rng.standard_normal((30, 20))
    np.testing.assert_allclose(blas.matmul(A, B), A @ B, rtol=1e-12)


def test_matmul_zero_sized(rng):
    A = np.zeros((0, 5), np.float32)
    B = np.ones((5, 3), np.float32)
    assert blas.matmul(A, B).shape == (0, 3)
    C = blas.matmul(np.ones((2, 0), np.float32), np.ones((0, 3), np.float32))
    assert np.array_equal(C, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("A,B,exc,match", [
    (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), ValueError, "inner dimensions"),
    (np.ones((2, 3), np.float16), np.ones((3, 2), np.float16), TypeError, "float32 or float64"),
    (np.ones((2, 3), np.float32), np.ones((3, 2), np.float64), TypeError, "dtype"),
    (np.ones((2, 3, 1), np.float32), np.ones((3, 2), np.float32), ValueError, "2-dimensional"),
    (np.ones((2, 3), np.int64), np.ones((3, 2), np.int64), TypeError, "float32 or float64"),
])
def test_matmul_bad_input(A, B, exc, match):
    with pytest.raises(exc, match=match):
        blas.matmul(A, B)


def test_matmul_bad_out():
    with pytest.raises(ValueError, match="shape"):
        blas.matmul(np.ones((2, 3)), np.ones((3, 2)), out=np.empty((3, 3)))
    with pytest.raises(ValueError, match="beta"):
        blas.matmul(np.ones((2, 3)), np.ones((3, 2)), beta=1.0)


def test_threads_api():
    with pytest.raises(ValueError, match="positive"):
        pe.set_num_threads(0)
    with pytest.raises(TypeError):
        pe.set_num_threads(1.5)
    pe.set_num_threads(1)
    assert pe.get_num_threads() == 1
