"""pe.distributed: data-parallel training over MPI (mpi4py).

Each multi-rank case spawns ``mpiexec -n 2 python tests/mpi_scripts/dist_worker.py``;
the single-process references run the same worker functions in this process
(without MPI every pe.distributed call acts as rank 0 of 1). Skipped when
mpi4py or mpiexec is missing or MPI cannot start.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pyengine as pe
import pyengine.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_scripts", "dist_worker.py")
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "mpi_scripts"))
import dist_worker  # noqa: E402


def _find_mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec")


def _env(threads="1"):
    env = dict(os.environ)
    env.pop("PYENGINE_NUM_THREADS", None)
    if threads is not None:
        env["PYENGINE_NUM_THREADS"] = threads
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


@pytest.fixture(scope="module")
def mpiexec():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install mpi4py mpich)")
    exe = _find_mpiexec()
    if exe is None:
        pytest.skip("no mpiexec beside sys.executable or on PATH (pip install mpich)")
    probe = [exe, "-n", "2", sys.executable, "-c",
             "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"]
    try:
        r = subprocess.run(probe, capture_output=True, text=True, timeout=30, env=_env())
    except subprocess.TimeoutExpired:
        pytest.skip("MPI did not start 2 ranks within 30 s")
    if r.returncode != 0:
        pytest.skip(f"MPI cannot start 2 ranks: {(r.stderr or r.stdout)[-300:]}")
    return exe


def run_mpi(mpiexec, n, *args, timeout=60, threads="1", check=True):
    cmd = [mpiexec, "-n", str(n), sys.executable, WORKER, *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=_env(threads), cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n"
                             f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


@pytest.fixture(scope="module")
def core(mpiexec, tmp_path_factory):
    out = tmp_path_factory.mktemp("core")
    run_mpi(mpiexec, 2, "core", out, threads=None)
    with open(out / "core.json") as f:
        return out, json.load(f)


# -- no MPI needed ----------------------------------------------------------------
def test_single_process_defaults():
    assert dist.world_size() >= 1 and 0 <= dist.rank() < dist.world_size()
    model = dist_worker.make_model(0)
    before = model.state_dict()
    dist.broadcast_parameters(model)  # a no-op on one process
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k])


@pytest.mark.parametrize("n,world,drop_last", [(64, 2, False), (67, 2, False), (67, 2, True),
                                               (10, 3, False), (10, 4, True), (3, 4, False)])
def test_sharding_covers_each_sample_once(n, world, drop_last):
    for epoch in (0, 1):
        shards = [dist.shard_indices(n, world, r, epoch, seed=1, drop_last=drop_last)
                  for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # equal shard sizes
        both = np.concatenate(shards)
        uniq, counts = np.unique(both, return_counts=True)
        if n % world == 0:
            assert np.array_equal(np.sort(both), np.arange(n))  # exactly once
        elif drop_last:
            assert counts.max() == 1 and len(both) == n - n % world
        else:  # padded: every sample, world - n % world of them twice
            assert np.array_equal(uniq, np.arange(n))
            assert len(both) == -(-n // world) * world
    # a new permutation each epoch, the same on every rank for the same (seed, epoch)
    assert not np.array_equal(dist.shard_indices(64, 2, 0, 0, seed=1),
                              dist.shard_indices(64, 2, 0, 1, seed=1))
    assert np.array_equal(dist.shard_indices(64, 2, 1, 3, seed=1),
                          _sampler_indices(64, 2, 1, 3, seed=1))


def _sampler_indices(n, world, rank, epoch, seed):
    s = dist.DistributedSampler(n, num_replicas=world, rank=rank, seed=seed)
    s.set_epoch(epoch)
    assert len(s) == len(list(s))
    return np.array(list(s))


# -- 2 ranks ---------------------------------------------------------------------
def test_threads_default_to_cores_per_local_rank(core):
    _, result = core
    from engine._threads import available_cores

    assert result["world"] == 2 and result["local_size"] == 2
    assert result["threads"] == max(1, available_cores() // 2)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_two_ranks_half_batch_match_one_rank_full_batch(core, opt_name):
    # (the worker also asserted bitwise-identical parameters on both ranks after every step)
    out, _ = core
    two = np.load(out / f"steps-{opt_name}.npz")
    one = dist_worker.train_steps(opt_name)  # here: 1 rank, batch 16, rank 0's init
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # and training moved the weights (the comparison is not between two initial states)
    init = dist_worker.make_model(100)
    assert not np.allclose(init.state_dict()["0.weight"], one["0.weight"])


def test_sharding_across_two_ranks(core):
    _, result = core
    for key, (r0, r1) in result["shards"].items():
        n, drop_last = int(key.split("-")[0]), key.split("-")[1] == "True"
        assert len(r0) == len(r1)
        both = np.array(r0 + r1)
        if n % 2 == 0 or drop_last:
            assert len(np.unique(both)) == len(both)  # no sample twice
            assert len(both) == n - (n % 2 if drop_last else 0)
        else:
            assert np.array_equal(np.unique(both), np.arange(n))


def test_broadcast_covers_buffers_and_sync_batchnorm(core):
    _, result = core
    bn = result["bn"]
    assert bn["running_mean"] == [1.0, 1.0, 1.0] and bn["nbt"] == 5  # rank 0's values
    # SyncBatchNorm on 2 ranks x 4 samples == BatchNorm2d on the 8-sample batch
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 3, 5, 5)) * 2 + 1
    g = rng.standard_normal(x.shape)
    ref = dist_worker._bn64()
    y = ref(x)
    dx = ref.backward(g)
    np.testing.assert_allclose(np.concatenate(bn["y"]), y, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.concatenate(bn["dx"]), dx, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(bn["sync_running_var"], ref.running_var, rtol=1e-10)
    # weight grads: local sums, averaged over the 2 ranks by the gradient allreduce
    np.testing.assert_allclose(bn["sync_wgrad"], ref.weight.grad / 2, rtol=1e-10)


def test_bucketed_allreduce(core):
    _, result = core
    b = result["buckets"]
    assert b["buckets"] == 3  # 256-byte buckets by dtype: f32 [600 B], [800 B]; f64 [56 + 128 B]
    assert b["mean"] and b["dtypes"] and b["views"]


def test_non_finite_loss_on_one_rank_stops_all(core):
    _, result = core
    (reason0, epochs0, digest0), (reason1, epochs1, digest1) = result["nonfinite"]
    assert reason0 == reason1 == "non-finite loss" and epochs0 == epochs1 == 0
    assert digest0 == digest1  # the same last good step on both ranks


def test_fit_with_batchnorm(core):
    _, result = core
    sync, local = result["fit_bn"]["sync"], result["fit_bn"]["local"]
    assert sync["type"] == "SyncBatchNorm" and local["type"] == "BatchNorm2d"
    assert sync["identical"]  # parameters AND running statistics
    assert local["params_identical"] and not local["identical"]  # per-rank running stats


def test_checkpoint_resumes_across_world_sizes(mpiexec, tmp_path):
    run_mpi(mpiexec, 1, "train", tmp_path)
    run_mpi(mpiexec, 2, "train", tmp_path)
    run_mpi(mpiexec, 2, "resume", tmp_path, tmp_path / "first-w1.safetensors")
    run_mpi(mpiexec, 1, "resume", tmp_path, tmp_path / "first-w2.safetensors")

    def load(name):
        return dict(np.load(tmp_path / f"{name}.npz"))

    def close(a, b):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)

    close(load("first-w1"), load("first-w2"))  # 2 ranks x 8 == 1 rank x 16
    ckpt = pe.load(tmp_path / "first-w2.safetensors")  # rank 0 wrote the final state
    assert ckpt["epoch"] == 2
    for k, v in load("first-w2").items():
        assert np.array_equal(ckpt["model"][k], v)
    close(load("cross-w1"), load("resumed-w2"))  # 2-rank checkpoint continued on 1 rank
    close(load("cross-w2"), load("resumed-w1"))  # and 1-rank checkpoint on 2 ranks
    with open(tmp_path / "first-w2.json") as f:
        h2 = json.load(f)
    with open(tmp_path / "first-w1.json") as f:
        h1 = json.load(f)
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-4)  # metrics over all ranks
    np.testing.assert_allclose(h2["accuracy"], h1["accuracy"])


def test_a_raising_rank_aborts_the_job(mpiexec, tmp_path):
    r = run_mpi(mpiexec, 2, "raise", tmp_path, timeout=30, check=False)
    assert r.returncode != 0
    # The worker's stderr (the excepthook's traceback and abort message) is
    # in a file: mpiexec may drop an aborted rank's last output.
    log = (tmp_path / "raise-rank1.log").read_text()
    assert "boom from rank 1" in log and "Traceback" in log
    assert "aborting all 2 ranks" in log


def test_demo_distributed_matches_one_process(mpiexec, tmp_path):
    """mpiexec -n 2 python -m pyengine demo --distributed: same global batches as one
    process, so the same accuracy up to float rounding (a few of 359 test images)."""
    def accuracy(cmd, *flags):
        r = subprocess.run(cmd + ["-m", "pyengine", "demo", "--model", "mlp", *flags,
                                  "--checkpoint", str(tmp_path / "demo.safetensors")],
                           capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        lines = [s for s in r.stdout.splitlines() if s.startswith("test accuracy:")]
        assert len(lines) == 1, r.stdout  # only rank 0 prints
        return float(lines[0].split()[2]), r.stdout

    two, out = accuracy([mpiexec, "-n", "2", sys.executable], "--distributed")
    assert "2 MPI ranks" in out and "MISMATCH" not in out
    one, _ = accuracy([sys.executable])  # plain single process, no MPI
    assert two >= 0.9 and abs(two - one) <= 3 / 359
