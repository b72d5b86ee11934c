"""Benchmark runner: pyengine vs reference NumPy vs PyTorch CPU, in one run.

    python -m pyengine bench [--threads 1,2] [--quick] [--cases a,b] [--json out.json]
                             [--plot out.png]

Each backend runs in its own worker process (two OpenMP runtimes, ours and
torch's, never share a process); rounds alternate between the backends so
machine drift hits all of them alike. Before timing, every backend's result on
the same data and weights is checked against the reference: a fast wrong kernel
fails the run. The machine's peak is measured in the same run (a large sgemm
through the engine's BLAS at the same thread count).
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

BACKENDS = ("pyengine", "reference", "torch")
_SETTLE_S = 0.2


# ----------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------

def _set_threads(backend, threads):
    if backend == "pyengine":
        import pyengine as pe
        pe.set_num_threads(threads)
    elif backend == "torch":
        import torch
        torch.set_num_threads(threads)
    else:
        # The reference is NumPy: its BLAS gets the same thread count.
        from threadpoolctl import threadpool_limits
        _set_threads.limiter = threadpool_limits(limits=threads, user_api="blas")


def _peak_gflops(threads, size=2048, reps=5):
    """GFLOPS of a large sgemm through the engine's BLAS at `threads` threads."""
    from engine import blas
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    c = blas.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        blas.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


def _rss_kib(field):
    """VmRSS / VmHWM of this process in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory(run):
    """Peak memory of one call of `run`: RSS high-water growth and Python peak.

    The RSS high-water mark is reset first (Linux /proc/self/clear_refs), so the
    growth counts what the call itself touches beyond what the process already
    holds (workspaces, temporaries, outputs); tracemalloc counts the Python-side
    allocations (NumPy arrays included).
    """
    import gc
    import tracemalloc

    gc.collect()
    base = _rss_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    run()
    hwm = _rss_kib("VmHWM")
    rss_mb = (hwm - base) / 1024 if (reset and hwm is not None and base is not None) else None
    tracemalloc.start()
    run()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rss_peak_mb": rss_mb, "py_peak_mb": py_peak / 2**20}


def worker_main(backend, threads):
    from pyengine import benchcases

    _set_threads(backend, threads)
    cases = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "setup":
                case = benchcases.CASES[msg["case"]]
                run, outputs = case.build(backend, quick=msg.get("quick", False))
                run()  # warm-up (workspaces, page faults, lazy init)
                run()
                path = os.path.join(msg["dir"], f"{msg['case']}-{backend}.npz")
                np.savez(path, **{k: np.asarray(v, np.float64) for k, v in outputs().items()})
                cases[msg["case"]] = run
                reply = {"ok": True, "check": path}
            elif msg["cmd"] == "time":
                run = cases[msg["case"]]
                times = []
                for _ in range(msg["iters"]):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                reply = {"ok": True, "times": times}
            elif msg["cmd"] == "mem":
                reply = {"ok": True, **_memory(cases[msg["case"]])}
            elif msg["cmd"] == "peak":
                reply = {"ok": True, "gflops": _peak_gflops(threads)}
            elif msg["cmd"] == "env":
                reply = {"ok": True, "env": _environment(backend)}
            else:
                reply = {"ok": False, "error": f"unknown command {msg['cmd']}"}
        except benchcases.Unsupported as exc:
            reply = {"ok": False, "skip": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _environment(backend):
    info = {}
    if backend == "pyengine":
        import scipy

        import pyengine as pe
        from engine import _threads
        info.update(pyengine=pe.__version__, numpy=np.__version__, scipy=scipy.__version__,
                    openmp=_threads.openmp_enabled(), blas=_threads.blas_info())
    elif backend == "torch":
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    torch_parallel=torch.__config__.parallel_info().splitlines()[:3])
    else:
        from threadpoolctl import threadpool_info
        info.update(numpy_blas=[{k: d.get(k) for k in ("internal_api", "version",
                                                         "architecture", "num_threads")}
                                for d in threadpool_info() if d.get("user_api") == "blas"])
    return info


# ----------------------------------------------------------------------------
# parent side
# ----------------------------------------------------------------------------

class Worker:
    def __init__(self, backend, threads):
        self.backend = backend
        env = dict(os.environ, PYENGINE_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyengine.bench", "--worker", backend, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.backend} worker died (exit {self.proc.poll()})")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()


def _torch_available():
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def _check(case, paths):
    """Compare every backend's outputs with the reference; return failures."""
    ref = np.load(paths["reference"])
    failures = []
    for backend, path in paths.items():
        if backend == "reference":
            continue
        got = np.load(path)
        for key in ref.files:
            if key in case.norm_keys:
                want = ref[key].astype(np.float64)
                rel = float(np.linalg.norm(got[key] - want) / max(np.linalg.norm(want), 1e-30))
                if not rel <= case.rtol:
                    failures.append(f"{case.name}/{backend}/{key}: relative error {rel:.3g}")
            elif not np.allclose(got[key], ref[key], rtol=case.rtol, atol=case.atol):
                err = float(np.max(np.abs(got[key] - ref[key])))
                failures.append(f"{case.name}/{backend}/{key}: max abs error {err:.3g}")
    return failures


def run_benchmarks(case_names, threads_list, backends, quick=False, log=print):
    from pyengine import benchcases

    results = {"environment": {}, "runs": []}
    rounds, target = (3, 0.1) if quick else (7, 0.4)
    with tempfile.TemporaryDirectory() as tmp:
        for threads in threads_list:
            workers = {b: Worker(b, threads) for b in backends}
            try:
                if not results["environment"]:
                    for b, w in workers.items():
                        results["environment"][b] = w.ask(cmd="env").get("env")
                peak = workers["pyengine"].ask(cmd="peak")["gflops"]
                log(f"threads={threads}: sgemm peak {peak:.1f} GFLOPS")
                run = {"threads": threads, "peak_gflops": peak, "cases": []}
                for name in case_names:
                    case = benchcases.CASES[name]
                    active, paths, skipped = {}, {}, {}
                    for b, w in workers.items():
                        r = w.ask(cmd="setup", case=name, quick=quick, dir=tmp)
                        if r.get("ok"):
                            active[b], paths[b] = w, r["check"]
                        else:
                            skipped[b] = r.get("skip") or r.get("error")
                    if "reference" not in paths or "pyengine" not in paths:
                        raise RuntimeError(f"{name}: cannot run ({skipped})")
                    failures = _check(case, paths)
                    if failures:
                        raise AssertionError("outputs disagree with the reference:\n  "
                                             + "\n  ".join(failures))
                    # Size the repetition count on the slowest backend.
                    probe = {b: min(w.ask(cmd="time", case=name, iters=1)["times"])
                             for b, w in active.items()}
                    iters = {b: max(1, int(target / max(t, 1e-6))) for b, t in probe.items()}
                    times = {b: [] for b in active}
                    order = list(active)
                    for r in range(rounds):
                        for b in order[r % len(order):] + order[:r % len(order)]:
                            # Let the previous backend's idle thread pools stop
                            # spinning (OpenBLAS and OpenMP busy-wait for a while
                            # after their work) before timing the next one.
                            time.sleep(_SETTLE_S)
                            times[b] += active[b].ask(cmd="time", case=name,
                                                      iters=iters[b])["times"]
                    row = {"case": name, "shape": case.shape, "flops": case.flops,
                           "skipped": skipped, "backends": {}}
                    for b, ts in times.items():
                        mem = active[b].ask(cmd="mem", case=name)
                        row["backends"][b] = {"median_ms": 1e3 * statistics.median(ts),
                                              "min_ms": 1e3 * min(ts), "max_ms": 1e3 * max(ts),
                                              "n": len(ts),
                                              "rss_peak_mb": mem.get("rss_peak_mb"),
                                              "py_peak_mb": mem.get("py_peak_mb")}
                    run["cases"].append(row)
                    log(_format_row(row, peak))
                results["runs"].append(run)
            finally:
                for w in workers.values():
                    w.close()
    return results


def _format_row(row, peak):
    b = row["backends"]
    ours = b["pyengine"]["median_ms"]
    cells = [row["case"], row["shape"]]
    for name in BACKENDS:
        if name in b:
            s = b[name]
            cells.append(f"{s['median_ms']:.3f} ({s['min_ms']:.3f}-{s['max_ms']:.3f})")
        else:
            cells.append("-")
    cells.append(f"{b['reference']['median_ms'] / ours:.2f}x")
    cells.append(f"{b['torch']['median_ms'] / ours:.2f}x" if "torch" in b else "-")
    if row["flops"]:
        gflops = row["flops"] / (ours * 1e-3) / 1e9
        cells.append(f"{gflops:.1f} ({100 * gflops / peak:.0f}%)")
    else:
        cells.append("-")
    mems = []
    for name in BACKENDS:
        m = b.get(name, {})
        if m.get("py_peak_mb") is None:
            mems.append("-")
        else:
            rss = m.get("rss_peak_mb")
            mems.append(f"{m['py_peak_mb']:.1f}" + (f"/{rss:.1f}" if rss is not None else ""))
    cells.append(" ; ".join(mems))
    return "| " + " | ".join(cells) + " |"


def _scaling_lines(results):
    """Speed-up and parallel efficiency of the largest thread count over 1 thread."""
    runs = {r["threads"]: r for r in results["runs"]}
    if 1 not in runs or len(runs) < 2:
        return []
    n = max(runs)
    lines = ["", f"### Thread scaling, 1 -> {n} threads (speed-up; parallel efficiency "
             f"= speed-up / {n})", "",
             "| case | pyengine | torch |", "|---|---|---|"]
    one = {r["case"]: r for r in runs[1]["cases"]}
    for row in runs[n]["cases"]:
        if row["case"] not in one:
            continue
        cells = [row["case"]]
        for backend in ("pyengine", "torch"):
            a, c = one[row["case"]]["backends"].get(backend), row["backends"].get(backend)
            if a and c:
                sp = a["median_ms"] / c["median_ms"]
                cells.append(f"{sp:.2f}x ({100 * sp / n:.0f}%)")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def format_table(results):
    lines = []
    env = results["environment"]
    lines.append(f"Machine: {platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} cores; {_cpu_model()}")
    lines.append(f"Environment: {json.dumps(env, default=str)}")
    openblas = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}
    lines.append(f"OPENBLAS_* in force: {openblas or 'none'}")
    for run in results["runs"]:
        lines.append("")
        lines.append(f"### {run['threads']} thread(s); sgemm peak in this run "
                     f"{run['peak_gflops']:.1f} GFLOPS")
        lines.append("")
        lines.append("| case | shape | pyengine ms median (min-max) | reference ms | torch ms | "
                     "speedup vs reference | speedup vs torch | pyengine GFLOPS (% of peak) | "
                     "peak MB python-allocs/RSS-growth: pyengine ; reference ; torch |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for row in run["cases"]:
            lines.append(_format_row(row, run["peak_gflops"]))
    lines += _scaling_lines(results)
    return "\n".join(lines)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["runs"]), figsize=(6 * len(results["runs"]), 5),
                             squeeze=False)
    for ax, run in zip(axes[0], results["runs"]):
        names = [r["case"] for r in run["cases"]]
        x = np.arange(len(names))
        for i, other in enumerate(("reference", "torch")):
            vals = [r["backends"][other]["median_ms"] / r["backends"]["pyengine"]["median_ms"]
                    if other in r["backends"] else 0 for r in run["cases"]]
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=f"speedup vs {other}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_title(f"pyengine speedup, {run['threads']} thread(s)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    import argparse

    from pyengine import benchcases

    p = argparse.ArgumentParser(prog="python -m pyengine bench")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--quick", action="store_true", help="small shapes, few rounds (smoke test)")
    p.add_argument("--cases", default=None,
                   help=f"comma-separated subset of: {','.join(benchcases.CASES)}")
    p.add_argument("--backends", default=None, help="default: pyengine,reference[,torch]")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--plot", default=None, help="write a bar chart of the speedups (PNG)")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    names = args.cases.split(",") if args.cases else list(benchcases.CASES)
    for n in names:
        if n not in benchcases.CASES:
            p.error(f"unknown case {n!r}; choose from {', '.join(benchcases.CASES)}")
    backends = (args.backends.split(",") if args.backends else
                ["pyengine", "reference"] + (["torch"] if _torch_available() else []))
    results = run_benchmarks(names, threads, backends, quick=args.quick,
                             log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)
        print(f"chart written to {args.plot}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
