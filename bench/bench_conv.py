"""Convolution kernels: im2col vs direct vs winograd vs 'auto' vs pe.reference vs torch.

    .venv/bin/python -m pytest bench/bench_conv.py --threads 1
    .venv/bin/python -m pytest bench/bench_conv.py -k "vgg and not reference"

Passes: forward (with bias), weight_grad (dW + db, no input gradient: what
a first layer needs) and backward (dx + dW + db). The reference has no
weight-only pass, so it is benchmarked for forward and backward only. Every
engine result is checked against the reference before it is timed.
"""

import numpy as np
import pytest

import pyengine as pe
from engine import conv as kconv
from pyengine import reference as ref

# name: (x shape, weight shape, stride, padding, groups)
LAYERS = {
    "lenet_c1": ((64, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1),
    "lenet_c2": ((64, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    "vgg_3x3_64": ((32, 64, 32, 32), (64, 64, 3, 3), 1, 1, 1),
    "resnet_3x3_64_8x8": ((32, 64, 8, 8), (64, 64, 3, 3), 1, 1, 1),
    "depthwise_3x3": ((32, 64, 32, 32), (64, 1, 3, 3), 1, 1, 64),
}
BACKENDS = ["im2col", "direct", "winograd", "auto", "reference", "torch"]
PASSES = ["forward", "weight_grad", "backward"]


def _data(name):
    xs, ws, s, p, g = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    y_shape = kconv.output_shape(xs, ws, s, p, 1, g)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    return x, w, b, dy, s, p, g


def _flops(name, pas):
    xs, ws, s, p, g = LAYERS[name]
    N, K, OH, OW = kconv.output_shape(xs, ws, s, p, 1, g)
    one = 2.0 * N * K * OH * OW * ws[1] * ws[2] * ws[3]
    return {"forward": one, "weight_grad": one, "backward": 2 * one}[pas]


def _engine_fn(backend, pas, x, w, b, dy, s, p, g):
    if pas == "forward":
        return lambda: (kconv.conv2d(x, w, b, s, p, 1, g, algo=backend),)
    input_grad = pas == "backward"

    def run():
        dx, dw, db = kconv.conv2d_grad(x, w, dy, s, p, 1, g, algo=backend,
                                       input_grad=input_grad)
        return (dw, db) if dx is None else (dx, dw, db)
    return run


def _torch_fn(pas, x, w, b, dy, s, p, g, threads):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(threads)
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
    if pas == "forward":
        def run():
            with torch.no_grad():
                return (torch.nn.functional.conv2d(tx, tw, tb, s, p, 1, g).numpy(),)
        return run
    mask = [pas == "backward", True, True]

    def run():
        dx, dw, db = torch.ops.aten.convolution_backward(
            tdy, tx, tw, [w.shape[0]], [s, s], [p, p], [1, 1], False, [0, 0], g, mask)
        out = (dw.numpy(), db.numpy())
        return out if dx is None else (dx.numpy(),) + out
    return run


def _reference_fn(pas, x, w, b, dy, s, p, g):
    if pas == "forward":
        return lambda: (ref.conv2d_forward(x, w, b, s, p, 1, g),)
    if pas == "backward":
        return lambda: ref.conv2d_backward(x, w, dy, s, p, 1, g)
    pytest.skip("the reference has no weight-gradient-only pass")


def _expected(name, pas):
    x, w, b, dy, s, p, g = _data(name)
    args = [a.astype(np.float64) for a in (x, w, b, dy)]
    if pas == "forward":
        return (ref.conv2d_forward(args[0], args[1], args[2], s, p, 1, g),)
    dx, dw, db = ref.conv2d_backward(args[0], args[1], args[3], s, p, 1, g)
    return (dw, db) if pas == "weight_grad" else (dx, dw, db)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pas", PASSES)
@pytest.mark.parametrize("name", list(LAYERS))
def test_conv(benchmark, name, pas, backend, threads):
    x, w, b, dy, s, p, g = _data(name)
    if backend == "winograd" and (w.shape[2:] != (3, 3) or s != 1):
        pytest.skip("Winograd F(2x2, 3x3) computes 3x3 stride-1 convolutions only")
    pe.set_num_threads(threads)
    if backend == "torch":
        run = _torch_fn(pas, x, w, b, dy, s, p, g, threads)
    elif backend == "reference":
        run = _reference_fn(pas, x, w, b, dy, s, p, g)
    else:
        run = _engine_fn(backend, pas, x, w, b, dy, s, p, g)
    for got, want in zip(run(), _expected(name, pas)):
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * scale)
    benchmark.extra_info.update(case=f"conv {name} {pas}", backend=backend,
                                threads=threads, flops=_flops(name, pas),
                                algo=kconv.choose_algo(x.shape, w.shape, s, p, 1, g)
                                if backend == "auto" else backend)
    benchmark(run)
