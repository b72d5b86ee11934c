"""Kernel-level 3x3 convolution cases (the VGG layer): forward and weight gradient.

Their GFLOPS, next to the sgemm peak measured in the same run, show how close
the convolution kernels get to the machine's GEMM.
"""

import numpy as np

from pyengine.benchcases import _torch, case

_N, _C, _K, _H = 32, 64, 64, 32
_FLOPS = 2 * _N * _K * _C * 9 * _H * _H


def _data():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((_N, _C, _H, _H)).astype(np.float32)
    w = (rng.standard_normal((_K, _C, 3, 3)) / 24).astype(np.float32)
    dy = rng.standard_normal((_N, _K, _H, _H)).astype(np.float32)
    return x, w, dy


@case("conv3x3_fwd", "b32 64->64 32x32 pad1 forward", _FLOPS)
def conv3x3_fwd_case(backend, quick):
    x, w, _ = _data()
    state = {}
    if backend == "pyengine":
        from engine import conv
        out = np.empty((_N, _K, _H, _H), np.float32)

        def run():
            state["y"] = conv.conv2d(x, w, None, padding=1, out=out)
    elif backend == "reference":
        from pyengine import reference as ref

        def run():
            state["y"] = ref.conv2d_forward(x, w, None, padding=1)
    else:
        torch = _torch()
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)

        def run():
            with torch.no_grad():
                state["y"] = torch.nn.functional.conv2d(tx, tw, padding=1).numpy()
    return run, lambda: state


@case("conv3x3_wgrad", "b32 64->64 32x32 pad1 weight gradient", _FLOPS, atol=5e-3)
def conv3x3_wgrad_case(backend, quick):
    x, w, dy = _data()
    state = {}
    if backend == "pyengine":
        from engine import conv

        def run():
            state["dw"] = conv.conv2d_grad(x, w, dy, padding=1, input_grad=False, bias=False)[1]
    elif backend == "reference":
        from pyengine import reference as ref

        def run():  # the reference computes every gradient; dw is what is compared
            state["dw"] = ref.conv2d_backward(x, w, dy, padding=1)[1]
    else:
        torch = _torch()
        tx, tw, tdy = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(dy)

        def run():
            with torch.no_grad():
                _, dw, _ = torch.ops.aten.convolution_backward(
                    tdy, tx, tw, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                    [False, True, False])
            state["dw"] = dw.numpy()
    return run, lambda: state
