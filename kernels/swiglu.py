"""SwiGLU gate from the packed gate_up projection: silu(gate) * up (TRM's MLP).

    swiglu_reference(gate_up)   pure PyTorch, the definition: chunk, silu, multiply
    swiglu_triton(gate_up)      the same function, one Triton pass forward and one backward

gate_up is [..., 2*I] straight out of `gate_up_proj`, gate in columns [0, I), up in [I, 2I) (TRM's
`chunk(2, -1)`; Liger's fused gate-up layout). No chunk copies: the kernels index both halves of
the packed row with one row stride.

Forward (`_swiglu_fwd`): reads gate_up once, writes c = silu(g) * u [..., I] once. Backward
(`_swiglu_bwd`): reads dc and gate_up, recomputes sigmoid (cheaper than saving silu(g): that would
be another [T, I] write and read), writes both gradient halves straight into one packed
d(gate_up) [..., 2I] buffer (no cat):
    dg = dc * u * sig(g) * (1 + g * (1 - sig(g))),    du = dc * silu(g)
Only gate_up is saved for the backward (it is the matmul's output and is alive anyway).

Numerics: loads upcast to float32 right away (in the interpreter bf16 arithmetic is silently NaN),
sigmoid in float32, one rounding to the output dtype. The reference rounds twice in bf16 (silu,
then the product), so bf16 results differ from it by about one ulp.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import INTERPRET, _rows


# --------------------------------------------------------------------------------------------------
# Reference

def swiglu_reference(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# --------------------------------------------------------------------------------------------------
# Triton kernels: grid (row tiles, column tiles of the inner width I)

@triton.jit
def _swiglu_fwd(GU, C, M, I, stride_gu, stride_c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < I)
    p = GU + rows[:, None] * stride_gu + cols[None, :]
    g = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(p + I, mask=mask, other=0.0).to(tl.float32)
    c = g * tl.sigmoid(g) * u
    tl.store(C + rows[:, None] * stride_c + cols[None, :], c.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd(DC, GU, DGU, M, I, stride_dc, stride_gu, stride_dgu,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < I)
    dc = tl.load(DC + rows[:, None] * stride_dc + cols[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    p = GU + rows[:, None] * stride_gu + cols[None, :]
    g = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(p + I, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    dg = dc * u * sig * (1.0 + g * (1.0 - sig))
    du = dc * silu
    q = DGU + rows[:, None] * stride_dgu + cols[None, :]
    tl.store(q, dg.to(DGU.dtype.element_ty), mask=mask)
    tl.store(q + I, du.to(DGU.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# Host launch

def _settings(I):
    """(BLOCK_M, BLOCK_N, num_warps) from the inner width only (the row count may be symbolic under
    torch.compile). Column tiles of at most 1024 that divide I where possible: at ARC's I = 1536
    one 2048 tile would leave 25% of the lanes idle, so it gets three of 512. About 4K output
    elements per program on the GPU (the forward moves 3x that, the backward 5x). The
    interpreter's cost is per program, not per byte: tiles 8x larger there."""
    BLOCK_N = min(1 << (I - 1).bit_length(), 1024)
    for b in (1024, 512, 256):
        if I % b == 0 and b <= BLOCK_N:
            BLOCK_N = b
            break
    budget = 32768 if INTERPRET else 4096
    BLOCK_M = max(1, min(budget // BLOCK_N, 64))
    num_warps = 4 if BLOCK_M * BLOCK_N <= 4096 else 8
    return BLOCK_M, BLOCK_N, num_warps


def swiglu_fwd(gu):
    """gu [M, 2I] with a unit last stride -> c [M, I]."""
    M, W = gu.shape
    I = W // 2
    c = torch.empty((M, I), dtype=gu.dtype, device=gu.device)
    BLOCK_M, BLOCK_N, num_warps = _settings(I)
    grid = ((M + BLOCK_M - 1) // BLOCK_M, (I + BLOCK_N - 1) // BLOCK_N)
    _swiglu_fwd[grid](gu, c, M, I, gu.stride(0), c.stride(0),
                      BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return c


def swiglu_bwd(dc, gu):
    M, W = gu.shape
    I = W // 2
    dc2 = _rows(dc, I)
    dgu = torch.empty((M, W), dtype=gu.dtype, device=gu.device)
    BLOCK_M, BLOCK_N, num_warps = _settings(I)
    grid = ((M + BLOCK_M - 1) // BLOCK_M, (I + BLOCK_N - 1) // BLOCK_N)
    _swiglu_bwd[grid](dc2, gu, dgu, M, I, dc2.stride(0), gu.stride(0), dgu.stride(0),
                      BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return dgu


# --------------------------------------------------------------------------------------------------
# Custom ops (this file's autograd.Function: forward, backward, shape-only fakes for torch.compile)

@torch.library.custom_op("nanotrm::swiglu_fwd", mutates_args=())
def _swiglu_fwd_op(gu: torch.Tensor) -> torch.Tensor:
    return swiglu_fwd(gu)


@_swiglu_fwd_op.register_fake
def _(gu):
    M, W = gu.shape
    return gu.new_empty(M, W // 2)


@torch.library.custom_op("nanotrm::swiglu_bwd", mutates_args=())
def _swiglu_bwd_op(dc: torch.Tensor, gu: torch.Tensor) -> torch.Tensor:
    return swiglu_bwd(dc, gu)


@_swiglu_bwd_op.register_fake
def _(dc, gu):
    return gu.new_empty(gu.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])  # the matmul's output, alive anyway; sigmoid is recomputed


def _backward(ctx, dc):
    (gu,) = ctx.saved_tensors
    return _swiglu_bwd_op(dc, gu)


_swiglu_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def swiglu_triton(gate_up):
    """silu(gate) * up from packed [..., 2*I]; same function as swiglu_reference."""
    W = gate_up.shape[-1]
    assert W % 2 == 0, f"swiglu: last dim {W} of gate_up must be even (gate | up)"
    if gate_up.numel() == 0:
        return swiglu_reference(gate_up)
    return _swiglu_fwd_op(_rows(gate_up, W)).view(*gate_up.shape[:-1], W // 2)
