"""acc_vs_aug.py — ARC pass@1 / pass@2 against the number of augmented versions voted over.

    python -m experiments.acc_vs_aug   # small-canvas ARC + a small TRM trained here (CPU minutes)
    python -m experiments.acc_vs_aug --checkpoint runs/trm-arc1/checkpoint.pt --draws 16

Default data: `arc_small` (the ARC-AGI-1 tasks whose grids fit 10x10) in the standard layout, so
every voted version has a puzzle-embedding row trained on its task's demos. The model runs ONCE
over the test split (evaluate.run_batch), keeping each prediction with its task and version. For
N = 1, 2, 4, ... up to all versions, each of --draws draws picks N of a task's versions at random
(the same for all its test inputs), and a fresh evaluate.ARCVoter votes over those predictions
only (its keying, ranking by votes then mean q, and pass@K). Plotted: mean ± std over draws
against N (log x), and the identity version alone. With the small default budget only a few easy
tasks are solved; a checkpoint trained longer gives the real curve.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file too
from experiments import pyplot, run_train, write_table
import data
import evaluate
from puzzles.grids import parse_aug_name

# A small TRM for the 100-token canvas: a step in a fraction of a second on one CPU thread.
ARC_TINY = ["hidden_size=64", "num_heads=4", "H_cycles=2", "L_cycles=2", "halt_max_steps=2",
            "global_batch_size=16", "puzzle_emb_ndim=64", "lr=1e-3"]


def predictions(model, path, batch_size):
    """One pass over the test split -> rows (inputs, puzzle ids, preds, q_halt logits; padding rows
    dropped) and [(task, version name)] per row."""
    model.eval()
    names = json.load(open(os.path.join(path, "identifiers.json")))
    loader = data.PuzzleDataset(path, "test", batch_size, with_demos=model.needs_demos)
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for batch in loader:
            _, out = evaluate.run_batch(model, {k: v.to(device) for k, v in batch.items()})
            q = out.get("q_halt_logits", torch.zeros(len(batch["inputs"]), device=device))
            keep = batch["puzzle_identifiers"] > 0
            parts.append([batch["inputs"][keep], batch["puzzle_identifiers"][keep],
                          out["preds"].cpu()[keep], q.cpu()[keep]])
    rows = [torch.cat(col) for col in zip(*parts)]
    versions = [(parse_aug_name(names[p])[0], names[p]) for p in rows[1].tolist()]
    return rows, versions


def vote(path, rows, keep):
    """pass@1, pass@2 of evaluate.ARCVoter over the rows where `keep` (bool list) is true."""
    voter = evaluate.ARCVoter(path)
    idx = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
    if len(idx):
        voter.update(*(col[idx] for col in rows))
    r = voter.result(ks=(1, 2))
    return r["ARC/pass@1"], r["ARC/pass@2"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--checkpoint", default="",
                   help="a trained ARC checkpoint (default: train a tiny TRM here)")
    p.add_argument("--data", default="", help="ARC dataset folder (default: the checkpoint's, "
                   "or arc_small built in the standard layout into <out>/arc_small)")
    p.add_argument("--max-tasks", type=int, default=None,
                   help="default build: first N tasks of each subset")
    p.add_argument("--num-aug", type=int, default=8, help="default build: augmentations per task")
    p.add_argument("--steps", type=int, default=400, help="training steps of the small TRM")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="train.py keys for the tiny TRM")
    p.add_argument("--draws", type=int, default=8, help="random subsets per N")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch")
    p.add_argument("--out", default="runs/acc_vs_aug", help="output folder")
    args = p.parse_args(argv)
    path = args.data
    if not path and not args.checkpoint:
        path = os.path.join(args.out, "arc_small")
        if not os.path.exists(os.path.join(path, "test_puzzles.json")):
            data.build("arc_small", path, held_out=False, num_aug=args.num_aug,
                       **({"max_tasks": args.max_tasks} if args.max_tasks else {}))
    ckpt = args.checkpoint or os.path.join(
        run_train("trm", os.path.join(args.out, "trm"), path, args.steps,
                  ARC_TINY + args.config)["out_dir"], "checkpoint.pt")
    model, saved = evaluate.load_model(ckpt)
    path = path or saved["data_path"]
    preds, versions = predictions(model.to("cuda" if torch.cuda.is_available() else "cpu"), path,
                                  args.batch_size)
    by_task = {}
    for task, name in versions:
        by_task.setdefault(task, set()).add(name)
    most = max(len(v) for v in by_task.values())
    rng = np.random.default_rng(0)
    identity = vote(path, preds, ["|||" not in name for _, name in versions])
    rows = [{"N": "identity only", "n": 1, "pass@1_std": 0.0, "pass@2_std": 0.0,
             **dict(zip(("pass@1", "pass@2"), identity))}]
    for n in sorted({min(2 ** i, most) for i in range(int(np.ceil(np.log2(most))) + 1)}):
        scores = []
        for _ in range(args.draws if n < most else 1):
            chosen = {t: set(rng.choice(sorted(v), min(n, len(v)), replace=False))
                      for t, v in by_task.items()}
            scores.append(vote(path, preds, [name in chosen[task] for task, name in versions]))
        m, s = np.mean(scores, 0), np.std(scores, 0)
        rows.append({"N": n, "n": n, "pass@1": m[0], "pass@2": m[1], "pass@1_std": s[0],
                     "pass@2_std": s[1]})
    write_table(args.out, rows,
                [("N", "versions voted (per task)"), ("pass@1", "pass@1"), ("pass@1_std", "± std"),
                 ("pass@2", "pass@2"), ("pass@2_std", "± std")],
                f"pass@K against versions voted: {len(by_task)} tasks, up to {most} versions, "
                f"{args.draws} draws",
                notes=[f"checkpoint {ckpt}; {len(versions)} predictions from one pass over the "
                       "test split"])
    plt = pyplot()
    fig, a = plt.subplots(figsize=(6, 4))
    pts = rows[1:]
    for k in ("pass@1", "pass@2"):
        a.errorbar([r["n"] for r in pts], [r[k] for r in pts], [r[k + "_std"] for r in pts],
                   marker="o", capsize=3, label=k)
        a.axhline(rows[0][k], ls=":", color="grey")
    a.set(xscale="log", xlabel="augmented versions voted per task", ylabel="score",
          ylim=(-0.02, 1.02), title="accuracy vs augmentations (dotted: identity only)")
    a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "acc_vs_aug.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.join(args.out, 'acc_vs_aug.png')} and "
          f"{os.path.join(args.out, 'table.md')}")
    return rows


if __name__ == "__main__":
    main()
