"""Worker for tests/test_distributed.py, run as ``mpiexec -n R python dist_worker.py MODE OUT``.

The functions also run in the pytest process without MPI (world size 1):
they are the single-process references of the multi-rank runs.
"""

import hashlib
import json
import os
import sys

import numpy as np

import pyengine as pe
import pyengine.distributed as dist


def make_data(n=64, features=10, classes=3, seed=7):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return X, y


def make_model(seed):
    pe.manual_seed(seed)
    return pe.Sequential(pe.Linear(10, 16), pe.ReLU(), pe.Linear(16, 16), pe.Tanh(),
                         pe.Linear(16, 3))


def make_optimizer(name, params):
    if name == "sgd":
        return pe.optim.SGD(params, lr=0.1, momentum=0.9)
    return pe.optim.Adam(params, lr=0.01)


def digest(model):
    h = hashlib.sha256()
    for _, p in model.named_parameters():
        h.update(p.data.tobytes())
    for _, b in model.named_buffers():
        h.update(np.asarray(b).tobytes())
    return h.hexdigest()


def train_steps(opt_name, steps=20, batch=16, check_identical=False):
    """`steps` manual steps; each rank takes its contiguous part of the global batch."""
    world, rank = dist.world_size(), dist.rank()
    X, y = make_data()
    model = make_model(100 + rank)  # different on every rank: broadcast must fix it
    dist.broadcast_parameters(model)
    opt = make_optimizer(opt_name, model.parameters())
    loss_fn = pe.CrossEntropyLoss()
    per_rank = batch // world
    for step in range(steps):
        start = (step * batch) % len(X)
        xb = X[start:start + batch][rank * per_rank:(rank + 1) * per_rank]
        yb = y[start:start + batch][rank * per_rank:(rank + 1) * per_rank]
        loss_fn(model(xb), yb)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        dist.allreduce_gradients(model)
        opt.step()
        if check_identical:
            digests = _allgather(digest(model))
            if len(set(digests)) != 1:
                raise AssertionError(f"parameters differ between ranks after step {step + 1}")
    return {name: p.data.copy() for name, p in model.named_parameters()}


def _allgather(value):
    if dist.world_size() == 1:
        return [value]
    return dist._comm().allgather(value)


def shard_check():
    """Indices each rank gets per epoch, for several sizes and both modes."""
    out = {}
    for n in (64, 67):
        for drop_last in (False, True):
            for epoch in (1, 2):
                s = dist.DistributedSampler(n, seed=3, drop_last=drop_last)
                s.set_epoch(epoch)
                out[f"{n}-{drop_last}-{epoch}"] = _allgather(list(s))
    return out


def bn_check():
    """Broadcast covers buffers; SyncBatchNorm equals BatchNorm on the global batch."""
    rank, world = dist.rank(), dist.world_size()
    bn = pe.BatchNorm2d(3)
    bn.running_mean[...] = rank + 1.0
    bn.num_batches_tracked[...] = 5 + rank
    dist.broadcast_parameters(bn)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4 * world, 3, 5, 5)).astype(np.float64) * 2 + 1
    g = rng.standard_normal(x.shape)
    sync = dist.SyncBatchNorm.convert_sync_batchnorm(_bn64())
    part = slice(4 * rank, 4 * (rank + 1))
    y = sync(x[part])
    dx = sync.backward(g[part])
    return {"running_mean": bn.running_mean.tolist(), "nbt": int(bn.num_batches_tracked),
            "y": _allgather(y.tolist()), "dx": _allgather(dx.tolist()),
            "sync_running_var": sync.running_var.tolist(),
            "sync_wgrad": (dist.allreduce_array(sync.weight.grad.copy()) / world).tolist()}


def nonfinite_check():
    """A NaN sample reaches one rank only: every rank stops at the same step (no hang)."""
    import warnings

    X, y = make_data()
    X[37, 0] = np.nan
    model = make_model(100)
    opt = pe.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = pe.fit(model, pe.CrossEntropyLoss(), opt, (X, y), epochs=3, batch_size=4,
                         seed=0, verbose=0, distributed=True)
    return [history.stop_reason, history.epochs, digest(model)]


def bucket_check():
    """Small buckets, float32 + float64 parameters, a replaced .grad: the mean over ranks."""
    rank, world = dist.rank(), dist.world_size()
    params = [pe.Parameter(np.zeros((3, 50), np.float32)), pe.Parameter(np.zeros(7)),
              pe.Parameter(np.zeros(200, np.float32)), pe.Parameter(np.zeros((4, 4)))]
    reducer = dist.GradientAllreducer(params, bucket_bytes=256)
    grads = []
    for i, p in enumerate(params):
        full = [np.random.default_rng([i, r]).standard_normal(p.shape).astype(p.dtype)
                for r in range(world)]
        grads.append(sum(full[1:], full[0]) / world)
        if i == 2:
            p.grad = full[rank].copy()  # a replaced array: copied in and re-pointed
        else:
            p.grad[...] = full[rank]
    reducer()
    return {"buckets": len(reducer.buckets),
            "mean": all(np.allclose(p.grad, g, rtol=1e-6, atol=1e-7)
                        for p, g in zip(params, grads)),
            "dtypes": all(p.grad.dtype == p.data.dtype for p in params),
            "views": all(any(p.grad is v for _, slots in reducer.buckets for q, v in slots
                             if q is p) for p in params)}


def fit_batchnorm_check():
    """fit(distributed=True) on a BatchNorm model: with SyncBatchNorm the replicas,
    buffers included, stay bitwise identical; plain BatchNorm keeps per-rank statistics."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((48, 2, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    out = {}
    for sync in (True, False):
        pe.manual_seed(1)
        model = pe.Sequential(pe.Conv2d(2, 4, 3), pe.BatchNorm2d(4), pe.ReLU(), pe.Flatten(),
                              pe.Linear(64, 3))
        if sync:
            model = dist.SyncBatchNorm.convert_sync_batchnorm(model)
        opt = pe.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pe.fit(model, pe.CrossEntropyLoss(), opt, (X, y), epochs=2, batch_size=8, seed=0,
               verbose=0, distributed=True)
        out["sync" if sync else "local"] = {
            "identical": len(set(_allgather(digest(model)))) == 1,
            "params_identical": len(set(_allgather(_param_digest(model)))) == 1,
            "type": type(model[1]).__name__}
    return out


def _param_digest(model):
    h = hashlib.sha256()
    for _, p in model.named_parameters():
        h.update(p.data.tobytes())
    return h.hexdigest()


def _bn64():
    bn = pe.BatchNorm2d(3)
    bn.weight = pe.Parameter(np.linspace(0.5, 1.5, 3))
    bn.bias = pe.Parameter(np.linspace(-1, 1, 3))
    bn.running_mean = bn.running_mean.astype(np.float64)
    bn.running_var = bn.running_var.astype(np.float64)
    return bn


def fit_run(out, epochs, batch, resume=None, tag="run"):
    """fit(distributed=True) on a global batch `batch`; optional resume from a checkpoint."""
    world = dist.world_size()
    X, y = make_data()
    model = make_model(100)
    opt = pe.optim.Adam(model.parameters(), lr=0.01)
    if resume is not None:
        ckpt = pe.load(resume)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
    ckpt_path = os.path.join(out, f"{tag}-w{world}.safetensors")
    history = pe.fit(model, pe.CrossEntropyLoss(), opt, (X, y), epochs=epochs,
                     batch_size=batch // world, seed=5, verbose=0, distributed=True,
                     checkpoint=pe.Checkpoint(ckpt_path, monitor="loss", save_best_only=False))
    if dist.rank() == 0:
        np.savez(os.path.join(out, f"{tag}-w{world}.npz"),
                 **{k: v for k, v in model.state_dict().items()})
        with open(os.path.join(out, f"{tag}-w{world}.json"), "w") as f:
            json.dump({k: list(v) for k, v in history.items()}, f)
    return ckpt_path


def main(mode, out):
    dist.init()
    world, rank = dist.world_size(), dist.rank()
    if mode == "core":
        result = {"world": world, "threads": pe.get_num_threads(),
                  "local_size": dist.local_size()}
        for name in ("sgd", "adam"):
            params = train_steps(name, check_identical=True)
            if rank == 0:
                np.savez(os.path.join(out, f"steps-{name}.npz"), **params)
        result["shards"] = shard_check()
        result["bn"] = bn_check()
        result["fit_bn"] = fit_batchnorm_check()
        result["buckets"] = bucket_check()
        result["nonfinite"] = _allgather(nonfinite_check())
        if rank == 0:
            with open(os.path.join(out, "core.json"), "w") as f:
                json.dump(result, f)
    elif mode == "train":  # 2 epochs from scratch, then 1 more from that checkpoint
        ckpt = fit_run(out, epochs=2, batch=16, tag="first")
        fit_run(out, epochs=1, batch=16, resume=ckpt, tag="resumed")
    elif mode == "resume":  # resume the other world size's checkpoint
        other = sys.argv[3]
        fit_run(out, epochs=1, batch=16, resume=other, tag="cross")
    elif mode == "raise":
        # The traceback also goes to a file: when the job is aborted, mpiexec
        # may kill the ranks before forwarding their last output (seen once
        # in a full test run on the loaded 2-core machine: empty stdout and
        # stderr).
        sys.stderr = open(os.path.join(out, f"raise-rank{rank}.log"), "w", buffering=1)
        if rank == 1:
            raise ValueError("boom from rank 1")
        dist.barrier()  # rank 0 would wait here forever without the abort
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
