"""experiments/: short scripts that answer one question each by calling train.main and evaluate.py.

    python -m experiments.compare          # all five models, same data and budget: table + plot
    python -m experiments.ablate trm       # H_cycles x L_cycles, ACT steps (also prr, etrm, ...)
    python -m experiments.acc_vs_aug       # ARC pass@K against the number of voted augmentations
    python -m experiments.recursion_strip  # one puzzle's answer after every ACT step, as a picture
    python -m experiments.teach            # each model's idea against its control, on a laptop

Every script takes --help, runs on a CPU in minutes with its default (tiny) budget, and writes
`table.md`, `results.json` and a PNG into its --out folder. For a real run on a GPU pass
`--paper-sizes` (the models' and train.py's defaults, i.e. the papers' settings), `--steps N`, and
any train.py key with `--config key=val ...`.

This file holds what the scripts share: the tiny per-model configs, one training call that also
reports throughput and peak memory, and the Markdown table writer.
"""
import contextlib
import io
import json
import math
import os
import resource
import shutil
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python experiments/compare.py` as well as `-m experiments.compare`
    sys.path.insert(0, ROOT)

import config  # noqa: E402
import data as datasets  # noqa: E402  (scripts name their dataset argument `data`)
import evaluate  # noqa: E402
import optim  # noqa: E402
import train  # noqa: E402

# Training keys of every tiny run: a small batch, a short warm-up, no EMA (a few hundred steps are
# too few for a 0.999 average to catch up).
COMMON = ["global_batch_size=32", "lr=1e-3", "lr_warmup_steps=10", "weight_decay=0.01",
          "puzzle_emb_weight_decay=0.01", "ema=False"]
# Each model at width ~32-64: a training step in well under a second on one CPU thread.
WIDTH_64 = ["hidden_size=64", "num_heads=4"]
TINY = {
    "trm": [*WIDTH_64, "L_layers=1", "H_cycles=2", "L_cycles=2", "halt_max_steps=2",
            "puzzle_emb_ndim=64", "puzzle_emb_len=1"],
    "hrm": [*WIDTH_64, "H_layers=1", "L_layers=1", "H_cycles=2", "L_cycles=2", "halt_max_steps=2",
            "puzzle_emb_ndim=64"],
    "etrm": [*WIDTH_64, "L_layers=1", "H_cycles=2", "L_cycles=2", "halt_max_steps=2",
             "encoder_num_layers=1", "puzzle_emb_len=1"],
    "prr": [*WIDTH_64, "num_layers=1", "num_branches=4", "num_steps=4", "grad_steps=2",
            "puzzle_emb_ndim=64", "puzzle_emb_len=1"],
    "deep_recursive": ["base_channels=8", "latent_channels=32", "n_res_blocks=1", "n_inner=2",
                       "n_outer=2", "eval_n_steps=4", "puzzle_emb_ndim=32"],
}


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


def _reset_peak():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # Linux >= 4.0: "5" resets VmHWM, the peak RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")


def peak_memory_mb():
    """Peak since _reset_peak: CUDA max_memory_allocated, else this process's peak RSS (VmHWM;
    ru_maxrss, the peak of the whole process so far, where /proc is missing)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    unit = 2 ** 20 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit


MEMORY_LABEL = "peak GPU memory (MB)" if torch.cuda.is_available() else "peak process RSS (MB)"


def run_train(model, out, data, steps, overrides=(), tiny=True):
    """train.main for `steps` steps with COMMON + TINY[model] (tiny=False: the papers' defaults of
    train.py and the model's Config), then `overrides` (later keys win). The schedule (a cosine when
    lr_min_ratio < 1) spans the run's steps. Returns the run's final evaluation metrics plus
    samples_per_s (train.py's last progress line, evaluation excluded), peak_mb, seconds (the whole
    call), trunk_params and table_values (sizes of the trained model). A run left in `out` by an
    earlier call is replaced: the experiment owns its run folders (train.py won't overwrite)."""
    if os.path.isfile(os.path.join(out, "config.json")):
        shutil.rmtree(out)
    base = [*COMMON, *TINY.get(model, [])] if tiny else []
    keys = [*base, *overrides]
    gbs = [k.split("=")[1] for k in keys if k.startswith("global_batch_size=")]
    gbs = int(gbs[-1]) if gbs else train.TrainConfig.global_batch_size
    meta = datasets.load_metadata(datasets.ensure_dataset(data, root="data"), "train")
    # train.py's schedule is epochs x examples / batch steps: the fewest epochs that reach `steps`,
    # all in one loader iteration (train.py evaluates after each). A demo-reading model trains on
    # queries only, at least one per two groups (ARC's evaluation demos have no query), which the
    # metadata does not count: its iteration is sized for that, and its schedule runs longer.
    samples = steps * gbs
    if config.model_module(model).Model.needs_demos:
        epochs = 2 * math.ceil(samples / meta["total_groups"]) + 1
    else:
        epochs = math.ceil(samples / (meta["total_groups"] * meta["mean_puzzle_examples"]) - 1e-9)
    argv = ["--model", model, "--out", str(out), "--config", f"data={data}", f"epochs={epochs}",
            f"eval_interval={epochs}", *base, f"max_steps={steps}",
            f"log_interval={max(1, steps // 4)}", *overrides]
    buf = io.StringIO()
    _reset_peak()
    t0 = time.time()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
        result = train.main(argv)
    result["seconds"] = time.time() - t0
    result["peak_mb"] = peak_memory_mb()
    progress = [line for line in buf.getvalue().splitlines()
                if line.startswith("step ") and " samples/s" in line]
    rates = [float(line.split(" samples/s")[0].rsplit("| ", 1)[1]) for line in progress]
    result["samples_per_s"] = rates[-1] if rates else float("nan")
    net, _ = evaluate.load_model(os.path.join(out, "checkpoint.pt"))
    result["trunk_params"] = sum(p.numel() for p in net.parameters())
    result["table_values"] = sum(e.weights.numel() for e in optim.sparse_embeddings(net))
    return result


def fmt(v):
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def write_table(out, rows, columns, title, notes=()):
    """rows: list of dicts; columns: [(key, header)]. Writes <out>/table.md and <out>/results.json;
    returns the text."""
    lines = [f"### {title}", "", "| " + " | ".join(h for _, h in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k, float("nan"))) for k, _ in columns) + " |"
              for r in rows]
    text = "\n".join(lines + [""] + [f"{n}  " for n in notes]) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(text)
    return text


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
