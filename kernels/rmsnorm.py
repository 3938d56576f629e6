"""Fused RMSNorm without weight, and the post-norm form rms(x + residual) (TRM's post-norm block).

    rms_norm_reference(x, residual=None, eps=1e-5)   pure PyTorch, the definition
    rms_norm_triton(x, residual=None, eps=1e-5)      the same function, one Triton pass each way

y = s * rstd, s = x + residual rounded to x.dtype (as the reference), rstd = rsqrt(mean(s^2) + eps)
in float32. TRM's norm has no weight: no dW reduction, both passes are purely row-parallel.

Forward (`_rms_fwd`): reads x (and residual) once, writes y once, plus rstd [M] float32 (4 bytes a
row, 0.4% of the traffic at hidden 512 bf16). Backward (`_rms_bwd`): with y = s * rstd,
    ds = rstd * (dy - y * mean(dy * y))
so it reads dy, the saved output y and rstd, and writes ds once, returned as the gradient of both
x and the residual (autograd never adds into a buffer it does not own, so the aliasing is safe;
tests/test_kernels.py checks h -> rms(h, f(h))). Saving y (written anyway) rather than s (an
extra write) rounds it to bf16, moving ds by about one bf16 ulp (inside test tolerance).

Numerics: every load is upcast to float32 right away (under TRITON_INTERPRET=1 bf16 arithmetic is
silently NaN); eps reaches the kernel as float32 (an fp64 scalar would promote the chain). A
residual with another shape or dtype (broadcasting, promotion) goes to the reference instead.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from . import INTERPRET, _rows


# --------------------------------------------------------------------------------------------------
# Reference

def rms_norm_reference(x, residual=None, eps=1e-5):
    # The residual sum is formed in the input dtype (bf16 in training) and only then upcast:
    # the reference rounds there, and kernels-on / kernels-off runs must round at the same point.
    if residual is not None:
        x = x + residual
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Triton kernels: one [BLOCK_M, BLOCK_N] tile of whole rows per program (BLOCK_N >= N)

@triton.jit
def _rms_fwd(X, R, Y, RSTD, M, N, stride_x, stride_r, stride_y, eps,
             HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # int64 before the stride multiply: int32 overflows at 2^31
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        # add in float32, then round to the input dtype: the reference's bf16 `x + residual`
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
    s = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(s * s, axis=1) / N + eps)  # [BLOCK_M]; eps arrives as a float32 scalar
    y = s * rstd[:, None]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rows < M)


@triton.jit
def _rms_bwd(DY, Y, RSTD, DX, M, N, stride_dy, stride_y, stride_dx,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    y = tl.load(Y + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + rows, mask=rows < M, other=0.0)
    c = tl.sum(dy * y, axis=1) / N  # mean(dy * y), [BLOCK_M]
    dx = rstd[:, None] * (dy - y * c[:, None])
    tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# Host launch

def _settings(N):
    """(BLOCK_M, BLOCK_N, num_warps) from the row width only (the row count may be a symbolic size
    under torch.compile). Whole rows per tile; about 8K elements per program on the GPU: a
    512-wide bf16 row is only 1 KB, so one row per program (Liger-style, made for wide LLM rows)
    leaves 4 warps with 8-byte loads; 16 rows x 512 gives 16-byte vectors and 16 KB in flight per
    program. The interpreter's cost is per program, not per byte: tiles 4x larger there."""
    BLOCK_N = 1 << (N - 1).bit_length()  # next power of two
    budget = 32768 if INTERPRET else 8192
    BLOCK_M = max(1, min(budget // BLOCK_N, 64))
    num_warps = 4 if BLOCK_M * BLOCK_N <= 4096 else 8
    return BLOCK_M, BLOCK_N, num_warps


def rms_norm_fwd(x2, r2, eps):
    """x2, r2 [M, N] with unit last strides (r2 may be None) -> y [M, N], rstd [M] float32."""
    residual = r2
    r2 = x2 if r2 is None else r2
    M, N = x2.shape
    y = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x2.device)
    BLOCK_M, BLOCK_N, num_warps = _settings(N)
    _rms_fwd[((M + BLOCK_M - 1) // BLOCK_M,)](
        x2, r2, y, rstd, M, N, x2.stride(0), r2.stride(0), y.stride(0), eps,
        HAS_RES=residual is not None, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return y, rstd


def rms_norm_bwd(dy, y, rstd):
    M, N = y.shape
    dy2 = _rows(dy, N)
    dx = torch.empty((M, N), dtype=y.dtype, device=y.device)
    BLOCK_M, BLOCK_N, num_warps = _settings(N)
    _rms_bwd[((M + BLOCK_M - 1) // BLOCK_M,)](
        dy2, y, rstd, dx, M, N, dy2.stride(0), y.stride(0), dx.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps)
    return dx


# --------------------------------------------------------------------------------------------------
# Custom ops (this file's autograd.Function: forward, backward, shape-only fakes for torch.compile)

@torch.library.custom_op("nanotrm::rms_norm_fwd", mutates_args=())
def _rms_norm_fwd_op(x: torch.Tensor, residual: Optional[torch.Tensor],
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return rms_norm_fwd(x, residual, eps)


@_rms_norm_fwd_op.register_fake
def _(x, residual, eps):
    M, N = x.shape
    return x.new_empty(M, N), x.new_empty(M, dtype=torch.float32)


@torch.library.custom_op("nanotrm::rms_norm_bwd", mutates_args=())
def _rms_norm_bwd_op(dy: torch.Tensor, y: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    return rms_norm_bwd(dy, y, rstd)


@_rms_norm_bwd_op.register_fake
def _(dy, y, rstd):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    y, rstd = output
    ctx.save_for_backward(y, rstd)  # y is the output itself: no extra memory
    ctx.has_res = inputs[1] is not None


def _backward(ctx, dy, drstd):
    y, rstd = ctx.saved_tensors
    dx = _rms_norm_bwd_op(dy, y, rstd)
    return dx, (dx if ctx.has_res else None), None  # d(x + residual) reaches both


_rms_norm_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def rms_norm_triton(x, residual=None, eps=1e-5):
    """rms(x + residual) in one fused pass; same function as rms_norm_reference."""
    if x.numel() == 0 or (residual is not None
                          and (residual.shape != x.shape or residual.dtype != x.dtype)):
        return rms_norm_reference(x, residual, eps)
    N = x.shape[-1]
    y, _ = _rms_norm_fwd_op(_rows(x, N), _rows(residual, N) if residual is not None else None,
                            float(eps))
    return y.view(x.shape)
