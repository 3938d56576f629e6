"""bench.py smoke test: every registered benchmark runs end to end (on CPU: tiny shapes, interpreter).

Run: python -m pytest -q tests/test_bench.py. The numbers mean nothing on CPU; this only keeps the harness
working for the GPU sessions that record BENCHMARKS.md.
"""
import bench


def test_every_benchmark_runs(capsys, tmp_path):
    bench.main(["--plot", str(tmp_path / "b.png")])
    out = capsys.readouterr().out
    for name in ("rms_norm", "swiglu", "stablemax CE", "attention", "trm_step", "prr num_branches=8", "deep_recursive"):
        assert name in out, name
    assert (tmp_path / "b.png").exists()
