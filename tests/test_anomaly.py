"""pe.detect_anomaly(): the first module producing a NaN/Inf is named."""

import numpy as np
import pytest

import pyengine as pe
from pyengine import module as module_mod


class Poison(pe.Module):
    """Identity forward; writes a NaN into the output or the gradient on demand."""

    def __init__(self, forward_nan=False, backward_nan=False):
        super().__init__()
        self.forward_nan, self.backward_nan = forward_nan, backward_nan

    def forward(self, x):
        y = x.copy()
        if self.forward_nan:
            y.flat[1] = np.nan
        return y

    def backward(self, grad_out, input_grad=True):
        g = grad_out.copy()
        if self.backward_nan:
            g.flat[0] = np.inf
        return g


def _model(poison):
    pe.manual_seed(0)
    return pe.Sequential(pe.Linear(4, 8), pe.ReLU(), poison, pe.Linear(8, 3))


def test_names_the_module_in_forward(rng):
    model = _model(Poison(forward_nan=True))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    with pe.detect_anomaly():
        with pytest.raises(pe.AnomalyError,
                           match=r"forward of Sequential\.2 \(Poison\) produced NaN"):
            model(x)
    model(x)   # outside the context nothing is checked


def test_names_the_module_in_backward(rng):
    model = _model(Poison(backward_nan=True))
    loss_fn = pe.CrossEntropyLoss()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    with pe.detect_anomaly():
        loss_fn(model(x), y)
        with pytest.raises(pe.AnomalyError, match=r"backward of Sequential\.2 \(Poison\) "
                                                  r"produced Inf .* gradient it returned"):
            model.backward(loss_fn.backward())
    # the wrappers are gone afterwards: backward is the class's again
    assert all("backward" not in m.__dict__ for m in model.modules())
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())


def test_parameter_gradient_checked(rng):
    model = _model(Poison())
    loss_fn = pe.MSELoss()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    with pe.detect_anomaly():
        pred = model(x)
        loss_fn(pred, np.zeros_like(pred))
        model[3].weight.grad[0, 0] = np.nan   # as if the kernel had produced it
        with pytest.raises(pe.AnomalyError, match=r"Sequential\.3 \(Linear\) produced NaN "
                                                  r".* in weight\.grad"):
            model.backward(loss_fn.backward())


def test_nan_input_blamed_on_the_data(rng):
    model = _model(Poison())
    x = rng.standard_normal((5, 4)).astype(np.float32)
    x[2, 1] = np.inf
    with pe.detect_anomaly():
        with pytest.raises(pe.AnomalyError, match=r"input 0 of Sequential .* Inf .*"
                                                  r"index \(2, 1\).* data itself"):
            model(x)


def test_overflow_in_a_real_layer(rng):
    # float32 overflow inside Linear: huge weights make an Inf the first layer produced
    model = _model(Poison())
    model[0].weight.data[...] = 1e30
    x = np.full((2, 4), 1e10, np.float32)
    with pe.detect_anomaly():
        with pytest.raises(pe.AnomalyError, match=r"forward of Sequential\.0 \(Linear\) "
                                                  r"produced Inf"):
            model(x)


def test_loss_nan_named(rng):
    loss_fn = pe.MSELoss()
    with pe.detect_anomaly():
        with pytest.raises(pe.AnomalyError, match=r"MSELoss"):
            loss_fn(np.full(3, 3e38, np.float32), np.full(3, -3e38, np.float32))


def test_off_by_default_and_restored():
    assert not pe.is_anomaly_enabled()
    with pe.detect_anomaly():
        assert pe.is_anomaly_enabled()
        with pe.detect_anomaly():
            assert pe.is_anomaly_enabled()
        assert pe.is_anomaly_enabled()
    assert not pe.is_anomaly_enabled()
    assert module_mod._anomaly_hook is None
    with pytest.raises(ZeroDivisionError):
        with pe.detect_anomaly():
            1 / 0
    assert not pe.is_anomaly_enabled()


def test_clean_training_unchanged(rng):
    """Inside the context a healthy model trains exactly as outside it."""
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)

    def run(anomaly):
        model = _model(Poison())
        opt = pe.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = pe.CrossEntropyLoss()
        for _ in range(5):
            if anomaly:
                with pe.detect_anomaly():
                    loss_fn(model(x), y)
                    opt.zero_grad()
                    model.backward(loss_fn.backward())
            else:
                loss_fn(model(x), y)
                opt.zero_grad()
                model.backward(loss_fn.backward())
            opt.step()
        return [p.data.copy() for p in model.parameters()]

    for a, b in zip(run(True), run(False)):
        np.testing.assert_array_equal(a, b)


def test_conv_model_and_tuple_outputs(rng):
    pe.manual_seed(1)
    model = pe.Sequential(pe.Conv2d(1, 2, 3), pe.BatchNorm2d(2), pe.ReLU(), pe.Flatten(),
                          pe.Dropout(0.5), pe.Linear(2 * 4 * 4, 3))
    x = rng.standard_normal((3, 1, 6, 6)).astype(np.float32)
    with pe.detect_anomaly():
        out = model(x)
        assert np.isfinite(out).all()
        model.backward(np.ones_like(out))
        model[0].weight.data[0, 0, 0, 0] = np.nan
        with pytest.raises(pe.AnomalyError, match=r"Sequential\.0 \(Conv2d\)"):
            model(x)


def test_fit_detect_anomaly(rng):
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = _model(Poison(backward_nan=True))
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(pe.AnomalyError, match=r"Sequential\.2 \(Poison\)"):
        pe.fit(model, pe.CrossEntropyLoss(), opt, (x, y), epochs=1, batch_size=8,
               verbose=0, detect_anomaly=True)
    assert not pe.is_anomaly_enabled()
    model = _model(Poison())
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    hist = pe.fit(model, pe.CrossEntropyLoss(), opt, (x, y), epochs=1, batch_size=8,
                  verbose=0, detect_anomaly=True)
    assert np.isfinite(hist["loss"][0])
