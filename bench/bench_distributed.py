"""Data-parallel scaling on one machine: 1 rank x T threads vs T ranks x 1 thread.

    mpiexec -n 2 python bench/bench_distributed.py [--steps 30] [--warmup 5]

For each model (the LeNet-5 and MLP training steps of ``python -m pyengine
bench``: LeNet-5 b64 1x28x28, MLP b128 784-256-256-10, SGD), with the same
GLOBAL batch in every configuration:

* ``1 rank x N thr``: rank 0 alone with N = world-size engine threads and
  the whole batch (the other ranks wait without spinning);
* ``N ranks x 1 thr``: every rank with 1 thread and batch/N samples, the
  gradients averaged with ``pe.distributed.allreduce_gradients`` each step.

It prints the median step time, samples/s, the speed-up of the data-parallel
run, and the allreduce time per step and its share of the step. Rank 0
prints; timings on a busy machine are only indicative.
"""

import argparse
import time

import numpy as np

import pyengine as pe
import pyengine.distributed as dist


def lenet5():
    from pyengine.models import lenet5 as build
    return build(num_classes=10, in_channels=1), (1, 28, 28), 64


def mlp():
    sizes = [784, 256, 256, 10]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [pe.Linear(a, b)] + ([pe.ReLU()] if i < len(sizes) - 2 else [])
    return pe.Sequential(*layers), (784,), 128


MODELS = {"LeNet-5": lenet5, "MLP 784-256-256-10": mlp}


def _wait_idle(comm):
    """A barrier that sleeps instead of spinning (MPICH's Barrier busy-polls a core)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def time_steps(build, batch_share, steps, warmup, reduce):
    pe.manual_seed(0)
    model, shape, batch = build()
    if reduce:
        dist.broadcast_parameters(model)
    rng = np.random.default_rng(dist.rank() if reduce else 0)
    n = batch // batch_share
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n)
    loss_fn = pe.CrossEntropyLoss()
    opt = pe.optim.SGD(model.parameters(), lr=0.01)
    step_times, reduce_times = [], []
    comm = dist._comm()
    for i in range(warmup + steps):
        if reduce and comm is not None:
            comm.Barrier()  # start every step together so waits are not counted as allreduce
        t0 = time.perf_counter()
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        t1 = time.perf_counter()
        if reduce:
            dist.allreduce_gradients(model)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= warmup:
            step_times.append(t3 - t0)
            reduce_times.append(t2 - t1)
    alone = []  # the allreduce by itself, all ranks entering together (no load imbalance)
    for _ in range(steps if reduce and comm is not None else 0):
        comm.Barrier()
        t0 = time.perf_counter()
        dist.allreduce_gradients(model)
        alone.append(time.perf_counter() - t0)
    nbytes = sum(p.data.nbytes for p in model.parameters())
    return (float(np.median(step_times)), float(np.median(reduce_times)),
            float(np.median(alone)) if alone else 0.0, batch, nbytes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    dist.init(num_threads=1)
    world, rank, comm = dist.world_size(), dist.rank(), dist._comm()
    rows = []
    for name, build in MODELS.items():
        # 1 rank x world threads, whole batch (other ranks idle)
        if rank == 0:
            pe.set_num_threads(world)
            single = time_steps(build, 1, args.steps, args.warmup, reduce=False)[0]
        if comm is not None and world > 1:
            _wait_idle(comm)
        # world ranks x 1 thread, batch / world each
        pe.set_num_threads(1)
        step, red, alone, batch, nbytes = time_steps(build, world, args.steps, args.warmup,
                                                     reduce=True)
        if world > 1:  # the slowest rank sets the pace
            step, red, alone = (max(comm.allgather(v)) for v in (step, red, alone))
        if rank == 0:
            rows.append((name, batch, nbytes, single, step, red, alone))
    if rank != 0:
        return
    print(f"data-parallel scaling, {world} rank(s) on this machine "
          f"({dist.local_size()} local), same global batch; median of {args.steps} steps")
    print("allreduce in step: inside the timed step (includes waiting for a slower rank); "
          "alone: all ranks entering together")
    head = (f"{'model':<20} {'batch':>5} {'grads':>8} {'1 rank x %d thr' % world:>16} "
            f"{'%d ranks x 1 thr' % world:>16} {'speed-up':>8} {'allreduce in step':>18} "
            f"{'alone':>18}")
    print(head)
    print("-" * len(head))
    for name, batch, nbytes, single, step, red, alone in rows:
        print(f"{name:<20} {batch:>5} {nbytes / 2**20:>5.2f} MB {single * 1e3:>13.2f} ms "
              f"{step * 1e3:>13.2f} ms {single / step:>7.2f}x "
              f"{red * 1e3:>8.3f} ms {100 * red / step:>5.1f}% "
              f"{alone * 1e3:>8.3f} ms {100 * alone / step:>5.1f}%")
    print("samples/s:", ", ".join(f"{r[0]}: {r[1] / r[3]:.0f} -> {r[1] / r[4]:.0f}"
                                  for r in rows))


if __name__ == "__main__":
    main()
