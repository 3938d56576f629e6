"""Under load and faults: 2 processes train what 1 does, a run killed anywhere (even inside a checkpoint
write) resumes bit for bit, Ctrl-C keeps the work, non-finite numbers stop the run with one clear line.
Every model file runs the first two.

Run: python -m pytest -q tests/test_faults.py      (CPU, gloo; a few minutes on 2 cores)
Checks against: the same run on one process (DDP: weights and losses at the tolerance the summation order
allows), the same run never stopped (crash/resume: weights, Adam moments, EMA and the metrics log equal).
Faults are injected from outside train.py: this file is also a launcher, `python tests/test_faults.py FAULT
<train.py args>`, that patches train.py's step, torch.save or os.replace and then runs train.main:
    step:N         SIGKILL right after optimisation step N
    write_rank:N   SIGKILL half-way through writing the temporary file of rank 0's state at step N
    save_rank:N    SIGKILL after that temporary file is complete, before it is renamed into place
    write_ckpt:N / save_ckpt:N   the same for checkpoint.pt at step N
    after_ckpt:N   SIGKILL right after checkpoint.pt of step N is in place
    sigint:N       Ctrl-C (SIGINT) during optimisation step N
    nan_loss:N / nan_gradient:N  the loss (or one weight's gradient) of the N-th training call becomes NaN
"""
import io
import json
import os
import random
import re
import signal
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cli  # noqa: E402
import config  # noqa: E402
import data  # noqa: E402
import train  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier (python -m pytest tests); see README

COMMON = ["global_batch_size=16", "lr=1e-3", "lr_warmup_steps=5", "eval_interval=1000", "eval_batches=1",
          "weight_decay=0.01", "ema=True", "log_interval=1"]
TINY = {  # each model at a size that trains a step in well under a second, randomness in training off
    "trm": ["hidden_size=32", "num_heads=2", "L_layers=1", "H_cycles=2", "L_cycles=1", "halt_max_steps=2",
            "puzzle_emb_ndim=32", "puzzle_emb_len=1", "halt_exploration_prob=0.0"],
    "hrm": ["hidden_size=32", "num_heads=2", "H_layers=1", "L_layers=1", "H_cycles=1", "L_cycles=2",
            "halt_max_steps=2", "puzzle_emb_ndim=32", "halt_exploration_prob=0.0"],
    "etrm": ["hidden_size=32", "num_heads=2", "L_layers=1", "H_cycles=1", "L_cycles=1", "halt_max_steps=2",
             "encoder_num_layers=1", "halt_exploration_prob=0.0"],
    "prr": ["hidden_size=32", "num_heads=2", "num_layers=1", "num_branches=2", "num_steps=2", "grad_steps=1",
            "puzzle_emb_ndim=32", "puzzle_emb_len=1", "init_noise_std=0.0"],
    "deep_recursive": ["base_channels=8", "latent_channels=16", "n_res_blocks=1", "n_inner=1", "n_outer=2",
                       "eval_n_steps=2", "puzzle_emb_ndim=16"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SELF = os.path.abspath(__file__)


# ----------------------------------------------------------------------------------------------------
# The launcher: faults from outside train.py

def arm(fault, argv):
    kind, n = fault.rsplit(":", 1)
    n, die = int(n), lambda: os.kill(os.getpid(), signal.SIGKILL)
    if kind in ("step", "sigint"):
        step = train.train_step

        def train_step(s, *args):
            if kind == "sigint" and s.step == n - 1:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step n: the loop stops after it
            out = step(s, *args)
            if kind == "step" and s.step == n:
                die()
            return out
        train.train_step = train_step
    elif kind.startswith("nan_"):
        poison(config.model_module(argv[argv.index("--model") + 1]), n, kind[4:])
    else:
        save, replace, seen = torch.save, os.replace, {"step": None}

        def which(path):  # "rank" / "ckpt" when `path` is that file (or its temporary) at step n
            m = re.search(r"rank0\.step(\d+)\.pt", path)
            if m:
                seen["step"] = int(m[1])
                return "rank" if seen["step"] == n else None
            return "ckpt" if os.path.basename(path).startswith("checkpoint.pt") and seen["step"] == n else None

        def torch_save(obj, path, *args, **kwargs):
            if isinstance(path, str) and kind == f"write_{which(path)}":
                buf = io.BytesIO()
                save(obj, buf)
                with open(path, "wb") as f:  # the temporary file half written, on disk, then the kill
                    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()
            return save(obj, path, *args, **kwargs)

        def os_replace(src, dst, *args, **kwargs):
            if kind == f"save_{which(str(dst))}":
                die()
            out = replace(src, dst, *args, **kwargs)
            if kind == f"after_{which(str(dst))}":
                die()
            return out
        torch.save, os.replace = torch_save, os_replace


def poison(mod, at_call, where):
    """Make the model's loss (or one weight's gradient) non-finite on its `at_call`-th training call."""
    original, calls = mod.Model.forward, {"n": 0}

    def forward(self, carry, batch):
        carry, loss, metrics, out = original(self, carry, batch)
        if self.training and len(batch["inputs"]) > 2:  # train.py's memory probe: 1 and 2 samples
            calls["n"] += 1
            if calls["n"] == at_call:
                if where == "loss":
                    loss = loss * float("nan")
                else:  # the loss stays finite; one weight's gradient becomes NaN in backward
                    x = next(self.parameters()).sum()
                    x.register_hook(lambda g: g * float("nan"))
                    loss = loss + 0 * x
        return carry, loss, metrics, out
    mod.Model.forward = forward


if __name__ == "__main__":
    arm(sys.argv[1], sys.argv[2:])
    sys.exit(cli.one_line_errors(train.main, sys.argv[2:]))


# ----------------------------------------------------------------------------------------------------
# Helpers

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return data.build_toy(str(tmp_path_factory.mktemp("data") / "toy"), num_train=800, num_test=64)


def argv(model, toy, out, *extra):
    return ["--model", model, "--out", str(out), "--config", f"data={toy}", *COMMON, *TINY[model], *extra]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # commands run in the test's own folder, never in the checkout


def python(*args, check=True):
    args = [os.path.join(ROOT, a) if a == "train.py" else a for a in args]
    proc = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def checkpoint(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=False)


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def adam_moments(ckpt):
    return [(i, k, v) for i, st in sorted(ckpt["optimizer"]["state"].items()) for k, v in sorted(st.items())]


# ----------------------------------------------------------------------------------------------------
# 1. Distributed equivalence

# Steps compared, and the worst weight difference between 1 and 2 processes that the summation order leaves
# after them, about 2x what we measured (2026-11-29, this CPU, max abs: trm 6.0e-8, hrm 6.0e-8, etrm 8.9e-7,
# prr 1.2e-7, deep_recursive 4.5e-7, 1.6e-6 with its recipe's grad clip 1.0 and EMA 0.9995; losses within 2.9e-7 relative for all). AdamATan2's atan2 and sign-SGD
# are sign-like, so they turn rounding-level gradient differences into whole steps; deep_recursive starts
# its residual and FiLM branches at zero, so its early gradients ARE rounding-level and grow fastest
# (1e-8 after 2 steps, 1e-3 after 20): it is compared after 4.
DDP = {"trm": (10, 1.5e-7), "hrm": (10, 1.5e-7), "etrm": (10, 2e-6), "prr": (10, 3e-7), "deep_recursive": (4, 3e-6)}
DDP_LOSS_RTOL = 6e-7
# A gauge: a constant added to all K branch scores cancels in every softmax over branches, so its gradient
# is 0 up to rounding and AdamATan2 walks it by +-lr per step on noise alone.
GAUGE = {"prr": {"scorer.fc2.bias"}}


@pytest.mark.parametrize("model", list(TINY))
def test_two_processes_train_the_same_weights_as_one(model, toy, tmp_path):
    n, tol = DDP[model]
    python("train.py", *argv(model, toy, tmp_path / "one", f"max_steps={n}"))
    python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *argv(model, toy, tmp_path / "two", f"max_steps={n}"))
    a, b = checkpoint(tmp_path / "one"), checkpoint(tmp_path / "two")
    assert a["step"] == b["step"] == n and b["world_size"] == 2
    worst = 0.0
    for k, v in a["model"].items():  # the puzzle-embedding table (sign-SGD, all-gathered) included
        if k not in GAUGE.get(model, ()):
            worst = max(worst, (b["model"][k] - v).abs().max().item())
    loss_a = [r["loss"] for r in metrics(tmp_path / "one") if "loss" in r]
    loss_b = [r["loss"] for r in metrics(tmp_path / "two") if "loss" in r]
    assert len(loss_a) == len(loss_b) == n
    loss_gap = max(abs(x - y) / abs(x) for x, y in zip(loss_a, loss_b))
    print(f"{model}: 1 vs 2 processes after {n} steps: weights {worst:.1e}, losses (relative) {loss_gap:.1e}")
    assert worst <= tol and loss_gap <= DDP_LOSS_RTOL, (worst, loss_gap)


# ----------------------------------------------------------------------------------------------------
# 2. Crash and resume

# Checkpoints every 2 steps; each kill lies after the checkpoint the previous resume starts from. The two
# middle kills hit checkpoint writes (inside the temporary file's write, or between it and its rename); the
# models share the kinds between them.
MIDDLE = {"trm": ("write_rank", "write_ckpt"), "hrm": ("save_rank", "save_ckpt"), "etrm": ("write_ckpt", "save_rank"),
          "prr": ("save_ckpt", "write_rank"), "deep_recursive": ("write_rank", "save_ckpt")}


@pytest.mark.parametrize("model", list(TINY))
def test_sigkill_and_resume_equals_no_stop(model, toy, tmp_path):
    run = argv(model, toy, tmp_path / "run", "max_steps=10", "checkpoint_interval=2")
    python("train.py", *argv(model, toy, tmp_path / "ref", "max_steps=10", "checkpoint_interval=2"))
    rng = random.Random(model)
    # step 2's kill comes before step 2's checkpoint: that resume starts over from config.json alone
    kills = [f"step:{rng.randint(2, 3)}", f"{MIDDLE[model][0]}:4", f"{MIDDLE[model][1]}:6", f"step:{rng.randint(7, 9)}"]
    for i, fault in enumerate(kills):
        proc = python(SELF, fault, *run, *(["--resume"] if i else []), check=False)
        assert proc.returncode == -9, (fault, proc.stderr[-2000:])  # it really died there
        if (tmp_path / "run" / "checkpoint.pt").exists():  # never half-written: whatever is there loads
            assert checkpoint(tmp_path / "run")["step"] % 2 == 0
    python("train.py", "--out", str(tmp_path / "run"), "--resume")  # model and config from the folder
    a, b = checkpoint(tmp_path / "ref"), checkpoint(tmp_path / "run")
    assert a["step"] == b["step"] == 10
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), f"{model}: {k} differs after resume"
    for k, v in a["ema"].items():
        assert torch.equal(b["ema"][k], v), f"{model}: EMA {k} differs after resume"
    for (i, k, v), (j, l, w) in zip(adam_moments(a), adam_moments(b), strict=True):
        assert (i, k) == (j, l) and (torch.equal(v, w) if torch.is_tensor(v) else v == w), f"{model}: Adam {i}.{k}"
    assert metrics(tmp_path / "ref") == metrics(tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run")) == sorted(os.listdir(tmp_path / "ref"))  # no temporary left


def test_ctrl_c_checkpoints_and_resume_continues(toy, tmp_path):
    """SIGINT after the first step: the step finishes, a checkpoint is written, the exit code is 130 and the
    message says how to resume; the resumed run goes on from there."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"),
                             *argv("trm", toy, out, "max_steps=100000")], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # blocks until train.py prints; no sleeps
        if line.startswith("step 1/"):
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and f"continue with: python train.py --out {out} --resume" in stderr
    stopped = checkpoint(out)["step"]
    assert stopped >= 1 and [r["step"] for r in metrics(out) if "loss" in r] == list(range(1, stopped + 1))
    python("train.py", "--out", str(out), "--resume", "--config", f"max_steps={stopped + 2}")
    assert checkpoint(out)["step"] == stopped + 2


@pytest.fixture(scope="module")
def small_toy(tmp_path_factory):
    """24 puzzles of 4 examples: a data iteration (eval_interval=1 epoch) is 6 steps of 16."""
    return data.build_toy(str(tmp_path_factory.mktemp("data") / "toy"), num_train=96, num_test=16)


def assert_same_run(a, b):
    """Weights, EMA and the metrics log (evaluations included) equal bit for bit."""
    ca, cb = checkpoint(a), checkpoint(b)
    assert ca["step"] == cb["step"]
    for key in ("model", "ema"):
        for k, v in ca[key].items():
            assert torch.equal(cb[key][k], v), f"{key} {k} differs after resume"
    assert metrics(a) == metrics(b)


# first run's fault or max_steps -> the boundary it stops at; 6 and 18 end data iterations
BOUNDARIES = {"iteration_end": ["max_steps=6"], "checkpoint_interval": ["after_ckpt:6", "checkpoint_interval=6"],
              "ctrl_c_on_an_iteration's_last_batch": ["sigint:6"], "ctrl_c_on_the_last_step": ["sigint:18"]}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
def test_resume_from_every_boundary_equals_no_stop(boundary, small_toy, tmp_path):
    """The checkpoint a run leaves at each kind of boundary resumes into the uninterrupted run: the loader
    at the end of a data iteration starts the next one, an evaluation a stop skipped is made first."""
    keys = [*COMMON[1:], "global_batch_size=16", "eval_interval=1", "epochs=3"]
    python("train.py", *argv("trm", small_toy, tmp_path / "ref", *keys))
    run = argv("trm", small_toy, tmp_path / "run", *keys)
    fault, *extra = BOUNDARIES[boundary]
    if ":" not in fault:
        python("train.py", *run, fault, *extra)
    else:
        proc = python(SELF, fault, *run, *extra, check=False)
        code = 130 if fault.startswith("sigint") else -9
        assert proc.returncode == code, (fault, proc.stderr[-2000:])
    python("train.py", "--out", str(tmp_path / "run"), "--resume", "--config", "max_steps=0")
    assert_same_run(tmp_path / "ref", tmp_path / "run")
    evals = [r["step"] for r in metrics(tmp_path / "run") if "eval/accuracy" in r]
    assert evals == [6, 12, 18]


def test_resume_at_the_end_of_the_schedule_says_how_to_train_on(small_toy, tmp_path):
    out = tmp_path / "run"
    python("train.py", *argv("trm", small_toy, out, *COMMON[1:], "global_batch_size=16", "eval_interval=1",
                             "epochs=2"))
    before = {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)}
    proc = python("train.py", "--out", str(out), "--resume", "--config", "max_steps=100")
    assert f"{out} is finished: step 12 is the end of its schedule (2 epochs)" in proc.stdout
    assert f"init_from={out}" in proc.stdout
    assert {f: os.stat(out / f).st_mtime_ns for f in os.listdir(out)} == before


# ----------------------------------------------------------------------------------------------------
# 3. Non-finite loss and gradient

@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_stops_through_the_command_line(where, toy, tmp_path):
    proc = python(SELF, f"nan_{where}:3", *argv("trm", toy, tmp_path / "r", "max_steps=5", "checkpoint_interval=2"),
                  check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    expect = "loss 'loss'" if where == "loss" else "gradient of "
    assert lines[-1].startswith(f"error: non-finite {expect}") and "at step 3" in lines[-1], lines[-1]
    assert checkpoint(tmp_path / "r")["step"] == 2  # the last good checkpoint stays


@pytest.mark.parametrize("model", list(TINY))
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_non_finite_stops_and_names_the_tensor(model, where, toy, tmp_path, monkeypatch):
    mod = config.model_module(model)
    monkeypatch.setattr(mod.Model, "forward", mod.Model.forward)  # undone after the test
    poison(mod, 3, where)
    expect = "non-finite loss 'loss' at step 3" if where == "loss" else "non-finite gradient of .* at step 3"
    with pytest.raises(SystemExit, match=expect):
        train.main(argv(model, toy, tmp_path / "r", "max_steps=5", "checkpoint_interval=2"))
    assert checkpoint(tmp_path / "r")["step"] == 2


@pytest.mark.parametrize("model", list(TINY))
def test_nan_policy_skip_skips_the_batch(model, toy, tmp_path, monkeypatch, capsys):
    mod = config.model_module(model)
    monkeypatch.setattr(mod.Model, "forward", mod.Model.forward)
    poison(mod, 2, "loss")
    result = train.main(argv(model, toy, tmp_path / "r", "max_steps=4", "nan_policy=skip"))
    assert result["step"] == 4 and "batch skipped" in capsys.readouterr().out
    assert all(torch.isfinite(v).all() for v in checkpoint(tmp_path / "r")["model"].values() if v.is_floating_point())
