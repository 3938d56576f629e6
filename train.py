"""train.py — one training loop for every nanoTRM model (the reference's pretrain.py, without hydra/wandb).

    python train.py --help                                   # models, datasets, every config key
    python train.py --model trm --config data=toy            # CPU, a few minutes
    python train.py --model trm --config data=arc1 lr=1e-4   # the paper's ARC-AGI-1 run (GPU)
    torchrun --standalone --nproc_per_node=8 train.py --model trm --config data=arc1
    python train.py --resume --out runs/trm-toy              # continue the same run (its saved config)

Top to bottom: the training config and its checks, checkpoints, the setup, one optimisation step, then the
loop (`train`). It never branches on a model's name (the model protocol is in trm.py's docstring); a model
file may carry `TRAIN_DEFAULTS`, its recipe, applied over the defaults below unless --config sets the key.
Optimisation (optim.py; TRM paper, section 4): AdamATan2 for the weights, sign-SGD for the sparse puzzle
embeddings, warm-up then cosine, optional EMA (evaluated), gradient clipping, torch.compile (CUDA only).
Distributed: torchrun's environment (nccl on CUDA, gloo on CPU); parameters broadcast from rank 0;
gradients summed in ONE all-reduce over one flat buffer. Rank 0 logs and writes checkpoints.
The run folder holds `config.json`, `metrics.jsonl`, `curves.png` and, written atomically at every
evaluation and every checkpoint_interval steps, `checkpoint.pt` (weights, optimiser, EMA, step, configs)
plus each rank's `rank<r>.step<N>.pt` (ACT carry, RNG, data position), so `--resume` continues the same
run: the next step's loss is the one an uninterrupted run would have computed. Ctrl-C (or SIGTERM) finishes
the current step, writes a checkpoint and prints how to resume.
"""
import argparse
import collections
import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

import cli
import data
import evaluate
from config import (MODELS, atomic_save, build_model, check, check_config, check_out_dir, help_text,
                    load_file, load_weights, print0, read_checkpoint, resolve_configs, restore_rng,
                    rng_state, to_device)
from optim import AdamATan2, allreduce_flat, lr_at, non_finite, setup_distributed, sign_sgd_update, sparse_embeddings


@dataclasses.dataclass
class TrainConfig:
    data: "str" = "arc1"                    # dataset name (data.DATASETS) or a built dataset folder
    data_root: "str" = "data"               # where named datasets are built
    global_batch_size: "int >= 1" = 768     # summed over ranks
    epochs: "int >= 1" = 100000             # one epoch = one random version of every group
    eval_interval: "int >= 1" = 10000       # epochs between evaluations (and checkpoints)
    max_steps: "int >= 0" = 0               # stop after this many steps (0 = all); same schedule
    lr: "float > 0" = 1e-4                  # AdamATan2 learning rate
    lr_min_ratio: "float in [0, 1]" = 1.0   # cosine floor as a fraction of lr (1.0 = constant)
    lr_warmup_steps: "int >= 0" = 2000      # linear warm-up from 0 to lr (both optimisers)
    weight_decay: "float >= 0" = 0.1        # decoupled, AdamATan2: p <- p (1 - lr wd)
    beta1: "float in [0, 1)" = 0.9          # AdamATan2 first-moment rate
    beta2: "float in [0, 1)" = 0.95         # AdamATan2 second-moment rate
    puzzle_emb_lr: "float >= 0" = 1e-2      # sign-SGD learning rate of the puzzle embeddings
    puzzle_emb_weight_decay: "float >= 0" = 0.1  # decoupled, the batch's rows only (lazy)
    ema: "bool" = True                      # evaluate an exponential moving average of the weights
    ema_rate: "float in [0, 1)" = 0.999     # mu: shadow <- (1 - mu) p + mu shadow
    grad_clip: "float >= 0" = 0.0           # max global grad norm (0 = off)
    compile: "bool" = True                  # torch.compile the model (CUDA only; ignored on CPU)
    seed: "int in [0, 2**32 - 2**16)" = 0   # init and data order; rank r seeds numpy with seed + r
    log_interval: "int >= 1" = 10           # steps between progress lines
    eval_batches: "int >= 0" = 0            # cap on evaluation batches (0 = the whole test split)
    eval_batch_size: "int >= 0" = 0         # global evaluation batch (0 = global_batch_size)
    init_from: "str" = ""                   # start from these weights (same model's checkpoint)
    checkpoint_interval: "int >= 0" = 0     # steps between extra checkpoints (0 = none)
    nan_policy: "str in stop|skip" = "stop"  # non-finite loss or gradient: stop, or skip the batch

    split_over_ranks = ("global_batch_size", "eval_batch_size")  # each rank takes an equal share


# Keys that may change on --resume without changing the run being continued.
RESUMABLE_KEYS = {"max_steps", "log_interval", "eval_batches", "eval_batch_size", "compile", "data_root",
                  "checkpoint_interval", "nan_policy"}


# ----------------------------------------------------------------------------------------------------
# Checkpoints: atomic, model-named, resumable

@dataclasses.dataclass
class State:
    """What a checkpoint restores: weights, optimiser, EMA and step; per rank the carry, RNG and data position."""
    model: torch.nn.Module
    adam: AdamATan2
    loader: data.PuzzleDataset
    ema: dict = None
    carry: object = None
    step: int = 0


def save_checkpoint(s, run, rank, world):
    """This step's per-rank state first, then the checkpoint that points at it, then drop older states."""
    out, mine = run["out"], f"rank{rank}.step{s.step}.pt"
    os.makedirs(out, exist_ok=True)  # another rank may not have created it yet
    atomic_save({"loader": s.loader.state_dict(), "carry": to_device(s.carry, "cpu"), "rng": rng_state()},
                os.path.join(out, mine))
    if world > 1:
        dist.barrier()
    try:
        if rank == 0:
            atomic_save({"model_name": run["model"], "model": s.model.state_dict(), "optimizer": s.adam.state_dict(),
                         "ema": s.ema, "step": s.step, "world_size": world, "train_config": run["train"],
                         "model_config": run["model_config"], "data_path": run["data_path"]},
                        os.path.join(out, "checkpoint.pt"))
    except SystemExit:  # the old checkpoint stays, and so must the states it points at; this step's goes
        os.remove(os.path.join(out, mine))
        raise
    if world > 1:
        dist.barrier()
    for f in os.listdir(out):  # older states, and temporary files of writes a kill interrupted
        if f != mine and (f.startswith(f"rank{rank}.step") or (rank == 0 and f.startswith("checkpoint.pt.tmp"))):
            os.remove(os.path.join(out, f))


def restore(s, ckpt, out, rank, device):
    load_weights(s.model, ckpt["model"], out)
    s.adam.load_state_dict(ckpt["optimizer"])
    s.step, s.ema = ckpt["step"], ckpt.get("ema")
    state = load_file(os.path.join(out, f"rank{rank}.step{s.step}.pt"))
    s.loader.load_state_dict(state["loader"])
    s.carry = to_device(state["carry"], device)
    restore_rng(state["rng"])


# ----------------------------------------------------------------------------------------------------
# Setup: configs (defaults < model recipe < --config, or the run folder's own), checks, dataset, folder

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=help_text(TrainConfig, data.DATASETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model to train: " + ", ".join(MODELS) + " (default trm, or the "
                   "run folder's model with --resume)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL", help="override config keys (see below)")
    p.add_argument("--out", default="", help="run folder (default runs/<model>-<data>); one that holds a run needs --resume")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the config saved there")
    return p.parse_args(argv)


def check_resume_world(out, ckpt, world):
    """Each rank's carry and data position were saved by one process each: the same count must resume them."""
    if ckpt is None:
        return
    saved = ckpt.get("world_size") or len([f for f in os.listdir(out) if re.fullmatch(rf"rank\d+\.step{ckpt['step']}\.pt", f)])
    if saved != world:
        raise SystemExit(f"error: {out} was trained by {saved} process(es); resume it with the same number "
                         f"(torchrun --nproc_per_node={saved} train.py --out {out} --resume), not {world}")


def open_dataset(tcfg, mcfg, rank, world, user_keys=()):
    """Build the dataset if missing (rank 0), read its metadata, fill the model's data-determined keys (a value the
    user set for one of them must agree with the dataset: it would otherwise be silently replaced)."""
    try:
        path = data.ensure_dataset(tcfg.data, root=tcfg.data_root) if rank == 0 else None
        if world > 1:
            box = [path]
            dist.broadcast_object_list(box)
            path = box[0]
        meta = data.load_metadata(path, "train")
        data.load_metadata(path, "test")  # the evaluation at the end of every data iteration needs it
    except (ValueError, OSError) as e:  # data.DataError included: one line naming the file and the fault
        raise SystemExit(f"error: {e}")
    for key in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
        if hasattr(mcfg, key):
            if key in user_keys and getattr(mcfg, key) != meta[key]:
                raise SystemExit(f"error: config key {key!r} comes from the dataset: {path}/train/dataset.json says "
                                 f"{meta[key]}, not {getattr(mcfg, key)}; leave it out of --config")
            setattr(mcfg, key, meta[key])
    return path, meta


def open_run_folder(out, run, step, resuming):
    """config.json, and metrics.jsonl cut back to the checkpoint's step (a crash leaves no trace)."""
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json.tmp"), "w") as f:
            json.dump({k: run[k] for k in ("model", "data_path", "train", "model_config")}, f, indent=2)
        os.replace(os.path.join(out, "config.json.tmp"), os.path.join(out, "config.json"))
        path = os.path.join(out, "metrics.jsonl")
        keep = [r for r in evaluate.read_metrics(path) if r["step"] <= step] if resuming else []
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(path + ".tmp", path)
        return open(path, "a")
    except OSError as e:
        raise SystemExit(f"error: cannot write the run folder {out}: {e.strerror} ({e.filename})")


# ----------------------------------------------------------------------------------------------------
# One optimisation step, one evaluation, and the loop

STOP = {"signal": 0}  # set by Ctrl-C / SIGTERM: the loop finishes its step, writes a checkpoint and exits


def request_stop(signum, frame):
    STOP["signal"] = signum
    signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C quits at once, without a checkpoint
    print0(f"\n{signal.Signals(signum).name}: finishing this step, then a checkpoint (again: quit now)", file=sys.stderr)


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C / SIGTERM ask the loop to stop after its step. The caller's handlers come back afterwards, so a
    train.main() called in-process (a test, a notebook, experiments/) leaves no handler behind; a process forked
    later (a multiprocessing pool) would otherwise ignore SIGTERM."""
    STOP["signal"] = 0
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_step(s, batch, run_model, tcfg, world, total_steps, out):
    """Forward, backward, all-reduce, finiteness check, update. Returns (stats summed over ranks, seconds in
    communication); stats is None when nan_policy=skip dropped the batch."""
    gbs, model, embs = tcfg.global_batch_size, s.model, sparse_embeddings(s.model)
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    if s.carry is None:
        s.carry = model.initial_carry(batch)
    s.carry, loss, metrics, _ = run_model(s.carry, batch, loss_scale=1.0 / gbs)
    (loss / gbs).backward()
    t0 = time.time()
    if world > 1:  # unused parameters get zero grads so every rank's flat buffer lines up
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        allreduce_flat([p.grad for p in model.parameters()])
    # a model may report its whole objective as total_loss itself; `interrupt` lets every rank stop together
    metrics = {"total_loss": loss.detach(), **metrics, "interrupt": loss.new_tensor(float(STOP["signal"] > 0))}
    names = sorted(metrics)
    stats = torch.stack([metrics[k].detach().float() for k in names])
    if world > 1:
        dist.all_reduce(stats)
    stats, comm = dict(zip(names, stats.tolist())), time.time() - t0
    fault = non_finite(model, embs, stats)
    if fault:
        where = f"non-finite {fault} at step {s.step + 1}"
        if tcfg.nan_policy == "stop":
            raise SystemExit(f"error: {where}; the weights were not updated and the last checkpoint in {out} (if any) "
                             "is untouched (nan_policy=skip skips such batches). Lower lr or check the data.")
        print0(f"warning: {where}; batch skipped (nan_policy=skip), carry reset")
        s.adam.zero_grad(set_to_none=True)
        for e in embs:
            e.local_weights.grad = None  # keep the leaf: a new one would break a compiled step's graph
        s.carry = None
        return None, comm
    if tcfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    s.step += 1
    stats["lr"] = lr = lr_at(s.step, tcfg.lr, tcfg, total_steps)
    for g in s.adam.param_groups:
        g["lr"] = lr
    s.adam.step()
    s.adam.zero_grad(set_to_none=True)
    t0 = time.time()
    for emb in embs:
        sign_sgd_update(emb, lr_at(s.step, tcfg.puzzle_emb_lr, tcfg, total_steps), tcfg.puzzle_emb_weight_decay, world)
    if s.ema is not None:
        with torch.no_grad():
            for k, p in model.named_parameters():
                s.ema[k].lerp_(p.detach(), 1 - tcfg.ema_rate)
    return stats, comm + time.time() - t0


def summarize(stats, gbs):
    """Per-sample metrics / count; losses / global batch (the reference's reporting)."""
    count = max(stats.get("count", 0.0), 1.0)
    row = {k: (v / gbs if k.endswith("_loss") else v / count) for k, v in stats.items()
           if k not in ("count", "lr", "interrupt")}
    row["loss"] = row.pop("total_loss")
    row["count"], row["lr"] = stats.get("count", 0.0), stats["lr"]
    return row


def train(args):
    name, mod, tcfg, mcfg, ckpt, out = resolve_configs(args, TrainConfig, RESUMABLE_KEYS)
    rank, world, device = setup_distributed()
    check(tcfg, world=world)
    check_resume_world(out, ckpt, world)
    check(mcfg, name)
    check_out_dir(out)
    if not args.resume and any(os.path.exists(os.path.join(out, f)) for f in ("checkpoint.pt", "config.json")):
        raise SystemExit(f"error: --out {out} already holds a run; continue it with --resume, or choose another --out "
                         "(nothing there is overwritten)")
    path, meta = open_dataset(tcfg, mcfg, rank, world, {pair.split("=", 1)[0] for pair in args.config or []})
    if ckpt is not None:  # e.g. a data folder of another vocabulary or sequence length
        check_config(ckpt["model_config"], dataclasses.asdict(mcfg), os.path.join(out, "checkpoint.pt"), name)
    init = read_checkpoint(tcfg.init_from, name) if tcfg.init_from and ckpt is None else None
    if init is not None:  # its vocabulary and canvas must fit this dataset, the rest this config
        try:
            data.check_fit(init["model_config"], meta, tcfg.init_from, path)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        check_config(init["model_config"], dataclasses.asdict(mcfg), tcfg.init_from, name)
    torch.manual_seed(tcfg.seed)  # identical init on every rank; the broadcast below makes sure
    model = build_model(mod, mcfg, name).to(device)
    try:
        loader = data.PuzzleDataset(path, "train", tcfg.global_batch_size, rank=rank, world_size=world, seed=tcfg.seed,
                                    epochs_per_iter=min(tcfg.eval_interval, tcfg.epochs), with_demos=mod.Model.needs_demos)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    ids = loader.arrays["puzzle_identifiers"]
    if len(ids) and int(ids.max()) >= meta["num_puzzle_identifiers"]:
        raise SystemExit(f"error: {path}/train holds puzzle identifier {int(ids.max())}, but its dataset.json "
                         f"says num_puzzle_identifiers={meta['num_puzzle_identifiers']}")
    s = State(model, AdamATan2(model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                               weight_decay=tcfg.weight_decay), loader)
    total_steps = max(1, int(tcfg.epochs * meta["total_groups"] * meta["mean_puzzle_examples"] / tcfg.global_batch_size))
    stop_at = min(total_steps, tcfg.max_steps) if tcfg.max_steps else total_steps
    if init is not None:
        load_weights(model, init["model"], tcfg.init_from)
    if ckpt is not None:
        restore(s, ckpt, out, rank, device)
    else:
        torch.manual_seed(tcfg.seed + rank)  # data order and exploration differ per rank
        np.random.seed(tcfg.seed + rank)
        random.seed(tcfg.seed + rank)
    if world > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)
    if tcfg.ema and s.ema is None:
        s.ema = {k: p.detach().clone() for k, p in model.named_parameters()}
    run_model = torch.compile(model) if tcfg.compile and device.type == "cuda" else model
    run = {"model": name, "out": out, "data_path": path, "train": dataclasses.asdict(tcfg),
           "model_config": dataclasses.asdict(mcfg)}
    n_table = sum(e.weights.numel() for e in sparse_embeddings(model))
    print0(f"model {name}: {sum(p.numel() for p in model.parameters()):,} trunk parameters + {n_table:,} puzzle-embedding "
           f"values | data {path} | step {s.step:,} of {stop_at:,} (schedule: {total_steps:,} steps) | {world} "
           f"process(es) on {device}")
    if s.step >= stop_at:
        print0(f"{out} is finished (step {s.step:,} of {stop_at:,}); raise max_steps to train on (--resume --config max_steps=N)")
        return {"out_dir": out, "step": s.step, "finished": True}
    # ---- the loop: one data iteration (eval_interval epochs), then an evaluation and a checkpoint
    log, result, acc, t0, step0, saved_at = None, {}, collections.Counter(), time.time(), s.step, s.step
    t_last, gbs, stop = t0, tcfg.global_batch_size, False
    with stop_requests():
        while s.step < stop_at and not stop:
            step_before = s.step
            for batch in s.loader:
                stats, comm = train_step(s, batch, run_model, tcfg, world, total_steps, out)
                if stats is None:
                    continue
                if rank == 0 and log is None:  # the run folder is written once the first step went through
                    log = open_run_folder(out, run, step0, args.resume)
                acc.update(comm=comm, n=1)
                stop = stats["interrupt"] > 0
                if s.step % tcfg.log_interval == 0 or s.step == stop_at or stop:
                    row, now = summarize(stats, gbs), time.time()
                    if log:
                        log.write(json.dumps({**row, "step": s.step}) + "\n")
                        log.flush()
                    left = (now - t0) / max(s.step - step0, 1) * (stop_at - s.step)
                    print0(f"step {s.step}/{stop_at} | loss {row['loss']:.4f} | acc {row.get('accuracy', 0):.3f} "
                           f"exact {row.get('exact_accuracy', 0):.3f} | {acc['n'] * gbs / max(now - t_last, 1e-9):.0f} samples/s "
                           + (f"| comm {1e3 * acc['comm'] / acc['n']:.1f} ms/step " if world > 1 else "")
                           + f"| lr {stats['lr']:.2e} | {left / 60:.1f} min left")
                    acc, t_last = collections.Counter(), now
                if stop or s.step >= stop_at:
                    break
                if tcfg.checkpoint_interval and s.step % tcfg.checkpoint_interval == 0:
                    save_checkpoint(s, run, rank, world)
                    saved_at = s.step
            if s.step == step_before:
                raise SystemExit(f"error: {path} yields no full batch of {gbs} examples in {loader.epochs_per_iter} "
                                 "epoch(s); lower global_batch_size")
            if not stop:
                result = evaluate.evaluate_ema(s.model, s.ema, path, tcfg.eval_batch_size or gbs, rank, world,
                                               tcfg.eval_batches, out if rank == 0 else None)
                print0(f"eval @ {s.step}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
                if log:
                    log.write(json.dumps({"step": s.step, **{f"eval/{k}": v for k, v in result.items()}}) + "\n")
            if s.step > saved_at:
                save_checkpoint(s, run, rank, world)
                saved_at = s.step
    if log:
        log.close()
        evaluate.plot_curves(out)
    if world > 1:
        dist.destroy_process_group()
    if stop:
        launcher = f"torchrun --nproc_per_node={world} " if world > 1 else "python "
        print0(f"stopped at step {s.step}: checkpoint written to {out}; continue with: {launcher}train.py --out {out} --resume",
               file=sys.stderr)
        raise SystemExit(128 + (STOP["signal"] or signal.SIGINT))
    return {**result, "out_dir": out, "step": s.step}


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli.one_line_errors(main))
