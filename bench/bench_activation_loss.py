"""Activations (ReLU, GELU, Softmax on 128x4096) and the fused cross-entropy
(128x1000), forward + backward: pyengine vs pe.reference vs torch. The cases
live in pyengine.benchcases (also run by `python -m pyengine bench`)."""

import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["relu", "gelu", "softmax"])
def test_activation_fwd_bwd(benchmark, name, backend, threads):
    benchmark.group = f"{name} fwd+bwd 128x4096"
    run_case(benchmark, name, backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_fwd_bwd(benchmark, backend, threads):
    benchmark.group = "cross_entropy fwd+bwd 128x1000"
    run_case(benchmark, "cross_entropy", backend, threads)
