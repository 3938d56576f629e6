"""teach.py — what the five models learn on a laptop: recursion against one pass, more thinking on bigger mazes,
every model on CPU-sized tasks, ETRM reading demonstrations of unseen ARC tasks, and test-time adaptation.

    python -m experiments.teach                  # the whole suite on a CPU (2 cores: two trainings at a time)
    python -m experiments.teach --smoke          # every step at the smallest budget (tests; seconds, not minutes)
    python -m experiments.teach --scale 2        # twice the training steps everywhere

Tasks (built into --data-root on first use): `maze_small` (7x7 perfect mazes on an 11x11 wall canvas, mark the
unique shortest path), `maze_small_big` (the same training mazes, tested on 11x11 mazes), `sudoku6` (6x6 minimal
Sudoku) and an ARC set whose tasks fit a small canvas with the evaluation tasks held out (their demos never in
training), for ETRM and test-time adaptation.

1. depth at equal parameters: the same TRM weights (one network, same width and layers) trained on the same
   mazes for the same steps x batch, once as the smallest recursion that reads its input (T=1 round of n=1 latent
   update + 1 answer update = 2 network calls, one ACT step) and once recursive (T x (n+1) = 6 calls per ACT step,
   several ACT steps of deep supervision, paper section 4).
2. extrapolation: the recursive TRM, trained on 7x7 mazes, evaluated on 11x11 mazes with more ACT steps at test
   time (evaluate.load_model overrides halt_max_steps; evaluation always runs every step).
3. models: the five models on the suite tasks (exact and token accuracy of train.py's final evaluation, trunk
   parameters, wall seconds and CPU seconds of the training process).
4. ETRM held out: exact accuracy on tasks never trained on, reading their own demonstrations, against the same
   model fed another task's demonstrations (if the encoder is read, that must fail).
5. adaptation: pass@2 of solve.py on the held-out tasks treated as new, before (mode=none) and after test-time
   training of new embedding rows (TRM), and ETRM without / with its context optimisation (tto_steps).

Outputs in --out: results.json (the five headline entries), details.json (everything measured), table.md and
teach_depth.png, teach_extrapolation.png, teach_models.png. Wall times on a shared machine are inflated: the
table also gives CPU seconds. Each training runs in its own process with one thread, two at a time.
"""
import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `python experiments/teach.py` too
from experiments import pyplot, run_train
from experiments.compare import applicable, arc_tta
import data
import evaluate
from puzzles.grids import parse_aug_name

# Width 64, one block (experiments.TINY) for every model; only the recursion differs between the depth runs.
MAZE = ["puzzle_emb_ndim=0", "global_batch_size=32", "lr=2e-3"]
SUDOKU = ["puzzle_emb_ndim=0", "global_batch_size=32", "lr=3e-3", "mlp_t=True"]  # the paper's Sudoku network
ONE_CALL = ["H_cycles=1", "L_cycles=1", "halt_max_steps=1"]
RECURSIVE = ["H_cycles=2", "L_cycles=2", "halt_max_steps=4"]
PER_MODEL = {  # each model's own recursion knobs on the maze task (sizes: experiments.TINY)
    "hrm": ["H_cycles=2", "L_cycles=2", "halt_max_steps=4"],
    "etrm": RECURSIVE,
    "prr": [],                                # experiments.TINY: 4 branches, 4 steps, 2 with gradient
    "deep_recursive": ["n_inner=2", "n_outer=3", "eval_n_steps=8"],
}
ARC = ["hidden_size=64", "num_heads=4", "H_cycles=2", "L_cycles=2", "halt_max_steps=2", "global_batch_size=16",
       "lr=1e-3"]
# name -> (model, dataset, budget key of its steps, keys); the longest first, so two workers finish together
RUNS = {
    "trm": ("trm", "maze_small", "trm_steps", MAZE + RECURSIVE),
    "hrm": ("hrm", "maze_small", "steps", MAZE + PER_MODEL["hrm"]),
    "prr": ("prr", "maze_small", "steps", MAZE + PER_MODEL["prr"]),
    "etrm": ("etrm", "maze_small", "steps", MAZE + PER_MODEL["etrm"]),
    "one_call": ("trm", "maze_small", "trm_steps", MAZE + ONE_CALL),
    "etrm_arc": ("etrm", "arc_small", "arc_steps", ARC),
    "trm_arc": ("trm", "arc_small", "arc_steps", ARC + ["puzzle_emb_ndim=64"]),
    "deep_recursive": ("deep_recursive", "maze_small", "steps", MAZE + PER_MODEL["deep_recursive"]),
    "sudoku_recursive": ("trm", "sudoku6", "sudoku_steps", SUDOKU + RECURSIVE),
    "sudoku_one_call": ("trm", "sudoku6", "sudoku_steps", SUDOKU + ONE_CALL),
}
DEPTH = ("one_call", "recursive")          # the runs compared at equal parameters for results.json's "depth"
DEPTHS = [1, 2, 4, 8, 16]
BUDGET = {"steps": 600, "trm_steps": 1000, "arc_steps": 300, "sudoku_steps": 1000, "tta_steps": 20,
          "maze_train": 4000, "maze_test": 256, "sudoku_train": 600, "sudoku_test": 128}
SMOKE_KEYS = ["hidden_size=16", "num_heads=2", "base_channels=4", "latent_channels=16", "global_batch_size=8"]  # smoke: the smallest models, so a test runs the whole suite in seconds
SMOKE = {"steps": 2, "trm_steps": 2, "arc_steps": 2, "sudoku_steps": 2, "tta_steps": 1, "maze_train": 64,
         "maze_test": 16, "sudoku_train": 8, "sudoku_test": 8}


def _cpu_seconds():
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _train_job(model, out, path, steps, overrides):
    """One training in a fresh process, one thread, its progress in <out>.log: run_train's row + CPU seconds."""
    torch.set_num_threads(1)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    c0 = time.process_time()
    with open(out + ".log", "w") as log, contextlib.redirect_stdout(log):
        r = run_train(model, out, path, steps, overrides)
    r["cpu_seconds"] = time.process_time() - c0
    return {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool))}


class Pool:
    """Trainings two at a time (one per core); workers=0 runs them here, one after the other."""

    def __init__(self, workers):
        ctx = multiprocessing.get_context("spawn")
        self.ex = cf.ProcessPoolExecutor(workers, mp_context=ctx) if workers else None

    def close(self):
        """Wait for the workers to exit, so that their CPU time is counted (RUSAGE_CHILDREN: reaped children)."""
        if self.ex is not None:
            self.ex.shutdown(wait=True)

    def submit(self, *args):
        if self.ex is None:
            f = cf.Future()
            f.set_result(_train_job(*args))
            return f
        return self.ex.submit(_train_job, *args)


def evaluate_at(ckpt, path, overrides, batch_size=128):
    """(exact, token accuracy) of a checkpoint on the test split of `path` with depth keys (halt_max_steps,
    H_cycles, ...) set on the rebuilt model's config: TRM reads them at every call, and no weight depends on them."""
    model, _ = evaluate.load_model(ckpt)
    for pair in overrides:
        key, _, text = pair.partition("=")
        setattr(model.config, key, type(getattr(model.config, key))(text))
    r = evaluate.evaluate_dataset(model, path, batch_size)
    return r.get("exact_accuracy", 0.0), r.get("accuracy", 0.0)


def task_of(names, pid):
    return parse_aug_name(names[pid])[0]


def demo_swap_exact(ckpt, path, batch_size=64):
    """ETRM on the test split: exact accuracy reading each example's own demos, and reading the demos of an
    example of another task (the next one in the split whose task differs)."""
    model, _ = evaluate.load_model(ckpt)
    model.eval()
    names = json.load(open(os.path.join(path, "identifiers.json")))
    batches = [b for b in data.PuzzleDataset(path, "test", batch_size, with_demos=True)]
    allb = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    keep = allb["puzzle_identifiers"] > 0
    allb = {k: v[keep] for k, v in allb.items()}
    tasks = [task_of(names, int(p)) for p in allb["puzzle_identifiers"]]
    n = len(tasks)
    other = []
    for i in range(n):
        j = next((j % n for j in range(i + 1, i + n) if tasks[j % n] != tasks[i]), None)
        other.append(i if j is None else j)
    swapped = dict(allb)
    for k in ("demo_inputs", "demo_labels", "demo_mask"):
        swapped[k] = allb[k][other]
    scores = []
    for b in (allb, swapped):
        right = 0
        with torch.no_grad():
            for s in range(0, n, batch_size):
                part = {k: v[s:s + batch_size] for k, v in b.items()}
                _, out = evaluate.run_batch(model, part)
                mask = part["labels"] != -100
                right += int(((out["preds"] == part["labels"]) | ~mask).all(-1).sum())
        scores.append(right / max(n, 1))
    return scores[0], scores[1], len(set(tasks)) > 1


def build_data(root, b):
    """The suite's datasets (built once; a smoke run builds tiny ones under its own root)."""
    mk = lambda name, **kw: data.ensure_dataset(os.path.join(root, name)) if os.path.isfile(
        os.path.join(root, name, "train", "dataset.json")) else data.DATASETS[name](os.path.join(root, name), **kw)
    maze = dict(num_train=b["maze_train"], num_test=b["maze_test"])
    paths = {"maze_small": mk("maze_small", **maze), "maze_small_big": mk("maze_small_big", **maze),
             "sudoku6": mk("sudoku6", num_train=b["sudoku_train"], num_test=b["sudoku_test"])}
    arc = os.path.join(root, "arc_small")
    if not os.path.isfile(os.path.join(arc, "train", "dataset.json")):
        if "arc_small" in data.DATASETS:
            data.DATASETS["arc_small"](arc, **({"max_tasks": 2, "num_aug": 2} if b["smoke"] else {}))
        else:  # stand-in until a small-canvas ARC builder exists: a few ARC-AGI-1 tasks, evaluation held out
            data.build_arc(arc, max_tasks=2 if b["smoke"] else 12, num_aug=2 if b["smoke"] else 30, held_out=True)
    paths["arc_small"] = arc
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--smoke", action="store_true", help="smallest budget: tiny datasets, 2 steps per training")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every training's steps by this")
    p.add_argument("--workers", type=int, default=2, help="trainings at a time, each in its own process (0: here)")
    p.add_argument("--data-root", default="", help="where the datasets are built (default data/, smoke: <out>/data)")
    p.add_argument("--out", default="runs/teach", help="output folder")
    p.add_argument("--report-only", action="store_true", help="rewrite results.json, table.md and the plots from "
                                                              "<out>/details.json of an earlier run (no training)")
    args = p.parse_args(argv)
    if args.report_only:
        path = os.path.join(args.out, "details.json")
        if not os.path.isfile(path):
            raise SystemExit(f"error: --report-only: {path} does not exist (run the suite first)")
        return write_results(args.out, json.load(open(path)))
    b = dict(SMOKE if args.smoke else BUDGET, smoke=args.smoke)
    t0, c0 = time.time(), _cpu_seconds()
    os.makedirs(args.out, exist_ok=True)
    paths = build_data(args.data_root or (os.path.join(args.out, "data") if args.smoke else "data"), b)
    pool = Pool(args.workers)
    extra = SMOKE_KEYS if args.smoke else []
    jobs = {}
    for name, (model, task, budget, keys) in RUNS.items():
        keys = [("puzzle_emb_ndim=16" if extra and k == "puzzle_emb_ndim=64" else k) for k in keys]  # <= width
        jobs[name] = pool.submit(model, os.path.join(args.out, name), paths[task],
                                 max(1, round(b[budget] * args.scale)), applicable(model, keys + extra))
    res = {k: dict(f.result(), task=RUNS[k][1]) for k, f in jobs.items()}
    pool.close()
    ckpt = lambda k: os.path.join(res[k]["out_dir"], "checkpoint.pt")

    # extrapolation: trained on 7x7 with 4 ACT steps, run deeper on 11x11 (and on 7x7 for reference)
    depths = DEPTHS[:3] if args.smoke else DEPTHS
    big = [evaluate_at(ckpt("trm"), paths["maze_small_big"], [f"halt_max_steps={d}"]) for d in depths]
    small = [evaluate_at(ckpt("trm"), paths["maze_small"], [f"halt_max_steps={d}"]) for d in depths]
    one_big = [evaluate_at(ckpt("one_call"), paths["maze_small_big"], [f"halt_max_steps={d}"]) for d in depths]
    # the convolutional recursion (translation-equivariant, like the deep-thinking networks) on the same mazes,
    # and TRM-MLP on Sudoku of the training size, each run for more steps than it was trained with
    conv_big = [evaluate_at(ckpt("deep_recursive"), paths["maze_small_big"], [f"eval_n_steps={d}"]) for d in depths]
    sudoku = [evaluate_at(ckpt("sudoku_recursive"), paths["sudoku6"], [f"halt_max_steps={d}"]) for d in depths]

    # ETRM on held-out ARC tasks: own demos against another task's; adaptation before / after
    own, wrong, control_ok = demo_swap_exact(ckpt("etrm_arc"), paths["arc_small"])
    tta_dir = os.path.join(args.out, "adapt")
    with contextlib.redirect_stdout(open(os.path.join(args.out, "adapt.log"), "w")):
        trm_tta = arc_tta(ckpt("trm_arc"), paths["arc_small"], os.path.join(tta_dir, "trm"), b["tta_steps"], "trm")
        etrm_tta = arc_tta(ckpt("etrm_arc"), paths["arc_small"], os.path.join(tta_dir, "etrm"), b["tta_steps"], "etrm")
    wall, cpu = time.time() - t0, _cpu_seconds() - c0
    details = {"runs": res, "budget": b, "scale": args.scale, "wall_seconds": wall,
               "cpu_seconds": cpu, "threads": torch.get_num_threads(), "workers": args.workers,
               "extrapolation": {"depths": depths, "big_exact": [e for e, _ in big], "big_token": [t for _, t in big],
                                 "small_exact": [e for e, _ in small], "one_call_big_exact": [e for e, _ in one_big],
                                 "deep_recursive_big_exact": [e for e, _ in conv_big],
                                 "sudoku_exact": [e for e, _ in sudoku]},
               "etrm_heldout": {"exact": own, "wrong_demos_exact": wrong, "control_has_other_tasks": control_ok},
               "adaptation": {"trm": trm_tta, "etrm": etrm_tta}, "datasets": paths, "runs_keys": RUNS}
    with open(os.path.join(args.out, "details.json"), "w") as f:
        json.dump(details, f, indent=1, default=str)
    return write_results(args.out, details)


def headline(details):
    """results.json from details.json. A model's entry is its run with the highest exact accuracy among its
    recursive runs on the maze and Sudoku tasks (each labelled with its task; the others stay in details)."""
    res, ex = details["runs"], details["extrapolation"]
    one, rec = (res["trm" if k == "recursive" else k] for k in DEPTH)
    best = {}
    for name, r in res.items():
        model = RUNS[name][0] if name in RUNS else r.get("model", name)
        if r["task"] != "arc_small" and "one_call" not in name and (
                model not in best or r["exact_accuracy"] > best[model]["exact_accuracy"]):
            best[model] = r
    return {
        "depth": {"task": rec["task"], "one_call": one["exact_accuracy"], "recursive": rec["exact_accuracy"],
                  "params": rec["trunk_params"]},
        "extrapolation": {"train_size": 7, "test_size": 11, "depths": ex["depths"], "exact": ex["big_exact"]},
        "models": {m: {"task": best[m]["task"], "exact": best[m]["exact_accuracy"], "token_acc": best[m]["accuracy"],
                       "seconds": best[m]["seconds"]} for m in ("trm", "hrm", "etrm", "prr", "deep_recursive")},
        "etrm_heldout": {k: details["etrm_heldout"][k] for k in ("exact", "wrong_demos_exact")},
        "adaptation": {"trm_before": details["adaptation"]["trm"][0], "trm_after": details["adaptation"]["trm"][1],
                       "etrm_before": details["adaptation"]["etrm"][0], "etrm_after": details["adaptation"]["etrm"][1]},
    }


def write_results(out, details):
    results = headline(details)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(out, results, details)
    return results


def report(out, results, details):
    """table.md and the three plots; prints where they went."""
    f = lambda v: f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
    runs, ex = details["runs"], details["extrapolation"]
    lines = ["### Every run (maze_small: 7x7 mazes on an 11x11 canvas; sudoku6; arc_small held out)", "",
             "| run | model | task | steps | exact | token acc | trunk params | wall s | CPU s | samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {RUNS.get(name, ('?',))[0]} | {r['task']} | {r.get('step', '?')} | "
                     f"{f(r['exact_accuracy'])} | {f(r['accuracy'])} | {f(r['trunk_params'])} | {r['seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} | {r['samples_per_s']:.0f} |")
    lines += ["", "### Each model's best suite task (results.json)", "", "| model | task | exact | token acc |",
              "|---|---|---|---|"]
    for m, r in results["models"].items():
        lines.append(f"| {m} | {r['task']} | {f(r['exact'])} | {f(r['token_acc'])} |")
    d = results["depth"]
    lines += ["", "### Depth at equal parameters (TRM, 7x7 mazes)", "",
              "| network calls | exact | token acc | trunk params |", "|---|---|---|---|",
              f"| 2 (T=1, n=1, 1 ACT step) | {f(d['one_call'])} | {f(runs['one_call']['accuracy'])} | "
              f"{f(runs['one_call']['trunk_params'])} |",
              f"| 6 per ACT step x 4 (T=2, n=2) | {f(d['recursive'])} | {f(runs['trm']['accuracy'])} | {f(d['params'])} |",
              "", "### Depth at equal parameters (TRM-MLP, 6x6 Sudoku)", "",
              "| network calls | exact | token acc | trunk params |", "|---|---|---|---|"]
    for k, label in (("sudoku_one_call", "2 (T=1, n=1, 1 ACT step)"), ("sudoku_recursive", "6 per ACT step x 4")):
        lines.append(f"| {label} | {f(runs[k]['exact_accuracy'])} | {f(runs[k]['accuracy'])} | "
                     f"{f(runs[k]['trunk_params'])} |")
    lines += [
              "", "### Test-time depth (TRM trained on 7x7 with 4 ACT steps)", "",
              "| ACT steps at test | " + " | ".join(map(str, ex["depths"])) + " |", "|---" * (len(ex["depths"]) + 1) + "|",
              "| exact, 11x11 | " + " | ".join(map(f, ex["big_exact"])) + " |",
              "| exact, 7x7 | " + " | ".join(map(f, ex["small_exact"])) + " |",
              "| exact, 11x11, 2-call TRM | " + " | ".join(map(f, ex["one_call_big_exact"])) + " |",
              "| exact, 11x11, deep_recursive (eval_n_steps; trained with 6) | " +
              " | ".join(map(f, ex["deep_recursive_big_exact"])) + " |",
              "| exact, 6x6 Sudoku, TRM-MLP | " + " | ".join(map(f, ex["sudoku_exact"])) + " |"]
    e, a = results["etrm_heldout"], results["adaptation"]
    lines += ["", "### Held-out ARC tasks", "",
              f"ETRM exact with its own demos {f(e['exact'])}, with another task's demos {f(e['wrong_demos_exact'])}  ",
              f"pass@2 of solve.py on them as new tasks: TRM {f(a['trm_before'])} -> {f(a['trm_after'])} with "
              f"test-time training; ETRM {f(a['etrm_before'])} -> {f(a['etrm_after'])} with context optimisation  ",
              "", f"wall {details['wall_seconds']:.0f} s, CPU {details['cpu_seconds']:.0f} s "
              f"({details['workers']} trainings at a time, one thread each)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(text)
    print(text)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pairs = [("7x7 mazes (TRM)", runs["one_call"], runs["trm"]),
             ("6x6 Sudoku (TRM-MLP)", runs["sudoku_one_call"], runs["sudoku_recursive"])]
    for i, (label, one, rec) in enumerate(pairs):
        ax.bar([i - 0.18], [one["exact_accuracy"]], 0.36, color="grey", label="2 calls" if i == 0 else None)
        ax.bar([i + 0.18], [rec["exact_accuracy"]], 0.36, color="tab:blue", label="6 calls x 4 ACT" if i == 0 else None)
    ax.set(xticks=range(len(pairs)), xticklabels=[p[0] for p in pairs], ylim=(0, 1), ylabel="exact accuracy",
           title="same weights, same samples: one pass vs recursion")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "teach_depth.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ex["depths"], ex["big_exact"], "o-", label="11x11 (bigger than training), TRM")
    ax.plot(ex["depths"], ex["small_exact"], "s--", label="7x7 (training size), TRM")
    ax.plot(ex["depths"], ex["deep_recursive_big_exact"], "^-", label="11x11, deep_recursive (steps)")
    ax.plot(ex["depths"], ex["sudoku_exact"], "d:", label="6x6 Sudoku, TRM-MLP")
    ax.axvline(4, color="grey", ls=":", lw=1)
    ax.set(xscale="log", xticks=ex["depths"], xticklabels=ex["depths"], ylim=(-0.02, 1.02),
           xlabel="ACT steps at test time (dotted: training)", ylabel="exact accuracy", title="thinking longer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "teach_extrapolation.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(results["models"])
    ax.bar(names, [results["models"][m]["exact"] for m in names])
    ax.set(ylim=(0, 1), ylabel="exact accuracy", title="each model's best suite task")
    for i, m in enumerate(names):
        ax.text(i, results["models"][m]["exact"] + 0.02, results["models"][m]["task"], ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "teach_models.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {out}/results.json, table.md, teach_depth.png, teach_extrapolation.png, teach_models.png")


if __name__ == "__main__":
    main()
