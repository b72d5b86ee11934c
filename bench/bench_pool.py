import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_maxpool2_fwd_bwd(benchmark, backend, threads):
    run_case(benchmark, "maxpool2", backend, threads)
