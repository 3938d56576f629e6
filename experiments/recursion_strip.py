"""recursion_strip.py — watch the recursion: a puzzle's answer after every ACT step, with Q-halt.

    python -m experiments.recursion_strip   # a TRM-MLP solving a 6x6 Sudoku, one ACT step at a time
    python -m experiments.recursion_strip --checkpoint runs/trm-arc1/checkpoint.pt --index 3

Default: the Sudoku TRM-MLP of `python -m experiments.teach` (runs/teach/sudoku) if it
exists, else the same network trained here on `sudoku6` for --steps (4 ACT steps of 6 network
calls); the strip runs it for --depth ACT steps (default 8, twice its training depth) on a test
puzzle, so the digits fill in step by step. For the mazes: --data maze_small_big --checkpoint
runs/teach/trm/checkpoint.pt.

The model is called on one test example exactly as evaluation calls it (fresh carry, one call per
ACT step, the carry passed on), keeping every call's answer: the strip shows the input, the answer
after each ACT step titled with sigmoid(q_halt) (the model's belief that it is right; evaluation
halts there once trained) and the share of cells right, and the target. ARC examples are cropped
to their grid (crop_grid), full square canvases (Sudoku, mazes) drawn as squares, others as
rows of tokens (ARC colours for tokens 2-11; token 1, a Sudoku blank or maze wall, white). Models
without ACT (prr, deep_recursive) halt after one call: one step.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file too
from experiments import pyplot, run_train, write_table
from experiments.teach import RECURSIVE, SUDOKU
import data
import draw
import evaluate
from puzzles.grids import crop_grid


def as_grid(tokens, labels, is_arc):
    """Token row -> 2-D array of colours 0-9 (-1 = blank) over the cells the label covers."""
    if is_arc:
        return crop_grid(np.asarray(tokens, np.uint8)).astype(int)
    keep = labels != -100
    side = int(round(len(labels) ** 0.5))
    if keep.all() and side * side == len(labels):  # a full square canvas (mazes, Sudoku)
        return np.asarray(tokens).astype(int).reshape(side, side) - 2
    return (np.asarray(tokens)[keep].astype(int) - 2)[None]  # toy: one row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--checkpoint", default="", help="a trained checkpoint (default: "
                   "runs/teach/sudoku's, or train a small TRM-MLP on sudoku6 here)")
    p.add_argument("--data", default="", help="dataset of the puzzle (default: sudoku6, or the "
                   "checkpoint's when one is given)")
    p.add_argument("--index", type=int, default=0, help="which test example")
    p.add_argument("--depth", type=int, default=None, help="ACT steps to run (default: 8 on the "
                   "default Sudoku, else the checkpoint's halt_max_steps)")
    p.add_argument("--steps", type=int, default=1000, help="training steps of the small TRM")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="train.py keys for the tiny TRM")
    p.add_argument("--out", default="runs/recursion_strip", help="output folder")
    args = p.parse_args(argv)
    ckpt, default = args.checkpoint, not args.checkpoint and not args.data
    taught = os.path.join("runs", "teach", "sudoku", "checkpoint.pt")
    if default and os.path.exists(taught):
        ckpt = taught
    if not ckpt:  # the Sudoku recursion of experiments.teach: 6 network calls x 4 ACT steps
        path = data.ensure_dataset(args.data or "sudoku6", root="data")
        ckpt = os.path.join(run_train("trm", os.path.join(args.out, "trm"), path, args.steps,
                                      [*SUDOKU, *RECURSIVE, *args.config])["out_dir"],
                            "checkpoint.pt")
    model, saved = evaluate.load_model(ckpt)
    model.eval()
    depth = args.depth or (8 if default else 0)
    if depth and hasattr(model.config, "halt_max_steps"):  # read at every call, in no weight
        model.config.halt_max_steps = depth
    path = data.ensure_dataset(args.data, root="data") if args.data else saved["data_path"]
    is_arc = os.path.exists(os.path.join(path, "test_puzzles.json"))
    loader = data.PuzzleDataset(path, "test", args.index + 1, with_demos=model.needs_demos)
    batch = {k: v[args.index:args.index + 1] for k, v in next(iter(loader)).items()}
    labels = batch["labels"][0].numpy()
    carry, steps = model.initial_carry(batch), []
    with torch.no_grad():
        for _ in range(10000):
            carry, _, _, out = model(carry, batch)
            pred = out["preds"][0].numpy()
            q = (float(torch.sigmoid(out["q_halt_logits"][0])) if "q_halt_logits" in out
                 else float("nan"))
            mask = labels != -100
            steps.append({"step": len(steps) + 1, "q": q,
                          "cells_right": float((pred[mask] == labels[mask]).mean()),
                          "exact": bool((pred[mask] == labels[mask]).all()),
                          "grid": as_grid(pred, labels, is_arc)})
            if bool(carry.halted.all()):
                break
    rows = [{k: v for k, v in s.items() if k != "grid"} for s in steps]
    write_table(args.out, rows, [("step", "ACT step"), ("q", "sigmoid(q_halt)"),
                                 ("cells_right", "cells right"), ("exact", "exact")],
                f"test example {args.index} of {path}, step by step", notes=[f"checkpoint {ckpt}"])
    panels = [("input", as_grid(batch["inputs"][0].numpy(), labels, is_arc))]
    panels += [(f"step {s['step']}\nq={s['q']:.2f} {'✓' if s['exact'] else '✗'}", s["grid"])
               for s in steps]
    panels += [("target", as_grid(np.where(labels == -100, 0, labels), labels, is_arc))]
    plt = pyplot()
    from matplotlib.colors import ListedColormap
    wide = panels[0][1].shape[0] == 1
    cols = 1 if wide else min(len(panels), 6)
    nrows = len(panels) if wide else -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6, 0.8 * len(panels)) if wide
                             else (2.2 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, grid) in zip(axes.flat, panels):
        ax.imshow(np.ma.masked_less(grid, 0), cmap=ListedColormap(draw.ARC_COLOURS), vmin=0,
                  vmax=9)
        ax.set_xticks([]), ax.set_yticks([])
        (ax.set_ylabel(title.replace("\n", " "), rotation=0, ha="right", va="center", fontsize=8)
         if wide else ax.set_title(title, fontsize=9))
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "recursion_strip.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {os.path.join(args.out, 'recursion_strip.png')} and "
          f"{os.path.join(args.out, 'table.md')}")
    return rows


if __name__ == "__main__":
    main()
