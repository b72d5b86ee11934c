"""Command line: ``python -m pyengine demo | eval CHECKPOINT | bench | info``."""

import argparse
import sys
import time

import numpy as np


def _split_digits(seed=0, test_fraction=0.2):
    """Stratified train/test split of the bundled digits, pixels scaled to [0, 1]."""
    from pyengine.datasets import load_digits

    images, labels = load_digits()
    x = images.reshape(len(images), -1).astype(np.float32) / 16.0
    y = labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: int(round(test_fraction * len(idx)))]] = True
    return (x[~test], y[~test]), (x[test], y[test])


def build_model(name, **kwargs):
    """The demo architectures by name; checkpoints store (name, kwargs) to rebuild them."""
    import pyengine as pe

    if name == "mlp":
        sizes = [kwargs.get("in_features", 64), *kwargs.get("hidden", (128, 64)),
                 kwargs.get("classes", 10)]
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(pe.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(pe.ReLU())
        return pe.Sequential(*layers)
    if name == "lenet5":
        from pyengine.models import lenet5
        return lenet5(**kwargs)
    raise ValueError(f"unknown architecture {name!r}")


def model_inputs(name, x):
    """The (N, 64) digit pixels in the layout architecture `name` takes.

    LeNet-5 wants 1x28x28 images: each 8x8 digit is upsampled 3x by pixel
    repetition (np.kron, 24x24) and zero-padded by 2 on every side (28x28),
    the framing of MNIST's digits.
    """
    if name != "lenet5":
        return x
    images = np.kron(x.reshape(-1, 8, 8), np.ones((3, 3), x.dtype))
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]


def shifted_copies(x, y):
    """The (N, 64) digits plus copies shifted by one pixel towards each of the
    8 neighbours (zero fill): 9x the training data. For the CNN this makes test
    accuracy higher and steadier across seeds (and across BLAS builds, whose
    rounding changes the training trajectory)."""
    images = x.reshape(-1, 8, 8)
    copies = [images]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        shifted = np.zeros_like(images)
        shifted[:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)] = \
            images[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)]
        copies.append(shifted)
    return np.concatenate(copies).reshape(-1, 64), np.concatenate([y] * len(copies))


# --model name -> what the demo trains: its title, its architecture (rebuilt
# from checkpoints by build_model), whether the training images get shifted
# copies, and the default batch size and Adam learning rate.
DEMOS = {
    "mlp": dict(title="MLP 64-128-64-10",
                arch={"name": "mlp",
                      "args": {"in_features": 64, "hidden": [128, 64], "classes": 10}},
                augment=False, batch_size=32, lr=3e-3),
    "lenet5": dict(title="LeNet-5 (8x8 digits upsampled 3x + padded to 28x28, training "
                   "set + 1-pixel shifted copies)",
                   arch={"name": "lenet5", "args": {"num_classes": 10, "in_channels": 1}},
                   augment=True, batch_size=64, lr=1e-3),
}


def demo_digits(args):
    """Train the --model architecture on the bundled digits (mlp or lenet5).

    With --distributed (under ``mpiexec -n N``) the ranks train data-parallel
    with the same global batch (--batch-size split over the ranks), so the
    result matches one process; only rank 0 prints and writes the checkpoint.
    """
    import pyengine as pe

    demo = DEMOS[args.model]
    if args.batch_size is None:
        args.batch_size = demo["batch_size"]
    if args.lr is None:
        args.lr = demo["lr"]
    world, is_main = 1, True
    if args.distributed:
        import pyengine.distributed as dist

        _, world = dist.init(num_threads=args.threads)
        is_main = dist.rank() == 0
        if args.batch_size % world:
            raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the "
                             f"{world} ranks (each rank takes an equal part of every batch)")
    say = print if is_main else (lambda *a, **k: None)
    pe.manual_seed(args.seed)
    title, arch, augment = demo["title"], demo["arch"], demo["augment"]
    (xtr, ytr), (xte, yte) = _split_digits(seed=args.seed)
    # hold out 10% of the training images (stratified) for early stopping
    train, val = pe.train_val_split(xtr, ytr, val_fraction=0.1, seed=args.seed, stratify=ytr)
    if augment:
        train = shifted_copies(*train)
    train = (model_inputs(arch["name"], train[0]), train[1])
    val = (model_inputs(arch["name"], val[0]), val[1])
    xte = model_inputs(arch["name"], xte)
    model = build_model(arch["name"], **arch["args"])
    loss_fn = pe.CrossEntropyLoss()
    opt = pe.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = pe.optim.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    stopper = pe.EarlyStopping(monitor="val_loss", patience=5)
    checkpoint = pe.Checkpoint(args.checkpoint, monitor="val_loss", extra={
        "arch": arch, "data": {"name": "digits", "seed": args.seed, "test_fraction": 0.2}})
    ranks = f"{world} MPI ranks x " if args.distributed else ""
    say(f"{title} on UCI digits: {len(train[1])} train / {len(val[1])} validation / "
        f"{len(yte)} test images, {ranks}{pe.get_num_threads()} thread(s); Adam lr {args.lr}, "
        "ReduceLROnPlateau, early stopping on val loss")
    start = time.perf_counter()
    show_bar = sys.stderr.isatty() or args.progress
    history = pe.fit(model, loss_fn, opt, train, epochs=args.epochs, val=val,
                     batch_size=args.batch_size // world, scheduler=scheduler,
                     early_stopping=stopper, checkpoint=checkpoint, verbose=2 if show_bar else 0,
                     distributed=args.distributed)
    elapsed = time.perf_counter() - start
    for epoch in range(1, history.epochs + 1):
        if epoch == 1 or epoch % 5 == 0 or epoch == history.epochs:
            e = epoch - 1
            say(f"epoch {epoch:2d}: train loss {history['loss'][e]:.4f}, train accuracy "
                f"{history['accuracy'][e]:.4f}, val loss {history['val_loss'][e]:.4f}, "
                f"val accuracy {history['val_accuracy'][e]:.4f}, lr {history['lr'][e]:.2g}")
    if history.stopped_early:
        say(f"early stopping after epoch {history.epochs}: weights of the best epoch "
            f"{stopper.best_epoch} (val loss {stopper.best:.4f}) restored")
    model.eval()
    with pe.no_grad():
        accuracy = float((model(xte).argmax(1) == yte).mean())
    say(f"test accuracy: {accuracy:.4f} ({len(yte)} held-out images); "
        f"training took {elapsed:.2f} s")

    if not is_main:  # the replicas are identical; rank 0 checks the checkpoint
        return accuracy
    # reload the best checkpoint into a freshly built model: same predictions
    ckpt = pe.load(args.checkpoint)
    reloaded = build_model(ckpt["arch"]["name"], **ckpt["arch"]["args"])
    reloaded.load_state_dict(ckpt["model"])
    result = pe.evaluate(reloaded, loss_fn, (xte, yte))
    say(f"checkpoint {args.checkpoint} (epoch {ckpt['epoch']}) reloaded: test accuracy "
        f"{result['accuracy']:.4f}, test loss {result['loss']:.4f}"
        f"{'' if result['accuracy'] == accuracy else ' (MISMATCH)'}; "
        f"evaluate it again with: python -m pyengine eval {args.checkpoint}")
    return accuracy if result["accuracy"] == accuracy else 0.0


def demo_char_lm(args):
    """Train a character-level LSTM language model on the bundled text, then sample."""
    import pyengine as pe
    from pyengine.datasets import load_text
    from pyengine.models import char_lm
    from tqdm import tqdm

    pe.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    text = load_text()
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    ids = np.array([index[ch] for ch in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    seq_len, batch = args.seq_len, args.batch_size or 32
    model = char_lm(len(vocab), embed_dim=32, hidden_size=args.hidden_size, num_layers=1)
    loss_fn = pe.CrossEntropyLoss()
    args.lr = args.lr or 3e-3
    opt = pe.optim.Adam(model.parameters(), lr=args.lr)
    steps = max(1, len(train_ids) // (seq_len * batch))
    epochs = args.epochs or 6
    print(f"char-level LSTM (embed 32, hidden {args.hidden_size}) on {len(text):,} characters "
          f"of the Python Language Reference ({len(vocab)} symbols), {pe.get_num_threads()} "
          f"thread(s); {epochs} epochs of {steps} steps, batch {batch} x {seq_len} chars, "
          f"Adam lr {args.lr}")

    def windows(source, starts):
        rows = starts[:, None] + np.arange(seq_len + 1)
        chunk = source[rows]
        return chunk[:, :-1], chunk[:, 1:]

    def val_loss():
        starts = np.arange(0, len(val_ids) - seq_len - 1, seq_len)
        total, count = 0.0, 0
        model.eval()
        with pe.no_grad():
            for i in range(0, len(starts), 64):
                x, y = windows(val_ids, starts[i:i + 64])
                logits = model(x)
                total += loss_fn(logits.reshape(-1, len(vocab)), y.reshape(-1)) * y.size
                count += y.size
        model.train()
        return total / count

    print(f"before training: validation loss {val_loss():.3f} nats/char "
          f"(uniform guess: {np.log(len(vocab)):.3f})")
    start = time.perf_counter()
    show_bar = sys.stderr.isatty() or args.progress
    for epoch in range(1, epochs + 1):
        total = 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", leave=False,
                   disable=not show_bar)
        for step in bar:
            x, y = windows(train_ids, rng.integers(0, len(train_ids) - seq_len - 1, batch))
            logits = model(x)
            loss = loss_fn(logits.reshape(-1, len(vocab)), y.reshape(-1))
            opt.zero_grad()
            model.backward(loss_fn.backward().reshape(logits.shape))
            pe.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        val = val_loss()
        print(f"epoch {epoch}: train loss {total / steps:.3f}, validation loss {val:.3f} "
              f"nats/char ({val / np.log(2):.2f} bits/char)")
    elapsed = time.perf_counter() - start
    prompt = "The "
    sample = model.sample([index[c] for c in prompt], args.sample_length,
                          temperature=args.temperature, rng=rng)
    print(f"training took {elapsed:.1f} s; sample at temperature {args.temperature}:\n")
    print(prompt + "".join(vocab[i] for i in sample))
    return val


def cmd_demo(args):
    import pyengine as pe

    if args.threads and not args.distributed:
        pe.set_num_threads(args.threads)
    if args.model == "char-lm":
        # success when the model beats a unigram guess by a clear margin
        return 0 if demo_char_lm(args) < 2.5 else 1
    args.epochs = args.epochs or 60  # early stopping ends a run well before
    if args.checkpoint is None:
        args.checkpoint = f"pyengine_demo_{args.model}.safetensors"
    accuracy = demo_digits(args)
    return 0 if accuracy >= 0.9 else 1


def cmd_eval(args):
    import pyengine as pe

    ckpt = pe.load(args.checkpoint)
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "model" not in ckpt:
        print(f"{args.checkpoint}: not a pyengine demo checkpoint (it needs 'arch' and "
              "'model' entries, as written by python -m pyengine demo)", file=sys.stderr)
        return 2
    if args.threads:
        pe.set_num_threads(args.threads)
    arch = ckpt["arch"]
    model = build_model(arch["name"], **arch["args"])
    model.load_state_dict(ckpt["model"])
    data = ckpt.get("data", {"name": "digits", "seed": 0, "test_fraction": 0.2})
    if data.get("name") != "digits":
        print(f"{args.checkpoint}: unknown dataset {data.get('name')!r}", file=sys.stderr)
        return 2
    _, (xte, yte) = _split_digits(seed=data["seed"], test_fraction=data["test_fraction"])
    xte = model_inputs(arch["name"], xte)
    start = time.perf_counter()
    result = pe.evaluate(model, pe.CrossEntropyLoss(), (xte, yte))
    elapsed = time.perf_counter() - start
    print(f"{arch['name']} {arch['args']} from {args.checkpoint} (epoch {ckpt.get('epoch')})")
    print(f"test accuracy: {result['accuracy']:.4f} ({len(yte)} held-out images); "
          f"test loss {result['loss']:.4f}; evaluation took {elapsed:.3f} s")
    return 0


def cmd_info(args):
    import platform

    import numpy
    import scipy

    import pyengine as pe
    from engine import _threads

    print(f"pyengine {pe.__version__}  numpy {numpy.__version__}  scipy {scipy.__version__}  "
          f"python {platform.python_version()}")
    print(f"OpenMP: {'on' if _threads.openmp_enabled() else 'off'}, engine threads "
          f"{pe.get_num_threads()} of {_threads.available_cores()} cores")
    for lib in _threads.blas_info():
        print(f"BLAS: {lib['internal_api']} {lib['version']} ({lib['architecture']}), "
              f"{lib['num_threads']} thread(s), {lib['filepath']}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from pyengine import bench
        return bench.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pyengine",
                                     description="pyengine command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a model on the bundled data (digits; text "
                          "for --model char-lm)")
    demo.add_argument("--model", default="mlp", choices=list(DEMOS) + ["char-lm"])
    demo.add_argument("--epochs", type=int, default=None,
                      help="default: 30 (digits models), 6 (char-lm)")
    demo.add_argument("--batch-size", type=int, default=None,
                      help="default: 32 for mlp and char-lm, 64 for lenet5")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--distributed", action="store_true",
                      help="data-parallel over MPI ranks: mpiexec -n 2 python -m pyengine "
                      "demo --distributed (threads per rank default to cores / ranks)")
    demo.add_argument("--progress", action="store_true",
                      help="show the progress bar even when stderr is not a terminal")
    demo.add_argument("--lr", type=float, default=None,
                      help="Adam learning rate (default: 3e-3; lenet5: 1e-3)")
    demo.add_argument("--temperature", type=float, default=0.7,
                      help="char-lm: sampling temperature")
    demo.add_argument("--sample-length", type=int, default=300,
                      help="char-lm: characters to sample after training")
    demo.add_argument("--seq-len", type=int, default=64, help="char-lm: characters per sequence")
    demo.add_argument("--hidden-size", type=int, default=128, help="char-lm: LSTM hidden size")
    demo.add_argument("--checkpoint", default=None,
                      help="where to save the best model (default: "
                      "pyengine_demo_<model>.safetensors)")
    demo.set_defaults(func=cmd_demo)
    evaluate = sub.add_parser("eval", help="rebuild a model from a demo checkpoint and "
                              "print its test accuracy")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--threads", type=int, default=None)
    evaluate.set_defaults(func=cmd_eval)
    sub.add_parser("bench", help="compare with reference NumPy and PyTorch "
                   "(python -m pyengine bench --help)")
    info = sub.add_parser("info", help="build, thread and BLAS information")
    info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
