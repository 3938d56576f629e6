"""bench_report.py — bench.py's results: the table (GB/s, % of copy bandwidth, speedup over the
anchor, the H100 targets), its plain and markdown forms, the GB/s plot, and the block appended to
BENCHMARKS.md."""
import datetime
import os
import subprocess

import torch


# Targets for one H100/H200 (the project's, none measured yet):
# (op, mode, provider) -> (text, test(row, anchor_ms)).
TARGETS = {
    ("rms_norm(h+r)", "fwd+bwd", "triton"): ("<= 0.45 ms", lambda r, a: r.ms <= 0.45),
    ("swiglu", "fwd+bwd", "triton"): ("<= 1.8 ms", lambda r, a: r.ms <= 1.8),
    ("attention TRM", "fwd", "triton"): (">= 380 TFLOP/s",
                                         lambda r, a: r.flops / r.ms * 1e-9 >= 380),
    ("attention TRM", "fwd+bwd", "triton"): (">= 1.1x compile",
                                             lambda r, a: a is not None and a / r.ms >= 1.1),
    ("trm_step", None, "triton+compile"): (">= 1.15x torch+compile, <= 30 GB",
                                           lambda r, a: a is not None and a / r.ms >= 1.15
                                           and r.peak_gb <= 30),
}


def table(rows, copy_gbs, cuda):
    anchor = {r.op: {} for r in rows}
    for r in rows:  # the anchor of an (op, mode): torch.compile of the reference
        if r.provider in ("compile", "torch+compile"):
            anchor[r.op][r.mode if r.provider == "compile" else None] = r.ms
    head = ["op", "mode", "provider", "shape", "ms (p20-p80)", "GB/s", "% copy", "ms @85% copy",
            "vs compile", "target"]
    out = []
    for r in rows:
        gbs = r.bytes / (r.ms * 1e-3) / 1e9 if r.bytes else None
        tfl = r.flops / (r.ms * 1e-3) / 1e12 if r.flops else None
        mode_key = None if r.op == "trm_step" else r.mode
        c = anchor[r.op].get(mode_key)
        tgt = TARGETS.get((r.op, mode_key, r.provider))
        out.append([r.op, r.mode, r.provider, r.shape, f"{r.ms:.3f} ({r.ms_lo:.3f}-{r.ms_hi:.3f})",
                    f"{gbs:.4g}" if gbs else (f"{tfl:.0f} TFLOP/s" if tfl else "-"),
                    f"{100 * gbs / copy_gbs:.0f}%" if gbs else "-",
                    f"{r.bytes / (0.85 * copy_gbs * 1e9) * 1e3:.3f}" if r.bytes else "-",
                    f"{c / r.ms:.2f}x" if c else "-",
                    f"{tgt[0]}: {'met' if tgt[1](r, c) else 'MISSED'}" if tgt and cuda else "-"])
    return head, out


def markdown(head, body):
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def plain(head, body):
    w = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = "  ".join("{:<%d}" % n for n in w)
    lines = [fmt.format(*head), fmt.format(*["-" * n for n in w])]
    return "\n".join(lines + [fmt.format(*r) for r in body])


def plot(rows, copy_gbs, path, title):
    """Effective GB/s per provider for the memory-bound rows, against the measured copy
    bandwidth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r.bytes]
    groups = list(dict.fromkeys((r.op, r.mode) for r in rows))
    provs = list(dict.fromkeys(r.provider for r in rows))
    width = 0.8 / max(len(provs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, p in enumerate(provs):
        pts = [(j + i * width, r.bytes / (r.ms * 1e-3) / 1e9) for j, g in enumerate(groups)
               for r in rows if (r.op, r.mode) == g and r.provider == p]
        ax.bar([x for x, _ in pts], [y for _, y in pts], width, label=p)
    ax.axhline(copy_gbs, color="k", ls="--", lw=1, label=f"device copy {copy_gbs:.0f} GB/s")
    ax.axhline(0.85 * copy_gbs, color="gray", ls=":", lw=1, label="85% of copy")
    ax.set_xticks([j + width * (len(provs) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels([f"{o}\n{m}" for o, m in groups], fontsize=8)
    ax.set_ylabel("effective GB/s (minimum bytes / median time)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot saved to {path}")


def commit():
    try:
        def git(*a):
            return subprocess.run(["git", *a], capture_output=True, text=True,
                                  check=True).stdout.strip()
        c = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return c + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(path, names, device, copy_gbs, head, body, cmd, notes=()):
    """Append one run to `path` (the end of the file, a self-describing block, so other sections
    stay put)."""
    import triton
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), path)
    with open(path, "a") as f:
        f.write(f"\n#### bench.py {' '.join(names)}: {stamp}, {device}, torch {torch.__version__}, "
                f"triton {triton.__version__}, commit {commit()}, `{cmd}`\n\n"
                f"Device copy bandwidth measured in the same run: {copy_gbs:.0f} GB/s.\n\n"
                + "".join(f"- {n}\n" for n in notes) + "\n" + markdown(head, body) + "\n")
    print(f"appended to {path}")
