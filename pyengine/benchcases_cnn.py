"""Benchmark cases for pooling and the CNN models (registered in pyengine.benchcases).

Every case builds the same work for three backends: "pyengine", "reference"
(plain NumPy: pe.reference kernels driven by a small interpreter of the model
tree below) and "torch" (the same architecture via ``to_torch``, weights
copied from the pyengine model). Also used by tests/test_models.py.
"""

from collections import OrderedDict

import numpy as np

from pyengine.benchcases import Unsupported, _torch, case

__all__ = ["to_torch", "reference_forward", "reference_backward"]


# ----------------------------------------------------------------------------
# The same model in torch.nn (same child names, so the same state_dict keys)
# ----------------------------------------------------------------------------

def to_torch(model):
    """A torch.nn module with pyengine `model`'s architecture and a copy of its
    state (parameters, running statistics, train/eval mode). Needs torch."""
    torch = _torch()
    net = _torch_module(model, torch)
    state = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}
    net.load_state_dict(state)
    net.train(model.training)
    return net


def _torch_module(m, torch):
    import pyengine as pe

    nn = torch.nn
    if isinstance(m, pe.Sequential):
        return nn.Sequential(OrderedDict(
            (name, _torch_module(c, torch)) for name, c in m.named_children()))
    if isinstance(m, pe.Residual):
        return _torch_residual(torch)(
            _torch_module(m.block, torch),
            None if m.shortcut is None else _torch_module(m.shortcut, torch))
    if isinstance(m, pe.Conv2d):
        return nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, m.groups, bias=m.bias is not None)
    if isinstance(m, pe.Linear):
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    if type(m).__name__ == "BatchNorm2d":
        return nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum,
                              affine=m.affine, track_running_stats=m.track_running_stats)
    if isinstance(m, pe.MaxPool2d):
        return nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation,
                            ceil_mode=m.ceil_mode)
    if isinstance(m, pe.AvgPool2d):
        return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode,
                            m.count_include_pad, m.divisor_override)
    if isinstance(m, pe.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool2d(m.output_size)
    simple = {"ReLU": nn.ReLU, "Flatten": nn.Flatten, "Identity": nn.Identity}
    if type(m).__name__ in simple:
        return simple[type(m).__name__]()
    raise Unsupported(f"to_torch: no torch equivalent for {type(m).__name__}")


def _torch_residual(torch):
    class Residual(torch.nn.Module):
        def __init__(self, block, shortcut=None):
            super().__init__()
            self.block = block
            self.shortcut = shortcut

        def forward(self, x):
            return self.block(x) + (x if self.shortcut is None else self.shortcut(x))

    return Residual


# ----------------------------------------------------------------------------
# Plain NumPy execution of a model tree on pe.reference kernels
# ----------------------------------------------------------------------------

def reference_forward(model, x, params, cache, training=True):
    """Run `model`'s architecture in NumPy with weights from `params`
    (a state_dict-like dict, running statistics updated in place in training
    mode). `cache` collects what reference_backward needs."""
    names = {id(m): n for n, m in model.named_modules()}
    return _ref_fwd(model, x, params, cache, names, training)


def reference_backward(model, grad_out, params, cache):
    """Gradients of the last reference_forward: returns (dx, grads by key)."""
    names = {id(m): n for n, m in model.named_modules()}
    grads = {}
    dx = _ref_bwd(model, grad_out, params, cache, names, grads)
    return dx, grads


def _key(names, m, leaf):
    return f"{names[id(m)]}.{leaf}" if names[id(m)] else leaf


def _ref_fwd(m, x, params, cache, names, training):
    import pyengine as pe
    from pyengine import reference as R

    if isinstance(m, pe.Sequential):
        for c in m:
            x = _ref_fwd(c, x, params, cache, names, training)
        return x
    if isinstance(m, pe.Residual):
        y = _ref_fwd(m.block, x, params, cache, names, training)
        s = x if m.shortcut is None else _ref_fwd(m.shortcut, x, params, cache, names, training)
        return y + s
    key = lambda leaf: _key(names, m, leaf)  # noqa: E731
    kind = type(m).__name__
    cache[id(m)] = x
    if kind == "Conv2d":
        return R.conv2d_forward(x, params[key("weight")], params.get(key("bias")), m.stride,
                                m.padding, m.dilation, m.groups)
    if kind == "Linear":
        return R.linear_forward(x, params[key("weight")], params.get(key("bias")))
    if kind == "ReLU":
        return np.maximum(x, 0)
    if kind == "Flatten":
        return x.reshape(len(x), -1)
    if kind == "MaxPool2d":
        y, ind = R.max_pool2d_forward(x, m.kernel_size, m.stride, m.padding, m.dilation,
                                      m.ceil_mode)
        cache[id(m)] = (x.shape, ind)
        return y
    if kind == "AdaptiveAvgPool2d":
        size = m._target(*x.shape[2:])
        cache[id(m)] = x.shape
        return R.adaptive_avg_pool2d_forward(x, size)
    if kind == "BatchNorm2d":
        gamma, beta = params[key("weight")], params[key("bias")]
        rm, rv = params[key("running_mean")], params[key("running_var")]
        if training:
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            n = x.size // x.shape[1]
            rm *= 1 - m.momentum
            rm += m.momentum * mean
            rv *= 1 - m.momentum
            rv += m.momentum * var * n / (n - 1)
        else:
            mean, var = rm, rv
        inv_std = 1 / np.sqrt(var + m.eps)
        xhat = (x - mean[:, None, None]) * inv_std[:, None, None]
        cache[id(m)] = (xhat, inv_std)
        return (xhat * gamma[:, None, None] + beta[:, None, None]).astype(x.dtype)
    raise Unsupported(f"reference: no NumPy kernel for {kind}")


def _ref_bwd(m, g, params, cache, names, grads):
    import pyengine as pe
    from pyengine import reference as R

    if isinstance(m, pe.Sequential):
        for c in reversed(list(m)):
            g = _ref_bwd(c, g, params, cache, names, grads)
        return g
    if isinstance(m, pe.Residual):
        gb = _ref_bwd(m.block, g, params, cache, names, grads)
        gs = g if m.shortcut is None else _ref_bwd(m.shortcut, g, params, cache, names, grads)
        return gb + gs
    key = lambda leaf: _key(names, m, leaf)  # noqa: E731
    kind = type(m).__name__
    saved = cache[id(m)]
    if kind == "Conv2d":
        dx, dw, db = R.conv2d_backward(saved, params[key("weight")], g, m.stride, m.padding,
                                       m.dilation, m.groups)
        grads[key("weight")] = dw
        if key("bias") in params:
            grads[key("bias")] = db
        return dx
    if kind == "Linear":
        dx, dw, db = R.linear_backward(saved, params[key("weight")], g)
        grads[key("weight")] = dw
        if key("bias") in params:
            grads[key("bias")] = db
        return dx
    if kind == "ReLU":
        return g * (saved > 0)
    if kind == "Flatten":
        return g.reshape(saved.shape)
    if kind == "MaxPool2d":
        shape, ind = saved
        return R.max_pool2d_backward(g, ind, shape)
    if kind == "AdaptiveAvgPool2d":
        return R.adaptive_avg_pool2d_backward(g, saved)
    if kind == "BatchNorm2d":
        xhat, inv_std = saved
        gamma = params[key("weight")]
        grads[key("weight")] = (g * xhat).sum(axis=(0, 2, 3))
        grads[key("bias")] = g.sum(axis=(0, 2, 3))
        gh = g * gamma[:, None, None]
        mean_gh = gh.mean(axis=(0, 2, 3))[:, None, None]
        mean_ghx = (gh * xhat).mean(axis=(0, 2, 3))[:, None, None]
        return ((gh - mean_gh - xhat * mean_ghx) * inv_std[:, None, None]).astype(g.dtype)
    raise Unsupported(f"reference: no NumPy backward for {kind}")


def _softmax_ce(logits, y):
    """Mean cross-entropy and its gradient (the textbook formula)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean()
    g = np.exp(logp)
    g[np.arange(len(y)), y] -= 1
    return loss, (g / len(y)).astype(logits.dtype)


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------

_POOL_SHAPE = (32, 64, 32, 32)


@case("maxpool2", "b32 64x32x32 k2 s2 fwd+bwd",
      _POOL_SHAPE[0] * _POOL_SHAPE[1] * _POOL_SHAPE[2] * _POOL_SHAPE[3], rtol=1e-6, atol=1e-6)
def maxpool2_case(backend, quick):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(_POOL_SHAPE).astype(np.float32)
    N, C, H, W = _POOL_SHAPE
    dy = rng.standard_normal((N, C, H // 2, W // 2)).astype(np.float32)
    state = {}
    if backend == "pyengine":
        import pyengine as pe
        layer = pe.MaxPool2d(2)

        def run():
            state["y"] = layer(x)
            state["dx"] = layer.backward(dy)

        return run, lambda: state
    if backend == "reference":
        from pyengine import reference as R

        def run():
            state["y"], ind = R.max_pool2d_forward(x, 2)
            state["dx"] = R.max_pool2d_backward(dy, ind, x.shape)

        return run, lambda: state
    torch = _torch()
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def run():
        tx.grad = None
        y = torch.nn.functional.max_pool2d(tx, 2)
        y.backward(tdy)
        state["y"] = y

    return run, lambda: dict(y=state["y"].detach().numpy(), dx=tx.grad.numpy())


def _model_step_case(build, input_shape, lr, seed, backend, n_classes=10):
    """One SGD training step (forward, mean cross-entropy, backward, update)."""
    import pyengine as pe

    pe.manual_seed(seed)
    model = build()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(np.float32)
    y = rng.integers(0, n_classes, input_shape[0])
    watch = [k for k, _ in model.named_parameters()]
    watch = [watch[0], watch[-1]]
    state = {}
    if backend == "pyengine":
        loss_fn = pe.CrossEntropyLoss()
        opt = pe.optim.SGD(model.parameters(), lr=lr)
        params = dict(model.named_parameters())

        def run():
            state["loss"] = loss_fn(model(x), y)
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()

        return run, lambda: {"loss": np.array(state["loss"]),
                             **{k: params[k].data for k in watch}}
    if backend == "reference":
        params = {k: np.array(v) for k, v in model.state_dict().items()}

        def run():
            cache = {}
            logits = reference_forward(model, x, params, cache)
            state["loss"], g = _softmax_ce(logits, y)
            _, grads = reference_backward(model, g, params, cache)
            for k, dw in grads.items():
                params[k] -= lr * dw

        return run, lambda: {"loss": np.array(state["loss"]), **{k: params[k] for k in watch}}
    torch = _torch()
    net = to_torch(model)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    tparams = dict(net.named_parameters())

    def run():
        opt.zero_grad()
        loss = loss_fn(net(tx), ty)
        loss.backward()
        opt.step()
        state["loss"] = loss.item()

    return run, lambda: {"loss": np.array(state["loss"]),
                         **{k: tparams[k].detach().numpy() for k in watch}}


def _lenet():
    from pyengine.models import lenet5
    return lenet5()


def _resnet():
    from pyengine.models import resnet_small
    return resnet_small()


_LENET_B = 64
_RESNET_B = 32

# Multiply-adds of one forward pass per image (conv: out pixels x out channels
# x fan-in; linear: in x out). A training step counts as 3 forward passes.
_LENET_MACS = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
_RESNET_MACS = (16 * 32 * 32 * 27                                  # stem
                + 2 * 16 * 32 * 32 * 144                           # layer1
                + 32 * 16 * 16 * (144 + 288 + 16)                  # layer2 + projection
                + 64 * 8 * 8 * (288 + 576 + 32)                    # layer3 + projection
                + 64 * 10)                                         # fc


@case("lenet5_step", f"b{_LENET_B} 1x28x28 SGD", 3 * 2 * _LENET_MACS * _LENET_B)
def lenet5_step_case(backend, quick):
    return _model_step_case(_lenet, (_LENET_B, 1, 28, 28), 0.01, 4, backend)


@case("resnet_small_step", f"b{_RESNET_B} 3x32x32 SGD", 3 * 2 * _RESNET_MACS * _RESNET_B)
def resnet_small_step_case(backend, quick):
    return _model_step_case(_resnet, (_RESNET_B, 3, 32, 32), 0.01, 5, backend)


@case("lenet5_infer_b1", "b1 1x28x28 inference", 2 * _LENET_MACS)
def lenet5_infer_case(backend, quick):
    import pyengine as pe

    pe.manual_seed(6)
    model = _lenet().eval()
    x = np.random.default_rng(6).standard_normal((1, 1, 28, 28)).astype(np.float32)
    state = {}
    if backend == "pyengine":
        def run():
            with pe.no_grad():
                state["y"] = model(x)

        return run, lambda: state
    if backend == "reference":
        params = {k: np.array(v) for k, v in model.state_dict().items()}

        def run():
            state["y"] = reference_forward(model, x, params, {}, training=False)

        return run, lambda: state
    torch = _torch()
    net = to_torch(model).eval()
    tx = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            state["y"] = net(tx)

    return run, lambda: dict(y=state["y"].numpy())


_VGG = dict(N=32, C=64, H=32)


def _vgg_block():
    import pyengine as pe
    c = _VGG["C"]
    return pe.Sequential(pe.Conv2d(c, c, 3, padding=1), pe.ReLU(),
                         pe.Conv2d(c, c, 3, padding=1), pe.ReLU(), pe.MaxPool2d(2))


@case("vgg_block", "b32 64x32x32 2x conv3x3 64->64 + ReLU + maxpool fwd+bwd",
      3 * 2 * (2 * 32 * 64 * 32 * 32 * 64 * 9), norm_keys=("dx", "dw0", "dw2"))
def vgg_block_case(backend, quick):
    import pyengine as pe

    N, C, H = _VGG["N"], _VGG["C"], _VGG["H"]
    pe.manual_seed(7)
    model = _vgg_block()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    dy = rng.standard_normal((N, C, H // 2, H // 2)).astype(np.float32)
    state = {}
    if backend == "pyengine":
        def run():
            model.zero_grad()
            state["y"] = model(x)
            state["dx"] = model.backward(dy)

        return run, lambda: dict(y=state["y"], dx=state["dx"], dw0=model[0].weight.grad,
                                 dw2=model[2].weight.grad)
    if backend == "reference":
        params = {k: np.array(v) for k, v in model.state_dict().items()}

        def run():
            cache = {}
            state["y"] = reference_forward(model, x, params, cache)
            state["dx"], grads = reference_backward(model, dy, params, cache)
            state["dw0"], state["dw2"] = grads["0.weight"], grads["2.weight"]

        return run, lambda: state
    torch = _torch()
    net = to_torch(model)
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    def run():
        net.zero_grad()
        tx.grad = None
        y = net(tx)
        y.backward(tdy)
        state["y"] = y

    return run, lambda: dict(y=state["y"].detach().numpy(), dx=tx.grad.numpy(),
                             dw0=net[0].weight.grad.numpy(), dw2=net[2].weight.grad.numpy())
