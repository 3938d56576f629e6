"""train.py tests: a tiny TRM that learns, exact resume, config errors, AdamATan2, NaN guard, 2-rank DDP.

Run: python -m pytest -q tests/test_train.py   (CPU; about a minute on 2 cores)
Checks against: the AdamATan2 formula of ../shared/spec/trm.md §8 written out; an uninterrupted run (for
resume); the same run on one process (for 2-process gloo DDP with the manual flat all-reduce).
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import config
import data
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["hidden_size=64", "num_heads=4", "L_layers=2", "H_cycles=2", "L_cycles=2", "halt_max_steps=2",
        "puzzle_emb_ndim=64", "puzzle_emb_len=1", "global_batch_size=32", "lr=1e-3", "lr_warmup_steps=10",
        "puzzle_emb_lr=1e-2", "weight_decay=0.01", "puzzle_emb_weight_decay=0.01", "ema=False", "eval_interval=1000"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return data.build_toy(str(tmp_path_factory.mktemp("data") / "toy"))


def run(toy, out, *extra, model="trm"):
    return train.main(["--model", model, "--out", str(out), "--config", f"data={toy}", *TINY, *extra])


def rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def test_tiny_trm_learns_toy_task(toy, tmp_path):
    result = run(toy, tmp_path / "run", "max_steps=400", "log_interval=50")
    train_rows = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    assert result["exact_accuracy"] >= 0.9, result
    assert os.path.exists(tmp_path / "run" / "curves.png") and os.path.exists(tmp_path / "run" / "config.json")


def test_resume_continues_the_same_run(toy, tmp_path):
    common = ("log_interval=1", "halt_exploration_prob=0.5", "ema=True")
    run(toy, tmp_path / "a", "max_steps=8", *common)
    run(toy, tmp_path / "b", "max_steps=4", *common)
    train.main(["--model", "trm", "--out", str(tmp_path / "b"), "--resume", "--config", "max_steps=8"])
    a = {r["step"]: r["loss"] for r in rows(tmp_path / "a") if "loss" in r}
    b = {r["step"]: r["loss"] for r in rows(tmp_path / "b") if "loss" in r}
    for step in range(5, 9):
        assert math.isclose(a[step], b[step], rel_tol=1e-5, abs_tol=1e-6), (step, a[step], b[step])


def test_resume_refuses_other_model_and_changed_config(toy, tmp_path):
    run(toy, tmp_path / "r", "max_steps=1", "eval_batches=1")
    with pytest.raises(SystemExit, match="checkpoint of model 'trm', not 'prr'"):
        config.read_checkpoint(str(tmp_path / "r" / "checkpoint.pt"), "prr")
    with pytest.raises(SystemExit, match="cannot change lr"):
        train.main(["--model", "trm", "--out", str(tmp_path / "r"), "--resume", "--config", "lr=0.5"])
    cfg = config.model_module("trm").Config(hidden_size=32)
    with pytest.raises(SystemExit, match="hidden_size=64 .this run: 32."):
        config.read_checkpoint(str(tmp_path / "r" / "checkpoint.pt"), "trm", cfg)


def test_config_errors_name_key_and_value():
    with pytest.raises(SystemExit, match="unknown config key 'lr_warmup' for model 'trm'; did you mean 'lr_warmup_steps'"):
        train.main(["--model", "trm", "--config", "lr_warmup=5"])
    with pytest.raises(SystemExit, match="'H_cycles' for model 'trm' takes a int .default 3., got 'three'"):
        train.main(["--model", "trm", "--config", "H_cycles=three"])
    with pytest.raises(SystemExit, match="unknown model 'gpt'"):
        train.main(["--model", "gpt"])


def test_help_lists_models_datasets_and_keys():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for word in ("models: trm", "datasets:", "H_cycles", "T: answer updates", "puzzle_emb_lr", "global_batch_size"):
        assert word in out.stdout, word


def test_adam_atan2_matches_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    ref = p.detach().clone()
    opt = train.AdamATan2([p], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    m, v = torch.zeros(5), torch.zeros(5)
    for t in range(1, 6):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        ref = ref * (1 - 0.01 * 0.1)
        m = 0.9 * m + 0.1 * g
        v = 0.95 * v + 0.05 * g * g
        ref = ref - 0.01 / (1 - 0.9 ** t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - 0.95 ** t))
        assert torch.allclose(p.detach(), ref, atol=1e-6)


def test_lr_schedule_warmup_then_cosine():
    cfg = train.TrainConfig(lr_warmup_steps=10, lr_min_ratio=0.1)
    assert train.lr_at(5, 1.0, cfg, 110) == 0.5
    assert math.isclose(train.lr_at(10, 1.0, cfg, 110), 1.0)
    assert math.isclose(train.lr_at(60, 1.0, cfg, 110), 0.55)
    assert math.isclose(train.lr_at(110, 1.0, cfg, 110), 0.1)


def test_nan_loss_stops_with_a_clear_error(toy, tmp_path, monkeypatch):
    import trm
    original = trm.Model.act_loss

    def nan_loss(self, carry, outputs):
        loss, metrics = original(self, carry, outputs)
        metrics["lm_loss"] = metrics["lm_loss"] * float("nan")
        return loss * float("nan"), metrics
    monkeypatch.setattr(trm.Model, "act_loss", nan_loss)
    with pytest.raises(SystemExit, match="non-finite loss '.*' at step 1"):
        run(toy, tmp_path / "nan", "max_steps=3")
    assert not os.path.exists(tmp_path / "nan" / "checkpoint.pt")


def test_two_process_gloo_matches_one_process(toy, tmp_path):
    """Same global batch on 1 and 2 ranks, exploration off: the flat all-reduce gives the same losses."""
    args = ["--model", "trm", "--config", f"data={toy}", *TINY, "max_steps=3", "log_interval=1",
            "halt_exploration_prob=0.0", "eval_batches=1"]
    one = tmp_path / "one"
    train.main(args[:2] + ["--out", str(one)] + args[2:])
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *args[:2], "--out", str(two), *args[2:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = [r["loss"] for r in rows(one) if "loss" in r]
    b = [r["loss"] for r in rows(two) if "loss" in r]
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert math.isclose(x, y, rel_tol=1e-4), (a, b)
