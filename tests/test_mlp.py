"""Whole-model checks for the foundation: an MLP trained with softmax CE + SGD."""

import numpy as np
import pytest

import pyengine as pe
from pyengine import reference as ref


def _mlp(sizes, dtype=np.float32, act=pe.ReLU):
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(pe.Linear(a, b, dtype=dtype))
        if i < len(sizes) - 2:
            mods.append(act())
    return pe.Sequential(*mods)


def _reference_step(params, x, y, lr):
    """One SGD step of the same MLP written with pe.reference only."""
    acts, pre = [x], []
    for i, (W, b) in enumerate(params):
        z = ref.linear_forward(acts[-1], W, b)
        pre.append(z)
        acts.append(ref.relu_forward(z) if i < len(params) - 1 else z)
    loss = ref.cross_entropy_forward(acts[-1], y)
    g = ref.cross_entropy_backward(acts[-1], y)
    new = list(params)
    for i in range(len(params) - 1, -1, -1):
        W, b = params[i]
        dx, dW, db = ref.linear_backward(acts[i], W, g)
        new[i] = (W - lr * dW, b - lr * db)
        if i > 0:
            g = ref.relu_backward(pre[i - 1], dx)
    return loss, new


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-4), (np.float64, 1e-10)])
def test_mlp_sgd_steps_match_reference(dtype, rtol, rng):
    sizes = [13, 17, 9, 5]
    model = _mlp(sizes, dtype)
    params = [(m.weight.data.copy(), m.bias.data.copy()) for m in model if isinstance(m, pe.Linear)]
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = pe.CrossEntropyLoss()
    for step in range(5):
        x = rng.standard_normal((7, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], 7)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        ref_loss, params = _reference_step(params, x, y, 0.1)
        assert loss == pytest.approx(float(ref_loss), rel=rtol)
    linears = [m for m in model if isinstance(m, pe.Linear)]
    for lin, (W, b) in zip(linears, params):
        np.testing.assert_allclose(lin.weight.data, W, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(lin.bias.data, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("act", [pe.ReLU, pe.Tanh, pe.Sigmoid, pe.Softplus, pe.GELU])
def test_mlp_gradcheck_with_loss(act, rng):
    model = _mlp([4, 6, 3], np.float64, act)
    loss_fn = pe.CrossEntropyLoss()
    y = rng.integers(0, 3, 5)

    class WithLoss(pe.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return np.array(loss_fn(self.net(x), y))

        def backward(self, g, input_grad=True):
            return self.net.backward(loss_fn.backward() * float(g), input_grad)

    assert pe.gradcheck(WithLoss(), rng.standard_normal((5, 4))) < 1e-5


def test_mlp_training_identical_for_1_and_2_threads(rng):
    x = rng.standard_normal((64, 30)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    finals = []
    for threads in (1, 2):
        pe.set_num_threads(threads)
        pe.manual_seed(7)
        model = _mlp([30, 300, 200, 4])
        opt = pe.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = pe.CrossEntropyLoss()
        for _ in range(5):
            loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
        finals.append(model.state_dict())
    for k in finals[0]:
        assert np.array_equal(finals[0][k], finals[1][k]), k


def test_mlp_matches_torch_outputs_gradients_and_steps(rng):
    torch = pytest.importorskip("torch")
    sizes = [20, 32, 16, 6]
    model = _mlp(sizes)
    tmodel = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                 torch.nn.ReLU(), torch.nn.Linear(16, 6))
    # A torch state_dict converted with .numpy() loads as it is, same keys.
    model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})
    assert list(model.state_dict()) == list(tmodel.state_dict())
    opt = pe.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
    loss_fn, tloss_fn = pe.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for _ in range(3):
        x = rng.standard_normal((11, 20)).astype(np.float32)
        y = rng.integers(0, 6, 11)
        tx = torch.from_numpy(x).requires_grad_(True)
        tlogits = tmodel(tx)
        tloss = tloss_fn(tlogits, torch.from_numpy(y))
        topt.zero_grad()
        tloss.backward()
        logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad()
        dx = model.backward(loss_fn.backward())
        np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-5, atol=1e-5)
        assert loss == pytest.approx(tloss.item(), rel=1e-5)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
        for (name, p), (tname, tp) in zip(model.named_parameters(), tmodel.named_parameters()):
            assert name == tname
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-4, atol=1e-6)
        opt.step()
        topt.step()
    for k, v in tmodel.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[k], v.numpy(), rtol=1e-5, atol=1e-6)


def test_demo_trains_digits_to_95_percent(capsys, tmp_path, monkeypatch):
    from pyengine.__main__ import main
    monkeypatch.chdir(tmp_path)  # the demo saves its checkpoint in the current directory
    assert main(["demo", "--epochs", "30"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy:")[1].split()[0])
    assert acc >= 0.95, out


@pytest.mark.parametrize("bad_y,exc,match", [
    (np.array([0, 1, 5]), ValueError, "range|5"),
    (np.array([0, -3, 1]), ValueError, "range|-3"),
    (np.array([0.0, np.nan, 1.0]), (TypeError, ValueError), "integer|NaN|nan"),
])
def test_bad_targets_are_clear_errors(bad_y, exc, match):
    loss_fn = pe.CrossEntropyLoss()
    with pytest.raises(exc, match=match):
        loss_fn(np.zeros((3, 5), np.float32), bad_y)


def test_zero_size_batch_and_float16_input():
    model = _mlp([4, 3])
    assert model(np.zeros((0, 4), np.float32)).shape == (0, 3)
    with pytest.raises(TypeError, match="dtype"):
        model(np.zeros((2, 4), np.float16))
