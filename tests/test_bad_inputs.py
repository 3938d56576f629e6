"""Bad input to train.py, evaluate.py and solve.py through the real command line: every case is one
clear line on stderr starting "error: " and naming the key, value or file, exit code 2, no traceback,
and nothing written, moved or left behind.

Run: python -m pytest -q tests/test_bad_inputs.py     (CPU; about a minute on 2 cores: one process per case)
Checks against: a listing (path, size, mtime) of the test's own folder before and after; every command
runs inside it (its working directory), so default paths such as data/ and runs/ land there too.
One toy dataset and trained checkpoints are built once for the whole table; every case differs from a
working command in one thing.
"""
import concurrent.futures
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import data
import train

pytestmark = pytest.mark.slow  # the full tier (python -m pytest tests); see README

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where the scripts are
TINY = ["hidden_size=32", "num_heads=2", "L_layers=1", "H_cycles=1", "L_cycles=1", "halt_max_steps=2",
        "puzzle_emb_ndim=32", "puzzle_emb_len=1", "global_batch_size=16"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LOCK = threading.Lock()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy dataset, a trained run, and broken things around them."""
    root = tmp_path_factory.mktemp("bad")
    toy = data.build_toy(str(root / "toy"), num_train=128, num_test=32)
    train.main(["--model", "trm", "--out", str(root / "run"), "--config", f"data={toy}", *TINY, "max_steps=1",
                "eval_batches=1"])
    maze = data.build("maze_small", str(root / "maze"), num_train=16, num_test=16)  # not an ARC task
    train.main(["--model", "trm", "--out", str(root / "mazerun"), "--config", f"data={maze}", *TINY,
                "max_steps=1", "eval_batches=1"])
    (root / "tasks.json").write_text(json.dumps({"a": {"train": [{"input": [[1]], "output": [[2]]}],
                                                      "test": [{"input": [[3]]}]}}))
    blob = open(root / "run" / "checkpoint.pt", "rb").read()
    (root / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save({"model.inner.lm_head.weight": torch.zeros(2, 2)}, root / "reference.pt")
    data.build_toy(str(root / "wide"), num_train=64, num_test=16, seq_len=20, length=14)  # another seq_len
    shutil.copytree(toy, root / "notest")
    shutil.rmtree(root / "notest" / "test")
    shutil.copytree(toy, root / "badids")
    ids = np.load(root / "badids" / "train" / "all__puzzle_identifiers.npy")
    ids[0] = 999
    np.save(root / "badids" / "train" / "all__puzzle_identifiers.npy", ids)
    for name, old, new in (("vocab14", '"vocab_size": 12', '"vocab_size": 14'),  # another vocabulary
                           ("moreids", '"num_puzzle_identifiers": 9', '"num_puzzle_identifiers": 50')):  # no rows for these
        shutil.copytree(toy, root / name)
        for split in ("train", "test"):  # both splits, so the folder itself is consistent
            meta = root / name / split / "dataset.json"
            meta.write_text(meta.read_text().replace(old, new))
    for name, field, row, token in (("negative", "inputs", 0, -3), ("biglabel", "labels", 5, 99)):  # outside 0..11
        shutil.copytree(toy, root / name)
        f = root / name / "train" / f"all__{field}.npy"
        arr = np.load(f).astype(np.int32)
        arr[row, 0] = token
        np.save(f, arr)
    names = json.loads((root / "moreids" / "identifiers.json").read_text())
    (root / "moreids" / "identifiers.json").write_text(json.dumps(names + [f"extra{i}" for i in range(50 - len(names))]))
    ckpt = torch.load(root / "run" / "checkpoint.pt", weights_only=False)
    (root / "moved").mkdir()
    torch.save({**ckpt, "data_path": str(root / "gone")}, root / "moved" / "checkpoint.pt")
    (root / "afile").write_text("not a folder")
    (root / "empty").mkdir()
    (root / "locked").mkdir()
    os.chmod(root / "locked", stat.S_IRUSR | stat.S_IXUSR)
    yield root
    os.chmod(root / "locked", stat.S_IRWXU)


def cases(r):
    """(command line, what the one line must match). Paths are relative to the world folder `r`."""
    run, tiny = f"{r}/run", TINY
    ok = [f"data={r}/toy", *TINY, "max_steps=1"]  # a quick working run, had the bad key not been caught
    t = ["train.py", "--out", f"{r}/new"]
    ev = ["evaluate.py", "--checkpoint", run]
    table = [
        # config keys: names, types, ranges, choices
        (["train.py", "--model", "gpt"], "unknown model 'gpt'"),
        (t + ["--config", "lr_warmup=5"], "unknown config key 'lr_warmup'.*did you mean 'lr_warmup_steps'"),
        (t + ["--config", "H_cycles=three"], r"'H_cycles' for model 'trm' takes an int \(default 3\), got 'three'"),
        (t + ["--config", "hidden_size=32", "hidden_size=x"], r"takes an int \(default 512\)"),
        (t + ["--config", "H_cycles"], "--config takes key=value, got 'H_cycles'"),
        (t + ["--config", *ok, "global_batch_size=0"], "'global_batch_size' must be an integer >= 1, got 0"),
        (t + ["--config", *ok, "global_batch_size=-16"], "'global_batch_size' must be an integer >= 1, got -16"),
        (t + ["--config", *ok, "max_steps=-1"], "'max_steps' must be an integer >= 0, got -1"),
        (t + ["--config", *ok, "lr=-0.001"], "'lr' must be a finite number > 0, got -0.001"),
        (t + ["--config", *ok, "lr=1e999"], "'lr' must be a finite number > 0, got inf"),
        (t + ["--config", *ok, "puzzle_emb_lr=-1.0"], "'puzzle_emb_lr' must be a finite number >= 0"),
        (t + ["--config", *ok, "beta2=1.0"], r"'beta2' must be in \[0, 1\), got 1.0"),
        (t + ["--config", *ok, "ema_rate=1.5"], r"'ema_rate' must be in \[0, 1\)"),
        (t + ["--config", *ok, "lr_min_ratio=2.0"], r"'lr_min_ratio' must be in \[0, 1\]"),
        (t + ["--config", *ok, "log_interval=0"], "'log_interval' must be an integer >= 1, got 0"),
        (t + ["--config", *ok, "eval_interval=0"], "'eval_interval' must be an integer >= 1, got 0"),
        (t + ["--config", *ok, "eval_batch_size=-2"], "'eval_batch_size' must be an integer >= 0"),
        (t + ["--config", *ok, "seed=-1"], r"'seed' must be in \[0, 2\*\*32"),
        (t + ["--config", *ok, "seed=1099511627776"], r"'seed' must be in \[0, 2\*\*32.*got 1099511627776"),
        (t + ["--config", *ok, "nan_policy=maybe"], "'nan_policy' .*must be one of stop, skip, got 'maybe'"),
        (t + ["--config", *ok, "hidden_size=0"], "'hidden_size' for model 'trm' must be an integer >= 1, got 0"),
        (t + ["--config", *ok, "num_heads=3"], "'num_heads' for model 'trm' must be a divisor of hidden_size=32"),
        (t + ["--config", *ok, "hidden_size=36", "num_heads=4"], "'num_heads' .*even for RoPE"),
        (t + ["--config", *ok, "forward_dtype=fp32"], "'forward_dtype' .*one of auto, bfloat16, float32, got 'fp32'"),
        (t + ["--config", *ok, "pos_encodings=alibi"], "'pos_encodings' .*one of rope, learned, none, got 'alibi'"),
        (t + ["--config", *ok, "loss_type=crossentropy"], "'loss_type' .*one of stablemax, softmax"),
        (t + ["--config", *ok, "halt_exploration_prob=2.0"], r"'halt_exploration_prob' .*must be in \[0, 1\]"),
        (t + ["--model", "etrm", "--config", f"data={r}/toy", "max_steps=1", "encoder_type=bogus"],
         "'encoder_type' for model 'etrm' must be one of standard.*got 'bogus'"),
        (t + ["--model", "deep_recursive", "--config", f"data={r}/toy", "max_steps=1", "n_outer=0"],
         "'n_outer' for model 'deep_recursive' must be an integer >= 1"),
        (t + ["--model", "prr", "--config", f"data={r}/toy", "max_steps=1", "tau=-0.1"],
         "'tau' for model 'prr' must be a finite number > 0"),
        (t + ["--model", "prr", "--config", f"data={r}/toy", "max_steps=1", "tau=0"],
         "'tau' for model 'prr' must be a finite number > 0, got 0.0"),
        (t + ["--config", *ok, "expansion=0"], "'expansion' for model 'trm' must be a finite number > 0, got 0.0"),
        (t + ["--config", *ok, "vocab_size=5"], "'vocab_size' comes from the dataset: .*toy/train/dataset.json says 12, not 5"),
        # files and folders
        (["train.py", "--out", f"{r}/afile", "--config", *ok], "--out .*afile is a file"),
        (t + ["--config", f"data={r}/nothere"], "unknown dataset"),
        (t + ["--config", f"data={r}/notest", *tiny], "notest: no test/ split"),
        (t + ["--config", f"data={r}/badids", *tiny], "puzzle identifier 999"),
        (t + ["--config", f"data={r}/negative", *tiny], "negative/train/all__inputs.npy: token -3 outside 0..11"),
        (t + ["--config", f"data={r}/biglabel", *tiny], "biglabel/train/all__labels.npy: token 99 outside 0..11"),
        (["train.py", "--out", run, "--config", *ok], "--out .*run already holds a run; continue it with --resume"),
        (t + ["--config", *ok, "global_batch_size=100000", "epochs=1", "eval_interval=1"], "no full batch"),
        (t + ["--config", *ok, f"init_from={r}/missing.pt"], "no checkpoint at .*missing.pt"),
        (t + ["--config", *ok, f"init_from={r}/truncated.pt"], "truncated.pt is not a readable checkpoint"),
        (t + ["--config", *ok, f"init_from={r}/reference.pt"], "reference.pt is not a nanoTRM checkpoint"),
        (t + ["--config", f"data={r}/wide", f"init_from={run}/checkpoint.pt", *tiny],
         r"wide has seq_len=20, but .*run/checkpoint.pt was trained with seq_len=16"),
        (t + ["--config", f"data={r}/vocab14", f"init_from={run}/checkpoint.pt", *tiny],
         r"vocab14 has vocab_size=14, but .*run/checkpoint.pt was trained with vocab_size=12"),
        (["train.py"], r"dataset 'arc1' is about 6\.\d GB .*run `python data.py arc1 --out data/arc1` first"),
        # resume
        (["train.py", "--resume"], "--resume needs --out"),
        (["train.py", "--out", f"{r}/empty", "--resume"], "empty holds no checkpoint.pt and no config.json"),
        (["train.py", "--out", f"{r}/typo", "--resume"], "typo holds no checkpoint.pt and no config.json"),
        (["train.py", "--out", run, "--resume", "--config", "lr=5.0"], "cannot change lr"),
        (["train.py", "--model", "hrm", "--out", run, "--resume"], "checkpoint of model 'trm', not 'hrm'"),
        (["train.py", "--out", run, "--resume", "--config", "log_interval=0"], "'log_interval' must be an integer >= 1"),
        # evaluate.py
        (["evaluate.py", "--checkpoint", f"{r}/missing.pt"], "no checkpoint at .*missing.pt"),
        (["evaluate.py", "--checkpoint", f"{r}/empty"], "no checkpoint at .*empty/checkpoint.pt"),
        (["evaluate.py", "--checkpoint", f"{r}/truncated.pt"], "not a readable checkpoint"),
        (["evaluate.py", "--checkpoint", f"{r}/reference.pt"], "not a nanoTRM checkpoint"),
        (ev + ["--data", "nosuchset"], "unknown dataset 'nosuchset'"),
        (ev + ["--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
        (ev + ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (ev + ["--max-batches", "-1"], "--max-batches must be >= 0"),
        (ev + ["--out", f"{r}/afile"], "--out .*afile is a file"),
        (ev + ["--data", f"{r}/wide"], "wide has seq_len=20, but .* was trained with seq_len=16"),
        (ev + ["--data", f"{r}/vocab14"], "vocab14 has vocab_size=14, but .* was trained with vocab_size=12"),
        (ev + ["--data", f"{r}/moreids"], "moreids has 50 puzzle identifiers, but the puzzle-embedding table .* 9 rows"),
        (["evaluate.py", "--checkpoint", f"{r}/moved"], "was trained on .*gone, which is gone.*pass --data"),
        (ev + ["--show", "-2"], "--show must be >= 0, got -2"),
        (ev + ["--shwo", "2"], "unrecognized arguments: --shwo 2"),
        # solve.py: a checkpoint of a task that is not ARC
        (["solve.py", "--checkpoint", f"{run}/checkpoint.pt", "--tasks", f"{r}/tasks.json"],
         r"run/checkpoint.pt was trained on .*toy \(vocab_size=12, seq_len=16\), not on ARC tasks"),
        (["solve.py", "--checkpoint", f"{r}/mazerun/checkpoint.pt", "--tasks", f"{r}/tasks.json"],
         r"mazerun/checkpoint.pt was trained on .*maze \(vocab_size=6, seq_len=121\), not on ARC"),
        (["solve.py", "--checkpoint", f"{run}/checkpoint.pt", "--tasks", f"{r}/tasks.json", "--data",
          f"{r}/wide"], r"wide has seq_len=20, but .*run/checkpoint.pt was trained with seq_len=16"),
        (ev + ["--config", "hidden_size=64"], "--config hidden_size cannot change at evaluation"),
        (ev + ["--config", "halt_max_steps=0"], "'halt_max_steps' for model 'trm' must be an integer >= 1, got 0"),
        (ev + ["--config", "forward_dtype=fp8"], "'forward_dtype' .*one of auto, bfloat16, float32"),
        (ev + ["--config", "H_cycles=x"], r"'H_cycles' for model 'trm' takes an int \(default 3\)"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        table.append((["train.py", "--out", f"{r}/locked/run", "--config", *ok], "locked is not writable"))
    return table


def listing(folder):
    """Every file and folder under `folder`: path, size, mtime."""
    out = {}
    for d, subdirs, files in os.walk(folder):
        for name in subdirs + files:
            st = os.stat(os.path.join(d, name))
            out[os.path.join(d, name)] = (st.st_size, st.st_mtime_ns)
    return out


def run_case(args, expect, before, world):
    """One case; returns what went wrong, or None. Nothing on disk may differ from `before` (taken once for the
    whole table: no case may change anything, so two cases can run side by side)."""
    try:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, args[0]), *args[1:]], cwd=world, env=ENV,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return args, "still running after 120 s: the bad input was not caught"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if proc.returncode != 2 or "Traceback" in proc.stderr or len(errors) != 1 or lines[-1] != errors[0] \
            or not re.search(expect, errors[0]):
        return args, proc.returncode, proc.stderr[-800:]
    with LOCK:
        after = listing(world)
        if after != before:  # reported once: the new state is the baseline of the cases after it
            changed = sorted(set(after.items()) ^ set(before.items()))
            before.clear()
            before.update(after)
            return args, "changed on disk (this case or the one beside it):", changed
    return None


def test_bad_inputs_fail_cleanly(world):
    table = cases(world)
    assert len(table) >= 40
    before = listing(world)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # each case is mostly the start-up of torch
        failures = [f for f in pool.map(lambda case: run_case(*case, before, world), table) if f]
    assert not failures, "\n\n".join(map(str, failures))
