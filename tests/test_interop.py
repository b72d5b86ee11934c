"""PyTorch round trips (pe.from_torch / pe.to_torch_state_dict) and ONNX export.

The recipe tested for each model: train a few steps in torch, load the
weights here, same predictions; train a few steps here, load them in torch,
same predictions.
"""

import numpy as np
import pytest

import pyengine as pe

torch = pytest.importorskip("torch")
nn = torch.nn

ATOL = 2e-5


def _torch_out(tmodel, x):
    tmodel.eval()
    with torch.no_grad():
        return tmodel(torch.from_numpy(x)).numpy()


def _pe_out(model, x):
    model.eval()
    with pe.no_grad():
        return model(x)


def _train_torch(tmodel, x, y, steps=3):
    opt = torch.optim.SGD(tmodel.parameters(), lr=0.05, momentum=0.9)
    tmodel.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(tmodel(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()


def _train_pe(model, x, y, steps=3):
    loss_fn = pe.CrossEntropyLoss()
    opt = pe.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()


def _round_trip(make_pe, make_torch, x, y):
    """torch-trained -> here, and here-trained -> torch: same predictions."""
    torch.manual_seed(0)
    tmodel = make_torch()
    _train_torch(tmodel, x, y)
    model = make_pe()
    model.load_state_dict(pe.from_torch(tmodel.state_dict()))
    np.testing.assert_allclose(_pe_out(model, x), _torch_out(tmodel, x), rtol=1e-4, atol=ATOL)

    pe.manual_seed(1)
    model = make_pe()
    _train_pe(model, x, y)
    tmodel = make_torch()
    tmodel.load_state_dict(pe.to_torch_state_dict(model))
    np.testing.assert_allclose(_torch_out(tmodel, x), _pe_out(model, x), rtol=1e-4, atol=ATOL)
    return model, tmodel


def test_from_torch_converts_tensors_and_counters():
    bn = nn.BatchNorm1d(3)
    sd = pe.from_torch(bn)
    assert list(sd) == list(bn.state_dict())
    assert sd["weight"].dtype == np.float32 and sd["num_batches_tracked"].dtype == np.int64
    assert sd["num_batches_tracked"].shape == ()
    sd64 = pe.from_torch(bn.state_dict(), dtype=np.float64)
    assert sd64["running_var"].dtype == np.float64
    assert sd64["num_batches_tracked"].dtype == np.int64
    # Copies: changing torch's tensor does not change ours.
    with torch.no_grad():
        bn.weight.fill_(7.0)
    assert sd["weight"][0] == 1.0


def test_to_torch_state_dict_types():
    model = pe.Sequential(pe.Linear(4, 3), pe.BatchNorm1d(3))
    tsd = pe.to_torch_state_dict(model)
    assert tsd["0.weight"].dtype == torch.float32
    assert tsd["1.num_batches_tracked"].dtype == torch.int64
    assert tsd["1.num_batches_tracked"].ndim == 0
    assert pe.to_torch_state_dict(model, dtype=torch.float64)["0.bias"].dtype == torch.float64
    tsd["0.weight"].zero_()     # an owning copy
    assert np.any(model[0].weight.data != 0)


def test_mlp_round_trip(rng):
    x = rng.standard_normal((16, 10)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    _round_trip(
        lambda: pe.Sequential(pe.Linear(10, 32), pe.ReLU(), pe.Linear(32, 16), pe.Tanh(),
                              pe.Linear(16, 4)),
        lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                              nn.Linear(16, 4)),
        x, y)


# -- the same architectures written with torch.nn (same child names) ----------

def _torch_lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


class _TorchResidual(nn.Module):
    def __init__(self, block, shortcut=None):
        super().__init__()
        self.block = block
        self.shortcut = shortcut

    def forward(self, x):
        return self.block(x) + (x if self.shortcut is None else self.shortcut(x))


def _torch_basic_block(cin, cout, stride):
    block = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(cout))
    return nn.Sequential(_TorchResidual(block, shortcut), nn.ReLU())


def _torch_resnet_small(widths=(16, 32, 64), in_channels=3, num_classes=10):
    from collections import OrderedDict
    layers = [("conv1", nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)),
              ("bn1", nn.BatchNorm2d(widths[0])), ("relu", nn.ReLU())]
    c = widths[0]
    for i, w in enumerate(widths):
        layers.append((f"layer{i + 1}", _torch_basic_block(c, w, 1 if i == 0 else 2)))
        c = w
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(c, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def test_lenet5_round_trip(rng):
    from pyengine.models import lenet5
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    _round_trip(lenet5, _torch_lenet5, x, y)


def test_resnet_small_round_trip(rng):
    from pyengine.models import resnet_small
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    model, tmodel = _round_trip(resnet_small, _torch_resnet_small, x, y)
    # BatchNorm running statistics and counters travelled too.
    sd = model.state_dict()
    assert int(sd["bn1.num_batches_tracked"]) == 3
    np.testing.assert_allclose(sd["bn1.running_var"],
                               tmodel.state_dict()["bn1.running_var"].numpy(), rtol=1e-6)


class _LSTMClassifier(pe.Module):
    """LSTM over (T, B, I), then Linear on the last step's output."""

    def __init__(self, I=5, H=8, classes=3):
        super().__init__()
        self.lstm = pe.LSTM(I, H)
        self.fc = pe.Linear(H, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        self._out_shape = out.shape
        return self.fc(out[-1])

    def backward(self, grad_out, input_grad=True):
        d_out = np.zeros(self._out_shape, np.float32)
        d_out[-1] = self.fc.backward(grad_out)
        return self.lstm.backward(d_out, input_grad=input_grad)


class _TorchLSTMClassifier(nn.Module):
    def __init__(self, I=5, H=8, classes=3):
        super().__init__()
        self.lstm = nn.LSTM(I, H)
        self.fc = nn.Linear(H, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[-1])


def test_lstm_round_trip(rng):
    x = rng.standard_normal((7, 4, 5)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    model, _ = _round_trip(_LSTMClassifier, _TorchLSTMClassifier, x, y)
    assert "lstm.weight_hh_l0" in model.state_dict()
