"""Per-token stablemax / softmax cross-entropy with ignore_index (the TRM / HRM training loss):
float32 losses shaped like `labels`, 0 where labels == ignore_index.

    cross_entropy_reference(logits, labels, kind="stablemax", ignore_index=-100)  pure PyTorch
    cross_entropy_triton(logits, labels, kind="stablemax", ignore_index=-100)     one pass each way

Stablemax (Prieto et al., ICLR 2025): s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), S = sum_j s(x_j),
    loss = log S - log s(x_y)
    dloss/dx_i = s'(x_i) / S - [i = y] / (1 + |x_y|),    s'(x) = 1 (x >= 0), s(x)^2 (x < 0)
No max subtraction (stablemax is not shift-invariant and cannot overflow: S <= V (1 + max|x|)).
Softmax: loss = log sum exp(x - m) - (x_y - m) with m = max x, dloss/dx = softmax(x) - onehot(y).
The bracket matters: m + log Z - x_y loses |m| x 2^-24 to cancellation (1e-3 nats at logits ~1e4).

The TRM reference computes the loss in float64 (an fp64 copy of the logits and a chain of fp64
kernels); here it is float32 in one kernel (fp32 and fp64 agree to ~1e-7, measured), with no
log-probability tensor. The vocabulary is one block (V is 6-12 for our tasks, up to MAX_V); a
program takes BLOCK_M rows (one 12-wide row would be all launch overhead). Only the inputs are
saved: the backward re-reads the row (S is one reduction over a small V) and writes dlogits =
g * dloss/dx (g upstream) in the logits' dtype, 0 on ignored rows. Labels may be any integer
dtype; a label outside [0, V) other than ignore_index is undefined behaviour here (the reference
raises): checking would cost a device sync.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import INTERPRET, _rows

MAX_V = 16384  # one block over the vocabulary; beyond this a looped kernel would be needed


# --------------------------------------------------------------------------------------------------
# Reference

def _log_stablemax(x):
    # Branch-safe: each branch sees only inputs in its own domain, so neither produces inf/NaN
    # gradients that `where` would then multiply by zero (the original's 1/(1-x+1e-30) gives NaN
    # gradients at x == 1.0 in fp32/bf16: its unused branch overflows).
    pos = x >= 0
    s = torch.where(pos, x.clamp(min=0) + 1, 1 / (1 - x.clamp(max=0)))
    return torch.log(s) - torch.log(s.sum(-1, keepdim=True))


def cross_entropy_reference(logits, labels, kind="stablemax", ignore_index=-100):
    x = logits.float()
    logp = _log_stablemax(x) if kind == "stablemax" else F.log_softmax(x, -1)
    labels = labels.long()  # before comparing: uint8 labels would wrap ignore_index -100 to 156
    mask = labels != ignore_index
    safe = torch.where(mask, labels, 0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, nll, 0.0)


# --------------------------------------------------------------------------------------------------
# Triton kernels: one [BLOCK_M, BLOCK_V] tile per program, the whole vocabulary in one block

@triton.jit
def _ce_fwd(X, Y, LOSS, M, V, stride_x, ignore_index,
            STABLEMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_V)
    rmask = rows < M
    mask = rmask[:, None] & (cols[None, :] < V)
    y = tl.load(Y + rows, mask=rmask, other=ignore_index).to(tl.int32)
    valid = (y != ignore_index) & rmask
    onehot = cols[None, :] == y[:, None]  # never true for ignored rows (ignore_index < 0 or >= V)
    if STABLEMAX:
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        s = tl.where(x >= 0, x + 1.0, 1.0 / (1.0 - tl.minimum(x, 0.0)))
        s = tl.where(mask, s, 0.0)
        S = tl.where(rmask, tl.sum(s, axis=1), 1.0)  # padded / ignored rows: keep log() finite
        s_y = tl.where(valid, tl.sum(tl.where(onehot, s, 0.0), axis=1), 1.0)
        loss = tl.log(S) - tl.log(s_y)
    else:
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask,
                    other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=1)
        m = tl.where(rmask, m, 0.0)  # rows past M are all -inf: keep them NaN-free
        e = tl.where(mask, tl.exp(x - m[:, None]), 0.0)
        x_y = tl.sum(tl.where(onehot, x, 0.0), axis=1)
        Z = tl.where(rmask, tl.sum(e, axis=1), 1.0)
        # log Z - (x_y - m), not m + log Z - x_y: x_y - m is exact (Sterbenz) when x_y is near the
        # max, where m + log Z would round at ulp(m) (1e-3 nats at logits ~1e4) and cancel x_y
        loss = tl.log(Z) - (x_y - m)
    tl.store(LOSS + rows, tl.where(valid, loss, 0.0), mask=rmask)


@triton.jit
def _ce_bwd(X, Y, G, DX, M, V, stride_x, stride_dx, ignore_index,
            STABLEMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_V)
    rmask = rows < M
    mask = rmask[:, None] & (cols[None, :] < V)
    y = tl.load(Y + rows, mask=rmask, other=ignore_index).to(tl.int32)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(tl.float32)
    g = tl.where((y != ignore_index) & rmask, g, 0.0)
    onehot = cols[None, :] == y[:, None]
    if STABLEMAX:
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        s = tl.where(x >= 0, x + 1.0, 1.0 / (1.0 - tl.minimum(x, 0.0)))
        s = tl.where(mask, s, 0.0)
        ds = tl.where(x >= 0, 1.0, s * s)  # s'(x)
        S = tl.where(rmask, tl.sum(s, axis=1), 1.0)
        d = ds / S[:, None] - tl.where(onehot, 1.0 / (1.0 + tl.abs(x)), 0.0)
    else:
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask,
                    other=-float("inf")).to(tl.float32)
        m = tl.max(x, axis=1)
        m = tl.where(rmask, m, 0.0)
        e = tl.where(mask, tl.exp(x - m[:, None]), 0.0)
        Z = tl.where(rmask, tl.sum(e, axis=1), 1.0)
        d = e / Z[:, None] - tl.where(onehot, 1.0, 0.0)
    dx = g[:, None] * d
    tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# Host launch

def _settings(V):
    """(BLOCK_M, BLOCK_V, num_warps) from V only (the row count may be symbolic under
    torch.compile). About 8K logits per program on the GPU: 512 rows at V = 12 (padded to 16),
    so ARC's 175,872 tokens make 344 programs, a couple of waves on 132 SMs. The interpreter's
    cost is per program, not per byte: tiles up to 4x larger there (<= 1024 rows)."""
    BLOCK_V = max(16, 1 << (V - 1).bit_length())
    budget = 32768 if INTERPRET else 8192
    BLOCK_M = max(1, min(budget // BLOCK_V, 1024))
    num_warps = 4 if BLOCK_M * BLOCK_V <= 4096 else 8
    return BLOCK_M, BLOCK_V, num_warps


def cross_entropy_fwd(x, y, stablemax, ignore_index):
    M, V = x.shape
    loss = torch.empty(M, dtype=torch.float32, device=x.device)
    BLOCK_M, BLOCK_V, num_warps = _settings(V)
    _ce_fwd[((M + BLOCK_M - 1) // BLOCK_M,)](
        x, y, loss, M, V, x.stride(0), ignore_index,
        STABLEMAX=stablemax, BLOCK_M=BLOCK_M, BLOCK_V=BLOCK_V, num_warps=num_warps)
    return loss


def cross_entropy_bwd(g, x, y, stablemax, ignore_index):
    M, V = x.shape
    g = g.reshape(-1).contiguous()
    dx = torch.empty((M, V), dtype=x.dtype, device=x.device)
    BLOCK_M, BLOCK_V, num_warps = _settings(V)
    _ce_bwd[((M + BLOCK_M - 1) // BLOCK_M,)](
        x, y, g, dx, M, V, x.stride(0), dx.stride(0), ignore_index,
        STABLEMAX=stablemax, BLOCK_M=BLOCK_M, BLOCK_V=BLOCK_V, num_warps=num_warps)
    return dx


# --------------------------------------------------------------------------------------------------
# Custom ops (this file's autograd.Function: forward, backward, shape-only fakes for torch.compile)

@torch.library.custom_op("nanotrm::cross_entropy_fwd", mutates_args=())
def _ce_fwd_op(x: torch.Tensor, y: torch.Tensor, stablemax: bool,
               ignore_index: int) -> torch.Tensor:
    return cross_entropy_fwd(x, y, stablemax, ignore_index)


@_ce_fwd_op.register_fake
def _(x, y, stablemax, ignore_index):
    return x.new_empty(x.shape[0], dtype=torch.float32)


@torch.library.custom_op("nanotrm::cross_entropy_bwd", mutates_args=())
def _ce_bwd_op(g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, stablemax: bool,
               ignore_index: int) -> torch.Tensor:
    return cross_entropy_bwd(g, x, y, stablemax, ignore_index)


@_ce_bwd_op.register_fake
def _(g, x, y, stablemax, ignore_index):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, y, stablemax, ignore_index = inputs
    ctx.save_for_backward(x, y)  # nothing else: the row is re-read and S recomputed (V is small)
    ctx.args = (stablemax, ignore_index)


def _backward(ctx, g):
    x, y = ctx.saved_tensors
    return _ce_bwd_op(g, x, y, *ctx.args), None, None, None


_ce_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def cross_entropy_triton(logits, labels, kind="stablemax", ignore_index=-100):
    """Per-token float32 CE shaped like labels, 0 where ignored; same function as the reference."""
    assert kind in ("stablemax", "softmax"), \
        f"cross_entropy: unknown kind {kind!r} (stablemax | softmax)"
    assert labels.shape == logits.shape[:-1], \
        f"cross_entropy: labels {tuple(labels.shape)} vs logits {tuple(logits.shape)}"
    if logits.numel() == 0 or logits.shape[-1] > MAX_V or logits.dtype == torch.float64:
        return cross_entropy_reference(logits, labels, kind, ignore_index)
    loss = _ce_fwd_op(_rows(logits, logits.shape[-1]), labels.reshape(-1).contiguous(),
                      kind == "stablemax", int(ignore_index))
    return loss.view(labels.shape)
