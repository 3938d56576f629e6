"""train.py tests: a tiny TRM that learns, exact resume, config errors and checks, per-model recipes,
AdamATan2, the schedule, the NaN guard, and the edges of a run folder (resume, disk full, world size).

Run: python -m pytest -q tests/test_train.py   (CPU; about a minute on 2 cores)
Checks against: the AdamATan2 update written out (Everett et al. 2024, a = b = 1); an uninterrupted run (for
resume); the files on disk before and after a failure. 2-process DDP is in tests/test_faults.py.
"""
import errno
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import checkpoint
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


@pytest.mark.slow
def test_tiny_trm_learns_toy_task(toy, tmp_path):
    result = run(toy, tmp_path / "run", "max_steps=400", "log_interval=50")
    train_rows = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    assert result["exact_accuracy"] >= 0.9, result
    assert os.path.exists(tmp_path / "run" / "curves.png") and os.path.exists(tmp_path / "run" / "config.json")


@pytest.mark.slow
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
        checkpoint.read_checkpoint(str(tmp_path / "r" / "checkpoint.pt"), "prr")
    with pytest.raises(SystemExit, match="cannot change lr"):
        train.main(["--model", "trm", "--out", str(tmp_path / "r"), "--resume", "--config", "lr=0.5"])
    cfg = config.model_module("trm").Config(hidden_size=32)
    with pytest.raises(SystemExit, match="hidden_size=64 .this run: 32."):
        checkpoint.read_checkpoint(str(tmp_path / "r" / "checkpoint.pt"), "trm", cfg)


def test_config_errors_name_key_and_value():
    with pytest.raises(SystemExit, match="unknown config key 'lr_warmup' for model 'trm'; did you mean 'lr_warmup_steps'"):
        train.main(["--model", "trm", "--config", "lr_warmup=5"])
    with pytest.raises(SystemExit, match="'H_cycles' for model 'trm' takes an int .default 3., got 'three'"):
        train.main(["--model", "trm", "--config", "H_cycles=three"])
    # the default shown is the dataclass's, not the value an earlier pair set
    with pytest.raises(SystemExit, match="'hidden_size' for model 'trm' takes an int .default 512., got 'x'"):
        train.main(["--model", "trm", "--config", "hidden_size=32", "hidden_size=x"])
    with pytest.raises(SystemExit, match="unknown model 'gpt'"):
        train.main(["--model", "gpt"])


def test_help_lists_models_datasets_and_keys(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
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


def listing(folder):
    return {p: os.stat(p).st_mtime_ns for p in map(str, pathlib.Path(folder).rglob("*"))}


def test_model_recipe_applied_unless_the_user_sets_the_key(monkeypatch):
    import trm
    monkeypatch.setattr(trm, "TRAIN_DEFAULTS", {"grad_clip": 1.0, "ema_rate": 0.99}, raising=False)
    resolve = lambda *a: checkpoint.resolve_configs(train.parse_args(["--model", "trm", *a]), train.TrainConfig,
                                                train.RESUMABLE_KEYS)[2]
    assert (resolve().grad_clip, resolve().ema_rate) == (1.0, 0.99)
    assert resolve("--config", "grad_clip=0.5").grad_clip == 0.5 and train.TrainConfig().grad_clip == 0.0
    assert "training defaults of --model trm (its recipe; --config overrides): grad_clip=1.0 ema_rate=0.99" in \
        config.help_text(train.TrainConfig, data.DATASETS)
    monkeypatch.setattr(trm, "TRAIN_DEFAULTS", {"gradclip": 1.0}, raising=False)
    with pytest.raises(SystemExit, match="trm.TRAIN_DEFAULTS sets gradclip=1.0, not a training key"):
        resolve()


def test_resume_refuses_a_folder_with_no_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "typo"):
        with pytest.raises(SystemExit, match="holds no checkpoint.pt and no config.json"):
            train.main(["--out", str(out), "--resume"])
    assert os.listdir(tmp_path) == ["empty"] and not os.listdir(tmp_path / "empty")


def test_resume_of_a_finished_run_says_so_and_writes_nothing(toy, tmp_path, capsys):
    run(toy, tmp_path / "r", "max_steps=2", "eval_batches=1")
    before = listing(tmp_path)
    result = train.main(["--out", str(tmp_path / "r"), "--resume"])
    assert result["finished"] and "is finished (step 2 of 2)" in capsys.readouterr().out
    assert listing(tmp_path) == before


def test_torn_metrics_line_and_world_size_change(toy, tmp_path):
    out = tmp_path / "r"
    run(toy, out, "max_steps=2", "eval_batches=1", "log_interval=1")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a kill in the middle of a line
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    torch.save({**ckpt, "world_size": 2}, out / "other.pt")
    os.replace(out / "other.pt", out / "checkpoint.pt")
    before = listing(tmp_path)
    with pytest.raises(SystemExit, match=r"trained by 2 process\(es\); resume it with the same number .*not 1"):
        train.main(["--out", str(out), "--resume", "--config", "max_steps=3"])
    assert listing(tmp_path) == before  # refused before any file was touched
    torch.save(ckpt, out / "checkpoint.pt")
    train.main(["--out", str(out), "--resume", "--config", "max_steps=3"])
    assert [r["step"] for r in rows(out) if "loss" in r] == [1, 2, 3]


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(toy, tmp_path, monkeypatch):
    out = tmp_path / "r"
    run(toy, out, "max_steps=2", "eval_batches=1")
    names = sorted(os.listdir(out))
    save = torch.save

    def full_disk(obj, path, *a, **k):
        if "checkpoint.pt" in str(path):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, path, *a, **k)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit, match=r"could not write .*checkpoint.pt \(No space left on device\); the previous"):
        train.main(["--out", str(out), "--resume", "--config", "max_steps=4"])
    assert sorted(os.listdir(out)) == names  # no temporary file, no state of the failed step
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


def test_config_checked_before_anything_is_written(tmp_path):
    cases = [("lr=-0.001", "'lr' must be a finite number > 0"), ("num_heads=3", "'num_heads' for model 'trm' must be"),
             ("forward_dtype=fp32", "one of auto, bfloat16, float32"), ("eval_interval=0", "'eval_interval' must be")]
    for pair, expect in cases:
        with pytest.raises(SystemExit, match=expect):
            train.main(["--out", str(tmp_path / "r"), "--config", "data=nowhere", pair])
    assert not os.listdir(tmp_path)


def test_an_in_process_run_leaves_no_signal_handler_behind(toy, tmp_path):
    """train.main() catches Ctrl-C / SIGTERM only while it trains: afterwards the caller's handlers are back
    (a handler left behind made the SIGTERM of a later multiprocessing pool's terminate() a no-op: a hang)."""
    import signal
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    run(toy, tmp_path / "r", "max_steps=2")
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_progress_rows_average_over_the_samples_that_halted(toy, tmp_path, capsys):
    """A progress row covers every step since the previous one: losses per sample over those steps, the
    other metrics over the samples that halted in them, and `-` (null) when none did (here step 1: the Q
    head starts far below halting, so every sample runs both of its ACT steps)."""
    keys = ("max_steps=6", "halt_exploration_prob=0.0", "eval_batches=1")
    run(toy, tmp_path / "one", "log_interval=1", *keys)
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("step 1/6"))
    assert "| acc - exact - |" in first, first
    run(toy, tmp_path / "three", "log_interval=3", *keys)
    one = [r for r in rows(tmp_path / "one") if "loss" in r]
    three = [r for r in rows(tmp_path / "three") if "loss" in r]
    assert one[0]["count"] == 0 and one[0]["accuracy"] is None
    assert [r["step"] for r in three] == [3, 6]
    for r in three:
        part = one[r["step"] - 3:r["step"]]
        count = sum(p["count"] for p in part)
        assert r["count"] == count > 0
        assert math.isclose(r["loss"], sum(p["loss"] for p in part) / 3, rel_tol=1e-6)
        for k in ("accuracy", "exact_accuracy", "lm_loss"):
            expect = (sum(p[k] for p in part) / 3 if k.endswith("loss") else
                      sum(p[k] * p["count"] for p in part if p["count"]) / count)
            assert math.isclose(r[k], expect, rel_tol=1e-6), (k, r, part)


def test_a_batch_too_big_for_memory_is_refused_in_one_line(toy, tmp_path):
    """Through the command line, under a 3 GB address-space limit: the activations of a step, measured on
    1 and 2 samples, refuse the batch before it is allocated; exit code 2, no run folder."""
    import resource
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # noqa: E731
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--out", str(tmp_path / "r"),
                           "--config", f"data={toy}", *TINY, "global_batch_size=100000"], cwd=tmp_path,
                          preexec_fn=limit, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: config key 'global_batch_size' = 100000 does not fit in memory")
    assert os.listdir(tmp_path) == []


def test_the_allocator_failing_at_a_step_is_one_line(toy, tmp_path, monkeypatch):
    import trm
    monkeypatch.setattr(train, "check_memory", lambda *a: None)  # as if the estimate had missed

    def no_room(self, carry, batch):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(trm.Model, "forward", no_room)
    with pytest.raises(SystemExit, match=r"^error: config key 'global_batch_size' = 32 \(step 1\) does not "
                                         r"fit in memory \(\[enforce fail"):
        run(toy, tmp_path / "r", "max_steps=2")
    assert not os.path.exists(tmp_path / "r")
    def broken(self, carry, batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(trm.Model, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes cannot"):  # not dressed up as memory
        run(toy, tmp_path / "r", "max_steps=2")


def test_compile_on_a_cpu_only_for_runs_long_enough_and_threads_in_the_header(toy, tmp_path, capsys):
    cpu, cuda, model = torch.device("cpu"), torch.device("cuda"), torch.nn.Linear(2, 2)
    cfg = train.TrainConfig()
    assert train.compiled(model, cfg, cpu, train.CPU_COMPILE_STEPS - 1) is None
    assert train.compiled(model, cfg, cpu, train.CPU_COMPILE_STEPS) is not None  # lazy: no compile yet
    assert train.compiled(model, cfg, cuda, 1) is not None
    assert train.compiled(model, train.TrainConfig(compile=False), cuda, 10 ** 9) is None
    run(toy, tmp_path / "r", "max_steps=1", "eval_batches=1", "threads=1")
    assert "1 process(es) on cpu, 1 thread(s)\n" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="'threads' must be an integer >= 0, got -1"):
        run(toy, tmp_path / "s", "threads=-1")
