"""Recurrent layers: ours vs pe.reference vs torch (cases in pyengine/benchcases_rnn.py).

    .venv/bin/python -m pytest bench/bench_rnn.py --threads 1
"""

import pytest

from conftest import run_case

BACKENDS = ["pyengine", "reference", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_fwd_bwd(benchmark, backend, threads):
    run_case(benchmark, "lstm", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_fwd_bwd(benchmark, backend, threads):
    run_case(benchmark, "gru", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_2layer_bidirectional_fwd_bwd(benchmark, backend, threads):
    run_case(benchmark, "lstm_2l_bi", backend, threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_inference_batch1(benchmark, backend, threads):
    run_case(benchmark, "lstm_infer_b1", backend, threads)
