"""evaluate.py — evaluation for every nanoTRM model: the model's own per-sample metrics (token /
exact accuracy, ...), and for ARC the vote over augmentations, pass@K, the ARC-Prize score and a
Kaggle `submission.json`; `--show N` draws N test puzzles being solved, step by step.

    python evaluate.py --checkpoint runs/trm-arc1                      # the run's own test split
    python evaluate.py --checkpoint runs/trm-arc1/checkpoint.pt --data data/arc1 --out results/
    python evaluate.py --checkpoint runs/trm-maze --data data/maze-big --config halt_max_steps=32
    python evaluate.py --checkpoint runs/trm-toy --show 3             # watch it think

Every test sample runs until it halts (halt_max_steps ACT calls in eval). For ARC each answer is
cropped from its canvas, mapped back through the inverse of its augmentation, and voted per (task,
test input): distinct grids ranked by (number of versions that produced them, mean sigmoid(q_halt))
descending. pass@K = mean over tasks of the fraction of test inputs whose answer is among the top K
(macro, as ARC Prize's scoring and TRM's pass@2); the micro and strict ("all test inputs solved")
forms are printed too. A model may output several answers (`preds`, and e.g. PRR's `oracle_preds`):
each is voted, under its prefix. Choices beyond the reference: votes are cleared per evaluation
(the reference keeps accumulating across checkpoints), and a test input with no prediction still
gets a submission entry (a 1x1 black grid), so multi-test tasks stay aligned. train.py calls
`evaluate_dataset` for its periodic evaluation.

--data takes a dataset of the checkpoint's vocabulary and canvas (seq_len); a model that sets
`any_canvas` (its weights do not depend on the canvas) is rebuilt for the dataset's canvas instead.
--show N prints the input, the answer after every ACT step (a model's `step_preds`, [B, steps, L],
when it returns them) and the target of N test puzzles in ANSI colours, and writes them as show.png
and an animated show.gif beside the checkpoint (or into --out).
"""
import collections
import copy as copy_module
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.distributed as dist

import cli
import config
import data
from checkpoint import check_out_dir, read_checkpoint, read_metrics, restore_rng, rng_state
from draw import animate, as_grid, print_panels, pyplot, render_task
from puzzles.grids import crop_grid, grid_hash, invert_aug, parse_aug_name

PASS_K = (1, 2, 5, 10, 100, 1000)


# --------------------------------------------------------------------------------------------------
# Running a model to halt

@torch.no_grad()
def run_batch(model, batch, max_calls=10000, frames=None):
    """Fresh carry, call until every sample halted -> (summed metrics, outputs of the last call).
    `frames` (a list) receives per call its answers [B, steps, L] (the model's `step_preds`, else
    `preds`) and which samples had halted after it."""
    carry = model.initial_carry(batch)
    totals = {}
    for _ in range(max_calls):
        carry, _, metrics, out = model(carry, batch)
        for k, v in metrics.items():  # per-sample metrics count where samples halted; losses: last
            totals[k] = v.float() if k.endswith("_loss") else totals.get(k, 0) + v.float()
        if frames is not None:
            frames.append((out.get("step_preds", out["preds"][:, None]).cpu(), carry.halted.cpu()))
        if bool(carry.halted.all()):
            return totals, out
    raise RuntimeError(f"model did not halt every sample within {max_calls} calls")


def evaluate_dataset(model, path, global_batch_size, rank=0, world=1, max_batches=0, out_dir=None):
    """Evaluate on the test split of `path`: the model's own metrics (per sample) and, for ARC
    datasets (test_puzzles.json), a vote over augmentations of each answer output as `*preds`."""
    was_training = model.training
    model.eval()
    loader = data.PuzzleDataset(path, "test", global_batch_size, rank=rank, world_size=world,
                                with_demos=model.needs_demos)
    is_arc = os.path.exists(os.path.join(path, "test_puzzles.json"))
    sums, voters = score_batches(model, loader, path if is_arc else None, max_batches)
    result = per_sample(sums, world, next(model.parameters()).device)
    for prefix, voter in voters.items():  # the same answers on every rank: gathers line up
        if world > 1:
            voter.gather(world)
        if rank == 0:
            arc = voter.result()
            result.update({k.replace("ARC/", "ARC/" + prefix): v for k, v in arc.items()
                           if k != "submission"})
            if out_dir and prefix == "":
                write_answers(voter, arc["submission"], out_dir)
    model.train(was_training)
    return result


def score_batches(model, loader, arc_path, max_batches):
    """Run every batch to halt: summed metrics, and ARC voters keyed by the prefix of each `*preds`
    output (`preds` -> "", a model's extra answers such as `oracle_preds` -> "oracle_");
    `<prefix>q_halt_logits` is that answer's confidence when the model gives one."""
    device = next(model.parameters()).device
    sums, voters = collections.Counter(), {}
    for n, batch in enumerate(loader, 1):
        batch = {k: v.to(device) for k, v in batch.items()}
        totals, out = run_batch(model, batch)
        sums.update({k: v.item() for k, v in totals.items()})
        for key in sorted(out) if arc_path else ():
            if key.endswith("preds") and out[key].shape == batch["inputs"].shape:
                prefix = key[:-len("preds")]
                q = out.get(prefix + "q_halt_logits",
                            torch.zeros(len(batch["inputs"]), device=device))
                voter = voters.setdefault(prefix, ARCVoter(arc_path))
                voter.update(batch["inputs"], batch["puzzle_identifiers"], out[key], q)
        if max_batches and n >= max_batches:
            break
    return sums, voters


def per_sample(sums, world, device):
    """Summed metrics of every rank -> per-sample means (losses too, as the reference), count."""
    names = sorted(sums)
    if world > 1:
        t = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        sums = dict(zip(names, t.tolist()))
    count = max(sums.get("count", 0), 1)
    means = {k: v / count for k, v in sums.items() if k != "count"}
    return {**means, "count": sums.get("count", 0)}


def write_answers(voter, submission, out_dir):
    """submission.json and a picture of the first task with its top attempts."""
    write_submission(submission, os.path.join(out_dir, "submission.json"))
    first = next(iter(voter.test_puzzles))
    render_task(voter.test_puzzles[first], submission[first],
                os.path.join(out_dir, f"task_{first}.png"), title=first)


# --------------------------------------------------------------------------------------------------
# ARC voting

class ARCVoter:
    """Votes per (task, test input) over the augmented versions' answers, in the original space."""

    def __init__(self, path):
        self.names = json.load(open(os.path.join(path, "identifiers.json")))
        self.test_puzzles = json.load(open(os.path.join(path, "test_puzzles.json")))
        self.clear()

    def clear(self):
        # (task, input hash) -> prediction hash -> [q]; prediction hash -> grid
        self.votes = collections.defaultdict(lambda: collections.defaultdict(list))
        self.grids = {}

    def update(self, inputs, puzzle_identifiers, preds, q_halt_logits):
        q = torch.sigmoid(q_halt_logits.double()).cpu().numpy()
        inputs, preds = inputs.cpu().numpy(), preds.cpu().numpy()
        for i, pid in enumerate(puzzle_identifiers.tolist()):
            if pid == 0:  # padding row (blank identifier)
                continue
            name = self.names[pid]
            grid_in = invert_aug(crop_grid(inputs[i]), name)
            grid_out = invert_aug(crop_grid(preds[i]), name)
            h = grid_hash(grid_out)
            self.grids[h] = grid_out
            self.votes[(parse_aug_name(name)[0], grid_hash(grid_in))][h].append(float(q[i]))

    def gather(self, world):
        """Merge every rank's votes into rank 0's (all_gather_object; small)."""
        mine = ({k: dict(v) for k, v in self.votes.items()}, self.grids)
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        self.clear()
        for votes, grids in everyone:
            self.grids.update(grids)
            for key, by_hash in votes.items():
                for h, qs in by_hash.items():
                    self.votes[key][h].extend(qs)

    def ranked(self, task, test_input):
        """Distinct predictions for one test input, best first: (count, mean q) descending."""
        cands = self.votes.get((task, grid_hash(np.array(test_input, dtype=np.uint8))), {})
        return sorted(cands, key=lambda h: (len(cands[h]), float(np.mean(cands[h]))), reverse=True)

    def result(self, ks=PASS_K):
        per_task = {k: [] for k in ks}
        micro, strict, submission = collections.Counter(), [], {}
        for task, puzzle in self.test_puzzles.items():
            hits = {k: [] for k in ks}
            entries = []
            for pair in puzzle["test"]:
                ranked = self.ranked(task, pair["input"])
                truth = grid_hash(np.array(pair["output"], dtype=np.uint8))
                for k in ks:
                    hits[k].append(truth in ranked[:k])
                top = [self.grids[h].tolist() for h in ranked if self.grids[h].size][:2] or [[[0]]]
                entries.append({"attempt_1": top[0], "attempt_2": (top * 2)[1]})  # one: repeat it
            submission[task] = entries
            for k in ks:
                per_task[k].append(np.mean(hits[k]))
                micro[k] += sum(hits[k])
            strict.append(all(hits[2]) if 2 in hits else False)
        n_tasks = max(len(self.test_puzzles), 1)
        n_pairs = max(sum(len(p["test"]) for p in self.test_puzzles.values()), 1)
        out = {f"ARC/pass@{k}": float(np.mean(per_task[k])) if per_task[k] else 0.0 for k in ks}
        if 2 in ks:
            out["ARC/pass@2_micro"] = micro[2] / n_pairs
            out["ARC/pass@2_strict"] = float(np.sum(strict)) / n_tasks
        out["submission"] = submission
        return out


def write_submission(submission, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(submission, f)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Watching a model think: --show

def thinking(model, batch):
    """Per sample: its answer after each step until it halted -> list of [steps, L] arrays (a halted
    sample restarts on the next call; those calls are not its own)."""
    calls = []
    run_batch(model, batch, frames=calls)
    done, steps = torch.zeros(len(batch["inputs"]), dtype=torch.bool), [[] for _ in batch["inputs"]]
    for preds, halted in calls:
        for i in torch.nonzero(~done).flatten().tolist():
            steps[i] += list(preds[i].numpy())
        done |= halted
    return [np.stack(s) for s in steps]


def show(model, path, n, out_dir):
    """--show: the first n test puzzles of `path` solved step by step, in the terminal and as
    show.png / show.gif in out_dir. -> {"steps": [steps per puzzle], "png": file, "gif": file}"""
    model.eval()
    is_arc = os.path.exists(os.path.join(path, "test_puzzles.json"))
    batch = next(iter(data.PuzzleDataset(path, "test", n, with_demos=model.needs_demos)), None)
    if batch is None:
        raise SystemExit(f"error: {path}/test holds no puzzle to show")
    device = next(model.parameters()).device
    steps = thinking(model, {k: v.to(device) for k, v in batch.items()})
    names = json.load(open(os.path.join(path, "identifiers.json"))) if is_arc else []
    width = shutil.get_terminal_size((120, 24)).columns
    rows = []
    for i in range(n):
        if not (batch["labels"][i] != -100).any():  # padding row: the split has fewer puzzles
            continue
        panels = [("input", as_grid(batch["inputs"][i], is_arc))]
        panels += [(f"step {s + 1}", as_grid(p, is_arc)) for s, p in enumerate(steps[i])]
        panels.append(("target", as_grid(batch["labels"][i], is_arc)))
        rows.append(panels)
        pid = int(batch["puzzle_identifiers"][i])
        title = f"test puzzle {i}" + (f" ({names[pid]})" if names else "")
        print_panels(title, panels, is_arc, width)
    if not rows:
        raise SystemExit(f"error: {path}/test holds no puzzle to show")
    return {"steps": [len(r) - 2 for r in rows], **animate(rows, is_arc, out_dir)}


# --------------------------------------------------------------------------------------------------
# Loading a checkpoint, the curves of a run, the command line

def load_ema(model, ema):
    """Copy an EMA shadow ({name: tensor}) into `model`'s parameters; returns the model."""
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(ema[k])
    return model


def evaluate_ema(model, ema, path, global_batch_size, rank=0, world=1, max_batches=0, out_dir=None):
    """evaluate_dataset on a copy of `model` holding the EMA weights (the model itself when ema is
    None), leaving the RNG as it found it: a training run that evaluates continues as one that does
    not."""
    rng = rng_state()
    copy = model if ema is None else load_ema(copy_module.deepcopy(model), ema)  # Model() draws RNG
    result = evaluate_dataset(copy, path, global_batch_size, rank, world, max_batches, out_dir)
    restore_rng(rng)
    return result


def load_model(checkpoint, use_ema=True, overrides=()):
    """Rebuild the model a nanoTRM checkpoint (or run folder) was trained with; EMA weights when
    present. `overrides` ("key=val") may change model keys that keep the weights' meaning: test-time
    depth (halt_max_steps, H_cycles, eval_n_steps, ...) or etrm's tto_steps. -> (model, ckpt)"""
    ckpt = read_checkpoint(checkpoint)
    return model_from(ckpt, use_ema, overrides), ckpt


def model_from(ckpt, use_ema=True, overrides=(), seq_len=None):
    """The model of a checkpoint read by checkpoint.read_checkpoint; seq_len: another canvas for a
    model whose weights do not depend on it (any_canvas)."""
    name = ckpt["model_name"]
    mod = config.model_module(name)
    cfg = config.config_from(mod.Config, ckpt["model_config"])
    for k in getattr(mod, "INIT_ONLY_KEYS", ()):  # e.g. a decoder to start from: in the weights
        setattr(cfg, k, type(getattr(cfg, k))())
    allowed = sorted(k for k in config.runtime_keys(name) if hasattr(cfg, k))
    for pair in overrides:
        key = pair.partition("=")[0]
        if "=" in pair and key not in allowed:
            raise SystemExit(f"error: --config {key} cannot change at evaluation of a {name} "
                             "checkpoint (it is not a key of the model, or it changes the weights' "
                             f"meaning); allowed: {', '.join(allowed)}")
    config.apply_overrides(overrides, cfg, cfg, name)
    config.check(cfg, name)
    cfg.seq_len = seq_len or cfg.seq_len
    model = config.build_model(mod, cfg, name)
    model.load_state_dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        load_ema(model, ckpt["ema"])
    return model


def plot_curves(out):
    """Training loss / accuracy and evaluation accuracy against step from <out>/metrics.jsonl ->
    <out>/curves.png."""
    plt = pyplot()
    rows = read_metrics(os.path.join(out, "metrics.jsonl"))
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval/exact_accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows])
    a.set(xlabel="step", ylabel="train loss", yscale="log", title="loss")
    for key in ("accuracy", "exact_accuracy"):
        b.plot([r["step"] for r in train_rows], [r.get(key, 0) for r in train_rows],
               label=f"train {key}")
    b.plot([r["step"] for r in eval_rows], [r["eval/exact_accuracy"] for r in eval_rows], "o-",
           label="eval exact_accuracy")
    b.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


def open_test_split(args, ckpt, model):
    """The dataset to score (--data, else the one the run trained on) and its test metadata, checked
    to fit the checkpoint (data.check_fit)."""
    try:
        path = data.ensure_dataset(args.data) if args.data else ckpt["data_path"]
        if not args.data and not os.path.isfile(os.path.join(path, "test", "dataset.json")):
            raise SystemExit(f"error: {args.checkpoint} was trained on {path}, which is gone or "
                             "has no test split; pass --data DIR")
        meta = data.load_metadata(path, "test")
        rows = min((v.shape[0] for k, v in ckpt["model"].items()
                    if k.endswith("puzzle_emb.weights")), default=None)
        data.check_fit(ckpt["model_config"], meta, args.checkpoint, path, rows,
                       getattr(model, "any_canvas", False))
    except (ValueError, OSError) as e:  # data.DataError included: one line naming the file
        raise SystemExit(f"error: {e}") from None
    return path, meta


def main(argv=None):
    p = cli.OneLineParser(description="Evaluate a nanoTRM checkpoint on a dataset's test split.")
    add = p.add_argument
    add("--checkpoint", required=True, help="checkpoint.pt written by train.py, or its run folder")
    add("--data", default="", help="dataset folder or name of the checkpoint's vocabulary and "
        "seq_len (default: the one the run trained on)")
    add("--out", default="", help="where submission.json, the task picture and --show's pictures "
        "go (default: beside the checkpoint)")
    add("--batch-size", type=int, default=None, help="evaluation batch (default: the run's)")
    add("--max-batches", type=int, default=0, help="stop after this many batches (0 = all)")
    add("--no-ema", action="store_true", help="use the raw weights instead of the EMA copy")
    add("--show", type=int, default=0, metavar="N", help="instead of scoring, draw N test puzzles: "
        "input, the answer after each step, target (terminal, show.png, show.gif)")
    add("--config", nargs="*", default=[], metavar="KEY=VAL", help="model keys that keep the "
        "weights' meaning: test-time depth (halt_max_steps=32, H_cycles, eval_n_steps, num_steps) "
        "or etrm's tto_steps=8")
    args = p.parse_args(argv)
    for flag, value, least in (("--batch-size", args.batch_size, 1),
                               ("--max-batches", args.max_batches, 0), ("--show", args.show, 0)):
        if value is not None and value < least:
            raise SystemExit(f"error: {flag} must be >= {least}, got {value}")
    model, ckpt = load_model(args.checkpoint, use_ema=not args.no_ema, overrides=args.config)
    path, meta = open_test_split(args, ckpt, model)
    if meta["seq_len"] != model.config.seq_len:  # a canvas-free model: same weights, this canvas
        model = model_from(ckpt, not args.no_ema, args.config, meta["seq_len"])
    ckpt_file = os.path.join(args.checkpoint, "checkpoint.pt") if os.path.isdir(args.checkpoint) \
        else args.checkpoint
    out = args.out or os.path.dirname(os.path.abspath(ckpt_file))
    check_out_dir(out)
    os.makedirs(out, exist_ok=True)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if args.show:
        return show(model, path, args.show, out)
    bs = args.batch_size or ckpt["train_config"].get("eval_batch_size") or \
        ckpt["train_config"]["global_batch_size"]
    result = evaluate_dataset(model, path, bs, max_batches=args.max_batches, out_dir=out)
    for k, v in result.items():
        print(f"{k:<24}{v:.4f}" if isinstance(v, float) else f"{k:<24}{v}")
    return result


if __name__ == "__main__":
    sys.exit(cli.one_line_errors(main))
