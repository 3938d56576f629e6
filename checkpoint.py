"""checkpoint.py — checkpoint files (atomic writes, checked reads, RNG state) and a training run's
folder: its configs on --resume, config.json, metrics.jsonl, checkpoint.pt and the per-rank states.

A run folder holds `config.json`, `metrics.jsonl`, `curves.png`, `checkpoint.pt` (weights,
optimiser, EMA, step, the step last evaluated, configs) and each rank's `rank<r>.step<N>.pt` (ACT
carry, RNG, data position), so `--resume` continues the same run. Every fault is one line starting
"error: " naming the file.
"""
import dataclasses
import json
import os
import random
import re

import numpy as np
import torch
import torch.distributed as dist

from config import apply_overrides, config_from, model_module, runtime_keys, train_defaults, MODELS


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


# --------------------------------------------------------------------------------------------------
# Files

def atomic_save(obj, path):
    """Write to a temporary file in the same folder, then rename: a reader sees the old file or the
    new one. A failed write (disk full, no permission) removes its temporary file; the old one
    stays."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        if os.path.exists(tmp):
            os.remove(tmp)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise SystemExit(f"error: could not write {path} ({reason[:200]}); the previous checkpoint "
                         "there is intact")


def load_file(path):
    if not os.path.exists(path):
        raise SystemExit(f"error: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file at all
        raise SystemExit(f"error: {path} is not a readable checkpoint (truncated or corrupt: "
                         f"{type(e).__name__})")


def check_config(theirs, ours, path, model_name):
    allowed = runtime_keys(model_name)
    bad = [k for k in ours if k not in allowed and k in theirs and theirs[k] != ours[k]]
    if bad:
        raise SystemExit(f"error: {path} was trained with a different {model_name} config: "
                         + ", ".join(f"{k}={theirs[k]!r} (this run: {ours[k]!r})" for k in bad))


def read_checkpoint(path, model_name=None, model_cfg=None):
    """A checkpoint written by train.py, checked: a nanoTRM file, of `model_name` (any model when
    None), trained with a config `model_cfg` can use. A run folder stands for its checkpoint.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise SystemExit(f"error: {path} is not a nanoTRM checkpoint (reference TRM weights load "
                         "through trm.convert_reference_state_dict)")
    if ckpt["model_name"] not in MODELS:
        raise SystemExit(f"error: {path} is a checkpoint of unknown model {ckpt['model_name']!r}")
    if model_name is not None and ckpt["model_name"] != model_name:
        raise SystemExit(f"error: {path} is a checkpoint of model {ckpt['model_name']!r}, "
                         f"not {model_name!r}")
    if model_cfg is not None:
        check_config(ckpt["model_config"], dataclasses.asdict(model_cfg), path, model_name)
    return ckpt


def load_weights(model, state, path):
    """load_state_dict, resizing puzzle-embedding tables to this dataset the reference's way (mean
    row)."""
    own = model.state_dict()
    for key, value in list(state.items()):
        if key.endswith("puzzle_emb.weights") and key in own and value.shape != own[key].shape:
            print0(f"{path}: puzzle-embedding table {tuple(value.shape)} -> "
                   f"{tuple(own[key].shape)}, filled with the mean row")
            state[key] = value.mean(0, keepdim=True).expand_as(own[key]).clone()
    model.load_state_dict(state)


def to_device(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj)})
    return obj


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def restore_rng(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


# --------------------------------------------------------------------------------------------------
# A training run's configs and folder

def saved_run(out, model):
    """--resume: the folder's checkpoint, else its config.json (a run killed before its first
    checkpoint) -> (model name, train config dict, model config dict, checkpoint or None)."""
    cpath, jpath = os.path.join(out, "checkpoint.pt"), os.path.join(out, "config.json")
    if os.path.exists(cpath):
        ckpt = read_checkpoint(cpath, model)
        return ckpt["model_name"], ckpt["train_config"], ckpt["model_config"], ckpt
    if not os.path.exists(jpath):
        raise SystemExit(f"error: --resume: {out} holds no checkpoint.pt and no config.json, so "
                         "there is no run to continue (check --out; drop --resume to start a new "
                         "run)")
    try:
        saved = json.load(open(jpath))
        name, tcfg, mcfg = saved["model"], saved["train"], saved["model_config"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit(f"error: --resume: {jpath} is not a config.json written by train.py")
    if model and model != name:
        raise SystemExit(f"error: --resume: {out} is a run of model {name!r}, not {model!r}")
    return name, tcfg, mcfg, None


def resolve_configs(args, train_cls, resumable):
    """train.py's configs: defaults < the model's recipe < --config; on --resume the run folder's
    own, of which only the `resumable` keys may change -> (name, module, train config, model config,
    checkpoint, out)."""
    if args.resume and not args.out:
        raise SystemExit("error: --resume needs --out <run folder>")
    if not args.resume:
        name = args.model or "trm"
        mod = model_module(name)
        tcfg, mcfg = train_cls(**train_defaults(mod, name, train_cls)), mod.Config()
        apply_overrides(args.config, tcfg, mcfg, name)
        data_name = os.path.basename(os.path.normpath(tcfg.data))
        out = args.out or os.path.join("runs", f"{name}-{data_name}")
        return name, mod, tcfg, mcfg, None, out
    name, saved_train, saved_model, ckpt = saved_run(args.out, args.model)
    mod = model_module(name)
    tcfg, mcfg = config_from(train_cls, saved_train), config_from(mod.Config, saved_model)
    before = dataclasses.asdict(tcfg) | dataclasses.asdict(mcfg)
    changed = apply_overrides(args.config, tcfg, mcfg, name)
    fixed = [k for k, v in changed.items() if k not in resumable and before[k] != v]
    if fixed:
        raise SystemExit(f"error: --resume continues the run in {args.out}; it cannot change "
                         f"{', '.join(fixed)} (only {', '.join(sorted(resumable))})")
    return name, mod, tcfg, mcfg, ckpt, args.out


def check_out_dir(out):
    """An output folder must be a folder we can write, or creatable: fail at start, not at the first
    write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"error: --out {out} is a file, not a folder")
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out {out}: {parent} is not writable")


def check_run_folder(out, ckpt, resuming, world):
    """A new run never goes into a folder holding one; a resumed one runs on as many processes as
    saved it (each rank's carry and data position were saved by one process each)."""
    check_out_dir(out)
    if not resuming and any(os.path.exists(os.path.join(out, f)) for f in ("checkpoint.pt",
                                                                            "config.json")):
        raise SystemExit(f"error: --out {out} already holds a run; continue it with --resume, or "
                         "choose another --out (nothing there is overwritten)")
    if ckpt is None:
        return
    saved = ckpt.get("world_size") or len([f for f in os.listdir(out)
                                           if re.fullmatch(rf"rank\d+\.step{ckpt['step']}\.pt", f)])
    if saved != world:
        raise SystemExit(f"error: {out} was trained by {saved} process(es); resume it with the "
                         f"same number (torchrun --nproc_per_node={saved} train.py --out {out} "
                         f"--resume), not {world}")


def run_record(run):
    """What config.json and checkpoint.pt say about a run (train.py's `run`): model, data,
    configs."""
    return {"model": run.name, "data_path": run.path, "train": dataclasses.asdict(run.tcfg),
            "model_config": dataclasses.asdict(run.mcfg)}


def open_run_folder(run, step):
    """config.json, and metrics.jsonl cut back to the checkpoint's step (a crash leaves no trace)
    -> the metrics file, open for appending."""
    out = run.out
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json.tmp"), "w") as f:
            json.dump(run_record(run), f, indent=2)
        os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))
        path = os.path.join(out, "metrics.jsonl")
        keep = [r for r in read_metrics(path) if r["step"] <= step] if run.resuming else []
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(path + ".tmp", path)
        return open(path, "a")
    except OSError as e:
        raise SystemExit(f"error: cannot write the run folder {out}: {e.strerror} ({e.filename})")


def read_metrics(path):
    """The rows of a metrics.jsonl; a line cut short by a kill mid-write is dropped, not an
    error."""
    rows = []
    for line in open(path) if os.path.exists(path) else ():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


# --------------------------------------------------------------------------------------------------
# Checkpoints of a training run

def save_checkpoint(s, run):
    """This step's per-rank state first, then the checkpoint that points at it, then drop older
    states."""
    out, rank, world, mine = run.out, run.rank, run.world, f"rank{run.rank}.step{s.step}.pt"
    os.makedirs(out, exist_ok=True)  # another rank may not have created it yet
    atomic_save({"loader": s.loader.state_dict(), "carry": to_device(s.carry, "cpu"),
                 "rng": rng_state()}, os.path.join(out, mine))
    if world > 1:
        dist.barrier()
    try:
        if rank == 0:
            rec = run_record(run)
            atomic_save({"model_name": rec["model"], "model": s.model.state_dict(),
                         "optimizer": s.adam.state_dict(), "ema": s.ema, "step": s.step,
                         "evaluated": s.evaluated, "world_size": world,
                         "train_config": rec["train"], "model_config": rec["model_config"],
                         "data_path": rec["data_path"]}, os.path.join(out, "checkpoint.pt"))
    except SystemExit:  # the old checkpoint stays, and so must the states it points at
        os.remove(os.path.join(out, mine))
        raise
    if world > 1:
        dist.barrier()
    for f in os.listdir(out):  # older states, and temporary files of writes a kill interrupted
        if f != mine and (f.startswith(f"rank{rank}.step")
                          or (rank == 0 and f.startswith("checkpoint.pt.tmp"))):
            os.remove(os.path.join(out, f))


def restore(s, ckpt, out, rank, device):
    load_weights(s.model, ckpt["model"], out)
    s.adam.load_state_dict(ckpt["optimizer"])
    s.step, s.ema = ckpt["step"], ckpt.get("ema")
    s.evaluated = ckpt.get("evaluated", s.step)
    state = load_file(os.path.join(out, f"rank{rank}.step{s.step}.pt"))
    s.loader.load_state_dict(state["loader"])
    s.resumed_batches = state["loader"]["batch_index"]
    s.carry = to_device(state["carry"], device)
    restore_rng(state["rng"])
