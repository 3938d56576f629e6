"""solve.py — unseen ARC tasks: test-time adaptation of a trained checkpoint, then a Kaggle `submission.json`.

    python solve.py --checkpoint runs/trm-arc1/checkpoint.pt --tasks arc-agi_test_challenges.json
    python solve.py --checkpoint CKPT --tasks challenges.json --solutions solutions.json --out results/ \
        --config mode=full steps=300 lr=3e-5 num_aug=100 task_seconds=120 total_seconds=43200
    python solve.py --help                                    # every config key with its default

Why (issue 10; ../shared/spec/related.md §4, §5.6): TRM, HRM, PRR and the deep recursive model name a puzzle by a
learned row of a puzzle-embedding table, so a task that was not in the training data has no row and scores ~0%
(TRM #60). Every strong small-model ARC result adapts per task at test time (VARC, TRM + TTT, LPN). Here, for
every task of `--tasks` whose id is not among the checkpoint's identifiers:
  1. versions: the task itself plus up to `num_aug` distinct (dihedral t, colour map m) versions, m fixing black,
     drawn and de-duplicated as data.py's builder does (spec data.md §1.3) but from the demonstrations and the test
     INPUTS only; test outputs are never read (a challenges file that has them is stripped on load).
  2. rows: one new row per version in every trm.SparseEmbedding table, filled with the table's mean row (the
     reference's resize rule, train.load_weights; the mean includes the untrained blank row 0, as the reference).
  3. adaptation on the versions' demonstration pairs for `steps` steps / `task_seconds` seconds, train.py's way
     (persistent ACT carry, loss summed over the batch / batch size): `mode=embeddings` (default) trains the new
     rows only, with train.sign_sgd_update (the optimiser those rows were trained with; the trunk is frozen), and
     `mode=full` also trains every weight with train.AdamATan2 (weights restored after each task, or after the
     joint run; the checkpoint file is only read). `mode=none` predicts with the mean rows: the baseline.
     `joint=True` adapts all unseen tasks together in one run of `steps` steps instead of one task at a time.
  4. prediction of every test input in every version, run to halt (evaluate.run_batch), voted by
     evaluate.ARCVoter (undo the augmentation, rank distinct grids by votes then mean sigmoid(q_halt)).
Tasks that ARE in the checkpoint (e.g. ARC-1 evaluation tasks whose demos were in training) skip 1-3 and are
predicted over the versions the identifiers list for them.

Models with `needs_demos` (etrm) have no table: they get the version's demos in the batch (the loader's layout,
at most 10, PAD-padded); their own test-time optimisation (etrm: `test_time_optimise`, run by its eval forward
when its config's `tto_steps` > 0) is what adapts them, switched on by `--config tto_steps=N` (model keys given
to --config are set on the loaded model's config: only run-time keys such as tto_steps or halt_max_steps make
sense). mode=full is refused for them. Nothing here branches on a model's name: only the protocol is used.

Canvas: the grids are placed on a side x side canvas, side = sqrt(seq_len) (30 for ARC's 900 tokens), with
data.encode_grid_pair's layout cut to that side; demos are translated at random as in data.py's train split,
test inputs sit at the top-left as in its test split. Small canvases exist for tests and CPU experiments.

Out folder (default beside the checkpoint, `solve/`): submission.json (written before --solutions is opened,
which happens only for scoring), identifiers.json (the checkpoint's names + the new versions' names, in row
order), adapt_log.jsonl (per task: versions, steps, seconds, the loss curve), loss_curves.png (every task's
curve in one plot), scores.json and task_<id>.png pictures when solutions are given.
Choices where the issue is silent: sign-SGD rather than Adam for the rows (what trained them; lr 1e-2 per step
moves each coordinate by at most 1e-2, so `emb_lr` is larger than train.py's default for few hundred steps);
an overall time budget skips (fallback entries) the tasks it leaves, rather than predicting them unadapted; an
empty predicted grid is replaced by the 1x1 black fallback in the submission.
Reused: data.augment_grid / aug_name / parse_aug_name / invert_aug / encode_grid_pair / crop_grid / grid_hash, and
the validation helpers data.read_json / data.check_grid; evaluate.load_model / run_batch / ARCVoter / write_submission /
render_task; config.apply_overrides / describe / sparse_embeddings / sign_sgd_update / AdamATan2. Local, because
data.py has no public equivalent: `versions` (data.py's augmentation search replays the reference's legacy RNG stream
for bit-exact identifiers; here a fresh seeded search over the demonstrations is enough).
"""
import argparse
import config
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import torch

import data
import evaluate
import train


@dataclasses.dataclass
class SolveConfig:
    mode: str = "embeddings"        # embeddings (new rows only) | full (rows + all weights, restored) | none
    joint: bool = False             # adapt all unseen tasks together instead of one task at a time
    num_aug: int = 32               # extra versions per task (dihedral x colour map); the reference trains with 1000
    translate: bool = True          # random placement of the demo grids on the canvas, as data.py's train split
    steps: int = 200                # adaptation steps per task (joint: in all)
    batch_size: int = 64            # demo examples per adaptation step
    emb_lr: float = 3e-2            # sign-SGD step of the new embedding rows
    emb_weight_decay: float = 0.1   # decoupled weight decay of the rows (train.py's puzzle_emb_weight_decay)
    lr: float = 1e-4                # AdamATan2 learning rate of the weights (mode=full)
    weight_decay: float = 0.1       # AdamATan2 weight decay (mode=full)
    grad_clip: float = 1.0          # max global grad norm of the weights (mode=full; 0 = off)
    task_seconds: float = 0.0       # adaptation time budget per task (0 = none)
    total_seconds: float = 0.0      # time budget of the whole run; tasks past it get fallback entries (0 = none)
    eval_batch_size: int = 256      # rows per prediction batch
    use_ema: bool = True            # start from the checkpoint's EMA weights when it has them
    seed: int = 0
    render: int = 1                 # task pictures to draw when --solutions is given


GRID = data.GRID


# ----------------------------------------------------------------------------------------------------
# Tasks, versions and encoding

def load_tasks(path):
    """challenges.json -> {task_id: {"train": [{input, output}], "test": [{input}]}}, validated; test outputs are
    dropped here, so nothing downstream can see them."""
    raw = data.read_json(path)
    if not isinstance(raw, dict) or not raw:
        raise data.DataError(f"{path}: expected a JSON object of task_id -> task")
    tasks = {}
    for tid, task in raw.items():
        where = f"{path}: task {tid}"
        if not isinstance(task, dict) or not task.get("train") or not task.get("test"):
            raise data.DataError(f"{where}: task needs non-empty 'train' and 'test' lists")
        for i, p in enumerate(task["train"]):
            for k in ("input", "output"):
                data.check_grid(p.get(k) if isinstance(p, dict) else None, f"{where} train[{i}].{k}")
        for i, p in enumerate(task["test"]):
            data.check_grid(p.get("input") if isinstance(p, dict) else None, f"{where} test[{i}].input")
        tasks[tid] = {"train": [{"input": p["input"], "output": p["output"]} for p in task["train"]],
                      "test": [{"input": p["input"]} for p in task["test"]]}  # never carry a test output along
    return tasks


def read_solutions(path):
    """Kaggle solutions: {task_id: [output grid per test input]}. Called only after the predictions are written."""
    return data.read_json(path)


def versions(task_id, task, num_aug, rng):
    """[(name, t, colour map)], the original first, then distinct augmentations of demos + test inputs.

    data.py's draw (t uniform in 0..7, m = [0] + permutation(1..9), up to 5 num_aug trials, duplicates by hash of the
    sorted pair hashes) with a numpy Generator: data.py's own is private and replays the reference's stream."""
    grids = [(p["input"], p["output"]) for p in task["train"]] + [(p["input"], None) for p in task["test"]]

    def key(t, m):
        return "|".join(sorted(data.grid_hash(data.augment_grid(a, t, m)) + "|" + (
            "" if b is None else data.grid_hash(data.augment_grid(b, t, m))) for a, b in grids))

    ident = np.arange(10, dtype=np.uint8)
    out, seen = [(task_id, 0, ident)], {key(0, ident)}
    for _ in range(5 * num_aug):
        if len(out) == num_aug + 1:
            break
        t, m = int(rng.integers(8)), np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        k = key(t, m)
        if k not in seen:
            seen.add(k)
            out.append((data.aug_name(task_id, t, m), t, m))
    return out


def canvas_side(seq_len):
    side = math.isqrt(seq_len)
    if side * side != seq_len or side > GRID:
        raise SystemExit(f"error: solve.py needs an ARC-style square canvas (seq_len = side^2, side <= {GRID}); "
                         f"this checkpoint has seq_len={seq_len}")
    return side


def encode(inp, out, side, r0=0, c0=0):
    """data.encode_grid_pair's 30 x 30 layout cut to side x side -> two int64 [side^2] token rows."""
    if max(len(inp), len(out), len(inp[0]), len(out[0])) > side:
        raise data.DataError(f"grid larger than the model's {side}x{side} canvas")
    a, b = data.encode_grid_pair(inp, out, r0, c0)
    return [x.reshape(GRID, GRID)[:side, :side].reshape(-1).astype(np.int64) for x in (a, b)]


def to_arc_canvas(tokens, side):
    """[N, side^2] token rows -> [N, 900] with PAD around them, so data.crop_grid (ARCVoter) reads them."""
    full = torch.zeros(tokens.shape[0], GRID, GRID, dtype=tokens.dtype, device=tokens.device)
    full[:, :side, :side] = tokens.view(-1, side, side)
    return full.view(-1, GRID * GRID)


def demo_examples(task, vers, ids, side, translate, rng):
    """Every demo pair of every version -> inputs, labels (PAD -> -100) [N, L] and puzzle ids [N]."""
    inputs, labels, pids = [], [], []
    for (name, t, m), pid in zip(vers, ids):
        for p in task["train"]:
            a, b = data.augment_grid(p["input"], t, m), data.augment_grid(p["output"], t, m)
            r0 = c0 = 0
            if translate:
                r0 = int(rng.integers(side - max(a.shape[0], b.shape[0]) + 1))
                c0 = int(rng.integers(side - max(a.shape[1], b.shape[1]) + 1))
            x, y = encode(a, b, side, r0, c0)
            inputs.append(x)
            labels.append(np.where(y == data.PAD, -100, y))
            pids.append(pid)
    return {"inputs": torch.tensor(np.stack(inputs), dtype=torch.int32),
            "labels": torch.tensor(np.stack(labels), dtype=torch.int32),
            "puzzle_identifiers": torch.tensor(pids, dtype=torch.int32)}


def with_demos(batch, demos, n_demos, max_demos=10):
    """Add demo_inputs / demo_labels (PAD kept, the loader's layout) / demo_mask: row i gets the demos of its
    version, which sit at demos[v * n_demos : (v + 1) * n_demos] for version v = batch['version'][i]."""
    v = batch.pop("version")
    K, k = max_demos, min(n_demos, max_demos)
    B, L = v.shape[0], demos["inputs"].shape[1]
    idx = v[:, None] * n_demos + torch.arange(k)[None]
    d_in, d_lab = torch.zeros(B, K, L, dtype=torch.int32), torch.zeros(B, K, L, dtype=torch.int32)
    d_in[:, :k] = demos["inputs"][idx]
    d_lab[:, :k] = demos["labels"][idx].clamp_min(0)   # -100 back to PAD
    mask = torch.zeros(B, K, dtype=torch.bool)
    mask[:, :k] = True
    return {**batch, "demo_inputs": d_in, "demo_labels": d_lab, "demo_mask": mask}


# ----------------------------------------------------------------------------------------------------
# Embedding rows, adaptation, prediction

@torch.no_grad()
def add_rows(model, names, new_names, n_trained):
    """Append new identifiers; grow every SparseEmbedding table by as many copies of the mean of its first
    `n_trained` rows (the checkpoint's, so no task starts from another's adapted rows). -> the new ids."""
    first = len(names)
    names.extend(new_names)
    for emb in train.sparse_embeddings(model):
        w = emb.weights
        emb.weights = torch.cat([w, w[:n_trained].mean(0, keepdim=True).expand(len(names) - w.shape[0], -1)])
    if hasattr(model.config, "num_puzzle_identifiers") and train.sparse_embeddings(model):
        model.config.num_puzzle_identifiers = len(names)
    return list(range(first, len(names)))


def weights_snapshot(model):
    """Every parameter and every buffer except the (growing) embedding tables."""
    tables = {id(e.weights) for e in train.sparse_embeddings(model)}
    return {k: v.detach().clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())
            if id(v) not in tables}


@torch.no_grad()
def restore(model, snap):
    for k, v in list(model.named_parameters()) + list(model.named_buffers()):
        if k in snap:
            v.copy_(snap[k])


def adapt(model, examples, cfg, device, deadline):
    """train.py's inner loop on the demo examples (inputs, labels, puzzle_identifiers) until `cfg.steps` or the
    deadline. -> the loss of every step (summed model loss / batch size). Leaves the model in eval mode."""
    full, embs = cfg.mode == "full", train.sparse_embeddings(model)
    if cfg.mode == "none" or (not full and not embs) or len(examples["inputs"]) == 0:
        return []
    grad_flags = {k: p.requires_grad for k, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(full)  # embeddings only: the trunk is frozen (its grads are never computed)
    opt = train.AdamATan2([p for p in model.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay) if full else None
    gen = torch.Generator().manual_seed(cfg.seed)
    N, B, carry, losses = len(examples["inputs"]), cfg.batch_size, None, []
    model.train()
    try:
        for _ in range(cfg.steps):
            if time.time() > deadline:
                break
            idx = torch.randint(N, (B,), generator=gen)  # with replacement: a task has few demos x versions
            batch = {k: v[idx].to(device) for k, v in examples.items()}
            if carry is None:
                carry = model.initial_carry(batch)
            carry, loss, metrics, _ = model(carry, batch, loss_scale=1.0 / B)
            (loss / B).backward()
            if full:
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            for emb in embs:
                train.sign_sgd_update(emb, cfg.emb_lr, cfg.emb_weight_decay, 1)
            losses.append(loss.item() / B)  # the objective as optimised: summed loss / batch
    finally:
        for k, p in model.named_parameters():
            p.requires_grad_(grad_flags[k])
            p.grad = None
        model.eval()
    return losses


@torch.no_grad()
def predict(model, task, vers, ids, side, voter, device, batch_size, demos=None, n_demos=0):
    """Every (version, test input) row, run to halt, voted into `voter`."""
    rows, pids, vidx = [], [], []
    for v, ((name, t, m), pid) in enumerate(zip(vers, ids)):
        for p in task["test"]:
            a = data.augment_grid(p["input"], t, m)
            rows.append(encode(a, a, side)[0])
            pids.append(pid)
            vidx.append(v)
    inputs = torch.tensor(np.stack(rows), dtype=torch.int32)
    pids, vidx = torch.tensor(pids, dtype=torch.int32), torch.tensor(vidx)
    model.eval()
    for s in range(0, len(inputs), batch_size):
        batch = {"inputs": inputs[s:s + batch_size], "labels": torch.full_like(inputs[s:s + batch_size], -100),
                 "puzzle_identifiers": pids[s:s + batch_size]}
        if demos is not None:
            batch = with_demos({**batch, "version": vidx[s:s + batch_size]}, demos, n_demos)
        batch = {k: v.to(device) for k, v in batch.items()}
        _, out = evaluate.run_batch(model, batch)
        q = out.get("q_halt_logits", torch.zeros(len(batch["inputs"]), device=device))
        voter.update(to_arc_canvas(batch["inputs"], side), batch["puzzle_identifiers"],
                     to_arc_canvas(out["preds"], side), q)


# ----------------------------------------------------------------------------------------------------
# The run

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="solve keys (--config key=val; the model's run-time keys too, e.g. tto_steps):\n"
                                + train.describe(SolveConfig))
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt written by train.py")
    p.add_argument("--tasks", required=True, help="ARC challenges JSON: {task_id: {train: [...], test: [{input}]}}")
    p.add_argument("--solutions", default="", help="ARC solutions JSON, read only to score after predicting")
    p.add_argument("--data", default="", help="the run's dataset folder if it moved "
                   "(default: the checkpoint's data_path)")
    p.add_argument("--out", default="", help="output folder (default: <checkpoint folder>/solve)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VAL", help="override SolveConfig / model keys")
    return p.parse_args(argv)


def solve(args):
    """The whole run (module docstring). -> scores (with --solutions), out_dir, counts, and the model as it was left
    (weights restored; tables grown), for tests and notebooks."""
    model, ckpt = evaluate.load_model(args.checkpoint, use_ema=True)
    cfg = SolveConfig()
    config.apply_overrides(args.config, cfg, model.config, ckpt["model_name"])
    if cfg.mode not in ("embeddings", "full", "none"):
        raise SystemExit(f"error: config key 'mode' takes embeddings, full or none, got {cfg.mode!r}")
    if not cfg.use_ema:
        model.load_state_dict(ckpt["model"])
    needs_demos = model.needs_demos
    if needs_demos and cfg.mode == "full":
        raise SystemExit("error: mode=full is not offered for models that read demonstrations (needs_demos); "
                         "use their test-time optimisation (e.g. --config tto_steps=N)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    side = canvas_side(model.config.seq_len)
    path = args.data or ckpt["data_path"]
    names = json.load(open(os.path.join(path, "identifiers.json")))
    for emb in train.sparse_embeddings(model):
        if emb.weights.shape[0] != len(names):
            raise SystemExit(f"error: {path}/identifiers.json lists {len(names)} names but the checkpoint's "
                             f"table has {emb.weights.shape[0]} rows; pass the run's dataset with --data")
    n_trained, known = len(names), {}
    for i, n in enumerate(names[1:], 1):
        known.setdefault(data.parse_aug_name(n)[0], []).append((n, *data.parse_aug_name(n)[1:], i))
    tasks = load_tasks(args.tasks)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "solve")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "test_puzzles.json"), "w") as f:  # ARCVoter reads its task list from a folder
        json.dump({t: {"train": [], "test": [{"input": p["input"], "output": [[0]]} for p in task["test"]]}
                   for t, task in tasks.items()}, f)
    with open(os.path.join(out, "identifiers.json"), "w") as f:
        json.dump(names, f)
    voter = evaluate.ARCVoter(out)
    voter.names = names  # the live list: new versions are appended as tasks are met
    snap = weights_snapshot(model) if cfg.mode == "full" else None
    t_start = time.time()
    stop = t_start + cfg.total_seconds if cfg.total_seconds > 0 else float("inf")
    log = open(os.path.join(out, "adapt_log.jsonl"), "w")
    curves = {}

    # Versions and rows of every task first (cheap); the demo examples are built when needed (memory).
    plan = {}
    for tid, task in tasks.items():
        if tid in known:
            vers, ids = [(n, t, m) for n, t, m, _ in known[tid]], [i for *_, i in known[tid]]
        else:
            vers = versions(tid, task, cfg.num_aug, rng)
            ids = add_rows(model, names, [v[0] for v in vers], n_trained)
        plan[tid] = (vers, ids, tid not in known)
    with open(os.path.join(out, "identifiers.json"), "w") as f:
        json.dump(names, f)

    def examples_of(tid):
        vers, ids, _ = plan[tid]
        return demo_examples(tasks[tid], vers, ids, side, cfg.translate, rng)

    def run_adapt(examples, deadline):  # needs_demos models adapt by their own test-time optimisation instead
        if needs_demos:
            return []
        return adapt(model, {k: examples[k] for k in ("inputs", "labels", "puzzle_identifiers")}, cfg, device, deadline)

    unseen = [t for t in tasks if plan[t][2]]
    if cfg.joint and unseen and time.time() < stop:
        t0 = time.time()
        pools = [examples_of(t) for t in unseen]
        pool = {k: torch.cat([p[k] for p in pools]) for k in ("inputs", "labels", "puzzle_identifiers")}
        del pools
        curves["joint"] = run_adapt(pool, stop)
        log.write(json.dumps({"task": "joint", "tasks": unseen, "steps": len(curves["joint"]),
                              "seconds": time.time() - t0, "losses": curves["joint"]}) + "\n")
    for n, (tid, task) in enumerate(tasks.items(), 1):
        vers, ids, is_new = plan[tid]
        if time.time() > stop:
            print(f"[{n}/{len(tasks)}] {tid} skipped: total_seconds={cfg.total_seconds:g} spent (fallback entry)",
                  flush=True)
            continue
        t0, losses = time.time(), []
        examples = examples_of(tid) if needs_demos or (is_new and not cfg.joint) else None
        if is_new and not cfg.joint:
            deadline = min(stop, t0 + cfg.task_seconds if cfg.task_seconds > 0 else float("inf"))
            losses = curves[tid] = run_adapt(examples, deadline)
        t_adapt = time.time() - t0
        demos = examples if needs_demos else None
        predict(model, task, vers, ids, side, voter, device, cfg.eval_batch_size, demos, len(task["train"]))
        if snap is not None and not cfg.joint:
            restore(model, snap)
        votes = [voter.votes.get((tid, data.grid_hash(np.array(p["input"], np.uint8))), {}) for p in task["test"]]
        top = [max(map(len, v.values()), default=0) for v in votes]  # votes of the leading answer per test input
        log.write(json.dumps({"task": tid, "unseen": is_new, "versions": len(vers), "steps": len(losses),
                              "adapt_seconds": t_adapt, "seconds": time.time() - t0, "losses": losses}) + "\n")
        log.flush()
        curve = (f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps ({t_adapt:.1f}s)" if losses else
                 "reads the demos" if needs_demos else "joint adaptation" if cfg.joint and is_new else "no adaptation")
        print(f"[{n}/{len(tasks)}] {tid} {'unseen' if is_new else 'seen'} | {len(vers)} versions | {curve} | "
              f"{len(task['test'])} test input(s), top votes {top} | {time.time() - t_start:.0f}s", flush=True)
    if snap is not None:
        restore(model, snap)
    log.close()

    # Submission first (ARCVoter.result with placeholder answers: its ranking and its fallback), then scores.
    submission = voter.result()["submission"]
    for entries in submission.values():  # an empty crop (nothing but PAD/EOS predicted) is no valid ARC grid
        for e in entries:
            e.update({k: g if g and g[0] else [[0]] for k, g in e.items()})
    evaluate.write_submission(submission, os.path.join(out, "submission.json"))
    plot_losses(curves, os.path.join(out, "loss_curves.png"))
    result = {"out_dir": out, "tasks": len(tasks), "unseen": len(unseen), "seconds": time.time() - t_start,
              "model": model}
    if args.solutions:
        result.update(score(voter, tasks, read_solutions(args.solutions), submission, out, cfg.render))
    print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items() if k != "model"))
    return result


def score(voter, tasks, solutions, submission, out, render):
    """pass@K of the voted predictions against the solutions (ARCVoter.result); pictures of the first tasks."""
    for tid, task in tasks.items():
        sols = solutions.get(tid)
        if sols is None or len(sols) != len(task["test"]):
            raise SystemExit(f"error: solutions have no answer for every test input of task {tid}")
        voter.test_puzzles[tid] = {"train": task["train"], "test": [{"input": p["input"], "output": s}
                                                                    for p, s in zip(task["test"], sols)]}
    scores = {k: v for k, v in voter.result().items() if k != "submission"}
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(scores, f, indent=1)
    for tid in list(tasks)[:render]:
        evaluate.render_task(voter.test_puzzles[tid], submission[tid], os.path.join(out, f"task_{tid}.png"), title=tid)
    return scores


def plot_losses(curves, path):
    """Every adapted task's loss curve in one log-scale plot (thin lines) with their mean (thick)."""
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
    try:
        main()
    except data.DataError as e:
        sys.exit(f"error: {e}")
