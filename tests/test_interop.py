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
