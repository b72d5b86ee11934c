"""Recurrent benchmark cases (registered into pyengine.benchcases.CASES on import).

Every backend starts from the same weights (torch's names, U(-1/sqrt(H),
1/sqrt(H))) and input. Training cases time forward + backward of the
parameters only (no input gradient, as torch skips it for an input that does
not require grad and as a training loop needs); the reference computes its
input gradient anyway.
"""

import numpy as np

from pyengine.benchcases import Unsupported, _torch, case

_MODES = {"LSTM": 4, "GRU": 3}


def _flops(G, T, B, I, H, layers=1, directions=1, backward=True):
    """Multiply-adds x 2 of the GEMMs: forward, and backward without the input grad."""
    total = 0
    for layer in range(layers):
        fin = I if layer == 0 else H * directions
        fwd = 2 * T * B * G * H * (fin + H)
        bwd = 2 * T * B * G * H * (H + fin + H) if backward else 0
        if backward and layer > 0:
            bwd += 2 * T * B * G * H * fin       # the upper layers' input grads
        total += directions * (fwd + bwd)
    return total


def _params(mode, I, H, layers, bidirectional, seed):
    rng = np.random.default_rng(seed)
    G, k, D = _MODES[mode], 1 / np.sqrt(H), 2 if bidirectional else 1
    params = {}
    for layer in range(layers):
        fin = I if layer == 0 else H * D
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            for name, shape in (("weight_ih", (G * H, fin)), ("weight_hh", (G * H, H)),
                                ("bias_ih", (G * H,)), ("bias_hh", (G * H,))):
                params[name + sfx] = rng.uniform(-k, k, shape).astype(np.float32)
    return params


def _builder(mode, T, B, I, H, layers=1, bidirectional=False, train=True):
    def build(backend, quick):
        t = T   # quick runs keep the shape (the case's FLOP count assumes it)
        rng = np.random.default_rng(7)
        x = rng.standard_normal((t, B, I)).astype(np.float32)
        D = 2 if bidirectional else 1
        dy = rng.standard_normal((t, B, D * H)).astype(np.float32)
        params = _params(mode, I, H, layers, bidirectional, seed=8)
        state = {}
        if backend == "pyengine":
            import pyengine as pe
            layer = getattr(pe, mode)(I, H, num_layers=layers, bidirectional=bidirectional)
            layer.load_state_dict(params)

            if train:
                def run():
                    layer.zero_grad()
                    state["y"], _ = layer(x)
                    layer.backward(dy, input_grad=False)
            else:
                def run():
                    with pe.no_grad():
                        state["y"], _ = layer(x)

            def outputs():
                out = dict(y=state["y"])
                if train:
                    out.update({n: p.grad for n, p in layer.named_parameters()})
                return out

            return run, outputs
        if backend == "reference":
            from pyengine import reference as ref

            def run():
                y, _, _, cache = ref.rnn_forward(mode, x, params, layers, bidirectional)
                state["y"] = y
                if train:
                    state.update(ref.rnn_backward(cache, dy)[3])

            return run, lambda: state
        torch = _torch()
        layer = getattr(torch.nn, mode)(I, H, num_layers=layers, bidirectional=bidirectional)
        layer.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)

        if train:
            def run():
                layer.zero_grad()
                y, _ = layer(tx)
                y.backward(tdy)
                state["y"] = y
        else:
            def run():
                with torch.no_grad():
                    state["y"], _ = layer(tx)

        def outputs():
            out = dict(y=state["y"].detach().numpy())
            if train:
                out.update({n: p.grad.numpy() for n, p in layer.named_parameters()})
            return out

        return run, outputs
    return build


case("lstm", "T50 b32 64->128 fwd+bwd", _flops(4, 50, 32, 64, 128))(
    _builder("LSTM", 50, 32, 64, 128))
case("gru", "T50 b32 64->128 fwd+bwd", _flops(3, 50, 32, 64, 128))(
    _builder("GRU", 50, 32, 64, 128))
case("lstm_2l_bi", "2-layer bidir T50 b32 64->256 fwd+bwd",
     _flops(4, 50, 32, 64, 256, layers=2, directions=2))(
    _builder("LSTM", 50, 32, 64, 256, layers=2, bidirectional=True))
case("lstm_infer_b1", "inference b1 T100 64->128",
     _flops(4, 100, 1, 64, 128, backward=False))(
    _builder("LSTM", 100, 1, 64, 128, train=False))

__all__ = ["Unsupported"]


# -- character language model training step: Embedding -> LSTM -> Linear, CE, SGD ----

_CLM = dict(V=64, E=32, H=128, B=32, T=50, lr=0.1)


def _char_lm_flops(V, E, H, B, T):
    return _flops(4, T, B, E, H) + 3 * 2 * B * T * H * V


@case("char_lm_step", "V64 E32 H128 b32 T50 SGD", _char_lm_flops(64, 32, 128, 32, 50))
def char_lm_step_case(backend, quick):
    V, E, H, B, T, lr = (_CLM[k] for k in ("V", "E", "H", "B", "T", "lr"))
    rng = np.random.default_rng(6)
    ids = rng.integers(0, V, (B, T))
    target = rng.integers(0, V, (B, T))
    import pyengine as pe
    from pyengine.models import char_lm
    pe.manual_seed(6)
    init = char_lm(V, E, H).state_dict()
    state = {}
    if backend == "pyengine":
        model = char_lm(V, E, H)
        model.load_state_dict(init)
        loss_fn = pe.CrossEntropyLoss()
        opt = pe.optim.SGD(model.parameters(), lr=lr)

        def run():
            logits = model(ids)
            state["loss"] = np.array(loss_fn(logits.reshape(B * T, V), target.reshape(-1)))
            opt.zero_grad()
            model.backward(loss_fn.backward().reshape(B, T, V))
            opt.step()

        return run, lambda: dict(loss=state["loss"], head=model.head.weight.data,
                                 w_hh=model.lstm.weight_hh_l0.data,
                                 emb=model.embedding.weight.data)
    if backend == "reference":
        from pyengine import reference as ref
        p = {k: v.copy() for k, v in init.items()}
        lstm_names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

        def run():
            emb = ref.embedding_forward(p["embedding.weight"], ids)          # (B, T, E)
            y, _, _, cache = ref.rnn_forward(
                "LSTM", emb.transpose(1, 0, 2), {k: p["lstm." + k] for k in lstm_names})
            hid = y.transpose(1, 0, 2).reshape(B * T, H)
            logits = ref.linear_forward(hid, p["head.weight"], p["head.bias"])
            state["loss"] = np.array(ref.cross_entropy_forward(logits, target.reshape(-1)))
            g = ref.cross_entropy_backward(logits, target.reshape(-1))
            dhid, dW, db = ref.linear_backward(hid, p["head.weight"], g)
            dy = dhid.reshape(B, T, H).transpose(1, 0, 2)
            demb, _, _, grads = ref.rnn_backward(cache, dy)
            dE = ref.embedding_backward(demb.transpose(1, 0, 2), ids, V)
            p["head.weight"] -= lr * dW
            p["head.bias"] -= lr * db
            p["embedding.weight"] -= lr * dE
            for k in lstm_names:
                p["lstm." + k] -= lr * grads[k]

        return run, lambda: dict(loss=state["loss"], head=p["head.weight"],
                                 w_hh=p["lstm.weight_hh_l0"], emb=p["embedding.weight"])
    torch = _torch()
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, H, batch_first=True)
    head = torch.nn.Linear(H, V)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(init["embedding.weight"]))
        for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(lstm, k).copy_(torch.from_numpy(init["lstm." + k]))
        head.weight.copy_(torch.from_numpy(init["head.weight"]))
        head.bias.copy_(torch.from_numpy(init["head.bias"]))
    params = list(emb.parameters()) + list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    tids, tt = torch.from_numpy(ids), torch.from_numpy(target.reshape(-1))

    def run():
        opt.zero_grad()
        out, _ = lstm(emb(tids))
        loss = loss_fn(head(out).reshape(B * T, V), tt)
        loss.backward()
        opt.step()
        state["loss"] = loss.item()

    return run, lambda: dict(loss=np.array(state["loss"]), head=head.weight.detach().numpy(),
                             w_hh=lstm.weight_hh_l0.detach().numpy(),
                             emb=emb.weight.detach().numpy())
