"""Memory stays flat: 2,000 training steps of a small CNN and of an LSTM, and
repeated exceptions raised mid-forward, grow the resident set by < a few MB.

RSS is read from /proc/self/statm (pages). NumPy's allocator and the
OpenMP/BLAS runtimes settle during a warm-up; growth is measured after it.
"""

import gc
import os
import sys

import numpy as np
import pytest

import pyengine as pe

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                       reason="RSS is read from /proc/self/statm (Linux)"),
    # AddressSanitizer keeps freed blocks in a quarantine (256 MB): RSS grows
    # by design there, and ASan itself checks the memory errors.
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="RSS is meaningless under AddressSanitizer's quarantine"),
]

STEPS = 2000
WARMUP = 200
MAX_GROWTH_MB = 4.0


def rss_mb():
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure(step):
    # One engine thread: on a loaded CI box waking the OpenMP team for these
    # tiny shapes costs more than the work (2,000 steps must stay ~20 s);
    # concurrency is covered by test_thread_safety / test_determinism.
    pe.set_num_threads(1)
    for _ in range(WARMUP):
        step()
    gc.collect()
    before = rss_mb()
    for _ in range(STEPS):
        step()
    gc.collect()
    growth = rss_mb() - before
    # shown with -s; the report quotes these numbers
    print(f"\n[rss] {step.__qualname__}: {growth:+.2f} MB over {STEPS} steps", file=sys.stderr)
    return growth


def test_cnn_training_rss_flat(rng):
    pe.manual_seed(0)
    model = pe.Sequential(pe.Conv2d(1, 4, 3, padding=1), pe.BatchNorm2d(4), pe.ReLU(),
                          *([pe.MaxPool2d(2)] if hasattr(pe, "MaxPool2d") else []),
                          pe.Flatten(), pe.Dropout(0.1))
    feat = model(np.zeros((2, 1, 8, 8), np.float32)).reshape(2, -1).shape[1]
    model.append(pe.Linear(feat, 3))
    opt = pe.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = pe.CrossEntropyLoss()
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 4)

    def cnn_step():
        loss_fn(model(x), y)
        opt.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()

    assert _measure(cnn_step) < MAX_GROWTH_MB


@pytest.mark.skipif(not hasattr(pe, "LSTM"), reason="pe.LSTM not on this branch yet")
def test_lstm_training_rss_flat(rng):
    pe.manual_seed(0)
    lstm = pe.LSTM(3, 8)
    head = pe.Linear(8, 2)
    params = lstm.parameters() + head.parameters()
    opt = pe.optim.SGD(params, lr=0.01, momentum=0.9)
    loss_fn = pe.CrossEntropyLoss()
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)   # (T, N, F)
    y = rng.integers(0, 2, 2)

    def lstm_step():
        out, (h, c) = lstm(x)
        loss_fn(head(out[-1]), y)
        opt.zero_grad()
        d_last = head.backward(loss_fn.backward())
        d_out = np.zeros_like(out)
        d_out[-1] = d_last
        lstm.backward(d_out)
        opt.step()

    assert _measure(lstm_step) < MAX_GROWTH_MB


def test_exception_mid_forward_does_not_leak(rng):
    """A model that fails after its conv/linear kernels ran, over and over."""
    pe.manual_seed(0)
    model = pe.Sequential(pe.Conv2d(2, 4, 3), pe.ReLU(), pe.Flatten(), pe.Linear(4 * 6 * 6, 5),
                          pe.Linear(7, 2))          # wrong in_features: raises
    x = rng.standard_normal((3, 2, 8, 8)).astype(np.float32)
    conv = model[0]
    gy = np.ones((3, 4, 6, 6), np.float32)

    def failing_step():
        with pytest.raises(ValueError):
            model(x)
        # kernels rejecting arguments after other work was done
        with pytest.raises(ValueError):
            pe.CrossEntropyLoss()(np.zeros((3, 5), np.float32), np.array([0, 1, 9]))
        with pytest.raises(ValueError):
            conv.backward(gy[:, :2])
        conv(x)
        conv.backward(gy)

    assert _measure(failing_step) < MAX_GROWTH_MB
