"""The training loop: ``pe.fit``, ``pe.evaluate``, ``pe.predict``, early stopping, checkpoints.

    history = pe.fit(model, pe.CrossEntropyLoss(), opt, (X, y), epochs=20,
                     val=(X_val, y_val), batch_size=64,
                     scheduler=pe.optim.StepLR(opt, 5),
                     early_stopping=pe.EarlyStopping(patience=3),
                     checkpoint="best.safetensors")
    history["val_accuracy"][-1], history.best_epoch

One training step is the manual loop of the README::

    pred = model(xb); loss = loss_fn(pred, yb)
    optimizer.zero_grad(); model.backward(loss_fn.backward(), input_grad=False)
    optimizer.step()

Epochs and ``best_epoch`` are numbered from 1; ``history[key][e - 1]`` is
the value after epoch ``e``.
"""

import inspect
import math
import numbers
import time
import warnings

import numpy as np

from pyengine.data import DataLoader, _as_dataset
from pyengine.module import no_grad

__all__ = ["fit", "evaluate", "predict", "History", "EarlyStopping", "Checkpoint"]


# -- metrics --------------------------------------------------------------------
def _accuracy_counts(pred, target):
    """(correct, total) for class logits (argmax) or single logits (threshold 0)."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    single_logit = pred.ndim == target.ndim + 1 and pred.shape[1] == 1
    if pred.ndim == target.ndim + 1 and not single_logit:  # class scores on axis 1
        hits = np.argmax(pred, axis=1) == target
    elif (pred.ndim == target.ndim and pred.shape == target.shape) or single_logit:
        # binary / multi-label logits: positive when the logit is > 0
        hits = (pred.reshape(target.shape) > 0) == (target > 0.5)
    else:
        raise ValueError(f"accuracy: cannot compare predictions of shape {pred.shape} "
                         f"with targets of shape {target.shape}")
    return float(np.count_nonzero(hits)), float(hits.size)


def _error(pred, target, name):
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.size != target.size:
        raise ValueError(f"{name}: predictions of shape {pred.shape} and targets of shape "
                         f"{target.shape} have different sizes")
    return pred.reshape(-1) - target.reshape(-1)


def _squared_error_counts(pred, target):
    diff = _error(pred, target, "mse")
    return float(diff @ diff), float(diff.size)


def _abs_error_counts(pred, target):
    diff = _error(pred, target, "mae")
    return float(np.abs(diff).sum()), float(diff.size)


_BUILTIN_METRICS = {"accuracy": _accuracy_counts, "acc": _accuracy_counts,
                    "mse": _squared_error_counts, "mae": _abs_error_counts}
_HIGHER_IS_BETTER = ("acc",)


def _resolve_metrics(metrics):
    """[(name, fn_returning_(sum, count))] from names and callables.

    A user callable ``fn(pred, target) -> float`` is a per-batch mean; it is
    averaged over batches weighted by batch size.
    """
    if metrics is None:
        return []
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    out = []
    for m in metrics:
        if isinstance(m, str):
            if m not in _BUILTIN_METRICS:
                raise ValueError(f"unknown metric {m!r}; use one of "
                                 f"{sorted(_BUILTIN_METRICS)} or a callable fn(pred, target)")
            out.append(("accuracy" if m == "acc" else m, _BUILTIN_METRICS[m]))
        elif callable(m):
            def counts(pred, target, fn=m):
                return float(fn(pred, target)) * len(pred), float(len(pred))
            out.append((getattr(m, "__name__", type(m).__name__), counts))
        else:
            raise TypeError(f"metrics must be names or callables, got {type(m).__name__}")
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(f"metric names must be unique and not 'loss'. Received: {names}")
    return out


def _auto_mode(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if mode != "auto":
        return mode
    return "max" if any(s in monitor for s in _HIGHER_IS_BETTER) else "min"


class _Best:
    """Tracks the best value of a monitored metric (min or max, with min_delta)."""

    def __init__(self, mode, min_delta=0.0):
        self.mode, self.min_delta = mode, abs(float(min_delta))
        self.value, self.epoch = None, None

    def improved(self, value):
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        if self.mode == "min":
            return value < self.value - self.min_delta
        return value > self.value + self.min_delta

    def update(self, value, epoch):
        if self.improved(value):
            self.value, self.epoch = value, epoch
            return True
        return False


# -- callbacks ------------------------------------------------------------------
class EarlyStopping:
    """Stop training when a monitored metric stops improving.

    Args:
        monitor: history key to watch (``'val_loss'``, ``'val_accuracy'``,
            ``'loss'``, ...). Must be produced by the fit call, or fit raises
            before training.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
        mode: ``'min'``, ``'max'`` or ``'auto'`` (max for accuracies, else min).
        restore_best: at the end of training, load the weights of the best
            epoch (kept as a state_dict copy in memory) back into the model.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best=True):
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer. Received: patience={patience!r}")
        if not isinstance(min_delta, numbers.Real) or min_delta < 0:
            raise ValueError(f"min_delta must be >= 0. Received: min_delta={min_delta!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = _auto_mode(monitor, mode)
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self):
        self._best = _Best(self.mode, self.min_delta)
        self.wait = 0
        self.best_state = None
        self.stopped_epoch = None

    @property
    def best(self):
        return self._best.value

    @property
    def best_epoch(self):
        return self._best.epoch

    def update(self, epoch, logs, model):
        """Record an epoch; True when training should stop."""
        if self._best.update(logs[self.monitor], epoch):
            self.wait = 0
            if self.restore_best:
                self.best_state = model.state_dict()  # copies
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def __repr__(self):
        return (f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta}, mode={self.mode!r}, restore_best={self.restore_best})")


class Checkpoint:
    """Save the model (and optimizer) during training with ``pe.save``.

    Args:
        path: file to write (atomically). May contain ``{epoch}`` (e.g.
            ``"ckpt-{epoch:03d}.safetensors"``) to keep one file per save.
        monitor: history key deciding what "best" is.
        save_best_only: True: save only when ``monitor`` improves (the file
            holds the best epoch); False: save after every epoch (the last).
        mode: ``'min'``, ``'max'`` or ``'auto'``.
        save_optimizer: include ``optimizer.state_dict()`` (to resume).
        extra: dict of additional entries saved with each checkpoint (e.g.
            the architecture, for rebuilding the model).

    The file is a dict ``{'model': state_dict, 'optimizer': opt_state,
    'epoch': e, 'monitor': name, 'value': v, 'history': {...}, **extra}``;
    ``pe.load(path, model=m)`` loads its weights into ``m``.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=True, mode="auto",
                 save_optimizer=True, extra=None):
        self.path = path
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = _auto_mode(monitor, mode)
        self.save_optimizer = bool(save_optimizer)
        self.extra = dict(extra or {})
        self.reset()

    def reset(self):
        self._best = _Best(self.mode)
        self.last_saved = None  # (epoch, path) of the last file written

    def update(self, epoch, logs, model, optimizer, history):
        value = logs.get(self.monitor)
        if self.save_best_only and not self._best.update(value, epoch):
            return False
        from pyengine.io import save

        path = str(self.path).format(epoch=epoch)
        ckpt = {"model": model.state_dict(), "epoch": epoch, "monitor": self.monitor,
                "value": None if value is None else float(value),
                "history": {k: list(v) for k, v in history.items()}}
        if self.save_optimizer and optimizer is not None and hasattr(optimizer, "state_dict"):
            ckpt["optimizer"] = optimizer.state_dict()
        ckpt.update(self.extra)
        save(ckpt, path)
        self.last_saved = (epoch, path)
        return True

    def __repr__(self):
        return (f"Checkpoint({self.path!r}, monitor={self.monitor!r}, "
                f"save_best_only={self.save_best_only}, mode={self.mode!r})")


class History(dict):
    """Per-epoch values by name: ``history['loss']``, ``history['val_accuracy']``, ...

    Attributes:
        epochs: number of epochs run.
        best_epoch: epoch (from 1) with the best monitored value (early
            stopping's or the checkpoint's monitor, else ``val_loss`` with
            validation data, else ``loss``).
        monitor: the name that ``best_epoch`` refers to.
        stopped_early: True when early stopping ended training.
        stop_reason: None, ``'early_stopping'`` or ``'non-finite loss'``.
    """

    def __init__(self):
        super().__init__()
        self.epochs = 0
        self.best_epoch = None
        self.monitor = None
        self.stopped_early = False
        self.stop_reason = None

    def append(self, logs):
        for k, v in logs.items():
            self.setdefault(k, []).append(v)
        self.epochs += 1

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.items()
                         if v and isinstance(v[-1], (int, float)))
        return f"History(epochs={self.epochs}, best_epoch={self.best_epoch}, {last})"


# -- loops ----------------------------------------------------------------------
def _loader(data, batch_size, shuffle, seed, who):
    if isinstance(data, DataLoader):
        return data
    return DataLoader(_as_dataset(data, who), batch_size=batch_size, shuffle=shuffle, seed=seed)


def _unpack(batch, who):
    if not isinstance(batch, tuple) or len(batch) != 2:
        n = len(batch) if isinstance(batch, tuple) else 1
        raise ValueError(f"{who}: each batch must be (inputs, targets); got {n} array(s). "
                         "Pass train as (X, y), TensorDataset(X, y) or a DataLoader over them")
    return batch


def _check_output(pred, who):
    if not isinstance(pred, np.ndarray):
        raise TypeError(f"{who}: model output must be an ndarray, got {type(pred).__name__} "
                        "(wrap models returning tuples, e.g. RNNs, in a Module that returns one array)")
    return pred


class _Meter:
    """Running sums for loss and metrics over an epoch."""

    def __init__(self, metric_fns, sum_reduction):
        self.metric_fns = metric_fns
        self.sum_reduction = sum_reduction
        self.loss_sum, self.n = 0.0, 0
        self.sums = {name: [0.0, 0.0] for name, _ in metric_fns}

    def add(self, loss, pred, target):
        n = len(pred)
        if loss is not None:
            self.loss_sum += loss if self.sum_reduction else loss * n
        self.n += n
        for name, fn in self.metric_fns:
            s, c = fn(pred, target)
            self.sums[name][0] += s
            self.sums[name][1] += c

    def result(self, prefix="", with_loss=True):
        out = {}
        if with_loss:
            out[prefix + "loss"] = self.loss_sum / self.n if self.n else float("nan")
        for name, (s, c) in self.sums.items():
            out[prefix + name] = s / c if c else float("nan")
        return out


def _sum_reduction(loss_fn):
    return getattr(loss_fn, "reduction", "mean") == "sum"


def _run_eval(model, loss_fn, loader, metric_fns, prefix="", ddp=None):
    meter = _Meter(metric_fns, _sum_reduction(loss_fn))
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for batch in loader:
                xb, yb = _unpack(batch, "evaluate")
                pred = _check_output(model(xb), "evaluate")
                loss = float(loss_fn(pred, yb)) if loss_fn is not None else None
                meter.add(loss, pred, yb)
    finally:
        model.train(was_training)
    if ddp is not None:
        ddp.reduce_meter(meter)
    return meter.result(prefix, with_loss=loss_fn is not None)


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _wants_metric(scheduler):
    """True for schedulers whose step() takes the monitored value (ReduceLROnPlateau)."""
    try:
        params = inspect.signature(scheduler.step).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is inspect.Parameter.empty and
               p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _fmt(logs):
    return {k: ((f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.4g}")
                if isinstance(v, float) else v) for k, v in logs.items()}


def fit(model, loss_fn, optimizer, train, epochs, val=None, batch_size=32, scheduler=None,
        early_stopping=None, checkpoint=None, metrics=("accuracy",), verbose=True,
        shuffle=True, seed=None, distributed=False):
    """Train ``model`` for ``epochs`` epochs; returns a :class:`History`.

    Args:
        model: a Module (``model.train()`` for training steps,
            ``model.eval()`` + ``pe.no_grad()`` for validation; its mode
            on entry is restored at the end).
        loss_fn: ``loss_fn(pred, target) -> float``, ``loss_fn.backward() -> dpred``.
        optimizer: ``zero_grad()``, ``step()``, ``param_groups``.
        train: ``(X, y)``, a TensorDataset / dataset of (x, y) or a DataLoader
            (then batch_size, shuffle and seed do not apply to it).
        epochs: number of epochs (>= 1).
        val: validation data in the same forms, evaluated after every epoch
            (adds ``val_loss`` and ``val_<metric>`` to the history).
        batch_size: training batch size (validation uses max(batch_size, 256)).
        scheduler: an LR scheduler (or a list) stepped once per epoch after
            validation; one whose ``step`` takes a value (ReduceLROnPlateau)
            gets the monitored metric (its ``monitor`` attribute if it has
            one, else early stopping's, else ``val_loss``/``loss``).
        early_stopping: an :class:`EarlyStopping`.
        checkpoint: a path (a :class:`Checkpoint` saving the best epoch by
            ``val_loss``, or by ``loss`` without validation data) or a
            :class:`Checkpoint`.
        metrics: names (``'accuracy'``, ``'mse'``, ``'mae'``) or callables
            ``fn(pred, target) -> float`` (a batch mean; the history keeps
            its batch-size-weighted mean over the epoch).
        verbose: 0/False: silent; 1/True: a tqdm progress bar per epoch
            (loss, metrics, samples/s) left on screen; 2: the same bar,
            erased at the end of each epoch (for callers printing their own
            per-epoch summary).
        shuffle: reshuffle the training samples every epoch.
        seed: seeds the shuffling; None draws from the engine's RNG
            (``pe.manual_seed``), so seeded runs repeat exactly.
        distributed: data-parallel over MPI ranks (``mpiexec -n N``; see
            :mod:`pyengine.distributed`): rank 0's weights are broadcast,
            each rank trains on its shard of every epoch (``batch_size`` is
            per rank), gradients are averaged after every backward pass,
            metrics are summed over the ranks (the same history on every
            rank), and only rank 0 shows the progress bar and writes
            checkpoints.

    Returns:
        History: ``history['loss']``, ``['accuracy']``, ``['val_loss']``,
        ``['val_accuracy']``, ``['lr']``, ``['time']`` per epoch, and
        ``.epochs``, ``.best_epoch``, ``.stopped_early``.
    """
    from tqdm.auto import tqdm

    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer. Received: epochs={epochs!r}")
    metric_fns = _resolve_metrics(metrics)
    train_loader = _loader(train, batch_size, shuffle, seed, "fit(train=...)")
    val_loader = None
    if val is not None:
        val_loader = _loader(val, max(int(batch_size), 256), False, None, "fit(val=...)")
    ddp = None
    if distributed:
        from pyengine.distributed import FitHooks

        ddp = FitHooks(model)
        train_loader = ddp.train_loader(train_loader)
        val_loader = ddp.eval_loader(val_loader) if val_loader is not None else None
        verbose = verbose if ddp.is_main else 0

    produced = ["loss"] + [n for n, _ in metric_fns]
    if val_loader is not None:
        produced += ["val_" + k for k in produced]
    default_monitor = "val_loss" if val_loader is not None else "loss"
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
        checkpoint = Checkpoint(checkpoint, monitor=default_monitor)
    schedulers = _as_list(scheduler)
    monitored = [("early_stopping", early_stopping)]
    if checkpoint is not None and checkpoint.save_best_only:
        monitored.append(("checkpoint", checkpoint))
    for name, obj in monitored:
        if obj is not None and obj.monitor not in produced:
            raise ValueError(f"{name} monitors {obj.monitor!r}, which this fit call does not "
                             f"produce (it produces {produced}; pass val= for 'val_*')")
    if early_stopping is not None:
        early_stopping.reset()
    if checkpoint is not None:
        checkpoint.reset()

    history = History()
    # best_epoch follows early stopping's monitor, else the checkpoint's, else the default
    history.monitor, mode = default_monitor, _auto_mode(default_monitor, "auto")
    for obj in (checkpoint, early_stopping):
        if obj is not None and obj.monitor in produced:
            history.monitor, mode = obj.monitor, obj.mode
    tracker = _Best(mode)
    sum_reduction = _sum_reduction(loss_fn)
    was_training = model.training
    total = train_loader.num_samples
    if len(train_loader) == 0:
        raise ValueError(f"fit: the training data gives no batches ({len(train_loader.dataset)} "
                         f"samples, batch_size={train_loader.batch_size}, "
                         f"drop_last={train_loader.drop_last})")

    try:
        for epoch in range(1, epochs + 1):
            model.train()
            meter = _Meter(metric_fns, sum_reduction)
            lr = optimizer.param_groups[0]["lr"] if getattr(optimizer, "param_groups", None) else None
            t0 = time.perf_counter()
            bar = tqdm(total=total, desc=f"Epoch {epoch}/{epochs}", unit="sample",
                       disable=not verbose, leave=verbose != 2, dynamic_ncols=True)
            nonfinite = False
            try:
                for batch in train_loader:
                    xb, yb = _unpack(batch, "fit")
                    pred = _check_output(model(xb), "fit")
                    loss = float(loss_fn(pred, yb))
                    if not math.isfinite(loss):
                        nonfinite = True
                        if ddp is None:  # (ranks agree in after_backward, then stop together)
                            break
                    meter.add(loss, pred, yb)  # before backward, which may reuse pred's buffer
                    optimizer.zero_grad()
                    model.backward(loss_fn.backward(), input_grad=False)
                    if ddp is not None and ddp.after_backward(model, nonfinite):
                        nonfinite = True
                        break
                    optimizer.step()
                    if verbose:
                        bar.set_postfix(_fmt(meter.result()), refresh=False)
                        bar.update(len(pred) * (1 if ddp is None else ddp.world_size))
                if ddp is not None and not nonfinite:
                    ddp.reduce_meter(meter)
                logs = meter.result()
                if val_loader is not None:
                    logs.update(_run_eval(model, loss_fn, val_loader, metric_fns, "val_", ddp))
                logs["lr"] = lr
                logs["time"] = time.perf_counter() - t0
                if verbose:
                    bar.set_postfix(_fmt({k: v for k, v in logs.items() if k != "time"}))
            finally:
                bar.close()

            if nonfinite:
                warnings.warn(f"fit: non-finite loss in epoch {epoch}; training stopped "
                              "(lower the learning rate?)", RuntimeWarning, stacklevel=2)
                history.stop_reason = "non-finite loss"
                break
            history.append(logs)
            tracker.update(logs.get(history.monitor), epoch)
            history.best_epoch = tracker.epoch

            if checkpoint is not None and (ddp is None or ddp.is_main):
                checkpoint.update(epoch, logs, model, optimizer, history)
            for s in schedulers:
                if _wants_metric(s):
                    name = getattr(s, "monitor", None) or history.monitor
                    if name not in logs:
                        raise ValueError(f"scheduler monitors {name!r}, not among {sorted(logs)}")
                    s.step(logs[name])
                else:
                    s.step()
            if early_stopping is not None and early_stopping.update(epoch, logs, model):
                history.stopped_early = True
                history.stop_reason = "early_stopping"
                if verbose == 1:
                    print(f"Early stopping after epoch {epoch}: no improvement in "
                          f"{early_stopping.monitor} for {early_stopping.patience} epochs "
                          f"(best {early_stopping.best:.4f} at epoch {early_stopping.best_epoch})")
                break
    finally:
        model.train(was_training)
    if ddp is not None:
        ddp.finish()

    if early_stopping is not None and early_stopping.restore_best and \
            early_stopping.best_state is not None and early_stopping.best_epoch != history.epochs:
        model.load_state_dict(early_stopping.best_state)
        if verbose == 1:
            print(f"Restored the weights of epoch {early_stopping.best_epoch} "
                  f"({early_stopping.monitor}={early_stopping.best:.4f})")
    return history


def evaluate(model, loss_fn, data, batch_size=256, metrics=("accuracy",)):
    """Loss and metrics of ``model`` on ``data`` (eval mode, no_grad).

    Args:
        data: ``(X, y)``, a dataset of (x, y) or a DataLoader.
        loss_fn: a loss, or None to report metrics only.

    Returns:
        dict, e.g. ``{'loss': 0.31, 'accuracy': 0.91}``.
    """
    loader = _loader(data, batch_size, False, None, "evaluate")
    return _run_eval(model, loss_fn, loader, _resolve_metrics(metrics))


def predict(model, X, batch_size=256):
    """Model outputs for ``X`` in batches (eval mode, no_grad), concatenated.

    ``X`` is an array (or a DataLoader / dataset whose batches start with the
    inputs; other arrays in a batch are ignored).
    """
    if isinstance(X, (DataLoader, tuple)) or (hasattr(X, "__len__") and hasattr(X, "__getitem__")
                                              and not isinstance(X, (np.ndarray, list))):
        loader = _loader(X, batch_size, False, None, "predict")
    else:
        loader = DataLoader(np.asarray(X), batch_size=batch_size)
    outs = []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for batch in loader:
                outs.append(_check_output(model(batch[0]), "predict"))
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("predict: no samples")
    return np.concatenate(outs, axis=0)
