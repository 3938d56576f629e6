"""ablate.py — one thing changed at a time, per model family: train.main runs, a table, a plot.

    python -m experiments.ablate trm        # H_cycles x L_cycles, then halt_max_steps (ACT)
    python -m experiments.ablate prr        # K in 1,2,4,8; comm_alpha; tau; diversity; schedule
    python -m experiments.ablate etrm       # encoder; act_mode; leave_one_out; test-time context
    python -m experiments.ablate deep_recursive   # memory_efficient True vs False (same grads)
    python -m experiments.ablate trm --data sudoku --paper-sizes --steps 20000     # GPU

Every variant: the model's tiny config (experiments.TINY) + --config + the variant's keys, trained
for --steps on --data and evaluated once at the end by train.py. The ETRM test-time optimisation
row re-evaluates the baseline run's checkpoint with tto_steps set (evaluate.evaluate_dataset, as
etrm.py says). Peak memory: CUDA max_memory_allocated, or on a CPU the RSS (with Python + torch).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file too
from experiments import MEMORY_LABEL, pyplot, run_train, write_table
import data
import evaluate

GRIDS = {  # variant label -> config keys; the first of each block is the model's tiny default
    "trm": [(f"H{h} L{l}", [f"H_cycles={h}", f"L_cycles={l}"])
            for h in (1, 2, 3) for l in (1, 2, 4)]
           + [(f"ACT {n}", [f"halt_max_steps={n}"]) for n in (1, 4, 8)],
    "prr": [(f"K={k}", [f"num_branches={k}"]) for k in (1, 2, 4, 8)]
           + [(f"alpha={a}", [f"comm_alpha={a}"]) for a in (0.0, 0.5)]
           + [(f"tau={t}", [f"tau={t}"]) for t in (0.01, 1.0)]
           + [(f"div={d}", [f"diversity_weight={d}"]) for d in (0.0, 0.5)]
           + [("public schedule", ["public_schedule=True"])],
    "etrm": [(e, [f"encoder_type={e}"]) for e in ("standard", "lpn_standard", "lpn_variational")]
            + [("act_mode=fixed", ["act_mode=fixed", "num_act_steps=2"]),
               ("leave_one_out=0.5", ["leave_one_out=0.5"])],
    "deep_recursive": [("memory_efficient", ["memory_efficient=True"]),
                       ("standard", ["memory_efficient=False"])],
}
QUICK = {"trm": ["H1 L1", "H2 L2", "ACT 4"], "prr": ["K=1", "K=4", "public schedule"],  # --quick
         "etrm": ["standard"], "deep_recursive": ["memory_efficient", "standard"]}


def etrm_tto(result, tto_steps, batch):
    """Re-evaluate a trained ETRM with test-time context optimisation (etrm.py: evaluate twice)."""
    model, ckpt = evaluate.load_model(os.path.join(result["out_dir"], "checkpoint.pt"))
    model.config.tto_steps = tto_steps
    r = evaluate.evaluate_dataset(model, ckpt["data_path"], batch)
    return {**r, "variant": f"standard + TTO {tto_steps} steps", "peak_mb": float("nan"),
            "seconds": float("nan")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("family", choices=sorted(GRIDS), help="which model's ablation grid to run")
    p.add_argument("--data", default="toy", help="dataset name or built folder (default: toy)")
    p.add_argument("--steps", type=int, default=150, help="optimisation steps per variant")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="train.py keys applied to every variant")
    p.add_argument("--tto-steps", type=int, default=10,
                   help="etrm: test-time optimisation steps of the TTO row")
    p.add_argument("--quick", action="store_true", help="a few variants only (smoke test)")
    p.add_argument("--paper-sizes", action="store_true", help="the models' and train.py's "
                   "defaults (the papers' settings) instead of experiments.TINY")
    p.add_argument("--out", default="", help="output folder (default runs/ablate-<family>)")
    args = p.parse_args(argv)
    out = args.out or f"runs/ablate-{args.family}"
    path = data.ensure_dataset(args.data, root="data")
    grid = [(n, c) for n, c in GRIDS[args.family] if not args.quick or n in QUICK[args.family]]
    rows = []
    for name, keys in grid:
        r = run_train(args.family, os.path.join(out, name.replace(" ", "_").replace("=", "")),
                      path, args.steps, [*args.config, *keys], tiny=not args.paper_sizes)
        rows.append({**r, "variant": name})
    if args.family == "etrm" and args.tto_steps:
        rows.append(etrm_tto(rows[0], args.tto_steps, 32))
    extra = {"trm": [("steps", "mean ACT steps")],
             "prr": [("oracle_exact_accuracy", "oracle exact (any branch)")],
             "etrm": [("context_var", "context variance"),
                      ("tto_demo_loss_init", "TTO demo loss before"),
                      ("tto_demo_loss_best", "after")]}.get(args.family, [])
    cols = [("variant", "variant"), ("exact_accuracy", "exact acc"), ("accuracy", "token acc"),
            *extra, ("lm_loss", "eval lm loss"), ("samples_per_s", "train samples/s"),
            ("peak_mb", MEMORY_LABEL)]
    write_table(out, rows, cols,
                f"{args.family} ablation on {args.data}, {args.steps} steps per variant",
                notes=[f"train.py keys on every variant: {' '.join(args.config) or '(none)'}; "
                       "base sizes: experiments.TINY"])
    plt = pyplot()
    fig, a = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 4))
    x = range(len(rows))
    a.bar([i - 0.2 for i in x], [r.get("exact_accuracy", 0) for r in rows], 0.4, label="exact acc")
    a.bar([i + 0.2 for i in x], [r.get("accuracy", 0) for r in rows], 0.4, label="token acc")
    a.set(xticks=list(x), ylim=(0, 1),
          title=f"{args.family} ablation ({args.data}, {args.steps} steps)")
    a.set_xticklabels([r["variant"] for r in rows], rotation=30, ha="right")
    a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"ablate_{args.family}.png"), dpi=100)
    plt.close(fig)
    return rows


if __name__ == "__main__":
    main()
