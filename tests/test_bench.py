"""bench.py on a CPU: every registered benchmark runs end to end (tiny shapes, Triton interpreter), the plot
lands under out/bench/ and never in the working directory itself, and `--check` refuses to run without a GPU.

Run: python -m pytest -q tests/test_bench.py. The numbers mean nothing on CPU; this only keeps the harness
working for the GPU sessions that record BENCHMARKS.md.
"""
import os
import subprocess
import sys

import pytest
import torch

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_every_benchmark_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    for name in ("rms_norm", "swiglu", "stablemax CE", "attention", "trm_step", "prr num_branches=8", "deep_recursive"):
        assert name in out, name
    assert (tmp_path / "out" / "bench" / "bench_kernels.png").exists()
    assert os.listdir(tmp_path) == ["out"], "nothing but the output folder may be written"
    assert "out/bench/bench_kernels.png" in out  # the path is printed


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour of --check")
def test_check_needs_a_gpu(tmp_path):
    """One line on stderr naming what is missing, a non-zero exit, and BENCHMARKS.md untouched."""
    with open(os.path.join(ROOT, "BENCHMARKS.md")) as f:
        before = f.read()
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--check"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "needs a CUDA GPU" in lines[0], res.stderr
    assert res.stdout == ""
    with open(os.path.join(ROOT, "BENCHMARKS.md")) as f:
        assert f.read() == before
