"""compare.py — the five models on the same dataset with the same budget: one table, one plot.

    python -m experiments.compare                      # toy task, 300 steps per model (CPU, ~2 min)
    python -m experiments.compare --models trm prr --steps 1000
    python data.py arc1 --num-aug 8 --max-tasks 5 --out data/arc_tiny
    python -m experiments.compare --data data/arc_tiny
    python -m experiments.compare --data arc1 --paper-sizes --steps 100000               # GPU

Each model is trained by train.main from its tiny config (experiments.TINY, then --config) and
evaluated once at the end by train.py. Columns: exact and token accuracy; on ARC data (a folder
with test_puzzles.json) pass@2 voted over the dataset's augmentations, and solve.py's pass@2 on
the test tasks renamed as unseen, without (mode=none: the mean embedding row) and with test-time
adaptation (new rows trained on the demos, or the context optimised for a model with
`tto_steps`); trunk parameters and puzzle-embedding values; train samples/s (train.py's last
progress line); peak memory (CUDA max_memory_allocated, or the CPU process's peak RSS, which
includes ~200-400 MB of Python + torch: small differences between tiny models mean little).
"""
import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file too
from experiments import MEMORY_LABEL, pyplot, run_train, write_table
import config
import data
import solve
import train


def arc_tta(ckpt, data_path, out, steps, model):
    """solve.py's pass@2 on the test tasks as unseen tasks: (mode=none, adapted for `steps`)."""
    tasks = json.load(open(os.path.join(data_path, "test_puzzles.json")))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "challenges.json"), "w") as f:
        json.dump({f"new-{t}": {"train": v["train"],
                                "test": [{"input": p["input"]} for p in v["test"]]}
                   for t, v in tasks.items()}, f)
    with open(os.path.join(out, "solutions.json"), "w") as f:
        json.dump({f"new-{t}": [p["output"] for p in v["test"]] for t, v in tasks.items()}, f)
    fields = {f.name for f in dataclasses.fields(config.model_module(model).Config)}
    tto = [f"tto_steps={steps}"] if "tto_steps" in fields else []
    scores = []
    for mode, extra in (("none", []), ("embeddings", [f"steps={steps}", *tto])):
        r = solve.main(["--checkpoint", ckpt, "--tasks", f"{out}/challenges.json",
                        "--solutions", f"{out}/solutions.json", "--out", f"{out}/{mode}",
                        "--config", f"mode={mode}", "num_aug=8", "batch_size=32", *extra])
        scores.append(r["ARC/pass@2"])
    return scores


def applicable(model, pairs):
    """The --config pairs this model has a key for (training keys apply to all), so hidden_size=512
    can be given once for the models that have one (deep_recursive has none)."""
    names = {f.name for c in (train.TrainConfig, config.model_module(model).Config)
             for f in dataclasses.fields(c)}
    return [kv for kv in pairs if kv.split("=", 1)[0] in names]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--models", nargs="+", default=list(config.MODELS), help="default: all five")
    p.add_argument("--data", default="toy", help="dataset name or built folder (default: toy)")
    p.add_argument("--steps", type=int, default=300,
                   help="optimisation steps per model (the shared budget)")
    p.add_argument("--tta-steps", type=int, default=20,
                   help="test-time adaptation steps per ARC task (solve.py)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="train.py keys, each applied to every model that has it")
    p.add_argument("--paper-sizes", action="store_true", help="the models' and train.py's "
                   "defaults (the papers' settings) instead of experiments.TINY")
    p.add_argument("--out", default="runs/compare", help="output folder: table.md, "
                   "results.json, compare.png, one run per model")
    args = p.parse_args(argv)
    unused = set(args.config) - {kv for m in args.models for kv in applicable(m, args.config)}
    if unused:
        raise SystemExit(f"error: no model in {args.models} has the config key(s) "
                         f"{sorted(unused)}")
    path = data.ensure_dataset(args.data, root="data")
    is_arc = os.path.exists(os.path.join(path, "test_puzzles.json"))
    rows = []
    for m in args.models:
        r = run_train(m, os.path.join(args.out, m), path, args.steps, applicable(m, args.config),
                      tiny=not args.paper_sizes)
        r["model"] = m
        if is_arc:
            r["tta_none"], r["tta"] = arc_tta(os.path.join(r["out_dir"], "checkpoint.pt"), path,
                                              os.path.join(args.out, m, "solve"),
                                              args.tta_steps, m)
        rows.append(r)
    cols = [("model", "model"), ("exact_accuracy", "exact acc"), ("accuracy", "token acc")]
    if is_arc:
        cols += [("ARC/pass@2", "pass@2"), ("tta_none", "pass@2 unseen, no TTA"),
                 ("tta", f"pass@2 unseen, TTA {args.tta_steps} steps")]
    cols += [("trunk_params", "trunk params"), ("table_values", "embedding values"),
             ("samples_per_s", "train samples/s"), ("peak_mb", MEMORY_LABEL), ("step", "steps")]
    write_table(args.out, rows, cols, f"{len(rows)} models on {args.data}, {args.steps} steps each",
                notes=[f"train.py keys (on each model that has them): "
                       f"{' '.join(args.config) or '(none)'}; per-model sizes: experiments.TINY",
                       *([] if is_arc
                         else ["pass@2 and test-time adaptation: n/a (not an ARC dataset)"])])
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(rows))
    bars = [("exact_accuracy", "exact acc"), ("accuracy", "token acc")]
    bars += [("ARC/pass@2", "pass@2")] if is_arc else []
    for i, (key, label) in enumerate(bars):
        a.bar([j + 0.27 * i for j in x], [r.get(key, 0) for r in rows], 0.27, label=label)
    a.set(xticks=[j + 0.27 * (len(bars) - 1) / 2 for j in x],
          xticklabels=[r["model"] for r in rows], ylim=(0, 1),
          title=f"{args.data}, {args.steps} steps")
    a.legend()
    b.bar(x, [r["samples_per_s"] for r in rows])
    b.set(xticks=list(x), xticklabels=[r["model"] for r in rows], ylabel="train samples/s",
          title="throughput")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "compare.png"), dpi=100)
    plt.close(fig)
    return rows


if __name__ == "__main__":
    main()
