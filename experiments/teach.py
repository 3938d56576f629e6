"""teach.py: each model's own idea against the control that removes it, on laptop-sized tasks.

    python -m experiments.teach                # the whole suite (2 cores: two trainings at a time)
    python -m experiments.teach --smoke        # smallest budget (seconds; numbers mean nothing)
    python -m experiments.teach --scale 2      # twice the training steps everywhere
    python -m experiments.teach --report-only  # table.md, results.json, plots from details.json

RECIPES below is the whole suite, one line per recipe: the model, its task, steps and keys, and its
control. The control trains with the recipe's keys and the control's keys on top: the same weights
count, data, steps and batch (samples); only the model's idea is gone:
  trm             recursion (T=2 rounds of n=2 latent updates, 4 ACT steps of deep supervision,
                  paper section 4) against one pass (1 latent + 1 answer update: with n=0 the input
                  never enters the network, so 2 calls is the fewest that read it);
  hrm             two timescales (2 low-level updates per high-level one) against one timescale
                  (1 per high-level update, as many network calls);
  prr             K=4 parallel latent branches with Best-of-K against K=1;
  etrm            its own demonstrations against another task's, on held-out tasks (the same
                  checkpoint, evaluation only);
  deep_recursive  recursion (the progressive loss, up to 20 steps) against one step.
DEPTH names the recipes whose control is one pass (results "depth", two or more tasks).
EXTRAPOLATION runs a checkpoint trained on 7x7 mazes for more steps on 11x11 mazes of the same
canvas and on bigger canvases (a canvas-free model, `any_canvas`, is rebuilt there with the same
weights).

Tasks, built into --data-root on first use (`python data.py --help`): `maze_small` (7x7 mazes on an
11x11 wall canvas, mark the unique shortest path), `maze_small_big` (the same training mazes, tested
on 11x11 mazes), `maze_small_aug` (maze_small, each training maze in its 8 rotations and
reflections), `maze_small_15`/`_21` (bigger mazes on bigger canvases), `sudoku6` (6x6 minimal
Sudoku), `grid_programs` (colour-permutation programs; the test split's programs are held out).

Outputs in --out: results.json (the headline), details.json (everything measured), table.md,
teach_models.png, teach_depth.png, teach_extrapolation.png, a folder and a log per run. Each
training runs in its own process on one thread; wall and CPU seconds are recorded.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a file too
from experiments import pyplot, run_train
from experiments.compare import applicable
from puzzles.grids import parse_aug_name
import cli
import data
import evaluate

# Sizes: experiments.TINY (width 64, one block). Each run's learning-rate schedule spans its steps;
# compile=False: a CPU compile costs ~100 s per run, about what it saves at these lengths.
# Mazes: the 2-D mixer (conv_kernel=3), lr 2e-3, warm-up, a cosine to 0.1 (docs/teach.md).
MAZE = ["puzzle_emb_ndim=0", "global_batch_size=32", "lr=2e-3", "lr_min_ratio=0.1",
        "lr_warmup_steps=100", "weight_decay=0.1", "compile=False"]
SUDOKU = ["puzzle_emb_ndim=0", "global_batch_size=32", "lr=3e-3", "mlp_t=True",  # TRM-MLP
          "compile=False"]
RECURSIVE = ["H_cycles=2", "L_cycles=2", "halt_max_steps=4"]
ONE_PASS = ["H_cycles=1", "L_cycles=1", "halt_max_steps=1"]
# deep_recursive: the conv trunk trained with the progressive loss on mazes in all 8 orientations
# (docs/deep_recursive.md): it solves bigger mazes by running more steps.
CONV = ["trunk=conv", "base_channels=32", "n_res_blocks=1", "n_inner=4", "n_outer=5",
        "progressive=True", "eval_n_steps=20", "lr=1e-3", "lr_warmup_steps=50", "lr_min_ratio=1.0",
        "weight_decay=0.01"]
# ETRM: held-out exact jumps from ~0 to ~0.7 between steps 750 and 2,500 (by seed) at lr 1e-3
# (docs/teach.md, "ETRM held out: reaching the target"); eager, as measured (~0.11 CPU s a step).
PROGRAMS = ["hidden_size=64", "num_heads=4", "L_layers=1", "H_cycles=1", "L_cycles=1",
            "halt_max_steps=1", "encoder_num_layers=1", "puzzle_emb_len=4", "global_batch_size=64",
            "lr=1e-3", "lr_warmup_steps=20", "weight_decay=0.01", "loss_type=softmax",
            "compile=False"]
# The recipes, longest first so that two workers end together. name: (model, task, steps, keys,
# control, the control's keys on top of the recipe's; None: the same checkpoint with another
# task's demonstrations)
RECIPES = {
    # PRR: 16 core steps (its 4 learnt nothing), a CLS slot for its scorer (slot 0 is a grid cell
    # without one; len 0 = one slot at width 64), no diversity term (docs/teach.md, "HRM and PRR").
    "prr": ("prr", "sudoku6", 1000, SUDOKU + ["puzzle_emb_ndim=64", "puzzle_emb_len=0",
                                             "num_steps=16", "num_branches=4",
                                             "diversity_weight=0"], "K=1", ["num_branches=1"]),
    "trm": ("trm", "maze_small", 1500, MAZE + RECURSIVE + ["conv_kernel=3"], "one pass", ONE_PASS),
    "deep_recursive": ("deep_recursive", "maze_small_aug", 2000, MAZE + CONV, "one step",
                       ["n_inner=1", "n_outer=1", "eval_n_steps=1"]),
    "etrm": ("etrm", "grid_programs", 3000, PROGRAMS, "another task's demos", None),
    "hrm": ("hrm", "sudoku6", 2000, SUDOKU + RECURSIVE + ["lr_min_ratio=0.1",
                                                          "lr_warmup_steps=100"],
            "one timescale", ["H_cycles=3", "L_cycles=1"]),
    "sudoku": ("trm", "sudoku6", 1000, SUDOKU + RECURSIVE, "one pass", ONE_PASS),
}
DEPTH = ("trm", "sudoku", "deep_recursive")  # results "depth": their control is one pass / step
ATTENTION_MAZES = "trm"                      # results "attention_mazes"
# The recipe's checkpoint, trained on train_size mazes, run with `key` = each depth on each size.
EXTRAPOLATION = {"recipe": "deep_recursive", "key": "eval_n_steps",
                 "depths": [1, 2, 4, 8, 16, 32, 64, 128],
                 "train_size": 7, "sizes": {7: "maze_small_aug", 11: "maze_small_big",
                                            15: "maze_small_15", 21: "maze_small_21"}}
MAZES = {"num_train": 4000, "num_test": 256}
DATA = {"maze_small": MAZES, "maze_small_big": MAZES, "maze_small_aug": MAZES,
        "maze_small_15": {"num_test": 128}, "maze_small_21": {"num_test": 128},
        "sudoku6": {"num_train": 600, "num_test": 128}}
SMOKE_MAZES = {"num_train": 64, "num_test": 16}
SMOKE_DATA = {"maze_small": SMOKE_MAZES, "maze_small_big": SMOKE_MAZES,
              "maze_small_aug": SMOKE_MAZES, "maze_small_15": {"num_test": 8},
              "maze_small_21": {"num_test": 8}, "sudoku6": {"num_train": 8, "num_test": 8},
              "grid_programs": {"num_train": 32, "num_test": 8}}
SMOKE_KEYS = ["hidden_size=16", "num_heads=2", "base_channels=4", "latent_channels=16",
              "global_batch_size=8"]  # on each model that has the key
SMOKE_STEPS = 2
SMOKE_NOTE = "smoke (smallest budget, numbers mean nothing)"
MODELS = ("trm", "hrm", "etrm", "prr", "deep_recursive")


def _cpu_seconds():
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _train_job(model, out, path, steps, overrides):
    """One training in a fresh process on one thread, its progress in <out>.log: run_train's row
    and its CPU seconds."""
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
        """Wait for the workers to exit, so that their CPU time counts (RUSAGE_CHILDREN)."""
        if self.ex is not None:
            self.ex.shutdown(wait=True)

    def submit(self, *args):
        if self.ex is None:
            f = cf.Future()
            f.set_result(_train_job(*args))
            return f
        return self.ex.submit(_train_job, *args)


def plan(smoke, scale):
    """{run name: (recipe, model, task, steps, keys)}: every recipe's run, then every control's."""
    runs, controls = {}, {}
    for name, (model, task, steps, keys, _, control) in RECIPES.items():
        steps = SMOKE_STEPS if smoke else max(1, round(steps * scale))
        extra = applicable(model, SMOKE_KEYS) if smoke else []
        runs[name] = (name, model, task, steps, keys + extra)
        if control is not None:
            controls[name + "_control"] = (name, model, task, steps, keys + control + extra)
    return {**runs, **controls}


def build_data(root, smoke):
    """Every dataset the suite reads, built once into root/<name> -> {name: path}."""
    names = {r[1] for r in RECIPES.values()} | set(EXTRAPOLATION["sizes"].values())
    paths = {}
    for name in sorted(names):
        path = os.path.join(root, name)
        if not os.path.isfile(os.path.join(path, "train", "dataset.json")):
            data.build(name, path, **(SMOKE_DATA if smoke else DATA).get(name, {}))
        paths[name] = data.ensure_dataset(path)
    return paths


def evaluate_at(ckpt, path, overrides=()):
    """Exact accuracy of a checkpoint on the test split of `path` with test-time depth keys (no
    weight depends on them). A canvas-free model (any_canvas) is rebuilt for the dataset's seq_len
    with the same weights; another model on another canvas gives None."""
    model, saved = evaluate.load_model(ckpt, overrides=overrides)
    seq_len = data.load_metadata(path, "test")["seq_len"]
    if seq_len != model.config.seq_len:
        if not getattr(model, "any_canvas", False):
            return None
        model = evaluate.model_from(saved, overrides=overrides, seq_len=seq_len)
    return evaluate.evaluate_dataset(model, path, 128).get("exact_accuracy", 0.0)


def demo_swap_exact(ckpt, path, batch_size=64):
    """ETRM on the test split: exact accuracy reading each example's own demos, and reading those of
    another task's example (the next one in the split whose task differs); whether there was one."""
    model, _ = evaluate.load_model(ckpt)
    model.eval()
    names = json.load(open(os.path.join(path, "identifiers.json")))
    batches = list(data.PuzzleDataset(path, "test", batch_size, with_demos=True))
    allb = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    allb = {k: v[allb["puzzle_identifiers"] > 0] for k, v in allb.items()}
    tasks = [parse_aug_name(names[int(p)])[0] for p in allb["puzzle_identifiers"]]
    n = len(tasks)
    other = [next((j % n for j in range(i + 1, i + n) if tasks[j % n] != tasks[i]), i)
             for i in range(n)]
    swapped = dict(allb, **{k: allb[k][other] for k in ("demo_inputs", "demo_labels", "demo_mask")})
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


def earlier_runs(out, only):
    """--only a,b: every run of <out>/details.json but the named recipes' and their controls'."""
    if not only:
        return {}
    names = [n for n in only.split(",") if n]
    path = os.path.join(out, "details.json")
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not os.path.isfile(path):
        raise SystemExit(f"error: --only {only}: " + (f"no recipe {unknown[0]!r} (RECIPES: "
                         f"{', '.join(RECIPES)})" if unknown else f"{path} does not exist "
                         "(run the whole suite first)"))
    runs = json.load(open(path))["runs"]
    return {k: v for k, v in runs.items() if v["recipe"] not in names}


def extrapolate(ckpt, paths, smoke):
    """Exact accuracy at each depth on each test size (None where the model is tied to its
    canvas)."""
    ex = EXTRAPOLATION
    depths = ex["depths"][:3] if smoke else ex["depths"]
    sizes = {}
    for size, name in ex["sizes"].items():
        scores = [evaluate_at(ckpt, paths[name], [f"{ex['key']}={d}"]) for d in depths]
        sizes[str(size)] = None if None in scores else scores
    return {"recipe": ex["recipe"], "key": ex["key"], "train_size": ex["train_size"],
            "depths": depths, "sizes": sizes}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny datasets and models, 2 steps each")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps by this")
    p.add_argument("--workers", type=int, default=2,
                   help="trainings at a time, each its own process (0: one after the other, here)")
    p.add_argument("--data-root", default="",
                   help="where datasets are built (default data/, smoke: <out>/data)")
    p.add_argument("--out", default="runs/teach", help="output folder")
    p.add_argument("--only", default="", help="comma-separated recipes to re-run (with their "
                   "controls); the other runs are kept from <out>/details.json")
    p.add_argument("--report-only", action="store_true", help="rewrite results.json, table.md and "
                   "the plots from <out>/details.json (no training)")
    args = p.parse_args(argv)
    if args.report_only:
        path = os.path.join(args.out, "details.json")
        if not os.path.isfile(path):
            raise SystemExit(f"error: --report-only: {path} does not exist (run the suite first)")
        return write_results(args.out, json.load(open(path)))
    if not args.scale > 0:
        raise SystemExit(f"error: --scale {args.scale}: expected a number > 0")
    if args.workers < 0:
        raise SystemExit(f"error: --workers {args.workers}: expected an integer >= 0")
    before = earlier_runs(args.out, args.only)
    t0, c0 = time.time(), _cpu_seconds()
    os.makedirs(args.out, exist_ok=True)
    root = args.data_root or (os.path.join(args.out, "data") if args.smoke else "data")
    paths = build_data(root, args.smoke)
    runs = {name: r for name, r in plan(args.smoke, args.scale).items() if name not in before}
    pool = Pool(args.workers)
    jobs = {name: pool.submit(model, os.path.join(args.out, name), paths[task], steps, keys)
            for name, (_, model, task, steps, keys) in runs.items()}
    res = {name: dict(jobs[name].result(), recipe=r[0], model=r[1], task=r[2], keys=r[4])
           for name, r in runs.items()}
    res = {**before, **res}
    pool.close()
    ckpt = lambda name: os.path.join(res[name]["out_dir"], "checkpoint.pt")
    held_out = next(k for k, r in RECIPES.items() if r[5] is None)
    own, wrong, other_tasks = demo_swap_exact(ckpt(held_out), paths[RECIPES[held_out][1]])
    fields = ("model", "task", "steps", "keys", "control", "control_keys")
    details = {
        "smoke": args.smoke, "scale": args.scale, "workers": args.workers, "only": args.only,
        "datasets": paths,
        "recipes": {name: dict(zip(fields, r)) for name, r in RECIPES.items()}, "runs": res,
        "depth": list(DEPTH), "attention_mazes": ATTENTION_MAZES,
        "extrapolation": extrapolate(ckpt(EXTRAPOLATION["recipe"]), paths, args.smoke),
        "etrm_heldout": {"recipe": held_out, "task": RECIPES[held_out][1], "exact": own,
                         "wrong_demos_exact": wrong, "control_has_other_tasks": other_tasks}}
    details["wall_seconds"], details["cpu_seconds"] = time.time() - t0, _cpu_seconds() - c0
    print(f"teach: wall {details['wall_seconds']:.0f} s, CPU {details['cpu_seconds']:.0f} s")
    with open(os.path.join(args.out, "details.json"), "w") as f:
        json.dump(details, f, indent=1, default=str)
    return write_results(args.out, details)


def headline(d):
    """results.json from details.json: exact accuracy on unseen test puzzles, 0..1."""
    runs, ex, held = d["runs"], d["extrapolation"], d["etrm_heldout"]
    exact = lambda name: runs[name]["exact_accuracy"]
    models = {}
    for m in MODELS:
        r = d["recipes"][m]
        own, control = (held["exact"], held["wrong_demos_exact"]) if m == held["recipe"] else \
            (exact(m), exact(m + "_control"))
        models[m] = {"task": r["task"], "exact": own, "control": r["control"],
                     "control_exact": control, "params": runs[m]["trunk_params"]}
    test_size = min(int(s) for s in ex["sizes"] if int(s) > ex["train_size"])
    a = runs[d["attention_mazes"]]
    return {
        "depth": [{"task": runs[n]["task"], "model": runs[n]["model"],
                   "params": runs[n]["trunk_params"], "one_call": exact(n + "_control"),
                   "recursive": exact(n)} for n in d["depth"]],
        "extrapolation": {"model": runs[ex["recipe"]]["model"], "train_size": ex["train_size"],
                          "test_size": test_size, "depths": ex["depths"],
                          "exact": ex["sizes"][str(test_size)]},
        "models": models,
        "etrm_heldout": {k: held[k] for k in ("task", "exact", "wrong_demos_exact")},
        "attention_mazes": {"recipe": " ".join([a["model"], *d["recipes"][a["recipe"]]["keys"]]),
                            "steps": a["step"], "exact": a["exact_accuracy"]},
    }


def write_results(out, details):
    results = headline(details)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report(out, results, details)
    return results


def f3(v):
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else f"{v:,}"


def row(*cells):
    return "| " + " | ".join(map(str, cells)) + " |"


def table(out, results, d):
    """table.md: the recipes against their controls first, then depth, extrapolation, every run."""
    runs, ex = d["runs"], d["extrapolation"]
    lines = ["### The teaching suite" + (f": {SMOKE_NOTE}" if d["smoke"] else ""), "",
             "#### Each model's idea against its control (same weights count, same samples)", "",
             row("model", "task", "steps", "exact", "control", "control exact", "trunk params"),
             "|---" * 7 + "|"]
    lines += [row(k, v["task"], runs[k]["step"], f3(v["exact"]), v["control"],
                  f3(v["control_exact"]), f3(v["params"])) for k, v in results["models"].items()]
    lines += ["", "#### One pass against recursion, same weights (exact)", "",
              row("task", "model", "one pass", "recursive", "trunk params"), "|---" * 5 + "|"]
    lines += [row(e["task"], e["model"], f3(e["one_call"]), f3(e["recursive"]), f3(e["params"]))
              for e in results["depth"]]
    lines += ["", f"#### Thinking longer: {results['extrapolation']['model']} trained on "
              f"{ex['train_size']}x{ex['train_size']} mazes, exact at each {ex['key']}", "",
              row("test mazes", *ex["depths"]), "|---" * (len(ex["depths"]) + 1) + "|"]
    for size, scores in ex["sizes"].items():
        cells = map(f3, scores) if scores else ["n/a (not canvas-free)"] * len(ex["depths"])
        lines.append(row(f"{size}x{size}", *cells))
    h, a = results["etrm_heldout"], results["attention_mazes"]
    lines += ["", f"ETRM on held-out {h['task']} tasks: exact {f3(h['exact'])} with their own "
              f"demos, {f3(h['wrong_demos_exact'])} with another task's.  ",
              f"Attention on mazes ({a['recipe']}, {a['steps']} steps): exact {f3(a['exact'])}.",
              "", "#### Every run", "",
              row("run", "model", "task", "steps", "exact", "token acc", "trunk params", "wall s",
                  "CPU s"), "|---" * 9 + "|"]
    lines += [row(k, r["model"], r["task"], r["step"], f3(r["exact_accuracy"]), f3(r["accuracy"]),
                  f3(r["trunk_params"]), f"{r['seconds']:.0f}", f"{r['cpu_seconds']:.0f}")
              for k, r in runs.items()]
    lines += ["", f"wall {d['wall_seconds']:.0f} s, CPU {d['cpu_seconds']:.0f} s "
              f"({max(1, d['workers'])} training(s) at a time, one thread each)"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(text)
    print(text)


def bars(out, name, groups, labels, title):
    """Grouped bars of exact accuracy: groups [(x label, [value per label])] -> <out>/<name>."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [g[1][j] for g in groups], width, label=label)
    ax.set(xticks=range(len(groups)), ylim=(0, 1), ylabel="exact accuracy", title=title)
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=100)
    plt.close(fig)


def report(out, results, d):
    """table.md and the three plots; prints where they went."""
    table(out, results, d)
    note = f"\n{SMOKE_NOTE}" if d["smoke"] else ""
    ex = d["extrapolation"]
    bars(out, "teach_models.png", [(f"{k}\n{v['task']}\nvs {v['control']}",
                                    [v["exact"], v["control_exact"]])
                                   for k, v in results["models"].items()],
         ["the model's idea", "control"], "each model against its control" + note)
    bars(out, "teach_depth.png", [(f"{e['task']}\n{e['model']}", [e["one_call"], e["recursive"]])
                                  for e in results["depth"]], ["one pass", "recursion"],
         "same weights, same samples: one pass vs recursion" + note)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for size, scores in ex["sizes"].items():
        if scores:
            train = " (training size)" if int(size) == ex["train_size"] else ""
            ax.plot(ex["depths"], scores, "o-", label=f"{size}x{size}{train}")
    ax.set(xscale="log", xticks=ex["depths"], xticklabels=ex["depths"], ylim=(-0.02, 1.02),
           xlabel=f"{ex['key']} at test time", ylabel="exact accuracy",
           title=f"thinking longer on bigger mazes ({results['extrapolation']['model']})" + note)
    ax.minorticks_off()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "teach_extrapolation.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {out}/results.json, table.md, teach_models.png, teach_depth.png, "
          "teach_extrapolation.png")


if __name__ == "__main__":
    sys.exit(cli.one_line_errors(main))
