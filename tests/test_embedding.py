import numpy as np
import pytest

import pyengine as pe
from engine import embedding
from pyengine import reference as R

from conftest import tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ids_shape", [(7,), (3, 5), (2, 3, 4), (1,)])
def test_forward_backward_match_reference(dtype, ids_shape, rng):
    V, D = 11, 6
    w = rng.standard_normal((V, D)).astype(dtype)
    ids = rng.integers(0, V, size=ids_shape)
    out = embedding.embedding_forward(w, ids)
    assert out.shape == ids_shape + (D,)
    np.testing.assert_array_equal(out, R.embedding_forward(w, ids))
    g = rng.standard_normal(out.shape).astype(dtype)
    for pad in (None, int(ids.reshape(-1)[0])):
        got = embedding.embedding_backward(g, ids, V, padding_idx=pad)
        want = R.embedding_backward(g, ids, V, padding_idx=pad)
        rtol, atol = tol(dtype)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        if pad is not None:
            assert not got[pad].any()


def test_backward_accumulates_repeated_ids(rng):
    g = rng.standard_normal((4, 3))
    ids = np.array([2, 2, 0, 2])
    grad = np.ones((3, 3))
    embedding.embedding_backward(g, ids, 3, grad_weight=grad)
    np.testing.assert_allclose(grad[2], 1 + g[0] + g[1] + g[3], rtol=1e-15)
    np.testing.assert_allclose(grad[0], 1 + g[2], rtol=1e-15)
    np.testing.assert_array_equal(grad[1], np.ones(3))


def test_gradcheck_weight(rng):
    ids = rng.integers(0, 5, size=(3, 4))
    w = rng.standard_normal((5, 3))
    pe.gradcheck(lambda w_: embedding.embedding_forward(w_, ids), (w,),
                 grad_fn=lambda dout, w_: (embedding.embedding_backward(dout, ids, 5),))


def test_module_init_forward_backward(rng):
    pe.manual_seed(0)
    m = pe.Embedding(1000, 16, padding_idx=3)
    assert m.weight.shape == (1000, 16) and m.weight.dtype == np.float32
    assert not m.weight.data[3].any()
    assert abs(m.weight.data.std() - 1) < 0.05 and abs(m.weight.data.mean()) < 0.05
    ids = np.array([[3, 1, 999], [1, 0, 3]])
    out = m(ids)
    np.testing.assert_array_equal(out, m.weight.data[ids])
    g = rng.standard_normal(out.shape).astype(np.float32)
    assert m.backward(g) is None
    m.backward(g) if m(ids) is not None else None  # second pass accumulates
    want = 2 * R.embedding_backward(g, ids, 1000, padding_idx=3)
    np.testing.assert_allclose(m.weight.grad, want, rtol=1e-6, atol=1e-6)
    assert pe.Embedding(5, 2, padding_idx=-1).padding_idx == 4
    assert repr(pe.Embedding(5, 2, padding_idx=1)) == "Embedding(5, 2, padding_idx=1)"


def test_module_float64_and_any_integer_dtype(rng):
    m = pe.Embedding(10, 4, dtype=np.float64)
    for dt in (np.int8, np.uint16, np.int32, np.int64):
        ids = np.array([1, 9, 0], dtype=dt)
        np.testing.assert_array_equal(m(ids), m.weight.data[[1, 9, 0]])
    assert m(np.array(7)).shape == (4,)
    assert m([[1, 2]]).shape == (1, 2, 4)


def test_bad_ids_raise(rng):
    m = pe.Embedding(10, 4)
    with pytest.raises(TypeError, match="integer"):
        m(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="integer"):
        m(np.array([True, False]))
    with pytest.raises(IndexError, match="token id 10 "):
        m(np.array([[1, 2], [10, 3]]))
    with pytest.raises(IndexError, match="token id -1 "):
        m(np.array([-1]))
    with pytest.raises(IndexError, match="token id 12 "):
        embedding.embedding_backward(np.zeros((2, 4)), np.array([1, 12]), 10)
    with pytest.raises(ValueError, match="d_out"):
        embedding.embedding_backward(np.zeros((3, 4)), np.array([1, 2]), 10)
    with pytest.raises(TypeError, match="float32 or float64"):
        embedding.embedding_forward(np.zeros((3, 4), np.float16), np.array([1]))
    with pytest.raises(ValueError, match="padding_idx"):
        pe.Embedding(10, 4, padding_idx=10)
    with pytest.raises(RuntimeError, match="without a forward"):
        pe.Embedding(3, 2).backward(np.zeros((1, 2), np.float32))


def test_threads_bitwise_identical(rng):
    V, D = 3000, 32
    ids = rng.integers(0, 50, size=(64, 70))      # many repeats: order matters
    g = rng.standard_normal(ids.shape + (D,)).astype(np.float32)
    w = rng.standard_normal((V, D)).astype(np.float32)
    res = []
    for threads in (1, 2, 3):
        pe.set_num_threads(threads)
        res.append((embedding.embedding_forward(w, ids),
                    embedding.embedding_backward(g, ids, V, padding_idx=7)))
    for out, grad in res[1:]:
        assert np.array_equal(out, res[0][0]) and np.array_equal(grad, res[0][1])


def test_torch_same_gradients(rng):
    torch = pytest.importorskip("torch")
    m = pe.Embedding(20, 5, padding_idx=2)
    t = torch.nn.Embedding(20, 5, padding_idx=2)
    t.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    ids = rng.integers(0, 20, size=(4, 6))
    out = m(ids)
    tout = t(torch.from_numpy(ids))
    np.testing.assert_array_equal(out, tout.detach().numpy())
    g = rng.standard_normal(out.shape).astype(np.float32)
    m.backward(g)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(m.weight.grad, t.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
