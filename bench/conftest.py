"""pytest-benchmark suites: ours vs pe.reference vs PyTorch CPU on the cases in
pyengine.benchcases (the same ones `python -m pyengine bench` runs).

    .venv/bin/python -m pytest bench --threads 1            # all suites, 1 thread
    .venv/bin/python -m pytest bench/bench_dense.py -k torch

Backends share this process here (quick to run, fine for one backend at a
time); the runner `python -m pyengine bench` gives each backend its own
process and is the one to quote.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption("--threads", type=int, default=1, help="threads for every backend")


@pytest.fixture(scope="session")
def threads(request):
    return request.config.getoption("--threads")


def run_case(benchmark, name, backend, threads):
    """Build case `name` for `backend`, check it against the reference, time it."""
    import numpy as np

    from pyengine import bench, benchcases

    case = benchcases.CASES[name]
    try:
        bench._set_threads(backend, threads)
        run, outputs = case.build(backend)
    except benchcases.Unsupported as exc:
        pytest.skip(str(exc))
    run()
    if backend != "reference":
        ref_run, ref_outputs = case.build("reference")
        ref_run()
        want, got = ref_outputs(), outputs()
        for key in want:
            np.testing.assert_allclose(np.asarray(got[key], np.float64),
                                       np.asarray(want[key], np.float64),
                                       rtol=case.rtol, atol=case.atol, err_msg=key)
    benchmark.extra_info.update(case=name, shape=case.shape, backend=backend,
                                threads=threads, flops=case.flops)
    benchmark(run)
