"""Command line: ``python -m pyengine demo | bench | info``."""

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


def demo_mlp(args):
    import pyengine as pe
    from tqdm import tqdm

    pe.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = _split_digits(seed=args.seed)
    model = pe.Sequential(pe.Linear(64, 128), pe.ReLU(), pe.Linear(128, 64), pe.ReLU(),
                          pe.Linear(64, 10))
    loss_fn = pe.CrossEntropyLoss()
    opt = pe.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    print(f"MLP 64-128-64-10 on UCI digits: {len(ytr)} train / {len(yte)} test images, "
          f"{pe.get_num_threads()} thread(s)")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(ytr))
        total, correct, seen = 0.0, 0, 0
        bar = tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch:2d}/{args.epochs}",
                   leave=False, disable=not sys.stderr.isatty() and not args.progress)
        for i in bar:
            idx = order[i:i + args.batch_size]
            logits = model(xtr[idx])
            loss = loss_fn(logits, ytr[idx])
            opt.zero_grad()
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step()
            total += loss * len(idx)
            correct += int((logits.argmax(1) == ytr[idx]).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{correct / seen:.3f}")
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:2d}: train loss {total / seen:.4f}, train accuracy "
                  f"{correct / seen:.4f}")
    elapsed = time.perf_counter() - start
    model.eval()
    with pe.no_grad():
        accuracy = float((model(xte).argmax(1) == yte).mean())
    print(f"test accuracy: {accuracy:.4f} ({len(yte)} held-out images); "
          f"training took {elapsed:.2f} s")
    return accuracy


def cmd_demo(args):
    import pyengine as pe

    if args.threads:
        pe.set_num_threads(args.threads)
    demos = {"mlp": demo_mlp}
    accuracy = demos[args.model](args)
    return 0 if accuracy >= 0.9 else 1


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
    demo = sub.add_parser("demo", help="train a model on the bundled digits data")
    demo.add_argument("--model", default="mlp", choices=["mlp"])
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--progress", action="store_true",
                      help="show the progress bar even when stderr is not a terminal")
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("bench", help="compare with reference NumPy and PyTorch "
                   "(python -m pyengine bench --help)")
    info = sub.add_parser("info", help="build, thread and BLAS information")
    info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
