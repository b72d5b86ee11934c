"""Smoke test of the benchmark runner (CI runs no timings, only this check)."""

import os
import subprocess
import sys

import numpy as np

from pyengine import bench, benchcases


def test_runner_quick_smoke(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "pyengine", "bench", "--quick", "--threads", "1",
         "--cases", "linear,mlp_step", "--backends", "pyengine,reference", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| linear |" in proc.stdout and "| mlp_step |" in proc.stdout
    assert "sgemm peak" in proc.stdout
    assert out.exists() and '"median_ms"' in out.read_text()


def test_output_check_catches_a_wrong_backend(tmp_path):
    case = benchcases.CASES["linear"]
    ref = tmp_path / "ref.npz"
    bad = tmp_path / "bad.npz"
    np.savez(ref, y=np.ones(4))
    np.savez(bad, y=np.array([1.0, 1.0, 1.5, 1.0]))
    failures = bench._check(case, {"reference": str(ref), "pyengine": str(bad)})
    assert failures and "linear/pyengine/y" in failures[0]
    assert bench._check(case, {"reference": str(ref), "pyengine": str(ref)}) == []


def test_norm_keys_compare_by_relative_norm(tmp_path):
    case = benchcases.CASES["vgg_block"]
    assert set(case.norm_keys) == {"dx", "dw0", "dw2"}
    rng = np.random.default_rng(0)
    want = rng.standard_normal(1_000_000)
    moved = want.copy()
    moved[:20] += 0.2                       # one pool's gradient routed elsewhere
    wrong = want * 1.01                     # 1% off everywhere
    paths = {}
    for name, arr in (("reference", want), ("moved", moved), ("wrong", wrong)):
        paths[name] = str(tmp_path / f"{name}.npz")
        np.savez(paths[name], dx=arr, y=want)
    assert bench._check(case, {"reference": paths["reference"], "pyengine": paths["moved"]}) == []
    failures = bench._check(case, {"reference": paths["reference"], "pyengine": paths["wrong"]})
    assert failures and "vgg_block/pyengine/dx: relative error" in failures[0]


def test_every_case_builds_and_agrees_with_the_reference():
    """Each registered case runs once per backend (no timing) and matches the reference."""
    for name, case in benchcases.CASES.items():
        if name in ("vgg_block", "lstm_2l_bi", "resnet_small_step", "sgd_step",
                    "adam_step", "adamw_step"):
            continue  # large; covered by their families' own tests
        ref_run, ref_out = case.build("reference", quick=True)
        run, out = case.build("pyengine", quick=True)
        ref_run()
        run()
        want, got = ref_out(), out()
        for key in want:
            np.testing.assert_allclose(np.asarray(got[key], np.float64),
                                       np.asarray(want[key], np.float64),
                                       rtol=case.rtol, atol=case.atol, err_msg=f"{name}/{key}")
