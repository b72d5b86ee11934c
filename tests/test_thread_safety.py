"""Several Python threads on the engine at once (see docs/threading.md).

- inference on ONE shared model (eval mode, under pe.no_grad()) from several
  threads gives every thread exactly the single-threaded results;
- training one copy of a model while other threads run inference on another
  copy gives exactly the results of doing both one after the other;
- kernels release the GIL (another Python thread keeps running meanwhile).
"""

import copy
import sys
import threading
import time

import numpy as np
import pytest

import pyengine as pe
from engine import blas

N_THREADS = 4


def _cnn():
    pe.manual_seed(3)
    layers = [pe.Conv2d(2, 6, 3, padding=1), pe.BatchNorm2d(6), pe.ReLU()]
    if hasattr(pe, "MaxPool2d"):
        layers.append(pe.MaxPool2d(2))
        feat = 6 * 4 * 4
    else:
        layers.append(pe.Conv2d(6, 6, 3, stride=2, padding=1))
        feat = 6 * 4 * 4
    layers += [pe.Flatten(), pe.Dropout(0.3), pe.Linear(feat, 16), pe.Tanh(),
               pe.Linear(16, 4)]
    return pe.Sequential(*layers)


def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_shared_model_inference_from_many_threads(rng):
    model = _cnn()
    # one training step so BatchNorm has non-trivial running statistics
    x0 = rng.standard_normal((8, 2, 8, 8)).astype(np.float32)
    model(x0)
    model.eval()
    inputs = [rng.standard_normal((3 + i % 3, 2, 8, 8)).astype(np.float32) for i in range(12)]
    with pe.no_grad():
        expected = [model(x) for x in inputs]
    results = {}

    def worker(tid):
        def run():
            with pe.no_grad():
                for rep in range(5):
                    for i in range(tid, len(inputs) + tid):
                        j = i % len(inputs)
                        results[(tid, rep, j)] = model(inputs[j])
        return run

    _run_threads([worker(t) for t in range(N_THREADS)])
    assert len(results) == N_THREADS * 5 * len(inputs)
    for (tid, rep, j), out in results.items():
        np.testing.assert_array_equal(out, expected[j], err_msg=f"thread {tid} input {j}")


def _train_steps(model, x, y, steps):
    opt = pe.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = pe.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        losses.append(loss_fn(model(x), y))
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
    return losses, [p.data.copy() for p in model.parameters()]


def test_training_and_inference_on_copies_concurrently(rng):
    base = _cnn()
    x = rng.standard_normal((6, 2, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    inputs = [rng.standard_normal((4, 2, 8, 8)).astype(np.float32) for _ in range(6)]

    # serial reference: train copy A; run inference on copy B
    pe.manual_seed(11)
    want_losses, want_params = _train_steps(copy.deepcopy(base), x, y, 15)
    infer = copy.deepcopy(base).eval()
    with pe.no_grad():
        want_out = [infer(v) for v in inputs]

    trained = copy.deepcopy(base)
    infer = copy.deepcopy(base).eval()
    got = {}

    def trainer():
        pe.manual_seed(11)   # dropout masks come from the seeded engine RNG
        got["train"] = _train_steps(trained, x, y, 15)

    def inferrer(tid):
        def run():
            with pe.no_grad():
                got[tid] = [[infer(v) for v in inputs] for _ in range(4)]
        return run

    _run_threads([trainer] + [inferrer(t) for t in range(N_THREADS - 1)])
    losses, params = got["train"]
    assert losses == want_losses
    for a, b in zip(params, want_params):
        np.testing.assert_array_equal(a, b)
    for t in range(N_THREADS - 1):
        for rep in got[t]:
            for out, want in zip(rep, want_out):
                np.testing.assert_array_equal(out, want)


def test_concurrent_kernels_on_distinct_shapes(rng):
    """Workspaces are per call: different shapes at once never mix."""
    cases = []
    for i in range(N_THREADS):
        x = rng.standard_normal((2 + i, 3, 7 + i, 9 - i)).astype(np.float32)
        w = rng.standard_normal((4 + i, 3, 3, 3)).astype(np.float32)
        cases.append((x, w))
    from engine import conv
    want = [[conv.conv2d(x, w, algo=a) for a in ("im2col", "direct")] for x, w in cases]
    got = {}

    def worker(i):
        def run():
            x, w = cases[i]
            got[i] = [[conv.conv2d(x, w, algo=a) for a in ("im2col", "direct")]
                      for _ in range(10)]
        return run

    _run_threads([worker(i) for i in range(N_THREADS)])
    for i in range(N_THREADS):
        for rep in got[i]:
            for a, b in zip(rep, want[i]):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kernel", ["matmul", "conv2d-direct", "conv2d-im2col", "lstm"])
def test_kernels_release_the_gil(rng, kernel):
    """While one thread is inside a long kernel the main thread keeps running.

    With a 0.5 s switch interval a worker holding the GIL in C code for less
    than that is never preempted, so the main thread would record no tick
    inside the worker's [start, end] window (checked: a GIL-holding
    `sum(range(5e6))` gives 0 ticks; a GIL-releasing kernel gives thousands).
    """
    from engine import conv
    if kernel == "matmul":
        A = rng.standard_normal((700, 700)).astype(np.float32)

        def call():
            blas.matmul(A, A)
    elif kernel == "lstm":
        if not hasattr(pe, "LSTM"):
            pytest.skip("pe.LSTM not on this branch yet")
        lstm = pe.LSTM(64, 128)
        xs = rng.standard_normal((100, 8, 64)).astype(np.float32)

        def call():
            with pe.no_grad():
                lstm(xs)
    else:
        x = rng.standard_normal((8, 16, 40, 40)).astype(np.float32)
        w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)

        def call():
            conv.conv2d(x, w, algo=kernel.split("-")[1])

    call()   # warm-up (first-call allocations)
    started, window = threading.Event(), {}

    def worker():
        started.set()
        window["t0"] = time.perf_counter()
        call()
        window["t1"] = time.perf_counter()

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    try:
        th = threading.Thread(target=worker)
        th.start()
        started.wait()
        ticks = []
        while th.is_alive():
            ticks.append(time.perf_counter())
        th.join()
    finally:
        sys.setswitchinterval(old)
    inside = sum(window["t0"] < t < window["t1"] for t in ticks)
    assert inside > 10, f"the main thread never ran during {kernel}: the GIL was held"


# -- process-wide allocator setting ------------------------------------------

_MALLOC_PROBE = """
import numpy as np
import pyengine  # noqa: F401
# A freed 4 MB block is served again from the heap, at the same address; with
# glibc's defaults a 4 MB array is mmapped and unmapped on free.
a = np.ones(1 << 20, np.float32); addr = a.ctypes.data; del a
b = np.zeros(1 << 20, np.float32)
print(int(b.ctypes.data == addr))
"""


def test_malloc_keeps_freed_arrays():
    import os
    import platform
    import subprocess
    from engine import _threads
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        assert _threads.keep_freed_memory() is False
        return
    if "libasan" in os.environ.get("LD_PRELOAD", ""):   # tools/sanitize.sh
        pytest.skip("AddressSanitizer's allocator replaces glibc's: mallopt does nothing")
    assert _threads.keep_freed_memory() is True
    env = dict(os.environ)
    env.pop("PYENGINE_MALLOC_TUNING", None)
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "1"
