"""evaluate.py — evaluation for every nanoTRM model: token / exact accuracy, and for ARC the vote over
augmentations, pass@K, the ARC-Prize score and a Kaggle `submission.json` (../shared/spec/data.md §5, §7).

    python evaluate.py --checkpoint runs/trm-arc1/checkpoint.pt            # the run's own test split
    python evaluate.py --checkpoint runs/trm-arc1/checkpoint.pt --data data/arc1 --out results/

Every test sample runs until it halts (halt_max_steps ACT calls in eval). For ARC each prediction is cropped
from its 30x30 canvas, mapped back through the inverse of its augmentation, and voted per (task, test input):
distinct grids ranked by (number of versions that produced them, mean sigmoid(q_halt)) descending.
pass@K = mean over tasks of the fraction of test inputs whose answer is among the top K (macro, as ARC
Prize's scoring and TRM's pass@2); the micro and strict ("all test inputs solved") forms are printed too.
Choices beyond the reference: votes are cleared per evaluation (the reference keeps accumulating across
checkpoints; `accumulate=True` on ARCVoter reproduces it), and a test input with no prediction still gets a
submission entry (a 1x1 black grid), so multi-test tasks stay aligned.
train.py calls `evaluate_dataset` for its periodic evaluation.
"""
import argparse
import collections
import json
import os

import numpy as np
import torch
import torch.distributed as dist

import config
import data

PASS_K = (1, 2, 5, 10, 100, 1000)
ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


# ----------------------------------------------------------------------------------------------------
# Running a model to halt

@torch.no_grad()
def run_batch(model, batch, max_calls=10000):
    """Fresh carry, call until every sample halted. Returns (summed metrics, outputs of the last call)."""
    carry = model.initial_carry(batch)
    totals = {}
    for _ in range(max_calls):
        carry, _, metrics, out = model(carry, batch)
        for k, v in metrics.items():  # per-sample metrics count only where samples halted; losses: last call
            totals[k] = v.float() if k.endswith("_loss") else totals.get(k, 0) + v.float()
        if bool(carry.halted.all()):
            return totals, out
    raise RuntimeError(f"model did not halt every sample within {max_calls} calls")


def evaluate_dataset(model, path, global_batch_size, rank=0, world=1, max_batches=0, out_dir=None, voter=None):
    """Evaluate on the test split of `path`; ARC datasets (with test_puzzles.json) are also voted."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = data.PuzzleDataset(path, "test", global_batch_size, rank=rank, world_size=world,
                                with_demos=model.needs_demos)
    if voter is None and os.path.exists(os.path.join(path, "test_puzzles.json")):
        voter = ARCVoter(path)
    oracle = None  # models with several hypotheses (prr) also vote their label-chosen best branch: an upper bound
    sums, n_batches = collections.Counter(), 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        totals, out = run_batch(model, batch)
        sums.update({k: v.item() for k, v in totals.items()})
        if voter is not None:
            q = out.get("q_halt_logits", torch.zeros(len(batch["inputs"]), device=device))
            voter.update(batch["inputs"], batch["puzzle_identifiers"], out["preds"], q)
            if "oracle_preds" in out:
                oracle = oracle or ARCVoter(path)
                oracle.update(batch["inputs"], batch["puzzle_identifiers"], out["oracle_preds"], out["oracle_q_halt_logits"])
        n_batches += 1
        if max_batches and n_batches >= max_batches:
            break
    names = sorted(sums)
    if world > 1:
        t = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        sums = dict(zip(names, t.tolist()))
    count = max(sums.get("count", 0), 1)
    result = {k: v / count for k, v in sums.items() if k != "count"}
    result["count"] = sums.get("count", 0)
    if voter is not None:
        if world > 1:
            voter.gather(world)
        if rank == 0:
            arc = voter.result()
            result.update({k: v for k, v in arc.items() if k != "submission"})
            if out_dir:
                write_submission(arc["submission"], os.path.join(out_dir, "submission.json"))
                first = next(iter(voter.test_puzzles))
                render_task(voter.test_puzzles[first], [a for a in arc["submission"][first]],
                            os.path.join(out_dir, f"task_{first}.png"), title=first)
        if not voter.accumulate:
            voter.clear()
    if oracle is not None:  # every rank has one (same model), so the gather is collective
        if world > 1:
            oracle.gather(world)
        if rank == 0:
            result.update({k.replace("ARC/", "ARC/oracle_"): v for k, v in oracle.result().items() if k != "submission"})
    model.train(was_training)
    return result


# ----------------------------------------------------------------------------------------------------
# ARC voting (data.md §5)

class ARCVoter:
    def __init__(self, path, accumulate=False):
        self.names = json.load(open(os.path.join(path, "identifiers.json")))
        self.test_puzzles = json.load(open(os.path.join(path, "test_puzzles.json")))
        self.accumulate = accumulate
        self.clear()

    def clear(self):
        self.votes = collections.defaultdict(lambda: collections.defaultdict(list))  # (task, input hash) -> pred hash -> [q]
        self.grids = {}  # pred hash -> grid

    def update(self, inputs, puzzle_identifiers, preds, q_halt_logits):
        q = torch.sigmoid(q_halt_logits.double()).cpu().numpy()
        inputs, preds = inputs.cpu().numpy(), preds.cpu().numpy()
        for i, pid in enumerate(puzzle_identifiers.tolist()):
            if pid == 0:  # padding row (blank identifier)
                continue
            name = self.names[pid]
            task = data.parse_aug_name(name)[0]
            grid_in = data.invert_aug(data.crop_grid(inputs[i]), name)
            grid_out = data.invert_aug(data.crop_grid(preds[i]), name)
            h = data.grid_hash(grid_out)
            self.grids[h] = grid_out
            self.votes[(task, data.grid_hash(grid_in))][h].append(float(q[i]))

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
        cands = self.votes.get((task, data.grid_hash(np.array(test_input, dtype=np.uint8))), {})
        return sorted(cands, key=lambda h: (len(cands[h]), float(np.mean(cands[h]))), reverse=True)

    def result(self, ks=PASS_K):
        per_task = {k: [] for k in ks}
        micro, strict, submission = collections.Counter(), [], {}
        for task, puzzle in self.test_puzzles.items():
            hits = {k: [] for k in ks}
            entries = []
            for pair in puzzle["test"]:
                ranked = self.ranked(task, pair["input"])
                truth = data.grid_hash(np.array(pair["output"], dtype=np.uint8))
                for k in ks:
                    hits[k].append(truth in ranked[:k])
                top = [self.grids[h].tolist() for h in ranked if self.grids[h].size][:2] or [[[0]]]  # never empty
                entries.append({"attempt_1": top[0], "attempt_2": (top * 2)[1]})  # one distinct: repeat it
            submission[task] = entries
            for k in ks:
                per_task[k].append(np.mean(hits[k]))
                micro[k] += sum(hits[k])
            strict.append(all(hits[2]) if 2 in hits else False)
        n_tasks, n_pairs = max(len(self.test_puzzles), 1), max(sum(len(p["test"]) for p in self.test_puzzles.values()), 1)
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


def render_task(task, attempts, path, title=""):
    """A picture of one task: demonstration pairs, then each test input, its answer and the top attempts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    rows = [("demo in", p["input"], "demo out", p["output"]) for p in task["train"]]
    panels = [[(a, g), (b, h)] for a, g, b, h in rows]
    for i, pair in enumerate(task["test"]):
        att = attempts[i] if i < len(attempts) else {}
        panels.append([("test in", pair["input"]), ("answer", pair.get("output", [[0]])),
                       ("attempt 1", att.get("attempt_1", [[0]])), ("attempt 2", att.get("attempt_2", [[0]]))])
    ncols = max(len(r) for r in panels)
    fig, axes = plt.subplots(len(panels), ncols, figsize=(2.2 * ncols, 2.2 * len(panels)), squeeze=False)
    cmap = ListedColormap(ARC_COLOURS)
    for r, row in enumerate(panels):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                label, grid = row[c]
                ok = "" if not label.startswith("attempt") else (" ✓" if grid == row[1][1] else " ✗")
                ax.imshow(np.array(grid), cmap=cmap, vmin=0, vmax=9)
                ax.set_title(label + ok, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# CLI

def load_model(checkpoint, use_ema=True, overrides=()):
    """Rebuild the model a nanoTRM checkpoint was trained with; EMA weights when present.

    `overrides` ("key=val") may change model keys that do not change the weights (e.g. etrm's tto_steps)."""
    ckpt = config.load_file(checkpoint)
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise SystemExit(f"error: {checkpoint} is not a nanoTRM checkpoint (reference TRM weights load through "
                         "trm.convert_reference_state_dict)")
    mod = config.model_module(ckpt["model_name"])
    from trm import config_from
    cfg = config_from(mod.Config, ckpt["model_config"])
    for k in getattr(mod, "INIT_ONLY_KEYS", ()):  # e.g. a decoder to start from: the weights already hold it
        setattr(cfg, k, type(getattr(cfg, k))())
    for pair in overrides:
        key, _, text = pair.partition("=")
        if key not in config.runtime_keys(ckpt["model_name"]) or not hasattr(cfg, key):
            raise SystemExit(f"error: --config {key} cannot change at evaluation (it changes the weights' meaning); "
                             f"allowed: {', '.join(sorted(k for k in config.runtime_keys(ckpt['model_name']) if hasattr(cfg, k)))}")
        setattr(cfg, key, config.coerce(key, text, getattr(cfg, key), ckpt["model_name"]))
    model = mod.Model(cfg)
    model.load_state_dict(ckpt["model"])
    if use_ema and ckpt.get("ema"):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(ckpt["ema"][k])
    return model, ckpt


def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a nanoTRM checkpoint on a dataset's test split.")
    p.add_argument("--checkpoint", required=True, help="path to checkpoint.pt written by train.py")
    p.add_argument("--data", default="", help="dataset folder or name (default: the one the run trained on)")
    p.add_argument("--out", default="", help="where submission.json and the task picture go (default: beside the checkpoint)")
    p.add_argument("--batch-size", type=int, default=0, help="evaluation batch (default: the run's global batch)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0 = all)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA copy")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="model keys that do not change the weights, e.g. tto_steps=8 for etrm")
    args = p.parse_args(argv)
    model, ckpt = load_model(args.checkpoint, use_ema=not args.no_ema, overrides=args.config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    try:
        path = data.ensure_dataset(args.data) if args.data else ckpt["data_path"]
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    out = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out, exist_ok=True)
    bs = args.batch_size or ckpt["train_config"].get("eval_batch_size") or ckpt["train_config"]["global_batch_size"]
    result = evaluate_dataset(model, path, bs, max_batches=args.max_batches, out_dir=out)
    for k, v in result.items():
        print(f"{k:<24}{v:.4f}" if isinstance(v, float) else f"{k:<24}{v}")
    return result


if __name__ == "__main__":
    main()
