"""Benchmark cases shared by ``python -m pyengine bench`` and bench/*.py.

A case builds, for one backend ("pyengine", "reference" or "torch"), a
``run()`` callable doing one timed unit of work, and an ``outputs()`` callable
returning named arrays that must agree across backends (same data, same
initial weights, same number of steps run so far).
"""

import numpy as np

CASES = {}


class Unsupported(Exception):
    """This backend (or this build) cannot run the case."""


class Case:
    def __init__(self, name, shape, flops, builder, rtol=2e-3, atol=2e-4):
        self.name, self.shape, self.flops = name, shape, flops
        self.builder, self.rtol, self.atol = builder, rtol, atol

    def build(self, backend, quick=False):
        return self.builder(backend, quick)


def case(name, shape, flops, **kw):
    def deco(fn):
        CASES[name] = Case(name, shape, flops, fn, **kw)
        return fn
    return deco


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise Unsupported("torch is not installed") from exc
    return torch


def _mlp_init(sizes, seed=0):
    """Weights (out, in) and biases as torch.nn.Linear would draw them."""
    rng = np.random.default_rng(seed)
    layers = []
    for fin, fout in zip(sizes[:-1], sizes[1:]):
        bound = 1 / np.sqrt(fin)
        layers.append((rng.uniform(-bound, bound, (fout, fin)).astype(np.float32),
                       rng.uniform(-bound, bound, fout).astype(np.float32)))
    return layers


# -- Linear forward + backward ------------------------------------------------

_LIN = dict(N=128, IN=784, OUT=256)


@case("linear", "b128 784->256 fwd+bwd", 3 * 2 * 128 * 784 * 256)
def linear_case(backend, quick):
    N, IN, OUT = _LIN["N"], _LIN["IN"], _LIN["OUT"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, IN)).astype(np.float32)
    dy = rng.standard_normal((N, OUT)).astype(np.float32)
    (W, b), = _mlp_init([IN, OUT])
    if backend == "pyengine":
        import pyengine as pe
        layer = pe.Linear(IN, OUT)
        layer.load_state_dict({"weight": W, "bias": b})
        state = {}

        def run():
            layer.zero_grad()
            state["y"] = layer(x)
            state["dx"] = layer.backward(dy)

        return run, lambda: dict(y=state["y"], dx=state["dx"], dW=layer.weight.grad,
                                 db=layer.bias.grad)
    if backend == "reference":
        from pyengine import reference as ref
        state = {}

        def run():
            state["y"] = ref.linear_forward(x, W, b)
            state["dx"], state["dW"], state["db"] = ref.linear_backward(x, W, dy)

        return run, lambda: state
    torch = _torch()
    layer = torch.nn.Linear(IN, OUT)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(b))
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)
    state = {}

    def run():
        layer.zero_grad()
        tx.grad = None
        y = layer(tx)
        y.backward(tdy)
        state["y"] = y

    return run, lambda: dict(y=state["y"].detach().numpy(), dx=tx.grad.numpy(),
                             dW=layer.weight.grad.numpy(), db=layer.bias.grad.numpy())


# -- MLP 784-256-256-10 training step (softmax CE, SGD) --------------------------

_MLP_SIZES = [784, 256, 256, 10]
_MLP_BATCH = 128
_MLP_LR = 0.01


def _mlp_flops(sizes, batch):
    return 3 * 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


@case("mlp_step", "b128 784-256-256-10 SGD", _mlp_flops(_MLP_SIZES, _MLP_BATCH))
def mlp_step_case(backend, quick):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((_MLP_BATCH, _MLP_SIZES[0])).astype(np.float32)
    y = rng.integers(0, _MLP_SIZES[-1], _MLP_BATCH)
    params = _mlp_init(_MLP_SIZES)
    n = len(params)
    if backend == "pyengine":
        import pyengine as pe
        mods = []
        for i, (W, b) in enumerate(params):
            lin = pe.Linear(W.shape[1], W.shape[0])
            lin.load_state_dict({"weight": W, "bias": b})
            mods += [lin, pe.ReLU()] if i < n - 1 else [lin]
        model = pe.Sequential(*mods)
        loss_fn = pe.CrossEntropyLoss()
        opt = pe.optim.SGD(model.parameters(), lr=_MLP_LR)
        state = {}

        def run():
            state["loss"] = loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()

        def outputs():
            out = {"loss": np.array(state["loss"])}
            out.update({f"W{i}": model[2 * i].weight.data for i in range(n)})
            return out

        return run, outputs
    if backend == "reference":
        Ws = [(W.copy(), b.copy()) for W, b in params]
        state = {}

        def run():
            acts = [x]
            for i, (W, b) in enumerate(Ws):
                z = acts[-1] @ W.T + b
                acts.append(np.maximum(z, 0) if i < n - 1 else z)
            logits = acts[-1]
            shifted = logits - logits.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            state["loss"] = -logp[np.arange(len(y)), y].mean()
            g = np.exp(logp)
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
            for i in range(n - 1, -1, -1):
                W, b = Ws[i]
                dW, db = g.T @ acts[i], g.sum(axis=0)
                if i > 0:
                    g = (g @ W) * (acts[i] > 0)
                W -= _MLP_LR * dW
                b -= _MLP_LR * db

        def outputs():
            out = {"loss": np.array(state["loss"])}
            out.update({f"W{i}": Ws[i][0] for i in range(n)})
            return out

        return run, outputs
    torch = _torch()
    layers = []
    for i, (W, b) in enumerate(params):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()] if i < n - 1 else [lin]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=_MLP_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    state = {}

    def run():
        opt.zero_grad()
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        state["loss"] = loss.item()

    def outputs():
        out = {"loss": np.array(state["loss"])}
        out.update({f"W{i}": model[2 * i].weight.detach().numpy() for i in range(n)})
        return out

    return run, outputs
