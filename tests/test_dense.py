import numpy as np
import pytest

import pyengine as pe
from engine import dense
from pyengine import reference as ref
from conftest import tol


def _data(rng, N, IN, OUT, dtype):
    x = rng.standard_normal((N, IN)).astype(dtype)
    W = rng.standard_normal((OUT, IN)).astype(dtype)
    b = rng.standard_normal(OUT).astype(dtype)
    dy = rng.standard_normal((N, OUT)).astype(dtype)
    return x, W, b, dy


SHAPES = [(1, 1, 1), (1, 7, 3), (5, 13, 17), (64, 100, 33), (128, 784, 256), (300, 31, 513)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_linear_forward_backward_vs_reference(dtype, shape, rng):
    x, W, b, dy = _data(rng, *shape, dtype)
    rtol, atol = tol(dtype)
    scale = np.sqrt(shape[1])  # sums of IN products
    y = dense.linear_forward(x, W, b)
    np.testing.assert_allclose(y, ref.linear_forward(x, W, b), rtol=rtol * 10, atol=atol * scale)
    np.testing.assert_allclose(dense.linear_forward(x, W), ref.linear_forward(x, W),
                               rtol=rtol * 10, atol=atol * scale)
    dx, dW, db = dense.linear_backward(x, W, dy)
    rdx, rdW, rdb = ref.linear_backward(x, W, dy)
    np.testing.assert_allclose(dx, rdx, rtol=rtol * 10, atol=atol * np.sqrt(shape[2]))
    np.testing.assert_allclose(dW, rdW, rtol=rtol * 10, atol=atol * np.sqrt(shape[0]))
    np.testing.assert_allclose(db, rdb, rtol=rtol * 10, atol=atol * np.sqrt(shape[0]))


def test_linear_backward_accumulates_and_skips(rng):
    x, W, b, dy = _data(rng, 9, 11, 6, np.float64)
    gW = np.ones_like(W)
    gb = np.ones_like(b)
    dx, dW, db = dense.linear_backward(x, W, dy, input_grad=False, grad_weight=gW, grad_bias=gb)
    assert dx is None and dW is gW and db is gb
    np.testing.assert_allclose(gW, 1 + dy.T @ x, rtol=1e-12)
    np.testing.assert_allclose(gb, 1 + dy.sum(0), rtol=1e-12)


def test_linear_gradcheck_float64(rng):
    layer = pe.Linear(5, 4, dtype=np.float64)
    x = rng.standard_normal((3, 5))
    assert pe.gradcheck(layer, x) < 1e-6


def test_linear_module_nd_input_and_no_bias(rng):
    layer = pe.Linear(6, 3, bias=False)
    assert layer.bias is None and list(layer.state_dict()) == ["weight"]
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 4, 3)
    np.testing.assert_allclose(y, x @ layer.weight.data.T, rtol=1e-5, atol=1e-5)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape
    np.testing.assert_allclose(layer.weight.grad, np.ones((8, 3)).T @ x.reshape(8, 6),
                               rtol=1e-5, atol=1e-5)


def test_linear_init_distribution_matches_torch_rule():
    pe.manual_seed(0)
    layer = pe.Linear(400, 300)
    bound = 1 / np.sqrt(400)
    for p in (layer.weight.data, layer.bias.data):
        assert p.min() >= -bound and p.max() <= bound
    # Uniform on [-b, b] has std b / sqrt(3).
    assert abs(layer.weight.data.std() - bound / np.sqrt(3)) < 0.02 * bound
    assert layer.weight.data.dtype == np.float32


def test_linear_non_contiguous_input(rng):
    x, W, b, dy = _data(rng, 8, 10, 4, np.float32)
    xt = np.asfortranarray(x)
    np.testing.assert_array_equal(dense.linear_forward(xt, W, b), dense.linear_forward(x, W, b))
    xs = rng.standard_normal((8, 20)).astype(np.float32)[:, ::2]
    np.testing.assert_allclose(dense.linear_forward(xs, W, b), xs @ W.T + b, rtol=1e-5, atol=1e-5)


def test_linear_same_bits_for_1_and_2_threads(rng):
    x, W, b, dy = _data(rng, 256, 784, 256, np.float32)
    results = []
    for t in (1, 2):
        pe.set_num_threads(t)
        results.append((dense.linear_forward(x, W, b), *dense.linear_backward(x, W, dy)))
    for a, c in zip(*results):
        assert np.array_equal(a, c)


def test_linear_zero_batch(rng):
    layer = pe.Linear(5, 3)
    y = layer(np.zeros((0, 5), np.float32))
    assert y.shape == (0, 3)
    dx = layer.backward(np.zeros((0, 3), np.float32))
    assert dx.shape == (0, 5)
    assert not layer.weight.grad.any()


@pytest.mark.parametrize("x,exc,match", [
    (np.ones((2, 4), np.float32), ValueError, "expects input"),
    (np.ones((2, 5), np.float16), TypeError, "dtype"),
    (np.ones((2, 5), np.int64), TypeError, "dtype"),
    (np.ones((2, 5), np.float64), TypeError, "dtype"),
])
def test_linear_module_bad_input(x, exc, match):
    with pytest.raises(exc, match=match):
        pe.Linear(5, 3)(x)


def test_linear_kernel_bad_input():
    W = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="features"):
        dense.linear_forward(np.ones((2, 4), np.float32), W)
    with pytest.raises(ValueError, match="bias"):
        dense.linear_forward(np.ones((2, 5), np.float32), W, np.ones(4, np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        dense.linear_forward(np.ones((2, 5), np.float16), W)
    with pytest.raises(ValueError, match="grad_out"):
        dense.linear_backward(np.ones((2, 5), np.float32), W, np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="in_features"):
        pe.Linear(-1, 3)


def test_linear_backward_without_forward_raises():
    layer = pe.Linear(3, 2)
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.ones((1, 2), np.float32))
    with pe.no_grad():
        layer(np.ones((1, 3), np.float32))
    with pytest.raises(RuntimeError, match="no_grad"):
        layer.backward(np.ones((1, 2), np.float32))


def test_linear_matches_torch(rng):
    torch = pytest.importorskip("torch")
    layer = pe.Linear(20, 7)
    tl = torch.nn.Linear(20, 7)
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal((9, 20)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tl(tx)
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(g))
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad, tl.weight.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.bias.grad, tl.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
