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
    """A benchmark case. Outputs are compared with the reference elementwise
    (rtol, atol), except the keys in `norm_keys`: gradients that flow back
    through a max pool, compared by relative Frobenius error <= rtol. Two
    correct float32 forwards that round differently can break a near-tie in
    a pool window the other way, which sends one pool's gradient to a
    neighbouring pixel: an elementwise mismatch of O(1) at a few hundred
    positions (the vgg_block dx, after the direct and the GEMM forward
    summed the same products in different orders), but a relative error of
    ~1e-4 over the whole tensor."""

    def __init__(self, name, shape, flops, builder, rtol=2e-3, atol=2e-4, norm_keys=()):
        self.name, self.shape, self.flops = name, shape, flops
        self.builder, self.rtol, self.atol = builder, rtol, atol
        self.norm_keys = tuple(norm_keys)

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
    """Forward, weight-grad and input-grad GEMMs, less the first layer's input grad
    (no backend computes the data's gradient)."""
    gemm = [2 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 3 * sum(gemm) - gemm[0]


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


# -- Activations and the fused cross-entropy (forward + backward) -----------------

_ACT_SHAPE = (128, 4096)
_ACT_MODULES = {  # case name -> (pe / torch.nn constructor source, reference name)
    "relu": ("ReLU()", "relu"),
    "gelu": ("GELU()", "gelu"),
    "softmax": ("Softmax(dim=1)", "softmax"),
}


def _activation_builder(name):
    expr, ref_name = _ACT_MODULES[name]

    def build(backend, quick):
        rng = np.random.default_rng(3)
        x = rng.standard_normal(_ACT_SHAPE).astype(np.float32)
        dy = rng.standard_normal(_ACT_SHAPE).astype(np.float32)
        state = {}
        if backend == "pyengine":
            import pyengine as pe
            m = eval("pe." + expr)

            def run():
                state["y"] = m(x)
                state["dx"] = m.backward(dy)

            return run, lambda: state
        if backend == "reference":
            from pyengine import reference as ref
            fwd = getattr(ref, ref_name + "_forward")
            bwd = getattr(ref, ref_name + "_backward")

            def run():
                state["y"] = fwd(x)
                state["dx"] = bwd(x, dy)

            return run, lambda: state
        torch = _torch()
        m = eval("torch.nn." + expr)
        tx = torch.from_numpy(x).requires_grad_(True)
        tdy = torch.from_numpy(dy)

        def run():
            tx.grad = None
            y = m(tx)
            y.backward(tdy)
            state["y"] = y

        return run, lambda: dict(y=state["y"].detach().numpy(), dx=tx.grad.numpy())

    return build


for _name in _ACT_MODULES:
    case(_name, f"{_ACT_SHAPE[0]}x{_ACT_SHAPE[1]} fwd+bwd", 0)(_activation_builder(_name))


_CE_SHAPE = (128, 1000)


@case("cross_entropy", f"{_CE_SHAPE[0]}x{_CE_SHAPE[1]} fwd+bwd", 0)
def cross_entropy_case(backend, quick):
    rng = np.random.default_rng(4)
    x = (3 * rng.standard_normal(_CE_SHAPE)).astype(np.float32)
    t = rng.integers(0, _CE_SHAPE[1], _CE_SHAPE[0])
    state = {}
    if backend == "pyengine":
        import pyengine as pe
        loss_fn = pe.CrossEntropyLoss()

        def run():
            state["loss"] = np.array(loss_fn(x, t))
            state["dx"] = loss_fn.backward()

        return run, lambda: state
    if backend == "reference":
        from pyengine import reference as ref

        def run():
            state["loss"] = np.array(ref.cross_entropy_forward(x, t))
            state["dx"] = ref.cross_entropy_backward(x, t)

        return run, lambda: state
    torch = _torch()
    loss_fn = torch.nn.CrossEntropyLoss()
    tx = torch.from_numpy(x).requires_grad_(True)
    tt = torch.from_numpy(t)

    def run():
        tx.grad = None
        loss = loss_fn(tx, tt)
        loss.backward()
        state["loss"] = loss

    return run, lambda: dict(loss=state["loss"].detach().numpy(), dx=tx.grad.numpy())
# -- Optimizer steps over a 10M-parameter model -----------------------------------

def _optim_model(quick):
    """Parameter and gradient arrays of an MLP-like model (~10.5M parameters)."""
    shapes = [(2048, 1024), (2048,), (2048, 2048), (2048,), (1024, 2048), (1024,),
              (1000, 1024), (1000,)]
    if quick:
        shapes = [(s[0] // 8,) + s[1:] for s in shapes]
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    return params, grads


def _optim_case(kind, hyper):
    """pyengine: the fused kernel; reference: NumPy expressions (pe.reference);
    torch: torch.optim with foreach=True (its multi-tensor path)."""

    def build(backend, quick):
        params, grads = _optim_model(quick)
        if backend == "pyengine":
            import pyengine as pe
            ps = [pe.Parameter(p) for p in params]
            for p, g in zip(ps, grads):
                p.grad = g
            opt = getattr(pe.optim, kind)(ps, **hyper)
            return opt.step, lambda: {f"p{i}": p.data for i, p in enumerate(ps)}
        if backend == "reference":
            from pyengine import reference as ref
            ps = [p.copy() for p in params]
            state = {"t": 0, "bufs": [None] * len(ps),
                     "m": [np.zeros_like(p) for p in ps], "v": [np.zeros_like(p) for p in ps]}

            def run():
                state["t"] += 1
                for i, g in enumerate(grads):
                    if kind == "SGD":
                        ps[i], state["bufs"][i] = ref.sgd_update(ps[i], g, state["bufs"][i],
                                                                 **hyper)
                    else:
                        kw = dict(hyper)
                        beta1, beta2 = kw.pop("betas", (0.9, 0.999))
                        update = ref.adamw_update if kind == "AdamW" else ref.adam_update
                        ps[i], state["m"][i], state["v"][i], _ = update(
                            ps[i], g, state["m"][i], state["v"][i], step=state["t"],
                            beta1=beta1, beta2=beta2, **kw)

            return run, lambda: {f"p{i}": p for i, p in enumerate(ps)}
        torch = _torch()
        ps = [torch.tensor(p, requires_grad=True) for p in params]
        for p, g in zip(ps, grads):
            p.grad = torch.from_numpy(g)
        opt = getattr(torch.optim, kind)(ps, foreach=True, **hyper)
        return opt.step, lambda: {f"p{i}": p.detach().numpy() for i, p in enumerate(ps)}

    return build


case("sgd_step", "10.5M params SGD momentum=0.9 nesterov", 0)(
    _optim_case("SGD", dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)))
case("adam_step", "10.5M params Adam", 0)(_optim_case("Adam", dict(lr=1e-3)))
case("adamw_step", "10.5M params AdamW", 0)(
    _optim_case("AdamW", dict(lr=1e-3, weight_decay=1e-2)))


# -- BatchNorm2d forward + backward (training mode) ---------------------------------

_BN_SHAPE = (32, 64, 32, 32)


@case("batchnorm2d", "b32 c64 32x32 train fwd+bwd", 0, rtol=2e-3, atol=1e-3)
def batchnorm2d_case(backend, quick):
    shape = (8, 64, 16, 16) if quick else _BN_SHAPE
    C = shape[1]
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    state = {}
    if backend == "pyengine":
        import pyengine as pe
        bn = pe.BatchNorm2d(C)
        bn.load_state_dict({"weight": w, "bias": b, "running_mean": np.zeros(C),
                            "running_var": np.ones(C), "num_batches_tracked": 0})

        def run():
            bn.zero_grad()
            state["y"] = bn(x)
            state["dx"] = bn.backward(dy)

        return run, lambda: dict(y=state["y"], dx=state["dx"], dw=bn.weight.grad,
                                 db=bn.bias.grad)
    if backend == "reference":
        from pyengine import reference as ref

        def run():
            y, mean, invstd, _, _ = ref.batchnorm_forward(x, w, b)
            state["y"] = y
            state["dx"], state["dw"], state["db"] = ref.batchnorm_backward(dy, x, w, mean,
                                                                           invstd)

        return run, lambda: state
    torch = _torch()
    bn = torch.nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(w))
        bn.bias.copy_(torch.from_numpy(b))
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def run():
        bn.zero_grad()
        tx.grad = None
        y = bn(tx)
        y.backward(tdy)
        state["y"] = y

    return run, lambda: dict(y=state["y"].detach().numpy(), dx=tx.grad.numpy(),
                             dw=bn.weight.grad.numpy(), db=bn.bias.grad.numpy())


# Pooling and CNN model cases register themselves on import.
from pyengine import benchcases_cnn  # noqa: E402,F401
from pyengine import benchcases_rnn  # noqa: E402,F401
from pyengine import benchcases_conv  # noqa: E402,F401
