"""Optimizer steps over a 10.5M-parameter model: the fused engine kernel vs
NumPy expressions (pe.reference) vs torch.optim's foreach path. The cases live
in pyengine.benchcases (also run by `python -m pyengine bench`)."""

import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sgd_step", "adam_step", "adamw_step"])
def test_optimizer_step(benchmark, name, backend, threads):
    benchmark.group = f"{name} 10.5M params"
    run_case(benchmark, name, backend, threads)
