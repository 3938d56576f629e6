"""acc_vs_aug.py — ARC pass@1 / pass@2 against the number of augmented versions voted over (data.md §5.1).

    python -m experiments.acc_vs_aug                       # tiny ARC build + tiny TRM trained here (CPU, ~2 min)
    python -m experiments.acc_vs_aug --checkpoint runs/trm-arc1/checkpoint.pt --draws 16     # the real curve

The model runs ONCE over the test split (evaluate.run_batch), keeping one record per prediction: (task, version,
vote key, prediction hash, sigmoid(q_halt)). For N = 1, 2, 4, ... up to all versions, each of --draws draws picks
N versions per task at random (the same versions for every test input of the task, among those the task has),
and the vote is re-run over those records only with evaluate.ARCVoter's own ranking (votes, then mean q) and
pass@K. Plotted: mean ± std over draws against N (log x), and the identity version alone (no augmentation).
Only versions built into the dataset can be voted (their puzzle-embedding rows were trained). With the tiny
default budget the model solves no test task, so the curve sits at 0: the script shows the method; a trained
checkpoint gives the numbers.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `python experiments/acc_vs_aug.py` too
from experiments import pyplot, run_train, write_table
import data
import evaluate

# Small enough that a 900-token ARC step takes well under a second on one CPU thread.
ARC_TINY = ["hidden_size=32", "num_heads=2", "H_cycles=1", "L_cycles=1", "halt_max_steps=2", "global_batch_size=8",
            "puzzle_emb_ndim=32"]


def predictions(model, path, batch_size):
    """One pass over the test split -> (voter holding every predicted grid, [(task, version, key, hash, q)])."""
    model.eval()
    voter, records = evaluate.ARCVoter(path), []
    loader = data.PuzzleDataset(path, "test", batch_size, with_demos=model.needs_demos)
    device = next(model.parameters()).device
    for batch in loader:
        _, out = evaluate.run_batch(model, {k: v.to(device) for k, v in batch.items()})
        logit, preds = out.get("q_halt_logits", torch.zeros(len(batch["inputs"]))).cpu(), out["preds"].cpu()
        voter.update(batch["inputs"], batch["puzzle_identifiers"], preds, logit)  # keeps every predicted grid
        q = torch.sigmoid(logit.double())
        for i, pid in enumerate(batch["puzzle_identifiers"].tolist()):
            if pid:  # 0 = padding row; key and hash made as ARCVoter.update makes them
                name = voter.names[pid]
                key = (data.parse_aug_name(name)[0], data.grid_hash(data.invert_aug(data.crop_grid(batch["inputs"][i].numpy()), name)))
                records.append((key[0], name, key, data.grid_hash(data.invert_aug(data.crop_grid(preds[i].numpy()), name)), float(q[i])))
    return voter, records


def vote(voter, grids, records):
    voter.clear()
    voter.grids = grids
    for _, _, key, h, q in records:
        voter.votes[key][h].append(q)
    r = voter.result(ks=(1, 2))
    return r["ARC/pass@1"], r["ARC/pass@2"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--checkpoint", default="", help="a trained ARC checkpoint (default: train a tiny TRM here)")
    p.add_argument("--data", default="", help="ARC dataset folder (default: the checkpoint's, or a tiny build)")
    p.add_argument("--max-tasks", type=int, default=4, help="tiny build: first N tasks of each ARC-AGI-1 subset")
    p.add_argument("--num-aug", type=int, default=15, help="tiny build: augmentations per task")
    p.add_argument("--steps", type=int, default=30, help="training steps of the tiny TRM")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL", help="train.py keys for the tiny TRM")
    p.add_argument("--draws", type=int, default=8, help="random subsets per N")
    p.add_argument("--batch-size", type=int, default=64, help="evaluation batch")
    p.add_argument("--out", default="runs/acc_vs_aug", help="output folder")
    args = p.parse_args(argv)
    path = args.data
    if not path and not args.checkpoint:
        path = os.path.join(args.out, "arc")
        if not os.path.exists(os.path.join(path, "test_puzzles.json")):
            data.build_arc(path, max_tasks=args.max_tasks, num_aug=args.num_aug)
    ckpt = args.checkpoint or os.path.join(run_train("trm", os.path.join(args.out, "trm"), path, args.steps,
                                                     ARC_TINY + args.config)["out_dir"], "checkpoint.pt")
    model, saved = evaluate.load_model(ckpt)
    voter, records = predictions(model.to("cuda" if torch.cuda.is_available() else "cpu"), path or saved["data_path"], args.batch_size)
    grids = dict(voter.grids)
    by_task = {}
    for rec in records:
        by_task.setdefault(rec[0], set()).add(rec[1])
    most = max(len(v) for v in by_task.values())
    rng = np.random.default_rng(0)
    rows = [{"N": "identity only", "n": 1, **dict(zip(("pass@1", "pass@2"), vote(voter, grids, [r for r in records if "|||" not in r[1]]))),
             "pass@1_std": 0.0, "pass@2_std": 0.0}]
    for n in sorted({min(2 ** i, most) for i in range(int(np.ceil(np.log2(most))) + 1)}):
        scores = []
        for _ in range(args.draws if n < most else 1):
            keep = {t: set(rng.choice(sorted(v), min(n, len(v)), replace=False)) for t, v in by_task.items()}
            scores.append(vote(voter, grids, [r for r in records if r[1] in keep[r[0]]]))
        m, s = np.mean(scores, 0), np.std(scores, 0)
        rows.append({"N": n, "n": n, "pass@1": m[0], "pass@2": m[1], "pass@1_std": s[0], "pass@2_std": s[1]})
    write_table(args.out, rows, [("N", "versions voted (per task)"), ("pass@1", "pass@1"), ("pass@1_std", "± std"),
                                 ("pass@2", "pass@2"), ("pass@2_std", "± std")],
                f"pass@K against versions voted: {len(by_task)} tasks, up to {most} versions, {args.draws} draws",
                notes=[f"checkpoint {ckpt}; {len(records)} predictions from one pass over the test split"])
    plt = pyplot()
    fig, a = plt.subplots(figsize=(6, 4))
    pts = rows[1:]
    for k in ("pass@1", "pass@2"):
        a.errorbar([r["n"] for r in pts], [r[k] for r in pts], [r[k + "_std"] for r in pts], marker="o", capsize=3, label=k)
        a.axhline(rows[0][k], ls=":", color="grey")
    a.set(xscale="log", xlabel="augmented versions voted per task", ylabel="score", ylim=(-0.02, 1.02),
          title="accuracy vs augmentations (dotted: identity only)")
    a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "acc_vs_aug.png"), dpi=100)
    plt.close(fig)
    return rows


if __name__ == "__main__":
    main()
