import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lenet5_step(benchmark, backend, threads):
    run_case(benchmark, "lenet5_step", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vgg_block_fwd_bwd(benchmark, backend, threads):
    run_case(benchmark, "vgg_block", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet_small_step(benchmark, backend, threads):
    run_case(benchmark, "resnet_small_step", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lenet5_inference_batch1(benchmark, backend, threads):
    run_case(benchmark, "lenet5_infer_b1", backend, threads)
