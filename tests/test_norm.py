"""BatchNorm1d/2d: engine kernels vs the NumPy reference, gradcheck, torch."""

import numpy as np
import pytest

import pyengine as pe
from engine import norm as kernels
from pyengine import reference as ref

# (3, 18, 5, 7): channel blocks of 4 with a partial last block; (2, 17, 600):
# rows longer than one 512-value block of partial sums, with a tail.
SHAPES = [(5, 3), (1, 4, 7), (4, 3, 9), (3, 5, 4, 6), (2, 2, 1, 1), (7, 130), (2, 3, 17),
          (3, 18, 5, 7), (2, 17, 600)]


def _bn_for(shape, **kw):
    cls = pe.BatchNorm2d if len(shape) == 4 else pe.BatchNorm1d
    return cls(shape[1], **kw)


def _randomise(bn, rng, dtype=np.float32):
    """Non-trivial weights, biases and running statistics."""
    C = bn.num_features
    if bn.affine:
        bn.weight.data = rng.standard_normal(C).astype(dtype)
        bn.weight.grad = np.zeros(C, dtype)
        bn.bias.data = rng.standard_normal(C).astype(dtype)
        bn.bias.grad = np.zeros(C, dtype)
    if bn.track_running_stats:
        bn.running_mean[...] = rng.standard_normal(C)
        bn.running_var[...] = rng.random(C) + 0.5


def _tols(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- kernels vs reference
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_train_matches_reference(rng, shape, dtype):
    x = (3 * rng.standard_normal(shape) + 1.5).astype(dtype)
    C = shape[1]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    want = ref.batchnorm_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                                 rm.astype(np.float64), rv.astype(np.float64),
                                 training=True, momentum=0.1, eps=1e-5)
    y, mean, invstd = kernels.batch_norm_forward(x, w, b, rm, rv, training=True,
                                                 momentum=0.1, eps=1e-5)
    for got, exp in zip((y, mean, invstd, rm, rv), want):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, exp, **_tols(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    gw, gb = np.full(C, 0.5, dtype), np.full(C, -1.0, dtype)
    dx = kernels.batch_norm_backward(dy, x, w, mean, invstd, training=True,
                                     grad_weight=gw, grad_bias=gb)
    dx_r, gw_r, gb_r = ref.batchnorm_backward(dy.astype(np.float64), x.astype(np.float64),
                                              w.astype(np.float64), want[1], want[2])
    # dx involves a cancellation (dy - mean(dy) - ...): judge it against its scale.
    scale = np.abs(w).max() * np.abs(want[2]).max() * np.abs(dy).max()
    np.testing.assert_allclose(dx, dx_r, rtol=_tols(dtype)["rtol"],
                               atol=_tols(dtype)["atol"] * scale)
    np.testing.assert_allclose(gw, gw_r + 0.5, **_tols(dtype))   # accumulated
    np.testing.assert_allclose(gb, gb_r - 1.0, **_tols(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward_eval_matches_reference(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = kernels.batch_norm_forward(x, w, b, rm, rv, training=False, eps=1e-3)
    want = ref.batchnorm_forward(x, w, b, rm, rv, training=False, eps=1e-3)
    np.testing.assert_allclose(y, want[0], **_tols(dtype))
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
    dy = rng.standard_normal(shape).astype(dtype)
    gw, gb = np.zeros(C, dtype), np.zeros(C, dtype)
    dx = kernels.batch_norm_backward(dy, x, w, mean, invstd, training=False,
                                     grad_weight=gw, grad_bias=gb)
    dx_r, gw_r, gb_r = ref.batchnorm_backward(dy, x, w, want[1], want[2], training=False)
    for got, exp in ((dx, dx_r), (gw, gw_r), (gb, gb_r)):
        np.testing.assert_allclose(got, exp, **_tols(dtype))


def test_kernel_without_affine_or_running_stats(rng):
    x = rng.standard_normal((6, 4, 5))
    y, mean, invstd = kernels.batch_norm_forward(x, training=True)
    want = ref.batchnorm_forward(x, training=True)
    np.testing.assert_allclose(y, want[0], rtol=1e-12, atol=1e-12)
    dx = kernels.batch_norm_backward(np.ones_like(x), x, None, mean, invstd)
    np.testing.assert_allclose(dx, 0, atol=1e-12)   # sum of a normalised x is constant
    assert kernels.batch_norm_backward(np.ones_like(x), x, None, mean, invstd,
                                       input_grad=False) is None


# (4, 18, 21, 23) is large enough to run on two threads, over channel blocks.
@pytest.mark.parametrize("shape", [(64, 40), (16, 300), (8, 16, 33), (4, 8, 9, 9),
                                   (4, 18, 21, 23)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_bitwise_equal(shape, dtype):
    results = []
    for threads in (1, 2):
        pe.set_num_threads(threads)
        rng = np.random.default_rng(5)
        bn = _bn_for(shape)
        _randomise(bn, rng, dtype)
        x = rng.standard_normal(shape).astype(dtype)
        y = bn(x)
        dx = bn.backward(rng.standard_normal(shape).astype(dtype))
        bn.eval()
        ye = bn(x)
        results.append((y, dx, ye, bn.weight.grad.copy(), bn.bias.grad.copy(),
                        bn.running_mean.copy(), bn.running_var.copy()))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("offset, spread", [(1e3, 1e-2), (1e4, 1.0), (0.0, 1e-3)])
@pytest.mark.parametrize("shape", [(32, 8, 16, 16), (3, 8, 700)], ids=str)
def test_float32_statistics_survive_a_large_offset(rng, shape, offset, spread):
    # mean/spread up to 1e5: float32 sums of raw values would lose the variance.
    x = (offset + spread * rng.standard_normal(shape)).astype(np.float32)
    _, mean, invstd = kernels.batch_norm_forward(x, training=True, eps=1e-5)
    xd = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    want_invstd = 1 / np.sqrt(xd.var(axis=axes) + 1e-5)
    np.testing.assert_allclose(mean, xd.mean(axis=axes), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(invstd, want_invstd, rtol=1e-6)


# ---------------------------------------------------------------- the modules
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 3, 4), (1, 2, 3, 2)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_train_mode(rng, shape, affine):
    bn = _bn_for(shape, affine=affine)
    _randomise(bn, rng, np.float64)
    pe.gradcheck(bn, rng.standard_normal(shape) * 2 + 1)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3, 4)], ids=str)
def test_gradcheck_eval_mode(rng, shape):
    bn = _bn_for(shape)
    _randomise(bn, rng, np.float64)
    bn.eval()
    pe.gradcheck(bn, rng.standard_normal(shape))


def test_module_backward_matches_reference(rng):
    bn = pe.BatchNorm2d(3)
    _randomise(bn, rng)
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    bn(x)
    dx = bn.backward(dy)
    dx2 = bn.backward(dy)   # gradients accumulate across backward calls
    y, mean, invstd, _, _ = ref.batchnorm_forward(x.astype(np.float64),
                                                  bn.weight.data.astype(np.float64),
                                                  bn.bias.data.astype(np.float64))
    dx_r, gw_r, gb_r = ref.batchnorm_backward(dy.astype(np.float64), x.astype(np.float64),
                                              bn.weight.data.astype(np.float64), mean, invstd)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.weight.grad, 2 * gw_r, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.bias.grad, 2 * gb_r, rtol=1e-4, atol=1e-4)
    assert bn.backward(dy, input_grad=False) is None


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("shape", [(8, 3), (5, 3, 7), (4, 3, 5, 6)], ids=str)
def test_running_stats_and_outputs_match_torch(rng, shape, momentum):
    torch = pytest.importorskip("torch")
    bn = _bn_for(shape, momentum=momentum)
    tcls = torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d
    tbn = tcls(shape[1], momentum=momentum)
    _randomise(bn, rng)
    tbn.load_state_dict({k: torch.tensor(v) for k, v in bn.state_dict().items()})
    for step in range(4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        tx = torch.tensor(x, requires_grad=True)
        y = bn(x)
        ty = tbn(tx)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        dy = rng.standard_normal(shape).astype(np.float32)
        dx = bn.backward(dy)
        ty.backward(torch.tensor(dy))
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.weight.grad, tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.bias.grad, tbn.bias.grad.numpy(), rtol=1e-4, atol=1e-4)
    tsd = tbn.state_dict()
    for key, value in bn.state_dict().items():
        np.testing.assert_allclose(value, tsd[key].numpy(), rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 4
    # Eval mode uses the running statistics.
    bn.eval()
    tbn.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = tbn(tx)
    np.testing.assert_allclose(bn(x), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(bn.backward(dy), tx.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_load_state_dict_from_torch(rng):
    torch = pytest.importorskip("torch")
    tbn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        tbn.weight.normal_()
        tbn.bias.normal_()
    tbn(torch.randn(8, 4, 3, 3) * 2 + 1)
    tbn.eval()
    bn = pe.BatchNorm2d(4)
    bn.load_state_dict({k: v for k, v in tbn.state_dict().items()})   # tensors accepted
    assert int(bn.num_batches_tracked) == 1
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.ndim == 0
    bn.eval()
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(bn(x), tbn(torch.tensor(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    # And the numpy-converted form, from a plain dict.
    bn2 = pe.BatchNorm2d(4)
    bn2.load_state_dict({k: v.numpy() for k, v in tbn.state_dict().items()})
    bn2.eval()
    np.testing.assert_array_equal(bn2(x), bn(x))


def test_state_dict_keys_and_defaults():
    bn = pe.BatchNorm1d(5)
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    np.testing.assert_array_equal(sd["weight"], np.ones(5))
    np.testing.assert_array_equal(sd["bias"], np.zeros(5))
    np.testing.assert_array_equal(sd["running_mean"], np.zeros(5))
    np.testing.assert_array_equal(sd["running_var"], np.ones(5))
    assert sd["num_batches_tracked"].dtype == np.int64 and sd["num_batches_tracked"] == 0
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-5, 0.1, True, True)
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert repr(bn) == ("BatchNorm1d(5, eps=1e-05, momentum=0.1, affine=True, "
                        "track_running_stats=True)")
    assert list(pe.BatchNorm2d(3, affine=False).state_dict()) == [
        "running_mean", "running_var", "num_batches_tracked"]
    nb = pe.BatchNorm2d(3, track_running_stats=False)
    assert list(nb.state_dict()) == ["weight", "bias"]


def test_train_eval_switching(rng):
    bn = pe.BatchNorm1d(3)
    x = (rng.standard_normal((16, 3)) * 4 + 2).astype(np.float32)
    y_train = bn(x)
    np.testing.assert_allclose(y_train.mean(axis=0), 0, atol=1e-5)
    rm = bn.running_mean.copy()
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=0), rtol=1e-5)
    bn.eval()
    y_eval = bn(x)
    assert not np.allclose(y_eval, y_train)
    np.testing.assert_array_equal(bn.running_mean, rm)     # eval does not update
    assert int(bn.num_batches_tracked) == 1
    bn.train()
    np.testing.assert_allclose(bn(x), y_train, rtol=1e-6, atol=1e-6)
    assert int(bn.num_batches_tracked) == 2


def test_no_running_stats_uses_batch_stats_in_eval(rng):
    bn = pe.BatchNorm2d(2, track_running_stats=False)
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    y = bn(x)
    bn.eval()
    np.testing.assert_array_equal(bn(x), y)
    pe.gradcheck(_to64(bn.train()), x)


def _to64(bn):
    for p in bn.parameters():
        p.data = p.data.astype(np.float64)
        p.grad = np.zeros_like(p.data)
    return bn


def test_float64_module_keeps_float32_buffers(rng):
    bn = _to64(pe.BatchNorm1d(3))
    x = rng.standard_normal((5, 3, 2))
    y = bn(x)
    assert y.dtype == np.float64 and bn.running_mean.dtype == np.float32
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=(0, 2)), rtol=1e-6)


def test_no_grad_keeps_nothing(rng):
    bn = pe.BatchNorm1d(3)
    with pe.no_grad():
        bn(rng.standard_normal((4, 3)).astype(np.float32))
    with pytest.raises(RuntimeError, match="without a forward pass"):
        bn.backward(np.ones((4, 3), np.float32))


def test_non_contiguous_input(rng):
    bn = pe.BatchNorm2d(3)
    big = rng.standard_normal((4, 6, 5, 5)).astype(np.float32)
    x = big[:, ::2]
    np.testing.assert_array_equal(bn(x), pe.BatchNorm2d(3)(np.ascontiguousarray(x)))


def test_bad_inputs(rng):
    bn1, bn2 = pe.BatchNorm1d(3), pe.BatchNorm2d(3)
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn1(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn2(np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="expected 2D or 3D input \\(got 4D input\\)"):
        bn1(np.zeros((4, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expected 4D input \\(got 3D input\\)"):
        bn2(np.zeros((4, 3, 2), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn1(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn2(np.zeros((1, 3, 1, 1), np.float32))
    assert int(bn1.num_batches_tracked) == 0        # a rejected call changes nothing
    bn1.eval()
    assert bn1(np.zeros((1, 3), np.float32)).shape == (1, 3)   # fine in eval mode
    with pytest.raises(TypeError, match="float32 or float64"):
        bn2(np.zeros((2, 3, 2, 2), np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        bn2(np.zeros((2, 3, 2, 2), np.int64))
    with pytest.raises(TypeError, match="does not match the parameters' dtype"):
        bn2(np.zeros((2, 3, 2, 2), np.float64))
    bn2(np.ones((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="grad_out must have the output's shape"):
        bn2.backward(np.ones((2, 3, 2, 3), np.float32))
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        pe.BatchNorm1d(0)
    with pytest.raises(ValueError, match="momentum must be in"):
        pe.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(ValueError, match="x must be at least 2-dimensional"):
        kernels.batch_norm_forward(np.zeros(3))
    with pytest.raises(ValueError, match="weight must have shape \\(3,\\)"):
        kernels.batch_norm_forward(np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(TypeError, match="bias must have dtype float64"):
        kernels.batch_norm_forward(np.zeros((2, 3)), np.zeros(3), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        kernels.batch_norm_forward(np.zeros((2, 3)), running_mean=np.zeros(3))
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        kernels.batch_norm_forward(np.zeros((2, 3)), training=False)
    with pytest.raises(ValueError, match="running_mean must be a writeable"):
        kernels.batch_norm_forward(np.zeros((2, 3)), running_mean=np.zeros(6)[::2],
                                   running_var=np.ones(3))
