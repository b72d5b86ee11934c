"""pe.fit / pe.evaluate / pe.predict, EarlyStopping, Checkpoint, reproducibility."""

import os

import numpy as np
import pytest

import pyengine as pe


# Small NumPy stand-ins, used only where pyengine does not (yet) provide the layer.
class _ReLU(pe.Module):
    def forward(self, x):
        if pe.is_grad_enabled():
            self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad_out, input_grad=True):
        return grad_out * self._saved("_mask")


class _CrossEntropy:
    reduction = "mean"

    def __call__(self, logits, target):
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        n = len(target)
        self._grad = (np.exp(logp) - np.eye(logits.shape[1], dtype=logits.dtype)[target]) / n
        return float(-logp[np.arange(n), target].mean())

    def backward(self):
        return self._grad.astype(np.float32, copy=False)


class _MSE:
    def __call__(self, pred, target):
        diff = pred - target.reshape(pred.shape)
        self._grad = (2.0 / diff.size) * diff
        return float((diff.astype(np.float64) ** 2).mean())

    def backward(self):
        return self._grad


@pytest.fixture(autouse=True)
def _one_thread(_restore_threads):
    # These models are tiny: on a shared 2-core machine two OpenMP threads only
    # wait on each other. The reproducibility test below sets 1 and 2 itself.
    pe.set_num_threads(1)


ReLU = getattr(pe, "ReLU", _ReLU)
CrossEntropyLoss = getattr(pe, "CrossEntropyLoss", _CrossEntropy)
MSELoss = getattr(pe, "MSELoss", _MSE)


def _blobs(n=240, seed=0):
    """Three Gaussian blobs in 4-d: an easy 3-class problem."""
    rng = np.random.default_rng(seed)
    centers = np.array([[2, 0, 0, 1], [-2, 1, 0, -1], [0, -2, 2, 0]], np.float32)
    y = rng.integers(0, 3, n)
    x = centers[y] + 0.7 * rng.standard_normal((n, 4)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def _mlp(seed=0, hidden=16):
    pe.manual_seed(seed)
    return pe.Sequential(pe.Linear(4, hidden), ReLU(), pe.Linear(hidden, 3))


class _StepCounter:
    """A scheduler that halves lr each epoch and counts its steps."""

    def __init__(self, opt):
        self.opt, self.steps = opt, 0

    def step(self):
        self.steps += 1
        for g in self.opt.param_groups:
            g["lr"] *= 0.5


class _Plateau:
    """ReduceLROnPlateau-like: step(metric) receives the monitored value."""

    def __init__(self, opt):
        self.opt, self.seen = opt, []

    def step(self, metric):
        self.seen.append(metric)


def test_fit_two_layer_mlp_reaches_target_loss():
    x, y = _blobs()
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=15, batch_size=16,
                  verbose=False, seed=0)
    assert hist.epochs == 15 and len(hist["loss"]) == 15 and len(hist["accuracy"]) == 15
    assert hist["loss"][-1] < 0.1 < hist["loss"][0]
    assert hist["accuracy"][-1] > 0.97
    assert hist["lr"] == [0.1] * 15 and len(hist["time"]) == 15
    assert "val_loss" not in hist and hist.best_epoch is not None and not hist.stopped_early
    assert model.training  # the mode on entry is restored
    res = pe.evaluate(model, CrossEntropyLoss(), (x, y))
    assert set(res) == {"loss", "accuracy"} and res["accuracy"] > 0.97
    logits = pe.predict(model, x, batch_size=50)
    assert logits.shape == (len(x), 3)
    assert np.isclose(np.mean(logits.argmax(1) == y), res["accuracy"])


def test_history_per_epoch_validation_and_metrics():
    x, y = _blobs(300)
    (xt, yt), val = pe.train_val_split(x, y, val_fraction=0.2, seed=0)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.05)

    def top_class_rate(pred, target):  # a callable metric
        return float(np.mean(pred.argmax(1) == 0))

    hist = pe.fit(model, CrossEntropyLoss(), opt, pe.TensorDataset(xt, yt), epochs=4,
                  val=val, metrics=("accuracy", top_class_rate), verbose=False, seed=1)
    for key in ("loss", "accuracy", "top_class_rate", "val_loss", "val_accuracy",
                "val_top_class_rate", "lr", "time"):
        assert len(hist[key]) == 4, key
    assert hist.monitor == "val_loss"
    assert hist.best_epoch == 1 + int(np.argmin(hist["val_loss"]))
    # the history's val values are what evaluate() reports for the final weights
    res = pe.evaluate(model, CrossEntropyLoss(), val, metrics=("accuracy", top_class_rate))
    assert np.isclose(res["loss"], hist["val_loss"][-1], rtol=1e-6)
    assert res["accuracy"] == hist["val_accuracy"][-1]


def test_training_and_eval_modes_and_no_grad():
    seen = []

    class Spy(pe.Module):
        def forward(self, x):
            seen.append((self.training, pe.is_grad_enabled()))
            return x

        def backward(self, grad_out, input_grad=True):
            return grad_out

    x, y = _blobs(40)
    pe.manual_seed(0)
    model = pe.Sequential(Spy(), pe.Linear(4, 3))
    model.eval()
    opt = pe.optim.SGD(model.parameters(), lr=0.01)
    pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=1, val=(x, y), batch_size=20,
           verbose=False)
    assert seen == [(True, True), (True, True), (False, False)]
    assert not model.training


def test_early_stopping_stops_and_restores_best_weights():
    x, y = _blobs(200)
    xv, yv = _blobs(100, seed=1)
    model = _mlp()
    # a learning rate that diverges after the first epochs: val loss gets worse
    opt = pe.optim.SGD(model.parameters(), lr=0.05)
    states = []

    class Grow:
        def step(self):
            states.append(model.state_dict())
            for g in opt.param_groups:
                g["lr"] *= 6.0

    es = pe.EarlyStopping(monitor="val_loss", patience=2)
    hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=30, val=(xv, yv),
                  scheduler=Grow(), early_stopping=es, verbose=False, seed=0)
    assert hist.stopped_early and hist.stop_reason == "early_stopping"
    assert hist.epochs < 30 and es.stopped_epoch == hist.epochs
    best = int(np.argmin(hist["val_loss"])) + 1
    assert es.best_epoch == best == hist.best_epoch and hist.epochs == best + 2
    # the model holds the weights from the end of the best epoch, not the last
    for k, v in model.state_dict().items():
        assert np.array_equal(v, states[best - 1][k]), k
    assert not np.array_equal(model.state_dict()["0.weight"], states[-1]["0.weight"])
    res = pe.evaluate(model, CrossEntropyLoss(), (xv, yv), batch_size=256)
    assert np.isclose(res["loss"], hist["val_loss"][best - 1], rtol=1e-6)


def test_early_stopping_modes_and_validation():
    es = pe.EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.01)
    assert es.mode == "max"
    assert pe.EarlyStopping().mode == "min"
    with pytest.raises(ValueError, match="patience must be a non-negative integer"):
        pe.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="mode must be"):
        pe.EarlyStopping(mode="up")
    x, y = _blobs(40)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="monitors 'val_loss'.*pass val="):
        pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=2,
               early_stopping=pe.EarlyStopping(), verbose=False)


def test_scheduler_stepped_once_per_epoch_and_plateau_gets_metric():
    x, y = _blobs(60)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.08)
    sched, plateau = _StepCounter(opt), _Plateau(opt)
    hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=3, val=(x, y),
                  scheduler=[sched, plateau], verbose=False)
    assert sched.steps == 3
    assert hist["lr"] == [0.08, 0.04, 0.02]
    assert plateau.seen == hist["val_loss"]


def test_scheduler_from_pe_optim_if_available():
    step_lr = getattr(pe.optim, "StepLR", None)
    if step_lr is None:
        pytest.skip("pe.optim.StepLR not merged yet")
    x, y = _blobs(60)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=4,
                  scheduler=step_lr(opt, step_size=2, gamma=0.5), verbose=False)
    assert np.allclose(hist["lr"], [0.1, 0.1, 0.05, 0.05])


def test_reduce_lr_on_plateau_from_pe_optim_gets_val_loss():
    plateau = getattr(pe.optim, "ReduceLROnPlateau", None)
    if plateau is None:
        pytest.skip("pe.optim.ReduceLROnPlateau not merged yet")
    x, y = _blobs(60)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    # mode='max' on a falling val loss: every epoch after the first is "no improvement"
    sched = plateau(opt, mode="max", factor=0.5, patience=0)
    hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=4, val=(x, y),
                  scheduler=sched, verbose=False)
    assert all(a > b for a, b in zip(hist["val_loss"], hist["val_loss"][1:]))
    assert np.allclose(hist["lr"], [0.1, 0.1, 0.05, 0.025])
    assert sched.best == hist["val_loss"][0]


def test_resume_from_checkpoint_matches_uninterrupted_training(tmp_path):
    """Model + Adam state through a safetensors checkpoint: bitwise the same run."""
    if not hasattr(pe.optim, "Adam"):
        pytest.skip("pe.optim.Adam not merged yet")
    x, y = _blobs(96)

    def setup():
        model = _mlp(seed=3)
        return model, pe.optim.Adam(model.parameters(), lr=0.01)

    def run(model, opt, epochs, **kw):
        return pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=epochs, batch_size=16,
                      shuffle=False, verbose=False, **kw)

    model, opt = setup()
    run(model, opt, 4)
    full = model.state_dict()

    model, opt = setup()
    path = tmp_path / "ckpt.safetensors"
    run(model, opt, 2, checkpoint=pe.Checkpoint(path, monitor="loss", save_best_only=False))
    model, opt = setup()  # a fresh process would start like this
    ckpt = pe.load(path, model=model, optimizer=opt)
    assert ckpt["epoch"] == 2
    run(model, opt, 2)
    for k, v in full.items():
        assert np.array_equal(model.state_dict()[k], v), k


def test_checkpoint_path_saves_best_epoch(tmp_path):
    x, y = _blobs(120)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "best.safetensors"
    hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=4, val=(x[:40], y[:40]),
                  checkpoint=str(path), verbose=False)
    assert os.path.exists(path)
    ckpt = pe.load(path)
    assert ckpt["epoch"] == hist.best_epoch and ckpt["monitor"] == "val_loss"
    assert ckpt["value"] == min(hist["val_loss"])
    assert "optimizer" in ckpt and list(ckpt["history"]["val_loss"]) == hist["val_loss"][:ckpt["epoch"]]
    fresh = _mlp(seed=5)
    pe.load(path, model=fresh)
    res = pe.evaluate(fresh, CrossEntropyLoss(), (x[:40], y[:40]))
    assert np.isclose(res["loss"], min(hist["val_loss"]), rtol=1e-6)


def test_checkpoint_object_every_epoch_with_extra(tmp_path):
    x, y = _blobs(60)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.05)
    ck = pe.Checkpoint(str(tmp_path / "ep{epoch}.safetensors"), monitor="loss",
                       save_best_only=False, extra={"arch": {"name": "mlp", "hidden": 16}})
    pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=3,
           checkpoint=ck, verbose=False)
    assert sorted(os.listdir(tmp_path)) == [f"ep{e}.safetensors" for e in (1, 2, 3)]
    last = pe.load(tmp_path / "ep3.safetensors")
    assert last["arch"] == {"name": "mlp", "hidden": 16} and last["epoch"] == 3
    for k, v in model.state_dict().items():
        assert np.array_equal(last["model"][k], v)
    assert ck.last_saved == (3, str(tmp_path / "ep3.safetensors"))


def test_regression_with_mse_metric_and_dataloader():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 4)).astype(np.float32)
    w = np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32)
    y = (x @ w).astype(np.float32)
    pe.manual_seed(0)
    model = pe.Sequential(pe.Linear(4, 1))
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    loader = pe.DataLoader((x, y), batch_size=32, shuffle=True, seed=0)
    hist = pe.fit(model, MSELoss(), opt, loader, epochs=20, metrics=("mse", "mae"),
                  verbose=False)
    assert hist["mse"][-1] < 1e-3 and np.isclose(hist["mse"][-1], hist["loss"][-1], rtol=1e-4)
    assert np.allclose(model[0].weight.data, w.T, atol=0.05)


def test_binary_accuracy_threshold_at_zero():
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]], np.float32)
    target = np.array([[1.0], [0.0], [0.0], [0.0]], np.float32)

    class Fixed(pe.Module):
        def forward(self, x):
            return logits[x[:, 0].astype(int)]

    idx = np.arange(4, dtype=np.float32)[:, None]
    assert pe.evaluate(Fixed(), None, (idx, target)) == {"accuracy": 0.75}
    # a single logit column against 1-d targets is binary too (not an argmax over 1 class)
    assert pe.evaluate(Fixed(), None, (idx, target[:, 0])) == {"accuracy": 0.75}
    res = pe.evaluate(Fixed(), None, (idx, target), metrics=("mse", "mae"))
    assert np.isclose(res["mse"], (1 + 1 + 0.25 + 9) / 4) and np.isclose(res["mae"], (1 + 1 + 0.5 + 3) / 4)
    with pytest.raises(ValueError, match="mse: predictions of shape"):
        pe.evaluate(Fixed(), None, (idx, np.zeros((4, 2))), metrics=("mse",))


def test_fit_argument_errors():
    x, y = _blobs(20)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.01)
    loss = CrossEntropyLoss()
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        pe.fit(model, loss, opt, (x, y), epochs=0, verbose=False)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        pe.fit(model, loss, opt, (x, y), epochs=1, metrics=("f1",), verbose=False)
    with pytest.raises(ValueError, match=r"\(inputs, targets\); got 3"):
        pe.fit(model, loss, opt, (x, y, y), epochs=1, verbose=False)
    with pytest.raises(ValueError, match="same length"):
        pe.fit(model, loss, opt, (x, y[:-1]), epochs=1, verbose=False)
    with pytest.raises(ValueError, match="no batches"):
        pe.fit(model, loss, opt, pe.DataLoader((x, y), batch_size=64, drop_last=True),
               epochs=1, verbose=False)


def test_non_finite_loss_stops_with_warning():
    x, y = _blobs(40)
    x[5] = np.nan
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(RuntimeWarning, match="non-finite loss in epoch 1"):
        hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=3, batch_size=40,
                      verbose=False)
    assert hist.epochs == 0 and hist.stop_reason == "non-finite loss"
    assert np.isfinite(model.state_dict()["0.weight"]).all()


def test_progress_bar_shows_loss_and_rate(capsys):
    x, y = _blobs(64)
    model = _mlp()
    opt = pe.optim.SGD(model.parameters(), lr=0.05)
    pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=2, val=(x, y), verbose=True)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err
    assert "loss=" in err and "val_accuracy=" in err and "sample/s" in err


def _train_once(seed, threads):
    pe.set_num_threads(threads)
    pe.manual_seed(seed)
    x, y = _blobs(160, seed=3)
    model = pe.Sequential(pe.Linear(4, 32), ReLU(), pe.Linear(32, 32), ReLU(), pe.Linear(32, 3))
    opt = pe.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=3, batch_size=16, verbose=False)
    return model.state_dict()


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_gives_bitwise_identical_training(threads):
    a = _train_once(7, threads)
    b = _train_once(7, threads)
    c = _train_once(8, threads)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_training_identical_for_1_and_2_threads():
    # the engine's chunking makes results independent of the thread count
    a, b = _train_once(7, 1), _train_once(7, 2)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_demo_saves_checkpoint_and_eval_rebuilds_it(tmp_path, capsys):
    if not (hasattr(pe, "ReLU") and hasattr(pe, "CrossEntropyLoss")):
        pytest.skip("pe.ReLU / pe.CrossEntropyLoss not merged yet")
    from pyengine.__main__ import main

    path = str(tmp_path / "demo.safetensors")
    main(["demo", "--epochs", "4", "--threads", "1", "--checkpoint", path])
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "reloaded: test accuracy" in out
    assert "MISMATCH" not in out
    ckpt = pe.load(path)
    assert ckpt["arch"]["name"] == "mlp" and "optimizer" in ckpt
    assert main(["eval", path]) == 0
    out = capsys.readouterr().out
    assert f"(epoch {ckpt['epoch']})" in out and "test accuracy:" in out

    pe.save({"just": np.zeros(2)}, tmp_path / "other.safetensors")
    assert main(["eval", str(tmp_path / "other.safetensors")]) == 2
    assert "not a pyengine demo checkpoint" in capsys.readouterr().err


def test_batchnorm_dropout_model_reproducible_and_checkpoint_round_trip(tmp_path):
    x, y = _blobs(96, seed=2)

    def run():
        pe.manual_seed(21)
        model = pe.Sequential(pe.Linear(4, 16), pe.BatchNorm1d(16), ReLU(), pe.Dropout(0.3),
                              pe.Linear(16, 3))
        opt = pe.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        hist = pe.fit(model, CrossEntropyLoss(), opt, (x, y), epochs=3, val=(x, y),
                      batch_size=16, verbose=False)
        return model, hist

    a, hist_a = run()
    b, hist_b = run()
    assert hist_a["val_loss"] == hist_b["val_loss"]
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k]), k
    assert int(a[1].num_batches_tracked) == 3 * 6  # 96 / 16 training batches per epoch

    pe.save(a, tmp_path / "bn.safetensors")
    back = pe.load(tmp_path / "bn.safetensors")
    assert back["1.num_batches_tracked"].shape == () and back["1.num_batches_tracked"].dtype == np.int64
    pe.manual_seed(99)
    c = pe.Sequential(pe.Linear(4, 16), pe.BatchNorm1d(16), ReLU(), pe.Dropout(0.3),
                      pe.Linear(16, 3))
    c.load_state_dict(back)
    assert pe.evaluate(c, CrossEntropyLoss(), (x, y))["loss"] == hist_a["val_loss"][-1]
