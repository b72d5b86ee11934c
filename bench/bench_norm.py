"""BatchNorm2d forward + backward in training mode on (32, 64, 32, 32):
pyengine vs pe.reference vs torch. The case lives in pyengine.benchcases
(also run by `python -m pyengine bench`)."""

import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm2d_fwd_bwd(benchmark, backend, threads):
    benchmark.group = "batchnorm2d fwd+bwd 32x64x32x32"
    run_case(benchmark, "batchnorm2d", backend, threads)
