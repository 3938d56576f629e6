"""bench.py: time the kernels against eager PyTorch and torch.compile, and training steps, at the
real ARC shapes (and one CPU recipe).

    python bench.py --check           # FIRST THING ON A NEW GPU MACHINE: GPU tests, kernels and
                                      # the TRM step (kernels on/off, eager/compiled) in <= 8 min;
                                      # one table appended to BENCHMARKS.md (date, device, commit)
    python bench.py                   # every registered benchmark
    python bench.py rms_norm swiglu   # some of them (names: python bench.py --list)
    python bench.py --record          # also append the table to BENCHMARKS.md
    python bench.py --tokens 4096     # another token count (default: ARC's 192 x 916 on CUDA)
    python bench.py cpu_step --cpu-compile   # a CPU: the step eager and compiled, the compile time

Triton-tutorial style: `triton.testing.do_bench` (it flushes the 50 MB L2 between calls) with
quantiles [0.5, 0.2, 0.8]; every result carries an explicit byte (or FLOP) count written next to
the benchmark, from which GB/s (TFLOP/s) and the fraction of the device's copy bandwidth, measured
in the same run, are derived. Byte counts are the *minimum* traffic of the op (each input read
once, each output written once), the same for every provider, so a provider that makes extra passes
shows a lower GB/s. Columns: median ms (20th-80th percentile), GB/s or TFLOP/s, % of copy bandwidth,
ms at 85% of copy bandwidth, speedup over the anchor (`compile`: torch.compile of the reference;
for the TRM step `torch+compile`: the reference ops under torch.compile, our in-house anchor), the
target.

Providers: `triton` (the kernels' `*_triton` function), `eager` (the pure-PyTorch reference) and
`compile` (torch.compile(reference, dynamic=False), warmed up). Forward is timed on inputs without
grad; forward+backward with `torch.autograd.grad` on leaf inputs, so no `.grad` accumulation is
timed. A training step is train.train_step itself. Adding a benchmark: `@register("x",
"description")` on `def bench_x(ctx) -> list[Row]`.

Without CUDA the harness runs at a tiny shape (Triton through TRITON_INTERPRET=1, a plain timer, no
torch.compile but in cpu_step) so a CPU machine can check it works; those times are never recorded,
and `--check` refuses to run. Plots go under out/bench/ (never the repository root).
"""
import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

import bench_report

CUDA = torch.cuda.is_available()
if not CUDA:
    # before `kernels` is imported: the jit object is chosen then
    os.environ.setdefault("TRITON_INTERPRET", "1")

_rms = importlib.import_module("kernels.rmsnorm")
_swi = importlib.import_module("kernels.swiglu")
_ce = importlib.import_module("kernels.cross_entropy")

ARC_TOKENS = 192 * 916  # ARC batch 192 x sequence 916 (900 grid + 16 puzzle-embedding positions)
CPU_TOKENS = 256  # interpreter: cost is per program, keep it to a handful
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    op: str
    mode: str  # "fwd" | "fwd+bwd" | anything a benchmark wants
    provider: str
    shape: str
    ms: float
    ms_lo: float  # 20th percentile
    ms_hi: float  # 80th percentile
    bytes: float = None  # minimum bytes moved, for GB/s
    flops: float = None  # for TFLOP/s
    peak_gb: float = None  # peak device memory (training steps)


class Ctx:
    """What a benchmark needs: device, dtype, tokens, a timer and the provider list."""

    def __init__(self, args):
        self.device = "cuda" if CUDA else "cpu"
        self.dtype = DTYPES[args.dtype]
        self.tokens = args.tokens or (ARC_TOKENS if CUDA else CPU_TOKENS)
        self.elt = torch.finfo(self.dtype).bits // 8
        self.quick = getattr(args, "check", False)  # --check: only the shapes its budget allows
        self.cpu_compile = getattr(args, "cpu_compile", False)

    def time(self, fn, warmup=25, rep=100, reps=3):
        """(median, p20, p80) in ms; warmup and rep in ms of device time, as do_bench takes them
        (on a CPU: `reps` timed calls after one untimed)."""
        if CUDA:
            import triton.testing
            fn()  # compile / autotune outside the timed region
            return tuple(triton.testing.do_bench(fn, warmup=warmup, rep=rep,
                                                 quantiles=[0.5, 0.2, 0.8]))
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return tuple(torch.tensor(ts).quantile(torch.tensor([0.5, 0.2, 0.8])).tolist())

    def providers(self, triton_fn, reference):
        """A fresh name -> callable dict (a new torch.compile object each call, so the forward-only
        and the forward+backward graphs don't share guards). torch.compile only on CUDA: on CPU it
        would need a C++ toolchain and minutes."""
        p = {"triton": triton_fn, "eager": reference}
        if CUDA:
            p["compile"] = torch.compile(reference, dynamic=False)
        return p

    def run(self, op, shape, triton_fn, reference, make_inputs, fwd, bytes_fwd, bytes_fwdbwd):
        """Time fwd and fwd+bwd for every provider. make_inputs(requires_grad) -> tuple of tensors;
        fwd(f, inputs) -> output; the gradient is taken with respect to the inputs that require
        grad."""
        rows = []
        for name, f in self.providers(triton_fn, reference).items():
            inp = make_inputs(False)
            t = self.time(lambda: fwd(f, inp))
            rows.append(Row(op, "fwd", name, shape, *t, bytes=bytes_fwd))
            del inp
        for name, f in self.providers(triton_fn, reference).items():
            inp = make_inputs(True)
            diff = [t for t in inp if t.requires_grad]
            g = torch.randn_like(fwd(f, inp))  # one upstream gradient, reused every call
            t = self.time(lambda: torch.autograd.grad(fwd(f, inp), diff, g))
            rows.append(Row(op, "fwd+bwd", name, shape, *t, bytes=bytes_fwdbwd))
            del inp, diff, g
        return rows

    def randn(self, *shape, requires_grad=False, mean=0.5):
        x = (torch.randn(*shape, device=self.device) + mean).to(self.dtype)
        return x.requires_grad_(requires_grad)


# --------------------------------------------------------------------------------------------------
# Registry: name -> (function(ctx) -> list[Row], description)

BENCHMARKS = {}


def register(name, description):
    return lambda fn: BENCHMARKS.setdefault(name, (fn, description))[0]


@register("rms_norm", "post-norm rms(h + r), hidden 512 (the TRM block's two norms)")
def bench_rms_norm(ctx):
    T, H, e = ctx.tokens, 512, ctx.elt
    # fwd: read h, r, write y (+ rstd 4 B/row); bwd: read dy, saved y, rstd, write dh once
    # (dh == dr)
    bytes_fwd = 3 * T * H * e + 4 * T
    bytes_fwdbwd = bytes_fwd + 3 * T * H * e + 4 * T
    return ctx.run("rms_norm(h+r)", f"[{T}, {H}]", _rms.rms_norm_triton, _rms.rms_norm_reference,
                   lambda rg: (ctx.randn(T, H, requires_grad=rg),
                               ctx.randn(T, H, requires_grad=rg, mean=-0.2)),
                   lambda f, inp: f(*inp), bytes_fwd, bytes_fwdbwd)


@register("swiglu", "silu(gate) * up from packed gate_up [T, 3072] -> [T, 1536]")
def bench_swiglu(ctx):
    T, I, e = ctx.tokens, 1536, ctx.elt
    # fwd: read gate_up (2I), write c (I); bwd: read dc (I) and gate_up (2I), write d(gate_up) (2I)
    bytes_fwd = 3 * T * I * e
    bytes_fwdbwd = bytes_fwd + 5 * T * I * e
    return ctx.run("swiglu", f"[{T}, {2 * I}]", _swi.swiglu_triton, _swi.swiglu_reference,
                   lambda rg: (ctx.randn(T, 2 * I, requires_grad=rg),),
                   lambda f, inp: f(*inp), bytes_fwd, bytes_fwdbwd)


@register("cross_entropy", "per-token stablemax CE, vocab 12, int64 labels, 10% ignored")
def bench_cross_entropy(ctx):
    T, V, e = ctx.tokens, 12, ctx.elt
    # fwd: read logits, labels (int64), write loss (fp32); bwd: read logits, labels, g (fp32),
    # write dlogits
    bytes_fwd = T * V * e + 8 * T + 4 * T
    bytes_fwdbwd = bytes_fwd + 2 * T * V * e + 8 * T + 4 * T
    labels = torch.randint(0, V, (T,), device=ctx.device)
    labels[torch.rand(T, device=ctx.device) < 0.1] = -100

    def make(rg):
        return ((torch.randn(T, V, device=ctx.device) * 3).to(ctx.dtype).requires_grad_(rg),)
    return ctx.run("stablemax CE", f"[{T}, {V}]", _ce.cross_entropy_triton,
                   _ce.cross_entropy_reference, make,
                   lambda f, inp: f(inp[0], labels), bytes_fwd, bytes_fwdbwd)


def random_batch(ctx, B, L, ids, demos=0):
    """Random tokens in the batch layout of data.PuzzleDataset (with K demonstration pairs for
    etrm)."""
    def tok(*shape):
        return torch.randint(2, 12, shape, dtype=torch.int32, device=ctx.device)
    batch = {"inputs": tok(B, L), "labels": tok(B, L),
             "puzzle_identifiers": torch.randint(1, ids, (B,), dtype=torch.int32,
                                                 device=ctx.device)}
    if demos:
        batch.update(demo_inputs=tok(B, demos, L), demo_labels=tok(B, demos, L),
                     demo_mask=torch.ones(B, demos, dtype=torch.bool, device=ctx.device))
    return batch


def step_row(ctx, mod, cfg, batch, label, provider, compiled=False, flops=None, reps=3):
    """Time train.train_step (forward, backward, AdamATan2, sign-SGD) with the ACT carry kept
    between steps -> a Row: samples/s, peak memory and, compiled, the first call's seconds (the
    compile)."""
    import optim
    import train
    torch.manual_seed(0)
    model = mod.Model(cfg).to(ctx.device).train()
    B = batch["inputs"].shape[0]
    s = train.State(model, optim.AdamATan2(model.parameters()),
                    forward=torch.compile(model) if compiled else None)
    tcfg = train.TrainConfig(global_batch_size=B, lr_warmup_steps=0, ema=False)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train.train_step(s, batch, tcfg)
    first = time.perf_counter() - t0
    t = ctx.time(lambda: train.train_step(s, batch, tcfg), warmup=500, rep=2500, reps=reps)
    peak = torch.cuda.max_memory_allocated() / 1e9 if CUDA else 0.0
    del model, s
    torch.cuda.empty_cache() if CUDA else None
    mode = f"{B / t[0] * 1e3:.0f} samples/s, {peak:.1f} GB"
    mode += f", 1st call {first:.0f} s" if compiled else ""
    return Row(label, mode, provider, f"[{B}, {batch['inputs'].shape[1]}]", *t, flops=flops,
               peak_gb=peak)


@register("attention",
          "non-causal attention from packed qkv [N, 916, 3*8*64], RoPE: TRM (N=192), PRR (N=512)")
def bench_attention(ctx):
    # Providers: triton (kernels.attention), eager / compile (the reference path: RoPE in fp32 +
    # layout copies + SDPA), the reference with SDPA pinned to the flash or cuDNN backend, and SDPA
    # alone on ready-made [N, H, L, D] q, k, v (no RoPE, no layout copies). FLOPs: 4*N*H*L^2*D for
    # the forward, 2.5x that for the backward, so 3.5x for fwd+bwd (the Triton fused-attention
    # tutorial's count).
    import torch.nn.functional as F
    attn = importlib.import_module("kernels.attention")
    H, D, L = (8, 64, 916) if CUDA else (2, 32, 40)  # CPU: a tiny shape, only to check the harness
    N = max(1, ctx.tokens // L) if CUDA else 2  # CPU: 4 heads of 40 tokens, seconds interpreted
    prr = CUDA and ctx.tokens == ARC_TOKENS and not ctx.quick
    shapes = [("TRM", N)] + ([("PRR", 64 * 8)] if prr else [])
    import trm
    # [L, D] float32, as the model's
    cos, sin = (t.to(ctx.device) for t in trm.rope_tables(D, L, 10000.0))

    def reference(qkv):
        return attn.attention_reference(qkv, H, cos, sin)

    def pinned(fn, backend):
        from torch.nn.attention import sdpa_kernel
        return lambda *a: _with(sdpa_kernel(backend), fn, *a)

    rows = []
    for tag, N in shapes:
        op, shape = f"attention {tag}", f"[{N}, {L}, {3 * H * D}] H={H}"
        flops_fwd = 4 * N * H * L * L * D
        for mode in ("fwd", "fwd+bwd"):
            rg = mode == "fwd+bwd"
            provs = ctx.providers(lambda qkv: attn.attention_triton(qkv, H, cos, sin), reference)
            sdpa = {"sdpa": F.scaled_dot_product_attention}
            if CUDA:
                from torch.nn.attention import SDPBackend
                for bname, b in (("flash", SDPBackend.FLASH_ATTENTION),
                                 ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                    provs[f"eager/{bname}"] = pinned(reference, b)
                    sdpa[f"sdpa/{bname}"] = pinned(F.scaled_dot_product_attention, b)
            qkv = ctx.randn(N, L, 3 * H * D, requires_grad=rg, mean=0.0)
            q, k, v = (ctx.randn(N, H, L, D, requires_grad=rg, mean=0.0) for _ in range(3))
            g = ctx.randn(N, L, H * D, mean=0.0)  # one upstream gradient, reused every call
            g4 = g.view(N, L, H, D).transpose(1, 2).contiguous()
            calls = [(n, (lambda f=f: f(qkv)), [qkv], g) for n, f in provs.items()]
            calls += [(n, (lambda f=f: f(q, k, v)), [q, k, v], g4) for n, f in sdpa.items()]
            for name, call, inputs, grad in calls:
                fn = call if not rg else (lambda call=call, inputs=inputs, grad=grad:
                                          torch.autograd.grad(call(), inputs, grad))
                try:
                    t = ctx.time(fn)
                except RuntimeError as e:  # e.g. no cuDNN attention for this shape / build
                    print(f"{op} {mode} {name}: skipped ({str(e).splitlines()[0][:100]})")
                    continue
                rows.append(Row(op, mode, name, shape, *t, flops=flops_fwd * (3.5 if rg else 1.0)))
            del qkv, q, k, v, g, g4, calls
            torch.cuda.empty_cache() if CUDA else None
    return rows


def _with(context, fn, *args):
    with context:
        return fn(*args)


@register("trm_step",
          "one TRM training step, ARC-AGI-1 config (batch 192, H3 L4, bf16), eager and compiled")
def bench_trm_step(ctx):
    """Samples/s and peak memory of a full step (forward, backward, AdamATan2) with kernels on and
    off.

    FLOPs per step: (15 forward + 5 x 2 backward) network calls x 17.4 MFLOP/token x tokens. The
    reference TRM code, measured by others on one H100 (torch 2.11): 221 ms compiled (869 samples/s,
    37.7 GB), 554 ms eager; `torch+compile` here is our anchor for it."""
    import kernels
    import trm
    B = 192 if CUDA else 2
    cfg = trm.Config(num_puzzle_identifiers=1000, forward_dtype="bfloat16" if CUDA else "float32",
                     **({} if CUDA else dict(hidden_size=64, num_heads=2, seq_len=16, H_cycles=2,
                                             L_cycles=2)))
    batch = random_batch(ctx, B, cfg.seq_len, 1000)
    flops = (15 + 5 * 2) * 17.4e6 * B * (cfg.seq_len + 16)
    rows = []
    for use_triton in (True, False):
        for compiled in ((False, True) if CUDA else (False,)):
            kernels.USE_TRITON = use_triton
            name = ("triton" if use_triton else "torch") + ("+compile" if compiled else "")
            rows.append(step_row(ctx, trm, cfg, batch, "trm_step", name, compiled, flops))
    kernels.USE_TRITON = True
    return rows


@register("models",
          "a training step of every model at its paper config (GPU): samples/s and peak memory")
def bench_models(ctx):
    """Forward + backward + AdamATan2 for each model (+ variants worth comparing: PRR K=1 vs K=8,
    deep_recursive memory-efficient vs standard). Batches carry demos for etrm. Eager, kernels
    on."""
    B = 64 if CUDA else 2
    shape = dict(seq_len=900, vocab_size=12, num_puzzle_identifiers=1000) if CUDA else \
        dict(seq_len=16, vocab_size=12, num_puzzle_identifiers=10)
    tiny = {} if CUDA else dict({m: dict(hidden_size=32, num_heads=2)
                                 for m in ("trm", "hrm", "etrm", "prr")},
                                deep_recursive=dict(base_channels=8, latent_channels=16))
    variants = [("trm", {}), ("hrm", {}), ("etrm", {}), ("prr", {"num_branches": 1}),
                ("prr", {"num_branches": 8}), ("deep_recursive", {"memory_efficient": True}),
                ("deep_recursive", {"memory_efficient": False})]
    rows = []
    for name, extra in variants:
        mod = importlib.import_module(name)
        cfg = mod.Config(**shape, **tiny.get(name, {}), **extra)
        demos = 4 if mod.Model.needs_demos else 0
        batch = random_batch(ctx, B, cfg.seq_len, shape["num_puzzle_identifiers"], demos)
        label = name + "".join(f" {k}={v}" for k, v in extra.items())
        rows.append(step_row(ctx, mod, cfg, batch, label, "eager"))
    return rows


@register("cpu_step", "a TRM step on a CPU, 1 thread, maze recipe: eager; compiled: --cpu-compile")
def bench_cpu_step(ctx):
    """What train.py's CPU_COMPILE_STEPS rests on: the step time eager and compiled, and the compile
    time (the compiled row's first call), at the teaching suite's TRM maze recipe
    (experiments/teach.py)."""
    import trm
    if CUDA:
        return []
    cfg = trm.Config(hidden_size=64, num_heads=4, L_layers=1, H_cycles=2, L_cycles=2,
                     halt_max_steps=4, puzzle_emb_ndim=0, seq_len=121, vocab_size=6,
                     num_puzzle_identifiers=2)
    batch = random_batch(ctx, 32, cfg.seq_len, 2)
    batch = {k: v.clamp(max=5) if k != "puzzle_identifiers" else v for k, v in batch.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [step_row(ctx, trm, cfg, batch, "cpu_step maze", name, compiled, reps=10)
                for name, compiled in (("eager", False), ("compile", True))[:1 + ctx.cpu_compile]]
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Copy bandwidth, table, plot, record

def copy_bandwidth(ctx):
    """GB/s of a device-to-device copy of 1 GiB (2 x bytes moved); 64 MiB on CPU."""
    n = (1 << 30) if CUDA else (64 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=ctx.device)
    dst = torch.empty_like(src)
    ms = ctx.time(lambda: dst.copy_(src))[0]
    del src, dst
    return 2 * n / (ms * 1e-3) / 1e9


CHECK_BUDGET_S = 480  # --check: 8 minutes in all
# most important first
CHECK_BENCHMARKS = ["trm_step", "rms_norm", "swiglu", "cross_entropy", "attention"]


def gpu_tests(timeout):
    """Run the kernel tests on the GPU; -> (ok, pytest's summary line)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_kernels.py",
           "tests/test_attention.py"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    print("\n".join(ln for ln in lines if ln.startswith(("FAILED", "ERROR"))))
    return res.returncode == 0, (lines[-1] if lines else f"no output (exit {res.returncode})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="benchmarks:\n" + "\n".join(
                                     f"  {k:<16}{d}" for k, (_, d) in BENCHMARKS.items()))
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all); see the list below")
    ap.add_argument("--check", action="store_true",
                    help="first run on a GPU machine: GPU tests + kernel benchmarks + TRM step, "
                    "recorded (<= 8 min)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--cpu-compile", action="store_true",
                    help="cpu_step: also the compiled step (a cold torch.compile: about 100 s)")
    ap.add_argument("--record", action="store_true",
                    help="append the results to BENCHMARKS.md (CUDA only)")
    ap.add_argument("--tokens", type=int, default=None,
                    help=f"tokens per call (default {ARC_TOKENS} on CUDA, {CPU_TOKENS} on CPU)")
    ap.add_argument("--dtype", default="bf16", choices=list(DTYPES),
                    help="activation dtype (default bf16, as in training)")
    ap.add_argument("--plot", default=os.path.join("out", "bench", "bench_kernels.png"),
                    help="where to save the plot ('' for none)")
    args = ap.parse_args(argv)
    if args.list:
        for k, (_, d) in BENCHMARKS.items():
            print(f"{k:<16}{d}")
        return 0
    if args.check and not CUDA:
        raise SystemExit("error: bench.py --check needs a CUDA GPU (none found); on a CPU run "
                         "`python bench.py` "
                         "to check the harness, or the tests under TRITON_INTERPRET=1")
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    names = args.names or (CHECK_BENCHMARKS if args.check else list(BENCHMARKS))
    ctx = Ctx(args)
    start = time.monotonic()
    notes = []
    tests_ok = True
    if args.check:
        tests_ok, summary = gpu_tests(timeout=CHECK_BUDGET_S * 0.45)
        notes.append(f"GPU tests (tests/test_kernels.py, tests/test_attention.py): {summary}")
        print(notes[-1])
    device = (torch.cuda.get_device_name() if CUDA
              else f"CPU ({platform.machine()}), Triton interpreter")
    if not CUDA:
        print("no CUDA: skipping GPU benchmarks; running a tiny shape on CPU to check the harness "
              f"({ctx.tokens} tokens, Triton interpreter, plain timer, no torch.compile). These "
              "times mean nothing.")
    copy_gbs = copy_bandwidth(ctx)
    print(f"device: {device} | torch {torch.__version__} | copy bandwidth {copy_gbs:.0f} GB/s")
    rows = []
    for n in names:
        if args.check and time.monotonic() - start > CHECK_BUDGET_S * 0.85:
            notes.append(f"{n}: skipped, past {CHECK_BUDGET_S * 0.85:.0f} s of the "
                         f"{CHECK_BUDGET_S} s budget")
            print(notes[-1])
            continue
        rows += BENCHMARKS[n][0](ctx)
        torch.cuda.empty_cache() if CUDA else None
    head, body = bench_report.table(rows, copy_gbs, CUDA)
    print(bench_report.plain(head, body))
    if args.plot and any(r.bytes for r in rows):
        bench_report.plot(rows, copy_gbs, args.plot, f"{device}, {args.dtype}, {ctx.tokens} tokens")
    notes.append(f"wall time {time.monotonic() - start:.0f} s")
    if args.record or args.check:
        if not CUDA:
            print("--record ignored without CUDA: interpreter times are not benchmarks")
        else:
            given = argv if argv is not None else sys.argv[1:]
            cmd = "python " + " ".join([os.path.basename(sys.argv[0])] + given)
            bench_report.record("BENCHMARKS.md", names, device, copy_gbs, head, body, cmd, notes)
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
