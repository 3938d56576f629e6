"""train.py — one training loop for every nanoTRM model (the reference's pretrain.py, without hydra/wandb).

    python train.py --help                                   # models, datasets, every config key
    python train.py --model trm --config data=toy            # CPU, a few minutes
    python train.py --model trm --config data=arc1 lr=1e-4   # the paper's ARC-AGI-1 run (GPU)
    torchrun --standalone --nproc_per_node=8 train.py --model trm --config data=arc1
    python train.py --resume --out runs/trm-toy              # continue the same run

Model protocol: see the docstring of trm.py. This file never branches on a model's name.
Optimisation (../shared/spec/trm.md §8): AdamATan2 for the weights, sign-SGD with decoupled weight decay
for the sparse puzzle embeddings, linear warm-up then cosine to lr * lr_min_ratio, optional EMA (used for
evaluation), optional gradient clipping, optional torch.compile (CUDA only).
Distributed: plain torch.distributed from torchrun's environment (nccl on CUDA, gloo on CPU); parameters
broadcast from rank 0; gradients all-reduced by hand in ONE call over one flat buffer; the puzzle-embedding
gradients all-gathered. Rank 0 logs and writes checkpoints.
Checkpoints (`<out>/checkpoint.pt` + a readable `config.json`) are written atomically at every evaluation;
per-rank state (ACT carry, RNG, data position) goes to `<out>/rank<r>.pt`, so `--resume` continues the
same run: the next step's loss is the one an uninterrupted run would have computed.
"""
import argparse
import ast
import copy as copy_module
import dataclasses
import difflib
import importlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import data
import evaluate
import trm

MODELS = {"trm": "trm", "hrm": "hrm", "etrm": "etrm", "prr": "prr", "deep_recursive": "deep_recursive"}


@dataclasses.dataclass
class TrainConfig:
    data: str = "arc1"                    # dataset name (data.DATASETS) or a built dataset folder
    data_root: str = "data"               # where named datasets are built
    global_batch_size: int = 768          # summed over ranks
    epochs: int = 100000                  # one epoch = one random version of every group
    eval_interval: int = 10000            # epochs between evaluations (and checkpoints)
    max_steps: int = 0                    # stop after this many steps (0 = all); does not change the schedule
    lr: float = 1e-4                      # AdamATan2 learning rate
    lr_min_ratio: float = 1.0             # cosine floor as a fraction of lr (1.0 = constant after warm-up)
    lr_warmup_steps: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    puzzle_emb_lr: float = 1e-2           # sign-SGD learning rate of the puzzle embeddings
    puzzle_emb_weight_decay: float = 0.1
    ema: bool = True                      # evaluate an exponential moving average of the weights
    ema_rate: float = 0.999               # mu: shadow <- (1 - mu) p + mu shadow
    grad_clip: float = 0.0                # max global grad norm (0 = off)
    compile: bool = True                  # torch.compile the model (CUDA only; ignored on CPU)
    seed: int = 0
    log_interval: int = 10                # steps between progress lines
    eval_batches: int = 0                 # cap on evaluation batches (0 = the whole test split)
    eval_batch_size: int = 0              # global evaluation batch (0 = global_batch_size)
    init_from: str = ""                   # start from these weights (a checkpoint of the same model)


# Keys that may change on --resume without changing the run being continued.
RESUMABLE_KEYS = {"max_steps", "log_interval", "eval_batches", "eval_batch_size", "compile", "data_root"}
# Model keys that do not change the shapes or the function of the weights.
RUNTIME_KEYS = {"forward_dtype", "batch_size", "halt_exploration_prob", "num_puzzle_identifiers", "eval_n_steps"}


# ----------------------------------------------------------------------------------------------------
# Config: dataclasses are the single source of truth; --config key=val parsed with literal_eval

def model_module(name):
    if name not in MODELS:
        raise SystemExit(f"error: unknown model {name!r}; choose from {', '.join(MODELS)}")
    return importlib.import_module(MODELS[name])


def coerce(key, text, default, model):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    kind = type(default)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and not isinstance(value, str):
        value = text
    if type(value) is not kind:
        raise SystemExit(f"error: config key {key!r} for model {model!r} takes a {kind.__name__} "
                         f"(default {default!r}), got {text!r}")
    return value


def apply_overrides(pairs, train_cfg, model_cfg, model):
    """Set key=val pairs on whichever dataclass owns the key; unknown keys are one-line errors."""
    changed = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: --config takes key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        owner = next((c for c in (train_cfg, model_cfg) if key in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            known = [f.name for c in (train_cfg, model_cfg) for f in dataclasses.fields(c)]
            hint = difflib.get_close_matches(key, known, 1)
            raise SystemExit(f"error: unknown config key {key!r} for model {model!r}"
                             + (f"; did you mean {hint[0]!r}?" if hint else "; see python train.py --help"))
        value = coerce(key, text, getattr(owner, key), model)
        setattr(owner, key, value)
        changed[key] = value
    return changed


def describe(cfg, source):
    """One line per field: name, type, default and the comment beside it in the source."""
    lines = []
    src = open(source.__file__).read().splitlines()
    for f in dataclasses.fields(cfg):
        comment = next((s.split("#", 1)[1].strip() for s in src if s.strip().startswith(f.name + ":") and "#" in s), "")
        lines.append(f"  {f.name:<26}{type(f.default).__name__:<6}{f.default!r:<14}{comment}")
    return "\n".join(lines)


def help_text():
    parts = ["models: " + ", ".join(MODELS), "datasets: " + ", ".join(data.DATASETS) + " (or a built folder)",
             "", "training keys (--config key=val):", describe(TrainConfig, sys.modules[__name__])]
    for name in MODELS:
        try:
            mod = model_module(name)
            parts += ["", f"model keys for --model {name}:", describe(mod.Config, mod)]
        except ImportError as e:
            parts += ["", f"model {name}: not available ({e})"]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------
# Optimisers (spec §8)

class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of m / (sqrt(v) + eps): scale-invariant, no epsilon (Everett et al. 2024).

    p <- p (1 - lr wd);  m <- lerp(m, g, 1 - b1);  v <- lerp(v, g^2, 1 - b2)
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))      (a = b = 1, as the reference)"""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                t, g = st["step"], p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st["m"].lerp_(g, 1 - b1)
                st["v"].lerp_(g.square(), 1 - b2)
                denom = st["v"].sqrt() / math.sqrt(1 - b2 ** t)
                p.add_(torch.atan2(st["m"], denom), alpha=-group["lr"] / (1 - b1 ** t))


@torch.no_grad()
def sign_sgd_update(emb, lr, weight_decay, world_size):
    """Sparse sign-SGD on the rows of the batch: gather ids and grads from all ranks, sum per unique id,
    p <- p (1 - lr wd) - lr sign(g). Only rows present decay (the reference's lazy decay)."""
    if emb.local_weights is None or emb.local_weights.grad is None:
        return
    ids, grad = emb.local_ids.long(), emb.local_weights.grad
    if world_size > 1:
        all_ids, all_grad = [torch.empty_like(ids) for _ in range(world_size)], [torch.empty_like(grad) for _ in range(world_size)]
        dist.all_gather(all_ids, ids)
        dist.all_gather(all_grad, grad)
        ids, grad = torch.cat(all_ids), torch.cat(all_grad)
    uniq, inverse = ids.unique(return_inverse=True)
    summed = torch.zeros(len(uniq), grad.shape[1], device=grad.device, dtype=grad.dtype).index_add_(0, inverse, grad)
    rows = emb.weights[uniq]
    emb.weights[uniq] = rows * (1 - lr * weight_decay) - lr * summed.sign().to(rows.dtype)
    emb.local_weights = None


def lr_at(step, base, cfg, total_steps):
    """Linear warm-up, then cosine from base to base * lr_min_ratio."""
    if step < cfg.lr_warmup_steps:
        return base * step / cfg.lr_warmup_steps
    progress = (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps)
    return base * (cfg.lr_min_ratio + max(0.0, (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))))


def sparse_embeddings(model):
    return [m for m in model.modules() if isinstance(m, trm.SparseEmbedding)]


# ----------------------------------------------------------------------------------------------------
# Distributed: torchrun's environment, one flat all-reduce

def setup_distributed():
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


@torch.no_grad()
def allreduce_flat(tensors):
    """Sum `tensors` across ranks with one collective over one flat buffer (not one call per tensor)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


# ----------------------------------------------------------------------------------------------------
# Checkpoints: atomic, model-named, resumable

def atomic_save(obj, path):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_weights(model, state, path):
    """load_state_dict, resizing puzzle-embedding tables to this dataset the reference's way (mean row)."""
    own = model.state_dict()
    for key, value in list(state.items()):
        if key.endswith("puzzle_emb.weights") and key in own and value.shape != own[key].shape:
            print0(f"{path}: puzzle-embedding table {tuple(value.shape)} -> {tuple(own[key].shape)}, filled with the mean row")
            state[key] = value.mean(0, keepdim=True).expand_as(own[key]).clone()
    model.load_state_dict(state)


def read_checkpoint(path, model_name, model_cfg=None):
    if not os.path.exists(path):
        raise SystemExit(f"error: no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("model_name") != model_name:
        raise SystemExit(f"error: {path} is a checkpoint of model {ckpt.get('model_name')!r}, not {model_name!r}")
    if model_cfg is not None:
        theirs, ours = ckpt["model_config"], dataclasses.asdict(model_cfg)
        bad = [k for k in ours if k not in RUNTIME_KEYS and k in theirs and theirs[k] != ours[k]]
        if bad:
            raise SystemExit(f"error: {path} was trained with a different {model_name} config: "
                             + ", ".join(f"{k}={theirs[k]!r} (this run: {ours[k]!r})" for k in bad))
    return ckpt


def print0(*args):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, flush=True)


# ----------------------------------------------------------------------------------------------------
# The run

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=help_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="trm", help="model to train: " + ", ".join(MODELS))
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL", help="override config keys (see below)")
    p.add_argument("--out", default="", help="run folder (default runs/<model>-<data>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    return p.parse_args(argv)


def setup(args):
    """Resolve configs (from a checkpoint on --resume), build data, model and optimisers."""
    mod = model_module(args.model)
    tcfg, mcfg = TrainConfig(), mod.Config()
    ckpt = None
    if args.resume:
        if not args.out:
            raise SystemExit("error: --resume needs --out <run folder>")
        ckpt = read_checkpoint(os.path.join(args.out, "checkpoint.pt"), args.model)
        tcfg = trm.config_from(TrainConfig, ckpt["train_config"])
        mcfg = trm.config_from(mod.Config, ckpt["model_config"])
        before = dataclasses.asdict(tcfg) | dataclasses.asdict(mcfg)
        changed = apply_overrides(args.config, tcfg, mcfg, args.model)
        bad = [k for k, v in changed.items() if k not in RESUMABLE_KEYS and before[k] != v]
        if bad:
            raise SystemExit(f"error: --resume continues the run in {args.out}; it cannot change {', '.join(bad)}")
    else:
        apply_overrides(args.config, tcfg, mcfg, args.model)
    out = args.out or os.path.join("runs", f"{args.model}-{os.path.basename(os.path.normpath(tcfg.data))}")
    return mod, tcfg, mcfg, ckpt, out


def train(args):
    mod, tcfg, mcfg, ckpt, out = setup(args)
    rank, world, device = setup_distributed()
    if tcfg.global_batch_size % world:
        raise SystemExit(f"error: global_batch_size {tcfg.global_batch_size} is not divisible by {world} ranks")
    try:
        path = data.ensure_dataset(tcfg.data, root=tcfg.data_root) if rank == 0 else None
    except ValueError as e:  # data.DataError included: one line naming the file and the fault
        raise SystemExit(f"error: {e}")
    if world > 1:
        box = [path]
        dist.broadcast_object_list(box)
        path = box[0]
    meta = data.load_metadata(path, "train")
    for key in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
        if hasattr(mcfg, key):
            setattr(mcfg, key, meta[key])
    if not torch.cuda.is_available() and mcfg.forward_dtype == "bfloat16":
        print0("note: forward_dtype bfloat16 on CPU is slow; 'auto' picks float32 there")

    torch.manual_seed(tcfg.seed)  # identical init on every rank; broadcast below makes sure
    model = mod.Model(mcfg).to(device)
    needs_demos = getattr(mod.Model, "needs_demos", False)
    steps_per_epoch = meta["total_groups"] * meta["mean_puzzle_examples"] / tcfg.global_batch_size
    total_steps = max(1, int(tcfg.epochs * steps_per_epoch))
    loader = data.PuzzleDataset(path, "train", tcfg.global_batch_size, rank=rank, world_size=world,
                                seed=tcfg.seed, epochs_per_iter=min(tcfg.eval_interval, tcfg.epochs), with_demos=needs_demos)
    adam = AdamATan2(model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay)
    embs = sparse_embeddings(model)
    n_trunk = sum(p.numel() for p in model.parameters())
    n_table = sum(e.weights.numel() for e in embs)
    print0(f"model {args.model}: {n_trunk:,} trunk parameters + {n_table:,} puzzle-embedding values "
           f"| data {path} | {total_steps:,} steps | {world} rank(s) on {device}")

    step, ema, carry = 0, None, None
    if tcfg.init_from and ckpt is None:
        load_weights(model, read_checkpoint(tcfg.init_from, args.model, mcfg)["model"], tcfg.init_from)
    if ckpt is not None:
        load_weights(model, ckpt["model"], args.out)
        adam.load_state_dict(ckpt["optimizer"])
        step, ema = ckpt["step"], ckpt.get("ema")
        state = torch.load(os.path.join(out, f"rank{rank}.pt"), map_location="cpu", weights_only=False)
        loader.load_state_dict(state["loader"])
        carry = to_device(state["carry"], device)
        restore_rng(state["rng"])
    else:
        torch.manual_seed(tcfg.seed + rank)  # data order and exploration differ per rank
        np.random.seed(tcfg.seed + rank)
        random.seed(tcfg.seed + rank)
    if world > 1:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, 0)
    if tcfg.ema and ema is None:
        ema = {k: p.detach().clone() for k, p in model.named_parameters()}
    run_model = torch.compile(model) if tcfg.compile and device.type == "cuda" else model

    os.makedirs(out, exist_ok=True)
    if rank == 0:
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"model": args.model, "data_path": path, "train": dataclasses.asdict(tcfg),
                       "model_config": dataclasses.asdict(mcfg)}, f, indent=2)
    log = open(os.path.join(out, "metrics.jsonl"), "a") if rank == 0 else None
    gbs, result = tcfg.global_batch_size, {}
    stop_at = min(total_steps, tcfg.max_steps) if tcfg.max_steps else total_steps
    t0, t_last, step0 = time.time(), time.time(), step

    def checkpoint_and_eval():
        nonlocal result
        # Per-rank state first; evaluation must not move the training RNG (resume == no interruption).
        state = {"loader": loader.state_dict(), "carry": to_device(carry, "cpu"), "rng": rng_state()}
        result = evaluate.evaluate_dataset(model_with_ema(model, ema), path, tcfg.eval_batch_size or gbs, rank, world,
                                           max_batches=tcfg.eval_batches, out_dir=out if rank == 0 else None)
        restore_rng(state["rng"])
        model.train()
        atomic_save(state, os.path.join(out, f"rank{rank}.pt"))
        if world > 1:
            dist.barrier()  # every rank's state is on disk before the checkpoint that points at it
        if rank == 0:
            atomic_save({"model_name": args.model, "model": model.state_dict(), "optimizer": adam.state_dict(),
                         "ema": ema, "step": step, "train_config": dataclasses.asdict(tcfg),
                         "model_config": dataclasses.asdict(mcfg), "data_path": path}, os.path.join(out, "checkpoint.pt"))
            log.write(json.dumps({"step": step, **{f"eval/{k}": v for k, v in result.items()}}) + "\n")
            log.flush()
            print0(f"eval @ {step}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items()
                                                 if isinstance(v, float)) + f" | checkpoint {out}/checkpoint.pt")

    model.train()
    while step < stop_at:
        step_before = step
        for _, batch, _ in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            if carry is None:
                carry = model.initial_carry(batch)
            model.loss_scale = 1.0 / gbs
            carry, loss, metrics, _ = run_model(carry, batch)
            (loss / gbs).backward()
            step += 1
            # One flat all-reduce for gradients; metrics ride along in a second small one.
            if world > 1:  # unused parameters get zero grads so every rank's flat buffer lines up
                for p in model.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                allreduce_flat([p.grad for p in model.parameters()])
            names = sorted(metrics)
            stats = torch.stack([metrics[k].detach().float() for k in names])
            if world > 1:
                dist.all_reduce(stats)
            stats = dict(zip(names, stats.tolist()))
            if not math.isfinite(sum(v for k, v in stats.items() if k.endswith("_loss"))):
                raise SystemExit(f"error: non-finite loss at step {step} ({stats}); the weights were not updated "
                                 f"and the last good checkpoint in {out} is untouched. Lower lr or check the data.")
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            lr = lr_at(step, tcfg.lr, tcfg, total_steps)
            for g in adam.param_groups:
                g["lr"] = lr
            adam.step()
            adam.zero_grad(set_to_none=True)
            for emb in embs:
                sign_sgd_update(emb, lr_at(step, tcfg.puzzle_emb_lr, tcfg, total_steps), tcfg.puzzle_emb_weight_decay, world)
            if ema is not None:
                with torch.no_grad():
                    for k, p in model.named_parameters():
                        ema[k].lerp_(p.detach(), 1 - tcfg.ema_rate)
            if rank == 0 and (step % tcfg.log_interval == 0 or step == stop_at):
                row = summarize(stats, gbs)
                row.update(step=step, lr=lr)
                log.write(json.dumps(row) + "\n")
                log.flush()
                now = time.time()
                rate = tcfg.log_interval * gbs / max(now - t_last, 1e-9)
                left = (now - t0) / max(step - step0, 1) * (stop_at - step)
                t_last = now
                print0(f"step {step}/{stop_at} | loss {row['loss']:.4f} | acc {row.get('accuracy', 0):.3f} "
                       f"exact {row.get('exact_accuracy', 0):.3f} | {rate:.0f} samples/s | lr {lr:.2e} | "
                       f"{left / 60:.1f} min left")
            if step >= stop_at:
                break
        if step == step_before:
            raise SystemExit(f"error: {path} yields no full batch of {gbs} examples; lower global_batch_size")
        checkpoint_and_eval()
    if rank == 0:
        log.close()
        plot_curves(out)
    if world > 1:
        dist.destroy_process_group()
    return {**result, "out_dir": out, "step": step}


def summarize(stats, gbs):
    """Per-sample metrics / count; losses / global batch (the reference's reporting)."""
    count = max(stats.get("count", 0.0), 1.0)
    row = {k: (v / gbs if k.endswith("_loss") else v / count) for k, v in stats.items() if k != "count"}
    row["loss"] = sum(v for k, v in row.items() if k.endswith("_loss"))
    row["count"] = stats.get("count", 0.0)
    return row


def model_with_ema(model, ema):
    if ema is None:
        return model
    copy = copy_module.deepcopy(model)  # not a new Model(): its init would consume the training RNG
    with torch.no_grad():
        for k, p in copy.named_parameters():
            p.copy_(ema[k])
    return copy


def to_device(obj, device):
    if obj is None:
        return None
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj)})
    return obj


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def restore_rng(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def plot_curves(out):
    """Training loss / accuracy and evaluation accuracy against step, saved as <out>/curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval/exact_accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows])
    a.set(xlabel="step", ylabel="train loss", yscale="log", title="loss")
    for key in ("accuracy", "exact_accuracy"):
        b.plot([r["step"] for r in train_rows], [r.get(key, 0) for r in train_rows], label=f"train {key}")
    b.plot([r["step"] for r in eval_rows], [r["eval/exact_accuracy"] for r in eval_rows], "o-", label="eval exact_accuracy")
    b.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
