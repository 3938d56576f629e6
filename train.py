"""train.py — one training loop for every nanoTRM model (the reference's pretrain.py, without
hydra or wandb).

    python train.py --help                                   # models, datasets, every config key
    python train.py --model trm --config data=toy            # CPU, a few minutes
    python train.py --model trm --config data=arc1 lr=1e-4   # the paper's ARC-AGI-1 run (GPU)
    torchrun --standalone --nproc_per_node=8 train.py --model trm --config data=arc1
    python train.py --resume --out runs/trm-toy              # continue the run (its saved config)

Top to bottom: the training config; the setup (`prepare`: every check before anything is written);
one optimisation step (`train_step`, which solve.py, bench.py and the tests call too); the loop
(`train`). It never branches on a model's name (the model protocol is in trm.py's docstring); a
model file may carry `TRAIN_DEFAULTS`, its recipe, applied over the defaults below unless --config
sets the key. Optimisation (optim.py; TRM paper, section 4): AdamATan2 for the weights, sign-SGD for
the sparse puzzle embeddings, warm-up then cosine, optional EMA (evaluated), gradient clipping,
torch.compile. Distributed: torchrun's environment (nccl on CUDA, gloo on CPU); parameters broadcast
from rank 0; gradients summed in ONE all-reduce over one flat buffer; rank 0 logs and writes.
A data iteration is eval_interval epochs; after each one, and at the last step, the run is evaluated
and a checkpoint written (checkpoint.py), so `--resume` continues the same run bit for bit. Ctrl-C
(or SIGTERM) finishes the current step, writes a checkpoint and prints how to resume.
"""
import argparse
import collections
import contextlib
import copy
import dataclasses
import json
import os
import random
import resource
import signal
import sys
import threading
import time
import types

import numpy as np
import torch
import torch.distributed as dist

import cli
import data
import evaluate
from checkpoint import (check_config, check_run_folder, load_weights, open_run_folder, print0,
                        read_checkpoint, resolve_configs, restore, save_checkpoint)
from config import MODELS, build_model, check, help_text
from optim import (AdamATan2, allreduce_flat, lr_at, non_finite, setup_distributed, sign_sgd_update,
                   sparse_embeddings)


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
    compile: "bool" = True                  # torch.compile the model (CPU: long runs, see below)
    seed: "int in [0, 2**32 - 2**16)" = 0   # init and data order; rank r seeds numpy with seed + r
    log_interval: "int >= 1" = 10           # steps between progress lines
    eval_batches: "int >= 0" = 0            # cap on evaluation batches (0 = the whole test split)
    eval_batch_size: "int >= 0" = 0         # global evaluation batch (0 = global_batch_size)
    init_from: "str" = ""                   # start from these weights (same model's checkpoint)
    checkpoint_interval: "int >= 0" = 0     # steps between extra checkpoints (0 = none)
    threads: "int >= 0" = 0                 # CPU threads of each process (0 = auto: 1)
    # 1 thread: the quickstart took 30 s of CPU on a shared 2-core CPU; 2: 7-20x that, same weights
    nan_policy: "str in stop|skip" = "stop"  # non-finite loss or gradient: stop, or skip the batch

    split_over_ranks = ("global_batch_size", "eval_batch_size")  # each rank takes an equal share


# compile=True on a CPU compiles only with this many steps left: at the maze recipe (one thread) a
# cold compile took 100-116 s and a step 0.55-0.84x the eager 0.6 s, so it pays after 300-1000
# steps (bench.py cpu_step --cpu-compile).
CPU_COMPILE_STEPS = 1000
# Keys that may change on --resume without changing the run being continued.
RESUMABLE_KEYS = {"max_steps", "log_interval", "eval_batches", "eval_batch_size", "compile",
                  "data_root", "checkpoint_interval", "nan_policy", "threads"}


# ------------------------------------------------------------------------------------------------
# Setup: configs (defaults < model recipe < --config, or the run folder's own), checks, data, model

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=help_text(TrainConfig, data.DATASETS),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model to train: " + ", ".join(MODELS)
                   + " (default trm, or the run folder's model with --resume)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="override config keys (see below)")
    p.add_argument("--out", default="", help="run folder (default runs/<model>-<data>); one that "
                   "holds a run needs --resume")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                   "checkpoint, with the config saved there")
    return p.parse_args(argv)


def open_dataset(tcfg, mcfg, rank, world, user_keys=()):
    """Build the dataset if missing (rank 0), read its metadata, fill the model's data-determined
    keys (one the user set must agree with the dataset: it would be silently replaced)."""
    try:
        path = data.ensure_dataset(tcfg.data, root=tcfg.data_root) if rank == 0 else None
        if world > 1:
            box = [path]
            dist.broadcast_object_list(box)
            path = box[0]
        meta = data.load_metadata(path, "train")
        data.load_metadata(path, "test")  # the evaluation after every data iteration needs it
    except (ValueError, OSError) as e:  # data.DataError too: one line naming the file and fault
        raise SystemExit(f"error: {e}")
    for key in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
        if hasattr(mcfg, key):
            if key in user_keys and getattr(mcfg, key) != meta[key]:
                raise SystemExit(f"error: config key {key!r} comes from the dataset: {path}/train/"
                                 f"dataset.json says {meta[key]}, not {getattr(mcfg, key)}; leave "
                                 "it out of --config")
            setattr(mcfg, key, meta[key])
    return path, meta


def available_memory(device):
    """Bytes this process may still allocate: the GPU's free memory; on a CPU MemAvailable of
    /proc/meminfo, or less under an address-space limit (ulimit -v); None where neither is known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            free = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
            free = min(free, limit - used)
        return free
    except (OSError, StopIteration, ValueError):  # not Linux: the allocator still answers
        return None


def saved_bytes(model, batch):
    """Bytes of the tensors one training forward keeps for backward (each storage counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(model.initial_carry(batch), batch)
    return sum(seen.values())


def check_memory(model, loader, tcfg, device):
    """Refuse a batch too big for this device before allocating it: gradients, AdamATan2's moments
    and EMA of the weights, plus the activations a step keeps, measured on 1 and 2 samples of the
    first batch and extrapolated to the local batch."""
    free, B, gb = available_memory(device), loader.local_batch_size, 1e9
    batch = next(iter(copy.copy(loader)), None)  # a copy: the loader's own position stays
    if free is None or batch is None:
        return
    batch = {k: v.to(device) for k, v in batch.items()}
    rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    one, two = (saved_bytes(model, {k: v[:n] for k, v in batch.items()}) for n in (1, 2))
    torch.set_rng_state(rng[0]), np.random.set_state(rng[1]), random.setstate(rng[2])
    model.zero_grad(set_to_none=True)
    copies = (3 + tcfg.ema) * sum(p.numel() * p.element_size() for p in model.parameters())
    need, each = copies + one + (two - one) * (B - 1), max(two - one, 1)
    if need > free:
        fits = max(1, int((free - copies - one) / each) + 1) * tcfg.global_batch_size // B
        raise SystemExit(f"error: config key 'global_batch_size' = {tcfg.global_batch_size} does "
                         f"not fit in memory: one step keeps about {need / gb:.1f} GB ("
                         f"{each / 2 ** 20:.2f} MB per sample, {B} per process) and "
                         f"{free / gb:.1f} GB is available; lower global_batch_size (about {fits} "
                         "fits)")


def no_memory(e, what):
    """The allocator's failure as one line naming what was tried (other errors go on)."""
    if not isinstance(e, torch.OutOfMemoryError) and "allocate memory" not in str(e):
        raise e
    raise SystemExit(f"error: {what} does not fit in memory ({str(e).splitlines()[0][:150]})")


def set_threads(tcfg, device):
    """CPU threads of this process -> their number (None on a GPU, where torch's default stays)."""
    if device.type == "cuda":
        return None
    torch.set_num_threads(tcfg.threads or 1)
    return torch.get_num_threads()


def compiled(model, tcfg, device, steps_left):
    """torch.compile on CUDA; on a CPU only when enough steps are left to win the compile back."""
    if tcfg.compile and (device.type == "cuda" or steps_left >= CPU_COMPILE_STEPS):
        return torch.compile(model)
    return None


def prepare(args):
    """Configs, processes, run folder, dataset, model, memory, checkpoint: every check before
    anything is written -> (State, run)."""
    name, mod, tcfg, mcfg, ckpt, out = resolve_configs(args, TrainConfig, RESUMABLE_KEYS)
    rank, world, device = setup_distributed()
    check(tcfg, world=world)
    check(mcfg, name)
    check_run_folder(out, ckpt, args.resume, world)
    user_keys = [pair.split("=", 1)[0] for pair in args.config or []]
    path, meta = open_dataset(tcfg, mcfg, rank, world, user_keys)
    if ckpt is not None:  # e.g. a data folder of another vocabulary or sequence length
        check_config(ckpt["model_config"], dataclasses.asdict(mcfg),
                     os.path.join(out, "checkpoint.pt"), name)
    init = read_checkpoint(tcfg.init_from, name) if tcfg.init_from and ckpt is None else None
    if init is not None:  # its vocabulary and canvas must fit this dataset, the rest this config
        try:
            data.check_fit(init["model_config"], meta, tcfg.init_from, path)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        check_config(init["model_config"], dataclasses.asdict(mcfg), tcfg.init_from, name)
    threads = set_threads(tcfg, device)
    torch.manual_seed(tcfg.seed)  # identical init on every rank; the broadcast below makes sure
    try:
        model = build_model(mod, mcfg, name).to(device)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        sizes = [k for k in user_keys if k in dataclasses.asdict(mcfg)]
        no_memory(e, f"model {name!r} with " + (" ".join(f"{k}={getattr(mcfg, k)}" for k in sizes)
                                                 or "its defaults"))
    try:
        loader = data.PuzzleDataset(path, "train", tcfg.global_batch_size, rank=rank,
                                    world_size=world, seed=tcfg.seed,
                                    epochs_per_iter=min(tcfg.eval_interval, tcfg.epochs),
                                    with_demos=mod.Model.needs_demos)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    check_memory(model.train(), loader, tcfg, device)
    s = State(model, AdamATan2(model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                               weight_decay=tcfg.weight_decay), loader)
    total = max(1, int(tcfg.epochs * meta["total_groups"] * meta["mean_puzzle_examples"]
                       / tcfg.global_batch_size))
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
    stop_at = min(total, tcfg.max_steps) if tcfg.max_steps else total
    s.forward = compiled(model, tcfg, device, stop_at - s.step)
    return s, types.SimpleNamespace(name=name, out=out, path=path, tcfg=tcfg, mcfg=mcfg, rank=rank,
                                    world=world, device=device, total=total, stop_at=stop_at,
                                    threads=threads, resuming=args.resume)


# ------------------------------------------------------------------------------------------------
# One optimisation step

STOP = {"signal": 0}  # set by Ctrl-C / SIGTERM: the loop ends its step, writes a checkpoint, exits


def request_stop(signum, frame):
    STOP["signal"] = signum
    signal.signal(signum, signal.SIG_DFL)  # a second Ctrl-C quits at once, without a checkpoint
    print0(f"\n{signal.Signals(signum).name}: finishing this step, then a checkpoint (again: quit "
           "now)", file=sys.stderr)


@contextlib.contextmanager
def stop_requests():
    """Ctrl-C / SIGTERM ask the loop to stop after its step. The caller's handlers come back
    afterwards, so a train.main() called in-process (a test, a notebook, experiments/) leaves no
    handler behind (a process a multiprocessing pool forks later would ignore SIGTERM)."""
    STOP["signal"] = 0
    if threading.current_thread() is not threading.main_thread():  # handlers: main thread only
        yield
        return
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class State:
    """What a step changes and a checkpoint restores: weights, optimiser (None: the trunk stays
    frozen), EMA, step, the step last evaluated; per rank the ACT carry, RNG and data position."""
    model: torch.nn.Module
    adam: AdamATan2 = None
    loader: data.PuzzleDataset = None
    ema: dict = None
    carry: object = None
    step: int = 0
    evaluated: int = -1
    resumed_batches: int = 0  # batches of the current data iteration trained before --resume
    forward: object = None    # torch.compile of the model, or None (the model itself)


def train_step(s, batch, tcfg, world=1, total_steps=1):
    """Forward; backward of the loss (summed over the local batch) / the global batch; all-reduce;
    finiteness check; AdamATan2, sign-SGD on the batch's puzzle-embedding rows, EMA -> (stats
    summed over ranks, seconds in communication); stats is None when nan_policy=skip dropped the
    batch."""
    model, embs = s.model, sparse_embeddings(s.model)
    batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
    if s.carry is None:
        s.carry = model.initial_carry(batch)
    s.carry, loss, metrics, _ = (model if s.forward is None else s.forward)(s.carry, batch)
    (loss / tcfg.global_batch_size).backward()
    t0 = time.time()
    if world > 1:  # unused parameters get zero grads so every rank's flat buffer lines up
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        allreduce_flat([p.grad for p in model.parameters()])
    # `interrupt` lets every rank stop at the same step
    metrics = {**metrics, "loss": loss, "interrupt": loss.new_tensor(float(STOP["signal"] > 0))}
    names = sorted(metrics)
    stats = torch.stack([metrics[k].detach().float() for k in names])
    if world > 1:
        dist.all_reduce(stats)
    stats, comm = dict(zip(names, stats.tolist())), time.time() - t0
    fault = non_finite(model, embs, stats)
    if fault:
        where = f"non-finite {fault} at step {s.step + 1}"
        if tcfg.nan_policy == "stop":
            raise SystemExit(f"error: {where}; the weights were not updated and the last "
                             "checkpoint (if any) is untouched (nan_policy=skip skips such "
                             "batches). Lower lr or check the data.")
        print0(f"warning: {where}; batch skipped (nan_policy=skip), carry reset")
        model.zero_grad(set_to_none=True)
        for e in embs:
            if e.local_weights is not None:
                e.local_weights.grad = None  # the leaf stays: a new one breaks a compiled graph
        s.carry = None
        return None, comm
    if tcfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
    s.step += 1
    stats["lr"] = lr = lr_at(s.step, tcfg.lr, tcfg, total_steps)
    if s.adam is not None:
        for g in s.adam.param_groups:
            g["lr"] = lr
        s.adam.step()
        s.adam.zero_grad(set_to_none=True)
    t0 = time.time()
    emb_lr = lr_at(s.step, tcfg.puzzle_emb_lr, tcfg, total_steps)
    for emb in embs:
        sign_sgd_update(emb, emb_lr, tcfg.puzzle_emb_weight_decay, world)
    if s.ema is not None:
        with torch.no_grad():
            for k, p in model.named_parameters():
                s.ema[k].lerp_(p.detach(), 1 - tcfg.ema_rate)
    return stats, comm + time.time() - t0


# ------------------------------------------------------------------------------------------------
# The loop: one data iteration (eval_interval epochs), then an evaluation and a checkpoint

def summarize(total, steps, gbs):
    """Stats summed over `steps` steps -> a row: losses per sample (/ global batch / steps), the
    other metrics averaged over the samples that halted in those steps (None when none did)."""
    count = total.get("count", 0.0)
    row = {k: v / (gbs * steps) if k == "loss" or k.endswith("_loss") else
           (v / count if count else None)
           for k, v in total.items() if k not in ("count", "lr", "interrupt", "comm")}
    return {**row, "count": count}


def progress_line(row, step, stop_at, samples_per_s, comm_ms, lr, minutes_left):
    show = lambda k: "-" if row.get(k) is None else f"{row[k]:.3f}"  # noqa: E731
    return (f"step {step}/{stop_at} | loss {row['loss']:.4f} | acc {show('accuracy')} exact "
            f"{show('exact_accuracy')} | {samples_per_s:.0f} samples/s "
            + (f"| comm {comm_ms:.1f} ms/step " if comm_ms is not None else "")
            + f"| lr {lr:.2e} | {minutes_left:.1f} min left")


def finished(s, run):
    """What a resumed run with nothing left to do says: where it stopped and how to go on."""
    if run.stop_at < run.total:
        return (f"{run.out} is finished (step {s.step:,} of {run.stop_at:,}); raise max_steps to "
                f"train on (--resume --config max_steps=N, up to its schedule's {run.total:,})")
    return (f"{run.out} is finished: step {s.step:,} is the end of its schedule "
            f"({run.tcfg.epochs} epochs); to train on, start a new run from its weights (--out "
            f"NEW --config init_from={run.out} ...)")


def train(args):
    s, run = prepare(args)
    tcfg, out, rank, world, stop_at = run.tcfg, run.out, run.rank, run.world, run.stop_at
    n_table = sum(e.weights.numel() for e in sparse_embeddings(s.model))
    print0(f"model {run.name}: {sum(p.numel() for p in s.model.parameters()):,} trunk parameters "
           f"+ {n_table:,} puzzle-embedding values | data {run.path} | step {s.step:,} of "
           f"{stop_at:,} (schedule: {run.total:,} steps) | {world} process(es) on {run.device}"
           + (f", {run.threads} thread(s)" if run.threads else "")
           + (" | compiled" if s.forward is not None else ""))
    if s.step >= stop_at and s.evaluated == s.step:
        print0(finished(s, run))
        return {"out_dir": out, "step": s.step, "finished": True}
    log, result, interrupted, gbs = None, {}, False, tcfg.global_batch_size
    saved, step0, t0 = (s.step, s.evaluated), s.step, time.time()
    acc, t_last, n_last = collections.Counter(), t0, s.step

    def write(row):  # the run folder is written once the first step went through (rank 0)
        nonlocal log
        if rank == 0 and log is None:
            log = open_run_folder(run, step0)
        if log and row:
            log.write(json.dumps(row) + "\n")
            log.flush()
    with stop_requests():
        while True:
            iteration_over, step_before = True, s.step
            for batch in (s.loader if s.step < stop_at else ()):
                try:
                    stats, comm = train_step(s, batch, tcfg, world, run.total)
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    no_memory(e, f"config key 'global_batch_size' = {gbs} (step {s.step + 1})")
                if stats is None:
                    continue
                acc.update({**stats, "comm": comm})
                interrupted = stats["interrupt"] > 0
                write(None)
                if s.step % tcfg.log_interval == 0 or s.step == stop_at or interrupted:
                    row, now, n = summarize(acc, s.step - n_last, gbs), time.time(), s.step - n_last
                    write({**row, "lr": stats["lr"], "step": s.step})
                    left = (now - t0) / max(s.step - step0, 1) * (stop_at - s.step) / 60
                    print0(progress_line(row, s.step, stop_at, n * gbs / max(now - t_last, 1e-9),
                                         1e3 * acc["comm"] / n if world > 1 else None, stats["lr"],
                                         left))
                    acc, t_last, n_last = collections.Counter(), now, s.step
                if interrupted or s.step >= stop_at:
                    iteration_over = False
                    break
                if tcfg.checkpoint_interval and s.step % tcfg.checkpoint_interval == 0:
                    save_checkpoint(s, run)
                    saved = (s.step, s.evaluated)
            if iteration_over and s.step == step_before < stop_at and not s.resumed_batches:
                raise SystemExit(f"error: {run.path} yields no full batch of {gbs} examples in "
                                 f"{s.loader.epochs_per_iter} epoch(s); lower global_batch_size")
            s.resumed_batches = 0  # an iteration resumed after its last batch is over at once
            if not interrupted and (iteration_over or s.step >= stop_at) and s.evaluated < s.step:
                result = evaluate.evaluate_ema(s.model, s.ema, run.path,
                                               tcfg.eval_batch_size or gbs, rank, world,
                                               tcfg.eval_batches, out if rank == 0 else None)
                s.evaluated = s.step
                print0(f"eval @ {s.step}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items()
                                                       if isinstance(v, float)))
                write({"step": s.step, **{f"eval/{k}": v for k, v in result.items()}})
            if (s.step, s.evaluated) != saved:
                save_checkpoint(s, run)
                saved = (s.step, s.evaluated)
            if interrupted or s.step >= stop_at:
                break
    if log:
        log.close()
        evaluate.plot_curves(out)
    if world > 1:
        dist.destroy_process_group()
    if interrupted:
        launcher = f"torchrun --nproc_per_node={world} " if world > 1 else "python "
        print0(f"stopped at step {s.step}: checkpoint written to {out}; continue with: {launcher}"
               f"train.py --out {out} --resume", file=sys.stderr)
        raise SystemExit(128 + (STOP["signal"] or signal.SIGINT))
    return {**result, "out_dir": out, "step": s.step}


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli.one_line_errors(main))
