import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_fwd_bwd(benchmark, backend, threads):
    run_case(benchmark, "linear", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_step(benchmark, backend, threads):
    run_case(benchmark, "mlp_step", backend, threads)
