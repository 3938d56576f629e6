"""solve.py — unseen ARC tasks: test-time adaptation of a trained checkpoint, then a Kaggle
`submission.json`.

    python solve.py --checkpoint runs/trm-arc1/checkpoint.pt --tasks arc-agi_test_challenges.json
    python solve.py --checkpoint CKPT --tasks challenges.json --solutions solutions.json \
        --out results/ --config mode=full steps=300 lr=3e-5 num_aug=100 task_seconds=120 \
        total_seconds=43200
    python solve.py --help                                    # every config key with its default

A model that names a puzzle by a learned row of a puzzle-embedding table (TRM, HRM, PRR,
deep_recursive) has no row for a task it never trained on. For every task of --tasks absent from the
run's training split:
  1. versions: the task and up to num_aug augmentations (dihedral x colour map), found by the
     dataset builder's own search (puzzles/arc.py) over the demos and test INPUTS (test outputs are
     dropped when the file is read);
  2. rows: one new row per version in every embedding table, the mean of the checkpoint's rows;
  3. adaptation on the versions' demos (placed as the builder places a train split) for `steps` /
     `task_seconds`: mode=embeddings trains the new rows with sign-SGD, mode=full also every weight
     with AdamATan2 (restored after each task), mode=none is the baseline; joint=True adapts all
     unseen tasks in one run;
  4. every test input of every version run to halt and voted by evaluate.ARCVoter.
Tasks trained on are only predicted, over their versions (a held-out task's rows exist but are
untrained: it is adapted). Models with `needs_demos` (etrm) get each version's demos in the batch
and adapt by their own test-time optimisation (--config tto_steps=N).
The checkpoint must be one of an ARC task (its dataset ARC's 12 tokens, with test_puzzles.json); the
canvas side is sqrt(seq_len): 30 for ARC, 10 for arc_small. Out folder (default <checkpoint
folder>/solve): submission.json (written before --solutions is opened), identifiers.json,
adapt_log.jsonl, loss_curves.png, and with --solutions scores.json and task pictures. Tasks past
total_seconds get fallback entries ([[0]]).
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import torch

import cli
import config
import data
import draw
import evaluate
import optim
import train
from puzzles.arc import LegacyStream, augmentations, encode_group, offsets
from puzzles.arc_sources import check_task, read_challenges
from puzzles.common import write_json
from puzzles.grids import GRID, PAD, aug_name, grid_hash, parse_aug_name

ARC_VOCAB = 12  # PAD, EOS and the ten colours (puzzles/grids.py)


@dataclasses.dataclass
class SolveConfig:
    mode: "str in embeddings|full|none" = "embeddings"  # full: the weights too (restored)
    joint: "bool" = False             # adapt all unseen tasks together, not one by one
    num_aug: "int >= 0" = 32          # extra versions per task (reference: 1000)
    translate: "bool" = True          # random demo placement, as the train split's
    steps: "int >= 0" = 200           # adaptation steps per task (joint: in all)
    batch_size: "int >= 1" = 64       # demo examples per adaptation step
    emb_lr: "float > 0" = 3e-2        # sign-SGD step of the new embedding rows
    emb_weight_decay: "float >= 0" = 0.1  # decoupled decay of the new rows
    lr: "float > 0" = 1e-4            # AdamATan2 learning rate of the weights (mode=full)
    weight_decay: "float >= 0" = 0.1  # AdamATan2 weight decay (mode=full)
    grad_clip: "float >= 0" = 1.0     # max global grad norm of the weights (mode=full; 0 = off)
    task_seconds: "float >= 0" = 0.0  # adaptation time budget per task (0 = none)
    total_seconds: "float >= 0" = 0.0  # budget of the run; later tasks: fallbacks (0 = none)
    eval_batch_size: "int >= 1" = 256  # rows per prediction batch
    use_ema: "bool" = True            # start from the checkpoint's EMA weights when it has them
    seed: "int in [0, 2**32)" = 0     # augmentation draws, demo placement and adaptation batches
    render: "int >= 0" = 1            # task pictures to draw when --solutions is given


def arc_checkpoint(ckpt, name, path):
    """The canvas side of a checkpoint trained on ARC tasks, `path` its dataset (checked to fit:
    data.check_fit); any other task is refused in one line."""
    meta = data.load_metadata(path, "train")
    data.check_fit(ckpt["model_config"], meta, name, path)
    side, arc = math.isqrt(meta["seq_len"]), os.path.isfile(os.path.join(path, "test_puzzles.json"))
    if meta["vocab_size"] != ARC_VOCAB or not arc or side * side != meta["seq_len"] or side > GRID:
        raise SystemExit(f"error: {name} was trained on {path} (vocab_size={meta['vocab_size']}, "
                         f"seq_len={meta['seq_len']}), not on ARC tasks ({ARC_VOCAB} tokens on a "
                         f"square canvas of side <= {GRID}, with a test_puzzles.json): solve.py "
                         "adapts ARC checkpoints")
    return side


# --------------------------------------------------------------------------------------------------
# Tasks, versions, examples: the dataset builder's own functions

def load_tasks(path, side=GRID):
    """challenges.json -> {task_id: {"train": [(in, out)], "test": [(in, None)]}} of uint8 grids,
    each checked to fit the side x side canvas; test outputs are dropped here, so nothing downstream
    can see them."""
    return {tid: check_task(task, f"{path}: task {tid}", side, test_outputs=False)
            for tid, task in read_challenges(path).items()}


def versions(task_id, task, num_aug, stream):
    """[(name, t, colour map)], the original first: the builder's augmentation search over demos and
    test inputs (an unknown test output counts as its input)."""
    pairs = task["train"] + [(x, x) for x, _ in task["test"]]
    ts, maps = augmentations(pairs, num_aug, stream)
    return [(aug_name(task_id, int(t), m), int(t), m) for t, m in zip(ts, maps)]


def encode(pairs, vers, side, stream, translate):
    """Every pair in every version, placed as the builder places a split -> inputs, labels uint8
    [V * P, side^2]."""
    ts = np.array([t for _, t, _ in vers], np.uint8)
    maps = np.stack([m for _, _, m in vers]).astype(np.uint8)
    r0, c0 = offsets(stream, pairs, ts, translate, side)
    return encode_group(pairs, ts, maps, r0, c0, side)


def demo_examples(task, vers, ids, side, stream, translate):
    """The demo pairs of every version: inputs, raw labels (PAD kept) and targets (PAD -> -100),
    puzzle ids."""
    x, y = encode(task["train"], vers, side, stream, translate)
    ids = np.repeat(ids, len(task["train"]))
    return {"inputs": torch.from_numpy(x.astype(np.int32)), "raw_labels": y,
            "labels": torch.from_numpy(np.where(y == PAD, -100, y.astype(np.int32))),
            "puzzle_identifiers": torch.tensor(ids, dtype=torch.int32)}


# --------------------------------------------------------------------------------------------------
# Embedding rows, adaptation, prediction

@torch.no_grad()
def add_rows(model, names, new_names, n_trained):
    """Append new identifiers; grow every embedding table by copies of the mean of its first
    `n_trained` rows (the checkpoint's: no task starts from another's adapted rows). -> new ids"""
    first = len(names)
    names.extend(new_names)
    for emb in optim.sparse_embeddings(model):
        w = emb.weights
        mean = w[:n_trained].mean(0, keepdim=True)
        emb.weights = torch.cat([w, mean.expand(len(names) - w.shape[0], -1)])
    if hasattr(model.config, "num_puzzle_identifiers") and optim.sparse_embeddings(model):
        model.config.num_puzzle_identifiers = len(names)
    return list(range(first, len(names)))


def weights_snapshot(model):
    """Every parameter and buffer except the (growing) embedding tables."""
    tables = {id(e.weights) for e in optim.sparse_embeddings(model)}
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return {k: v.detach().clone() for k, v in tensors if id(v) not in tables}


@torch.no_grad()
def restore(model, snap):
    for k, v in list(model.named_parameters()) + list(model.named_buffers()):
        if k in snap:
            v.copy_(snap[k])


def adapt(model, examples, cfg, device, deadline):
    """train.train_step on random demo examples until `cfg.steps` or the deadline -> the loss of
    every step (per sample; NaN where a non-finite batch was skipped). Leaves the model in eval."""
    full, embs = cfg.mode == "full", optim.sparse_embeddings(model)
    if cfg.mode == "none" or (not full and not embs) or len(examples["inputs"]) == 0:
        return []
    grad_flags = {k: p.requires_grad for k, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(full)  # embeddings only: the trunk is frozen (no grads computed)
    B = cfg.batch_size
    tcfg = train.TrainConfig(global_batch_size=B, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             lr_warmup_steps=0, puzzle_emb_lr=cfg.emb_lr, ema=False,
                             nan_policy="skip", puzzle_emb_weight_decay=cfg.emb_weight_decay,
                             grad_clip=cfg.grad_clip)
    s = train.State(model, optim.AdamATan2(list(model.parameters()), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay) if full else None)
    gen, losses = torch.Generator().manual_seed(cfg.seed), []
    model.train()
    try:
        for _ in range(cfg.steps):
            if time.time() > deadline:
                break
            idx = torch.randint(len(examples["inputs"]), (B,), generator=gen)  # few demos a task
            batch = {k: examples[k][idx].to(device)
                     for k in ("inputs", "labels", "puzzle_identifiers")}
            stats, _ = train.train_step(s, batch, tcfg)
            losses.append(stats["loss"] / B if stats else math.nan)
    finally:
        for k, p in model.named_parameters():
            p.requires_grad_(grad_flags[k])
            p.grad = None
        model.eval()
    return losses


@torch.no_grad()
def predict(model, task, vers, ids, side, voter, device, batch_size, stream, demos=None):
    """Every (version, test input) at the top-left, run to halt, voted into `voter`; demos
    (needs_demos models): each row gets the demos of its own version, in the loader's layout."""
    x, _ = encode([(a, a) for a, _ in task["test"]], vers, side, stream, translate=False)
    n_test, n_demo = len(task["test"]), len(task["train"])
    inputs = torch.from_numpy(x.astype(np.int32))
    pids = torch.tensor(np.repeat(ids, n_test), dtype=torch.int32)
    model.eval()
    for s in range(0, len(inputs), batch_size):
        rows = inputs[s:s + batch_size]
        batch = {"inputs": rows, "labels": torch.full_like(rows, -100),
                 "puzzle_identifiers": pids[s:s + batch_size]}
        if demos is not None:
            d_in, d_lab = demos["inputs"].numpy(), demos["raw_labels"]
            own = [(d_in, d_lab, np.arange(n_demo) + r // n_test * n_demo)
                   for r in range(s, s + len(rows))]
            batch.update(data.demo_tensors(own, 10, inputs.shape[1]))
        batch = {k: v.to(device) for k, v in batch.items()}
        _, out = evaluate.run_batch(model, batch)
        q = out.get("q_halt_logits", torch.zeros(len(rows), device=device))
        voter.update(batch["inputs"], batch["puzzle_identifiers"], out["preds"], q)


# --------------------------------------------------------------------------------------------------
# The run

def parse_args(argv):
    p = cli.OneLineParser(description=__doc__.split("\n")[0],
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          epilog="solve keys (--config key=val; the model's run-time keys too, "
                          "e.g. tto_steps):\n" + config.describe(SolveConfig))
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train.py")
    p.add_argument("--tasks", required=True, help="ARC challenges JSON: {task_id: {train: [...], "
                   "test: [{input}]}}")
    p.add_argument("--solutions", default="", help="ARC solutions JSON, read only to score after "
                   "predicting")
    p.add_argument("--data", default="", help="the run's dataset folder if it moved (default: the "
                   "checkpoint's)")
    p.add_argument("--out", default="", help="output folder (default: <checkpoint folder>/solve)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL",
                   help="override SolveConfig / model keys")
    return p.parse_args(argv)


def prepare(args):
    """Everything that can fail on bad input, checked before anything is written."""
    model, ckpt = evaluate.load_model(args.checkpoint, use_ema=True)
    cfg = SolveConfig()
    config.apply_overrides(args.config, cfg, model.config, ckpt["model_name"])
    config.check(cfg)
    config.check(model.config, ckpt["model_name"])
    if not cfg.use_ema:
        model.load_state_dict(ckpt["model"])
    if model.needs_demos and cfg.mode == "full":
        raise SystemExit("error: mode=full is not offered for models that read demonstrations "
                         "(needs_demos); use their test-time optimisation (--config tto_steps=N)")
    path = args.data or ckpt["data_path"]
    names_file = os.path.join(path, "identifiers.json")
    names = data.read_json(names_file)
    ids = data.load_arrays(path, "train", data.load_metadata(path, "train"))["puzzle_identifiers"]
    for emb in optim.sparse_embeddings(model):
        if not isinstance(names, list) or emb.weights.shape[0] != len(names):
            raise SystemExit(f"error: {names_file} does not list the checkpoint's "
                             f"{emb.weights.shape[0]} puzzle identifiers; pass the run's dataset "
                             "with --data")
    side = arc_checkpoint(ckpt, args.checkpoint, path)
    tasks = load_tasks(args.tasks, side)
    if args.solutions and not os.path.isfile(args.solutions):
        raise SystemExit(f"error: {args.solutions}: no such file (--solutions)")
    folder = args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(args.checkpoint)
    out = args.out or os.path.join(os.path.abspath(folder), "solve")  # beside the checkpoint
    if os.path.lexists(out) and not os.path.isdir(out):
        raise SystemExit(f"error: {out}: exists and is not a folder (--out)")
    return model, cfg, side, names, set(ids.tolist()), tasks, out


def solve(args):
    """The whole run (module docstring) -> scores (with --solutions), out_dir, counts, and the model
    as it was left (weights restored; tables grown), for tests and notebooks."""
    model, cfg, side, names, trained, tasks, out = prepare(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    torch.manual_seed(cfg.seed)
    stream, needs_demos = LegacyStream(cfg.seed), model.needs_demos
    n_trained, known = len(names), {}
    for i in sorted(trained - {0}):  # a held-out task's rows exist, untrained: it counts as unseen
        tid, t, m = parse_aug_name(names[i])
        known.setdefault(tid, []).append(((names[i], t, m), i))
    plan = {}  # task -> (versions, ids, unseen): the versions and rows of every task first (cheap)
    for tid, task in tasks.items():
        if tid in known:
            plan[tid] = ([v for v, _ in known[tid]], [i for _, i in known[tid]], False)
        else:
            vers = versions(tid, task, cfg.num_aug, stream)
            plan[tid] = (vers, add_rows(model, names, [v[0] for v in vers], n_trained), True)
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "identifiers.json"), names)
    # ARCVoter reads its task list from a folder: the test inputs with placeholder outputs
    write_json(os.path.join(out, "test_puzzles.json"), {
        t: {"train": [], "test": [{"input": x.tolist(), "output": [[0]]} for x, _ in task["test"]]}
        for t, task in tasks.items()})
    voter = evaluate.ARCVoter(out)
    voter.names = names
    snap = weights_snapshot(model) if cfg.mode == "full" else None
    t_start, curves = time.time(), {}
    stop = t_start + cfg.total_seconds if cfg.total_seconds > 0 else float("inf")

    def examples_of(tid):
        return demo_examples(tasks[tid], *plan[tid][:2], side, stream, cfg.translate)

    def run_adapt(examples, deadline):  # needs_demos models: their own test-time optimisation
        return [] if needs_demos else adapt(model, examples, cfg, device, deadline)

    unseen = [t for t in tasks if plan[t][2]]
    log = open(os.path.join(out, "adapt_log.jsonl"), "w")
    if cfg.joint and unseen and time.time() < stop:
        t0, pools = time.time(), [examples_of(t) for t in unseen]
        keys = ("inputs", "labels", "puzzle_identifiers")
        curves["joint"] = run_adapt({k: torch.cat([p[k] for p in pools]) for k in keys}, stop)
        log.write(json.dumps({"task": "joint", "tasks": unseen, "steps": len(curves["joint"]),
                              "seconds": time.time() - t0, "losses": curves["joint"]}) + "\n")
    for n, (tid, task) in enumerate(tasks.items(), 1):
        (vers, ids, is_new), t0, losses = plan[tid], time.time(), []
        if t0 > stop:
            print(f"[{n}/{len(tasks)}] {tid} skipped: total_seconds={cfg.total_seconds:g} spent "
                  "(fallback entry)")
            continue
        examples = examples_of(tid) if needs_demos or (is_new and not cfg.joint) else None
        if is_new and not cfg.joint:
            deadline = min(stop, t0 + cfg.task_seconds if cfg.task_seconds else stop)
            losses = curves[tid] = run_adapt(examples, deadline)
        t_adapt = time.time() - t0
        predict(model, task, vers, ids, side, voter, device, cfg.eval_batch_size, stream,
                examples if needs_demos else None)
        if snap is not None and not cfg.joint:
            restore(model, snap)
        votes = [voter.votes.get((tid, grid_hash(x)), {}) for x, _ in task["test"]]
        top = [max(map(len, v.values()), default=0) for v in votes]  # the leading answer's votes
        log.write(json.dumps({"task": tid, "unseen": is_new, "versions": len(vers),
                              "steps": len(losses), "adapt_seconds": t_adapt,
                              "seconds": time.time() - t0, "losses": losses}) + "\n")
        log.flush()
        curve = (f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps ({t_adapt:.1f}s)"
                 if losses else "reads the demos" if needs_demos else
                 "joint adaptation" if cfg.joint and is_new else "no adaptation")
        print(f"[{n}/{len(tasks)}] {tid} {'unseen' if is_new else 'seen'} | {len(vers)} versions | "
              f"{curve} | {len(task['test'])} test input(s), top votes {top} | "
              f"{time.time() - t_start:.0f}s", flush=True)
    if snap is not None:
        restore(model, snap)
    log.close()

    # Submission first (ARCVoter.result with placeholder answers: ranking, fallback), scores last.
    submission = voter.result()["submission"]
    for entries in submission.values():  # an empty crop (nothing but PAD/EOS) is no valid ARC grid
        for e in entries:
            e.update({k: g if g and g[0] else [[0]] for k, g in e.items()})
    evaluate.write_submission(submission, os.path.join(out, "submission.json"))
    plot_losses(curves, os.path.join(out, "loss_curves.png"))
    result = {"out_dir": out, "tasks": len(tasks), "unseen": len(unseen),
              "seconds": time.time() - t_start, "model": model}
    if args.solutions:
        solutions = data.read_json(args.solutions)
        result.update(score(voter, tasks, solutions, submission, out, cfg.render))
    print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in result.items() if k != "model"))
    return result


def score(voter, tasks, solutions, submission, out, render):
    """pass@K of the voted predictions against the solutions (ARCVoter.result); pictures of the
    first tasks."""
    for tid, task in tasks.items():
        sols = solutions.get(tid) if isinstance(solutions, dict) else None
        if not isinstance(sols, list) or len(sols) != len(task["test"]):
            raise SystemExit("error: the solutions have no answer for every test input of task "
                             f"{tid}")
        voter.test_puzzles[tid] = {
            "train": [{"input": a.tolist(), "output": b.tolist()} for a, b in task["train"]],
            "test": [{"input": x.tolist(), "output": s} for (x, _), s in zip(task["test"], sols)]}
    scores = {k: v for k, v in voter.result().items() if k != "submission"}
    write_json(os.path.join(out, "scores.json"), scores, indent=1)
    for tid in list(tasks)[:render]:
        picture = os.path.join(out, f"task_{tid}.png")
        draw.render_task(voter.test_puzzles[tid], submission[tid], picture, title=tid)
    return scores


def plot_losses(curves, path):
    """Every adapted task's loss curve in one log-scale plot (thin lines), their mean (thick)."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return
    plt = draw.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, v in curves.items():
        ax.plot(v, lw=0.8, alpha=0.5, label=k if len(curves) <= 8 else None)
    n = min(len(v) for v in curves.values())
    ax.plot(np.mean([v[:n] for v in curves.values()], 0), "k", lw=2, label="mean")
    ax.set(xlabel="adaptation step", ylabel="demo loss", yscale="log", title="test-time adaptation")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    return solve(parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli.one_line_errors(main))
