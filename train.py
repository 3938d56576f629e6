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
import collections
import copy as copy_module
import dataclasses
import inspect
import json
import math
import os
import random
import signal
import time

import numpy as np
import torch
import torch.distributed as dist

import data
import evaluate
import trm
from config import MODELS, apply_overrides, check_config, load_file, model_module, read_checkpoint

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
    lr_warmup_steps: int = 2000           # linear warm-up from 0 to lr (both optimisers)
    weight_decay: float = 0.1             # decoupled, AdamATan2: p <- p (1 - lr wd)
    beta1: float = 0.9                    # AdamATan2 first-moment rate
    beta2: float = 0.95                   # AdamATan2 second-moment rate
    puzzle_emb_lr: float = 1e-2           # sign-SGD learning rate of the puzzle embeddings
    puzzle_emb_weight_decay: float = 0.1  # decoupled, applied to the batch's rows only (lazy, as the reference)
    ema: bool = True                      # evaluate an exponential moving average of the weights
    ema_rate: float = 0.999               # mu: shadow <- (1 - mu) p + mu shadow
    grad_clip: float = 0.0                # max global grad norm (0 = off)
    compile: bool = True                  # torch.compile the model (CUDA only; ignored on CPU)
    seed: int = 0                         # init and data order; rank r draws exploration with seed + r
    log_interval: int = 10                # steps between progress lines
    eval_batches: int = 0                 # cap on evaluation batches (0 = the whole test split)
    eval_batch_size: int = 0              # global evaluation batch (0 = global_batch_size)
    init_from: str = ""                   # start from these weights (a checkpoint of the same model)
    checkpoint_interval: int = 0          # steps between extra checkpoints (0 = only at evaluations)
    nan_policy: str = "stop"              # a non-finite loss or gradient: stop the run | skip the batch


# Keys that may change on --resume without changing the run being continued.
RESUMABLE_KEYS = {"max_steps", "log_interval", "eval_batches", "eval_batch_size", "compile", "data_root",
                  "checkpoint_interval", "nan_policy"}
# ----------------------------------------------------------------------------------------------------
# Config: dataclasses are the single source of truth; --config key=val parsed with literal_eval

def describe(cfg):
    """One line per field: name, type, default and the comment beside it in the source (base classes too)."""
    src = [line for c in cfg.__mro__ if dataclasses.is_dataclass(c) for line in inspect.getsource(c).splitlines()]
    lines = []
    for f in dataclasses.fields(cfg):
        comment = next((s.split("#", 1)[1].strip() for s in src if s.strip().startswith(f.name + ":") and "#" in s), "")
        lines.append(f"  {f.name:<26}{type(f.default).__name__:<6}{f.default!r:<14}{comment}")
    return "\n".join(lines)


def help_text():
    parts = ["models: " + ", ".join(MODELS), "datasets: " + ", ".join(data.DATASETS) + " (or a built folder)",
             "", "training keys (--config key=val):", describe(TrainConfig)]
    for name in MODELS:
        try:
            mod = model_module(name)
            parts += ["", f"model keys for --model {name}:", describe(mod.Config)]
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

def maybe_crash(point, step):
    """Test hook for tests/test_faults.py: NANOTRM_KILL_AT=<point>:<step> SIGKILLs this process there."""
    if os.environ.get("NANOTRM_KILL_AT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_save(obj, path, point="save", step=-1):
    """Write to a temporary file in the same folder, then rename: a reader sees the old file or the new one."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    maybe_crash(point, step)  # a kill here leaves the old file intact and a stray .tmp behind
    os.replace(tmp, path)


def load_weights(model, state, path):
    """load_state_dict, resizing puzzle-embedding tables to this dataset the reference's way (mean row)."""
    own = model.state_dict()
    for key, value in list(state.items()):
        if key.endswith("puzzle_emb.weights") and key in own and value.shape != own[key].shape:
            print0(f"{path}: puzzle-embedding table {tuple(value.shape)} -> {tuple(own[key].shape)}, filled with the mean row")
            state[key] = value.mean(0, keepdim=True).expand_as(own[key]).clone()
    model.load_state_dict(state)


def print0(*args):
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, flush=True)


def to_device(obj, device):
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


# ----------------------------------------------------------------------------------------------------
# The run

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=help_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="trm", help="model to train: " + ", ".join(MODELS))
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL", help="override config keys (see below)")
    p.add_argument("--out", default="", help="run folder (default runs/<model>-<data>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (starts it if there is none yet)")
    return p.parse_args(argv)


def resolve_configs(args):
    """Configs from the defaults and --config, or on --resume from the run's checkpoint (a few keys may change)."""
    mod = model_module(args.model)
    tcfg, mcfg, ckpt = TrainConfig(), mod.Config(), None
    if args.resume and not args.out:
        raise SystemExit("error: --resume needs --out <run folder>")
    cpath = os.path.join(args.out, "checkpoint.pt")
    if args.resume and os.path.exists(cpath):
        ckpt = read_checkpoint(cpath, args.model)
        tcfg = trm.config_from(TrainConfig, ckpt["train_config"])
        mcfg = trm.config_from(mod.Config, ckpt["model_config"])
        before = dataclasses.asdict(tcfg) | dataclasses.asdict(mcfg)
        changed = apply_overrides(args.config, tcfg, mcfg, args.model)
        bad = [k for k, v in changed.items() if k not in RESUMABLE_KEYS and before[k] != v]
        if bad:
            raise SystemExit(f"error: --resume continues the run in {args.out}; it cannot change {', '.join(bad)}")
    else:
        if args.resume:
            print0(f"note: no checkpoint in {args.out} yet; starting the run at step 0")
        apply_overrides(args.config, tcfg, mcfg, args.model)
    if tcfg.nan_policy not in ("stop", "skip"):
        raise SystemExit(f"error: nan_policy must be 'stop' or 'skip', got {tcfg.nan_policy!r}")
    out = args.out or os.path.join("runs", f"{args.model}-{os.path.basename(os.path.normpath(tcfg.data))}")
    return mod, tcfg, mcfg, ckpt, out


def open_dataset(tcfg, mcfg, rank, world):
    """Build the dataset if missing (rank 0), read its metadata, fill the model's data-determined keys."""
    try:
        path = data.ensure_dataset(tcfg.data, root=tcfg.data_root) if rank == 0 else None
    except (ValueError, OSError) as e:  # data.DataError included: one line naming the file and the fault
        raise SystemExit(f"error: {e}")
    if world > 1:
        box = [path]
        dist.broadcast_object_list(box)
        path = box[0]
    meta = data.load_metadata(path, "train")
    for key in ("vocab_size", "seq_len", "num_puzzle_identifiers"):
        if hasattr(mcfg, key):
            setattr(mcfg, key, meta[key])
    return path, meta


class Run:
    """Everything one training run holds: model, optimisers, EMA, carry, data position, logs."""

    def __init__(self, args):
        self.mod, self.tcfg, self.mcfg, ckpt, self.out = resolve_configs(args)
        self.name, tcfg = args.model, self.tcfg
        self.rank, self.world, self.device = setup_distributed()
        if tcfg.global_batch_size % self.world:
            raise SystemExit(f"error: global_batch_size {tcfg.global_batch_size} is not divisible by {self.world} ranks")
        self.path, meta = open_dataset(tcfg, self.mcfg, self.rank, self.world)
        if ckpt is not None:  # e.g. a data folder of another vocabulary or sequence length
            check_config(ckpt["model_config"], dataclasses.asdict(self.mcfg), os.path.join(self.out, "checkpoint.pt"), self.name)
        torch.manual_seed(tcfg.seed)  # identical init on every rank; the broadcast below makes sure
        self.model = self.mod.Model(self.mcfg).to(self.device)
        self.loader = data.PuzzleDataset(self.path, "train", tcfg.global_batch_size, rank=self.rank, world_size=self.world,
                                         seed=tcfg.seed, epochs_per_iter=min(tcfg.eval_interval, tcfg.epochs),
                                         with_demos=self.mod.Model.needs_demos)
        ids = self.loader.arrays["puzzle_identifiers"]
        if len(ids) and int(ids.max()) >= meta["num_puzzle_identifiers"]:
            raise SystemExit(f"error: {self.path}/train holds puzzle identifier {int(ids.max())}, but its dataset.json "
                             f"says num_puzzle_identifiers={meta['num_puzzle_identifiers']}")
        if tcfg.global_batch_size > meta["total_groups"] * meta["mean_puzzle_examples"] * self.loader.epochs_per_iter:
            raise SystemExit(f"error: {self.path} yields no full batch of {tcfg.global_batch_size} examples; "
                             "lower global_batch_size")
        self.total_steps = max(1, int(tcfg.epochs * meta["total_groups"] * meta["mean_puzzle_examples"] / tcfg.global_batch_size))
        self.adam = AdamATan2(self.model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay)
        self.embs = sparse_embeddings(self.model)
        self.step, self.ema, self.carry = 0, None, None
        if tcfg.init_from and ckpt is None:
            load_weights(self.model, read_checkpoint(tcfg.init_from, self.name, self.mcfg)["model"], tcfg.init_from)
        if ckpt is not None:
            self.restore(ckpt)
        else:
            torch.manual_seed(tcfg.seed + self.rank)  # data order and exploration differ per rank
            np.random.seed(tcfg.seed + self.rank)
            random.seed(tcfg.seed + self.rank)
        if self.world > 1:
            for t in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(t.data, 0)
        if tcfg.ema and self.ema is None:
            self.ema = {k: p.detach().clone() for k, p in self.model.named_parameters()}
        use_compile = tcfg.compile and self.device.type == "cuda"
        self.run_model = torch.compile(self.model) if use_compile else self.model
        self.open_logs(ckpt)
        n_trunk = sum(p.numel() for p in self.model.parameters())
        n_table = sum(e.weights.numel() for e in self.embs)
        print0(f"model {self.name}: {n_trunk:,} trunk parameters + {n_table:,} puzzle-embedding values | data {self.path} "
               f"| step {self.step:,} of {self.total_steps:,} | {self.world} rank(s) on {self.device}")

    def restore(self, ckpt):
        load_weights(self.model, ckpt["model"], self.out)
        self.adam.load_state_dict(ckpt["optimizer"])
        self.step, self.ema = ckpt["step"], ckpt.get("ema")
        state = load_file(os.path.join(self.out, f"rank{self.rank}.step{self.step}.pt"))
        self.loader.load_state_dict(state["loader"])
        self.carry = to_device(state["carry"], self.device)
        restore_rng(state["rng"])

    def open_logs(self, ckpt):
        """metrics.jsonl: on resume keep the rows up to the checkpoint's step, so a crash leaves no trace."""
        self.log = None
        if self.rank != 0:
            return
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "config.json"), "w") as f:
            json.dump({"model": self.name, "data_path": self.path, "train": dataclasses.asdict(self.tcfg),
                       "model_config": dataclasses.asdict(self.mcfg)}, f, indent=2)
        path = os.path.join(self.out, "metrics.jsonl")
        keep = []
        if ckpt is not None and os.path.exists(path):
            keep = [line for line in open(path) if line.strip() and json.loads(line)["step"] <= self.step]
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)
        self.log = open(path, "a")

    def write(self, row):
        if self.log is not None:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()

    # -- one optimisation step ------------------------------------------------------------------------
    def train_step(self, batch):
        """Forward, backward, all-reduce, checks, update. Returns (stats, seconds in communication)."""
        tcfg, gbs, model = self.tcfg, self.tcfg.global_batch_size, self.model
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.carry is None:
            self.carry = model.initial_carry(batch)
        self.carry, loss, metrics, _ = self.run_model(self.carry, batch, loss_scale=1.0 / gbs)
        (loss / gbs).backward()
        t0 = time.time()
        if self.world > 1:  # unused parameters get zero grads so every rank's flat buffer lines up
            for p in model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            allreduce_flat([p.grad for p in model.parameters()])
        metrics = {"total_loss": loss.detach(), **metrics}  # a model may report its whole objective itself
        names = sorted(metrics)
        stats = torch.stack([metrics[k].detach().float() for k in names])
        if self.world > 1:
            dist.all_reduce(stats)
        comm = time.time() - t0
        stats = dict(zip(names, stats.tolist()))
        fault = self.non_finite(stats)
        if fault:
            return self.on_fault(fault), comm
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        self.step += 1
        lr = lr_at(self.step, tcfg.lr, tcfg, self.total_steps)
        for g in self.adam.param_groups:
            g["lr"] = lr
        self.adam.step()
        self.adam.zero_grad(set_to_none=True)
        t0 = time.time()
        for emb in self.embs:
            sign_sgd_update(emb, lr_at(self.step, tcfg.puzzle_emb_lr, tcfg, self.total_steps), tcfg.puzzle_emb_weight_decay, self.world)
        comm += time.time() - t0
        if self.ema is not None:
            with torch.no_grad():
                for k, p in model.named_parameters():
                    self.ema[k].lerp_(p.detach(), 1 - tcfg.ema_rate)
        stats["lr"] = lr
        return stats, comm

    def non_finite(self, stats):
        """Name the first non-finite loss or gradient (one reduction over all gradients; names only on a fault)."""
        bad = [k for k, v in sorted(stats.items(), key=lambda kv: kv[0] != "total_loss")
               if k.endswith("_loss") and not math.isfinite(v)]
        if bad:
            return f"loss '{bad[0]}'"
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        grads += [(f"{i}.local_weights", e.local_weights.grad) for i, e in enumerate(self.embs)
                  if e.local_weights is not None and e.local_weights.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.float().norm() for _, g in grads]).sum()):
            return "gradient of " + next(n for n, g in grads if not torch.isfinite(g).all())
        return None

    def on_fault(self, fault):
        where = f"non-finite {fault} at step {self.step + 1}"
        if self.tcfg.nan_policy == "skip":
            print0(f"warning: {where}; batch skipped (nan_policy=skip), carry reset")
            self.adam.zero_grad(set_to_none=True)
            for e in self.embs:
                e.local_weights = None
            self.carry = None
            return None
        raise SystemExit(f"error: {where}; the weights were not updated and the last good checkpoint in "
                         f"{self.out} is untouched (nan_policy=skip skips such batches). Lower lr or check the data.")

    # -- evaluation and checkpoints ---------------------------------------------------------------------
    def evaluate(self):
        """Evaluate the EMA weights; must not move the training RNG (resume == no interruption)."""
        rng = rng_state()
        model = self.model
        if self.ema is not None:
            model = copy_module.deepcopy(self.model)  # not a new Model(): its init would consume the RNG
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(self.ema[k])
        result = evaluate.evaluate_dataset(model, self.path, self.tcfg.eval_batch_size or self.tcfg.global_batch_size,
                                           self.rank, self.world, max_batches=self.tcfg.eval_batches,
                                           out_dir=self.out if self.rank == 0 else None)
        restore_rng(rng)
        self.model.train()
        self.write({"step": self.step, **{f"eval/{k}": v for k, v in result.items()}})
        print0(f"eval @ {self.step}: " + " ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
        return result

    def save(self):
        """Per-rank state for this step first, then the checkpoint that points at it, then drop older states."""
        step = self.step
        state = {"loader": self.loader.state_dict(), "carry": to_device(self.carry, "cpu"), "rng": rng_state()}
        atomic_save(state, os.path.join(self.out, f"rank{self.rank}.step{step}.pt"), "save_rank", step)
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            atomic_save({"model_name": self.name, "model": self.model.state_dict(), "optimizer": self.adam.state_dict(),
                         "ema": self.ema, "step": step, "train_config": dataclasses.asdict(self.tcfg),
                         "model_config": dataclasses.asdict(self.mcfg), "data_path": self.path},
                        os.path.join(self.out, "checkpoint.pt"), "save_ckpt", step)
        if self.world > 1:
            dist.barrier()
        for f in os.listdir(self.out):  # older states, and temporary files of writes a kill interrupted
            mine = f.startswith(f"rank{self.rank}.step") or (self.rank == 0 and f.startswith("checkpoint.pt.tmp"))
            if mine and f != f"rank{self.rank}.step{step}.pt":
                os.remove(os.path.join(self.out, f))


def train(args):
    run = Run(args)
    tcfg, gbs = run.tcfg, run.tcfg.global_batch_size
    stop_at = min(run.total_steps, tcfg.max_steps) if tcfg.max_steps else run.total_steps
    result, acc, t0, step0 = {}, collections.Counter(), time.time(), run.step
    t_last = t0
    while run.step < stop_at:
        step_before = run.step
        for batch in run.loader:
            stats, comm = run.train_step(batch)
            maybe_crash("step", run.step)
            if stats is None:
                continue
            acc.update(comm=comm, n=1)
            if run.step % tcfg.log_interval == 0 or run.step == stop_at:
                row = summarize(stats, gbs)
                run.write({**row, "step": run.step})
                now = time.time()
                left = (now - t0) / max(run.step - step0, 1) * (stop_at - run.step)
                print0(f"step {run.step}/{stop_at} | loss {row['loss']:.4f} | acc {row.get('accuracy', 0):.3f} "
                       f"exact {row.get('exact_accuracy', 0):.3f} | {acc['n'] * gbs / max(now - t_last, 1e-9):.0f} samples/s "
                       + (f"| comm {1e3 * acc['comm'] / acc['n']:.1f} ms/step " if run.world > 1 else "")
                       + f"| lr {stats['lr']:.2e} | {left / 60:.1f} min left")
                acc, t_last = collections.Counter(), now
            if tcfg.checkpoint_interval and run.step % tcfg.checkpoint_interval == 0 and run.step < stop_at:
                run.save()
            if run.step >= stop_at:
                break
        if run.loader.batch_index == 0:
            raise SystemExit(f"error: {run.path} yields no full batch of {gbs} examples; lower global_batch_size")
        if run.step > step_before:  # evaluate and checkpoint at the end of every data iteration
            result = run.evaluate()
            run.save()
    if run.rank == 0:
        run.log.close()
        plot_curves(run.out)
    if run.world > 1:
        dist.destroy_process_group()
    return {**result, "out_dir": run.out, "step": run.step}


def summarize(stats, gbs):
    """Per-sample metrics / count; losses / global batch (the reference's reporting)."""
    count = max(stats.get("count", 0.0), 1.0)
    row = {k: (v / gbs if k.endswith("_loss") else v / count) for k, v in stats.items() if k not in ("count", "lr")}
    row["loss"] = row.pop("total_loss")
    row["count"], row["lr"] = stats.get("count", 0.0), stats["lr"]
    return row


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
