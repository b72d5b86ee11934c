"""Optimizers: fused engine updates vs torch.optim and the NumPy reference."""

import math
import re

import numpy as np
import pytest

import pyengine as pe
from pyengine import reference as ref

STEPS = 50
SHAPES = [(7, 5), (33,), (3, 4, 5), ()]


def _params(rng, dtype=np.float64, shapes=SHAPES):
    return [pe.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def _grads(rng, params, steps=STEPS):
    """A fixed gradient sequence: grads[t][i] for step t, parameter i."""
    return [[rng.standard_normal(p.shape).astype(p.dtype) for p in params]
            for _ in range(steps)]


def _run_ours(opt_cls, params, grads, **kw):
    opt = opt_cls(params, **kw)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        opt.step()
    return opt


# ---------------------------------------------------------------- configurations
SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1),
    dict(lr=0.02, momentum=0.5, maximize=True),
]


def _reference_sgd(params0, grads, **kw):
    params = [p.copy() for p in params0]
    bufs = [None] * len(params)
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            params[i], bufs[i] = ref.sgd_update(params[i], g, bufs[i], **kw)
    return params, bufs


# ---------------------------------------------------------------- SGD
@pytest.mark.parametrize("kw", SGD_CONFIGS)
def test_sgd_matches_reference(rng, kw):
    params = _params(rng)
    grads = _grads(rng, params)
    want, want_bufs = _reference_sgd([p.data for p in params], grads, **kw)
    opt = _run_ours(pe.optim.SGD, params, grads, **kw)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-12, atol=1e-12)
    if kw.get("momentum", 0):
        for p, wb in zip(params, want_bufs):
            np.testing.assert_allclose(opt.state[p]["momentum_buffer"], wb,
                                       rtol=1e-12, atol=1e-12)
    else:
        assert opt.state == {}


def test_sgd_float32_matches_reference(rng):
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    params = _params(rng, np.float32)
    grads = _grads(rng, params, steps=10)
    want, _ = _reference_sgd([p.data.astype(np.float64) for p in params],
                             [[g.astype(np.float64) for g in gs] for gs in grads], **kw)
    _run_ours(pe.optim.SGD, params, grads, **kw)
    for p, w in zip(params, want):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, w, rtol=1e-5, atol=1e-5)


def test_sgd_defaults_and_validation(rng):
    params = _params(rng)
    opt = pe.optim.SGD(params)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["dampening"], g["weight_decay"],
            g["nesterov"], g["maximize"]) == (1e-3, 0, 0, 0, False, False)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        pe.optim.SGD(params, lr=-1)
    with pytest.raises(ValueError, match="Invalid momentum value: -0.5"):
        pe.optim.SGD(params, momentum=-0.5)
    with pytest.raises(ValueError, match="Invalid weight_decay value: -0.1"):
        pe.optim.SGD(params, weight_decay=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        pe.optim.SGD(params, nesterov=True)
    with pytest.raises(TypeError, match="lr must be a number"):
        pe.optim.SGD(params, lr="0.1")
    with pytest.raises(ValueError, match="empty parameter list"):
        pe.optim.SGD([])
    with pytest.raises(TypeError, match="iterable of Parameters"):
        pe.optim.SGD(params[0])
    with pytest.raises(TypeError, match="only optimize Parameters"):
        pe.optim.SGD([np.zeros(3)])
    with pytest.raises(ValueError, match="more than one parameter group"):
        pe.optim.SGD([{"params": params[:2]}, {"params": params[1:]}])


def test_param_groups_override_defaults(rng):
    params = _params(rng)
    grads = _grads(rng, params, steps=3)
    opt = pe.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}],
                       lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    start = [p.data.copy() for p in params]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        opt.step()
    want_a, _ = _reference_sgd(start[:2], [gs[:2] for gs in grads], lr=0.1, momentum=0.9)
    want_b, _ = _reference_sgd(start[2:], [gs[2:] for gs in grads], lr=0.5, momentum=0.9)
    for p, w in zip(params, want_a + want_b):
        np.testing.assert_allclose(p.data, w, rtol=1e-12, atol=1e-12)


def test_zero_grad_zeros_in_place(rng):
    params = _params(rng)
    opt = pe.optim.SGD(params, lr=0.1)
    for set_to_none in (False, True):
        arrays = []
        for p in params:
            p.grad[...] = 1.0
            arrays.append(p.grad)
        opt.zero_grad(set_to_none=set_to_none)
        for p, a in zip(params, arrays):
            assert p.grad is a
            assert not p.grad.any()


def test_skips_params_without_grad(rng):
    params = _params(rng)
    before = params[0].data.copy()
    params[0].grad = None
    params[1].grad[...] = 1.0
    before1 = params[1].data.copy()
    pe.optim.SGD(params, lr=0.1, momentum=0.9).step()
    np.testing.assert_array_equal(params[0].data, before)
    np.testing.assert_allclose(params[1].data, before1 - 0.1)


def test_step_closure_returns_loss(rng):
    params = _params(rng)
    opt = pe.optim.SGD(params, lr=0.1)
    assert opt.step(lambda: 3.5) == 3.5


# ---------------------------------------------------------------- every optimizer
def _reference_run(name, params0, grads, kw):
    """Run the NumPy reference for `name` (an optimizer class name) over grads."""
    params = [p.copy() for p in params0]
    n = len(params)
    if name == "SGD":
        return _reference_sgd(params0, grads, **kw)[0]
    zeros = [np.zeros_like(p) for p in params]
    if name == "RMSprop":
        sq, buf, gavg = list(zeros), list(zeros), list(zeros)
        for step_grads in grads:
            for i, g in enumerate(step_grads):
                params[i], sq[i], buf[i], gavg[i] = ref.rmsprop_update(
                    params[i], g, sq[i], buf[i], gavg[i], **kw)
        return params
    kw = dict(kw)
    beta1, beta2 = kw.pop("betas", (0.9, 0.999))
    update = ref.adam_update if name == "Adam" else ref.adamw_update
    m, v, vmax = list(zeros), list(zeros), list(zeros)
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            params[i], m[i], v[i], vmax[i] = update(
                params[i], g, m[i], v[i], vmax[i], step=t, beta1=beta1, beta2=beta2, **kw)
    assert len(params) == n
    return params


ALL_CONFIGS = (
    [("SGD", kw) for kw in SGD_CONFIGS]
    + [("RMSprop", kw) for kw in [
        dict(),
        dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.01),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.005, centered=True),
        dict(lr=0.005, centered=True, momentum=0.5, weight_decay=0.1, maximize=True),
    ]]
    + [("Adam", kw) for kw in [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True),
    ]]
    + [("AdamW", kw) for kw in [
        dict(),
        dict(lr=0.01, betas=(0.85, 0.95), weight_decay=0.1),
        dict(lr=0.01, amsgrad=True, weight_decay=0.3),
        dict(lr=0.01, weight_decay=0.0),
    ]])


def _ids(configs):
    return [f"{name}-{kw}" for name, kw in configs]


@pytest.mark.parametrize("name,kw", ALL_CONFIGS, ids=_ids(ALL_CONFIGS))
def test_optimizer_matches_reference(rng, name, kw):
    params = _params(rng)
    grads = _grads(rng, params)
    want = _reference_run(name, [p.data for p in params], grads, kw)
    _run_ours(getattr(pe.optim, name), params, grads, **kw)
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kw", ALL_CONFIGS, ids=_ids(ALL_CONFIGS))
def test_optimizer_matches_torch(rng, name, kw):
    torch = pytest.importorskip("torch")
    params = _params(rng)
    grads = _grads(rng, params)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt = getattr(torch.optim, name)(tparams, foreach=False, **kw)
    for step_grads in grads:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.tensor(g)
        topt.step()
    opt = _run_ours(getattr(pe.optim, name), params, grads, **kw)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-12)
    # Same state names and values as torch's.
    for p, tp in zip(params, tparams):
        tstate = {k: v for k, v in topt.state.get(tp, {}).items() if v is not None}
        ours = opt.state.get(p, {})
        assert set(ours) == set(tstate)
        for key, value in tstate.items():
            np.testing.assert_allclose(ours[key], value.detach().numpy(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW"])
def test_float32_matches_float64_reference(rng, name):
    kw = dict(lr=0.01, weight_decay=0.01)
    if name in ("SGD", "RMSprop"):
        kw["momentum"] = 0.9
    params = _params(rng, np.float32)
    grads = _grads(rng, params, steps=10)
    want = _reference_run(name, [p.data.astype(np.float64) for p in params],
                          [[g.astype(np.float64) for g in gs] for gs in grads], kw)
    opt = _run_ours(getattr(pe.optim, name), params, grads, **kw)
    for p, w in zip(params, want):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, w, rtol=1e-4, atol=1e-5)
    for state in opt.state.values():
        for key, value in state.items():
            if key != "step":
                assert value.dtype == np.float32


@pytest.mark.parametrize("name,kw", [
    ("RMSprop", dict(lr=-1)), ("RMSprop", dict(eps=-1e-3)), ("RMSprop", dict(alpha=-0.1)),
    ("RMSprop", dict(momentum=-1)), ("RMSprop", dict(weight_decay=-2)),
    ("Adam", dict(lr=-0.5)), ("Adam", dict(eps=-1.0)), ("Adam", dict(betas=(1.0, 0.9))),
    ("Adam", dict(betas=(0.9, -0.1))), ("Adam", dict(weight_decay=-1)),
    ("AdamW", dict(lr=-2)), ("AdamW", dict(betas=(0.9, 1.5))),
])
def test_invalid_hyperparameters_quote_value(rng, name, kw):
    (key, value), = kw.items()
    shown = value[0] if key == "betas" and not 0 <= value[0] < 1 else (
        value[1] if key == "betas" else value)
    with pytest.raises(ValueError, match=f"Invalid .*: {re.escape(str(shown))}"):
        getattr(pe.optim, name)(_params(rng), **kw)


def test_defaults_match_torch(rng):
    params = _params(rng)
    expect = {
        "RMSprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                        centered=False, maximize=False),
        "Adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                     amsgrad=False, maximize=False),
        "AdamW": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                      amsgrad=False, maximize=False),
    }
    for name, want in expect.items():
        group = getattr(pe.optim, name)(params).param_groups[0]
        assert {k: group[k] for k in want} == want


# ---------------------------------------------------------------- state_dict
@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.05, momentum=0.9)), ("RMSprop", dict(centered=True, momentum=0.5)),
    ("Adam", dict(lr=0.01, amsgrad=True)), ("AdamW", dict(lr=0.01)),
])
def test_state_dict_round_trip_continues_identically(rng, name, kw):
    cls = getattr(pe.optim, name)
    params = _params(rng)
    grads = _grads(rng, params, steps=10)
    opt = _run_ours(cls, params, grads[:5], **kw)
    sd = opt.state_dict()
    assert sorted(sd) == ["param_groups", "state"]
    assert sd["param_groups"][0]["params"] == list(range(len(params)))
    assert sorted(sd["state"]) == list(range(len(params)))
    # A fresh optimizer on copies of the parameters, loaded from the state_dict,
    # continues exactly like the original.
    clones = [pe.Parameter(p.data.copy()) for p in params]
    opt2 = cls(clones, lr=123.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for step_grads in grads[5:]:
        for p, c, g in zip(params, clones, step_grads):
            p.grad[...] = g
            c.grad[...] = g
        opt.step()
        opt2.step()
    for p, c in zip(params, clones):
        assert np.array_equal(p.data, c.data)
    # state_dict holds copies: stepping does not change a saved dict.
    saved = opt.state_dict()
    before = {i: {k: np.copy(v) for k, v in s.items()} for i, s in saved["state"].items()}
    opt.step()
    for i, s in saved["state"].items():
        for k, v in s.items():
            assert np.array_equal(v, before[i][k])


def test_state_dict_groups_layout(rng):
    params = _params(rng)
    opt = pe.optim.SGD([{"params": params[:1], "lr": 0.5}, {"params": params[1:]}],
                       lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    assert sd["state"] == {}
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2, 3]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.5, 0.1]
    with pytest.raises(ValueError, match="different number of parameter groups"):
        pe.optim.SGD(params, lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size"):
        pe.optim.SGD([{"params": params[:2]}, {"params": params[2:]}]).load_state_dict(sd)


def test_load_torch_state_dict(rng):
    torch = pytest.importorskip("torch")
    params = _params(rng)
    grads = _grads(rng, params, steps=8)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    topt = torch.optim.Adam(tparams, lr=0.01, amsgrad=True)
    for step_grads in grads[:4]:
        for tp, g in zip(tparams, step_grads):
            tp.grad = torch.tensor(g)
        topt.step()
    for p, tp in zip(params, tparams):
        p.data[...] = tp.detach().numpy()
    opt = pe.optim.Adam(params)
    opt.load_state_dict(topt.state_dict())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["amsgrad"]
    for step_grads in grads[4:]:
        for p, tp, g in zip(params, tparams, step_grads):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-12)


def test_add_param_group(rng):
    params = _params(rng)
    opt = pe.optim.Adam(params[:2], lr=0.01)
    opt.add_param_group({"params": params[2:], "betas": (0.5, 0.6)})
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1]["lr"] == 0.01 and opt.param_groups[1]["betas"] == (0.5, 0.6)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": params[:1]})
    with pytest.raises(ValueError, match="Invalid learning rate: -3"):
        opt.add_param_group({"params": [pe.Parameter(np.zeros(2))], "lr": -3})


# ---------------------------------------------------------------- kernels
def _big_params(seed, dtype):
    rng = np.random.default_rng(seed)
    # Larger than one chunk (engine.optim.CHUNK_SIZE) so several threads share it.
    return [pe.Parameter(rng.standard_normal(100_003).astype(dtype)),
            pe.Parameter(rng.standard_normal((3, 7)).astype(dtype))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [
    lambda ps: pe.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: pe.optim.RMSprop(ps, lr=0.01, momentum=0.9, centered=True),
    lambda ps: pe.optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=0.1),
    lambda ps: pe.optim.AdamW(ps, lr=0.01),
], ids=["SGD", "RMSprop", "Adam", "AdamW"])
def test_threads_bitwise_equal(dtype, make):
    results = []
    for threads in (1, 2):
        pe.set_num_threads(threads)
        params = _big_params(0, dtype)
        grads = _grads(np.random.default_rng(1), params, steps=3)
        _run_ours(make, params, grads)
        results.append([p.data for p in params])
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_kernel_rejects_bad_arrays():
    from engine import optim as k
    p = np.zeros(4)
    with pytest.raises(TypeError, match="float32 or float64"):
        k.sgd_step([np.zeros(4, np.float16)], [np.zeros(4, np.float16)], lr=0.1)
    with pytest.raises(TypeError, match="params\\[0\\] must be a numpy array"):
        k.sgd_step([[0.0]], [np.zeros(1)], lr=0.1)
    with pytest.raises(TypeError, match="grads\\[0\\] must have dtype float64"):
        k.sgd_step([p], [np.zeros(4, np.float32)], lr=0.1)
    with pytest.raises(ValueError, match="grads\\[0\\] must have shape"):
        k.sgd_step([p], [np.zeros(5)], lr=0.1)
    with pytest.raises(ValueError, match="grads has 2 arrays, params has 1"):
        k.sgd_step([p], [p, p], lr=0.1)
    with pytest.raises(ValueError, match="writeable C-contiguous"):
        k.sgd_step([np.zeros((4, 4))[:, ::2]], [np.zeros((4, 2))], lr=0.1)
    with pytest.raises(ValueError, match="needs momentum_buffers"):
        k.sgd_step([p], [p.copy()], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum_buffers\\[0\\] must have shape"):
        k.sgd_step([p], [p.copy()], [np.zeros(3)], lr=0.1, momentum=0.9)
    # A non-contiguous gradient is read correctly (copied).
    g = np.arange(8.0)[::2]
    k.sgd_step([p], [g], lr=1.0)
    np.testing.assert_array_equal(p, -g)


# ---------------------------------------------------------------- schedulers
SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[2, 5, 5, 9], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=7)),
    ("CosineAnnealingLR", dict(T_max=4, eta_min=0.01)),
]


def _two_groups(rng):
    params = _params(rng)
    return pe.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.3}],
                        lr=0.1, momentum=0.9)


@pytest.mark.parametrize("name,kw", SCHEDULERS, ids=[n for n, _ in SCHEDULERS])
def test_scheduler_matches_torch(rng, name, kw):
    torch = pytest.importorskip("torch")
    opt = _two_groups(rng)
    sched = getattr(pe.optim, name)(opt, **kw)
    tparams = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    topt = torch.optim.SGD([{"params": tparams[:1]}, {"params": tparams[1:], "lr": 0.3}],
                           lr=0.1, momentum=0.9)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
    for _ in range(25):
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12, abs=1e-15)
        assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()


def test_scheduler_sequences_closed_form(rng):
    opt = _two_groups(rng)
    step = pe.optim.StepLR(opt, step_size=2, gamma=0.5)
    lrs = [step.get_last_lr()[0]]
    for _ in range(5):
        step.step()
        lrs.append(step.get_last_lr()[0])
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    opt = _two_groups(rng)
    cos = pe.optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.0)
    for t in range(1, 11):
        cos.step()
        assert cos.get_last_lr()[1] == pytest.approx(0.3 * (1 + math.cos(math.pi * t / 10)) / 2,
                                                     abs=1e-12)
    opt = _two_groups(rng)
    multi = pe.optim.MultiStepLR(opt, milestones=[1, 3], gamma=0.1)
    got = []
    for _ in range(4):
        multi.step()
        got.append(multi.get_last_lr()[0])
    assert got == pytest.approx([0.01, 0.01, 0.001, 0.001])
    opt = _two_groups(rng)
    exp = pe.optim.ExponentialLR(opt, gamma=0.5)
    exp.step()
    exp.step()
    assert exp.get_last_lr() == pytest.approx([0.025, 0.075])


@pytest.mark.parametrize("name,kw", SCHEDULERS, ids=[n for n, _ in SCHEDULERS])
def test_scheduler_state_dict_round_trip(rng, name, kw):
    opt = _two_groups(rng)
    sched = getattr(pe.optim, name)(opt, **kw)
    for _ in range(4):
        sched.step()
    sd = sched.state_dict()
    assert "optimizer" not in sd and sd["last_epoch"] == 4
    opt_sd = opt.state_dict()
    opt2 = _two_groups(rng)
    opt2.load_state_dict(opt_sd)
    sched2 = getattr(pe.optim, name)(opt2, **kw)
    sched2.load_state_dict(sd)
    for _ in range(6):
        sched.step()
        sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr()


REDUCE_CONFIGS = [
    dict(),
    dict(mode="max", factor=0.5, patience=1, threshold=0.1, threshold_mode="abs"),
    dict(patience=2, cooldown=2, min_lr=[0.02, 0.05], eps=1e-3),
    dict(patience=0, factor=0.2, threshold_mode="rel", threshold=0.01),
]


@pytest.mark.parametrize("kw", REDUCE_CONFIGS)
def test_reduce_lr_on_plateau_matches_torch(rng, kw):
    torch = pytest.importorskip("torch")
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.9, 0.89, 0.899, 0.9, 0.95, 1.0, 1.2, 0.5,
               0.5, 0.5, 0.51, 0.52, 0.4, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47]
    opt = _two_groups(rng)
    sched = pe.optim.ReduceLROnPlateau(opt, **kw)
    tparams = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    topt = torch.optim.SGD([{"params": tparams[:1]}, {"params": tparams[1:], "lr": 0.3}],
                           lr=0.1, momentum=0.9)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
    for m in metrics:
        sched.step(m)
        tsched.step(m)
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12)
        assert sched.num_bad_epochs == tsched.num_bad_epochs


def test_reduce_lr_on_plateau_behaviour_and_errors(rng):
    opt = _two_groups(rng)
    sched = pe.optim.ReduceLROnPlateau(opt, patience=1, factor=0.5)
    for m in [1.0, 1.0, 1.0]:
        sched.step(m)
    assert sched.get_last_lr() == pytest.approx([0.05, 0.15])
    sd = sched.state_dict()
    sched2 = pe.optim.ReduceLROnPlateau(_two_groups(rng))
    sched2.load_state_dict(sd)
    assert sched2.best == 1.0 and sched2.patience == 1
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        pe.optim.ReduceLROnPlateau(opt, factor=1.5)
    with pytest.raises(ValueError, match="mode avg is unknown"):
        pe.optim.ReduceLROnPlateau(opt, mode="avg")
    with pytest.raises(ValueError, match="threshold mode x is unknown"):
        pe.optim.ReduceLROnPlateau(opt, threshold_mode="x")
    with pytest.raises(ValueError, match="expected 2 min_lrs, got 3"):
        pe.optim.ReduceLROnPlateau(opt, min_lr=[0, 0, 0])
    with pytest.raises(TypeError, match="is not an Optimizer"):
        pe.optim.StepLR(object(), step_size=1)
    with pytest.raises(KeyError, match="initial_lr"):
        pe.optim.StepLR(pe.optim.SGD(_params(rng)), step_size=1, last_epoch=3)


def test_scheduler_importable_from_lr_scheduler_module():
    from pyengine.optim.lr_scheduler import CosineAnnealingLR, StepLR
    assert StepLR is pe.optim.StepLR and CosineAnnealingLR is pe.optim.CosineAnnealingLR


# ---------------------------------------------------------------- clipping
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(rng, norm_type, max_norm, dtype):
    torch = pytest.importorskip("torch")
    params = _params(rng, dtype)
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    for p, tp in zip(params, tparams):
        tp.grad = torch.tensor(p.grad.copy())
    total = pe.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert total == pytest.approx(float(ttotal), rel=rtol)
    for p, tp in zip(params, tparams):
        assert p.grad.dtype == dtype
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=rtol, atol=1e-7)


def test_clip_grad_norm_reference_values():
    p = pe.Parameter(np.zeros(2))
    q = pe.Parameter(np.zeros(1))
    p.grad[...] = [3.0, 0.0]
    q.grad[...] = [4.0]
    assert pe.clip_grad_norm_([p, q], max_norm=10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(p.grad, [3.0, 0.0])  # under the limit: unchanged
    assert pe.clip_grad_norm_([p, q], max_norm=1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([p.grad, q.grad]), [0.6, 0.0, 0.8], rtol=1e-6)
    assert pe.clip_grad_norm_(p, 1.0, norm_type="inf") == pytest.approx(0.6)
    assert pe.clip_grad_norm_([], 1.0) == 0.0


def test_clip_grad_value(rng):
    torch = pytest.importorskip("torch")
    params = _params(rng)
    for p in params:
        p.grad[...] = 3 * rng.standard_normal(p.shape)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    for p, tp in zip(params, tparams):
        tp.grad = torch.tensor(p.grad.copy())
    grads = [p.grad for p in params]
    pe.clip_grad_value_(params, 1.5)
    torch.nn.utils.clip_grad_value_(tparams, 1.5)
    for p, g, tp in zip(params, grads, tparams):
        assert p.grad is g  # in place
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())
