"""Non-causal multi-head attention from the packed qkv projection, RoPE applied to q and k.

    attention_triton(qkv, num_heads, cos=None, sin=None)    qkv [N, L, 3*H*D] -> [N, L, H*D]

N = batch x branches (any N); qkv packed [q heads | k heads | v heads] on the last dim (TRM's
layout, num_key_value_heads == num_heads); cos/sin [L, D] float32 tables, halves not assumed equal.

The reference is the TRM path: split q/k/v, RoPE in float32 rounded to the input dtype, torch SDPA
(scale 1/sqrt(D)) over [N, H, L, D]. The Triton path, with no layout copies around it:

  _rope_qk         pre-pass, one program per BLOCK_T tokens (all heads): q, k rotated once in fp32,
                   rounded where the reference rounds, into a packed [N, L, 2*H*D] buffer, so the
                   attention kernels read plain tiles (a per-tile rotation reloads four fp32 table
                   tiles per bf16 key tile). The backward reruns it rather than save its output:
                   one more read+write of q, k (~0.25 ms at the ARC shape by bandwidth, estimated)
                   against 2/3 of qkv kept alive per call.
  _attn_fwd        FlashAttention-2 forward (Dao 2023, Algorithm 1): online softmax, float32
                   statistics, exp2 with the scale folded in; writes o [N, L, H*D] and the
                   natural-log log-sum-exp of the scaled scores, [N*H, L] float32.
  _attn_bwd_delta  delta = rowsum(dO * O), [N*H, L] float32 (the softmax-backward correction).
  _attn_bwd        FlashAttention-2 backward (Algorithm 2): one program per key block, looping
                   over all query blocks, five matmuls per tile pair (S, dV, dP, dK, dQ). dK, dV
                   accumulate in registers, written once (dK through the RoPE backward); dQ is
                   added with fp32 atomics into a zeroed [N, L, H*D] buffer, each key block
                   starting on another query block so one head's atomics spread out.
  _attn_bwd_dq     dQ buffer -> scale, RoPE backward, rounding -> the q third of dqkv.
Two passes (dK/dV, then dQ) would need 7 matmuls and compute P twice; the price of 5 is a float32
dQ buffer (zero fill, one read) and a non-deterministic sum order in dQ. Nothing L x L is stored.

Grids are 1-D: program id -> (head n*H + h, block), block fastest, so the programs of one head run
together (their shared K, V or Q, dO tiles stay in L2) and N*H never lands on a grid axis that
CUDA caps at 65,535 (axes 1 and 2; PRR with about 1,024 puzzles per rank would pass that on axis 1).

RoPE in halves. rotate_half(x) = cat(-x2, x1), so with x = (x1, x2) and per-half tables c, s:
    y1 = x1*c1 - x2*s1,    y2 = x2*c2 + x1*s2                       (forward)
    dx1 = dy1*c1 + dy2*s2, dx2 = dy2*c2 - dy1*s1                    (backward = transpose)
Rounding the rotated q, k to bf16 is a straight-through step in the backward, as autograd's `.to()`.

Numerics: float32 accumulators and softmax statistics; P and dS are cast to the input dtype before
their dots (as in FlashAttention-2), so bf16 results differ from the reference at bf16 precision.
fp32 inputs use input_precision="ieee" on the GPU (Triton's default for fp32 dots is TF32).

Interpreter (TRITON_INTERPRET=1, CPU tests): bf16 tl.dot gives garbage, so DOT_FP32 upcasts the
(already bf16-rounded) tiles before every dot; multi-config autotune fails (it asks the driver for
a benchmarker), so one config per kernel; fp32 -> bf16 rounds toward zero (about half the values
one ulp off the round-to-nearest-even of torch and the GPU).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import INTERPRET

LOG2E = tl.constexpr(1.4426950408889634)  # a global read inside @triton.jit must be a constexpr


# --------------------------------------------------------------------------------------------------
# Reference

def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # x [N, L, H, D]; cos, sin [L, D]. In float32, then rounded back to x.dtype (as the reference)
    xf = x.float()
    return (xf * cos[:, None, :].float() + rotate_half(xf) * sin[:, None, :].float()).to(x.dtype)


def attention_reference(qkv, num_heads, cos=None, sin=None):
    N, L, three_hd = qkv.shape
    D = three_hd // (3 * num_heads)
    q, k, v = qkv.view(N, L, 3, num_heads, D).unbind(2)  # each [N, L, H, D]
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                       v.transpose(1, 2))  # [N, H, L, D]
    return o.transpose(1, 2).reshape(N, L, num_heads * D)


# --------------------------------------------------------------------------------------------------
# Triton kernels

@triton.jit
def _rope_tables(COS, SIN, l, mask, stride_cs, HALF: tl.constexpr):
    """The four float32 half tables c1, c2, s1, s2 [BLOCK, HALF] for positions l."""
    p = l[:, None] * stride_cs + tl.arange(0, HALF)[None, :]
    m = mask[:, None]
    return (tl.load(COS + p, mask=m, other=0.0), tl.load(COS + p + HALF, mask=m, other=0.0),
            tl.load(SIN + p, mask=m, other=0.0), tl.load(SIN + p + HALF, mask=m, other=0.0))


@triton.jit
def _rope_qk(QKV, QK, COS, SIN, T, L, H, stride_n, stride_l, stride_cs,
             HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    """QK[t, j*D:(j+1)*D] = RoPE(qkv[t, j*D:(j+1)*D]) for the 2H q, k heads j; t over N*L tokens."""
    HALF: tl.constexpr = HEAD_DIM // 2
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = t < T
    n = t // L
    pos = t % L
    c1, c2, s1, s2 = _rope_tables(COS, SIN, pos, mask, stride_cs, HALF)  # once for all 2H heads
    offs_h = tl.arange(0, HALF)[None, :]
    src = QKV + n[:, None] * stride_n + pos[:, None] * stride_l + offs_h
    dst = QK + t[:, None] * (2 * H * HEAD_DIM) + offs_h
    m = mask[:, None]
    dt = QK.dtype.element_ty  # the stores round where the reference rounds
    for j in range(2 * H):  # q heads then k heads: the same column j*D in both buffers
        x1 = tl.load(src + j * HEAD_DIM, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + j * HEAD_DIM + HALF, mask=m, other=0.0).to(tl.float32)
        tl.store(dst + j * HEAD_DIM, (x1 * c1 - x2 * s1).to(dt), mask=m)
        tl.store(dst + j * HEAD_DIM + HALF, (x2 * c2 + x1 * s2).to(dt), mask=m)


@triton.jit
def _store_rope_bwd(base, g, row_off, pos, mask, COS, SIN, stride_cs,
                    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, ROPE: tl.constexpr):
    """Store the gradient w.r.t. the pre-RoPE tile, from g [BLOCK, D] float32 (w.r.t. the rotated
    tile). Row i goes to base + row_off[i] and uses table row pos[i]."""
    HALF: tl.constexpr = HEAD_DIM // 2
    if ROPE:  # g1, g2: the two column halves
        g1, g2 = tl.split(tl.permute(tl.reshape(g, [BLOCK, 2, HALF]), [0, 2, 1]))
        c1, c2, s1, s2 = _rope_tables(COS, SIN, pos, mask, stride_cs, HALF)
        ptr = base + row_off[:, None] + tl.arange(0, HALF)[None, :]
        dt = base.dtype.element_ty
        tl.store(ptr, (g1 * c1 + g2 * s2).to(dt), mask=mask[:, None])
        tl.store(ptr + HALF, (g2 * c2 - g1 * s1).to(dt), mask=mask[:, None])
    else:
        ptr = base + row_off[:, None] + tl.arange(0, HEAD_DIM)[None, :]
        tl.store(ptr, g.to(base.dtype.element_ty), mask=mask[:, None])


# Block sizes. GPU (sm_90): autotuned per (L, HEAD_DIM, ROPE, PRECISION) and dtypes, never per N.
# Forward: the Triton fused-attention tutorial's Hopper ranges, 128-row query tiles (two wgmma
# warpgroups with 8 warps, or one looping with 4), 64-128 key columns, 3-4 stages; 64-row tiles for
# short L (Sudoku's 81: a 128-row tile is 37% padding). Backward: the dK, dV accumulators are
# 2 x BLOCK_N x D float32 (64 KB at 128 x 64), so 128-key tiles get 8 warps, 64-key tiles 4. Few
# configs: each compiles (seconds) on the first call of each (HEAD_DIM, ROPE, dtype); those that
# overflow shared memory are skipped. Interpreter: one config, BLOCK_M != BLOCK_N so that index
# mix-ups show, and few programs (its cost scales with the program count).
def _configs(pairs, names):
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w, num_stages=s)
            for a, b, w, s in pairs]


if INTERPRET:
    _FWD_CONFIGS = _configs([(64, 32, 4, 1)], ("BLOCK_M", "BLOCK_N"))
    _BWD_CONFIGS = _configs([(32, 64, 4, 1)], ("BLOCK_N", "BLOCK_M"))  # key, inner query block
else:
    _FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 4),
                             (64, 64, 4, 3), (64, 32, 4, 4)], ("BLOCK_M", "BLOCK_N"))
    _BWD_CONFIGS = _configs([(128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)],
                            ("BLOCK_N", "BLOCK_M"))
_BLOCK_T = 64  # tokens per program of the per-token passes (pre-pass, delta, dQ epilogue)


def _prune(configs, named_args, **kwargs):
    """float32 inputs (tests, not training) keep only the small tiles: their big-tile variants
    need up to 225 KB of shared memory and 15-30 s of compile each (sm_90, triton 3.9)."""
    if named_args["V"].dtype == torch.float32:
        small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
        return small or configs[:1]
    return configs


@triton.autotune(configs=_FWD_CONFIGS, key=["L", "HEAD_DIM", "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_fwd(QK, V, O, LSE, sm_scale, L, H, stride_qk_n, stride_qk_l, stride_v_n, stride_v_l,
              stride_o_n, stride_o_l, HEAD_DIM: tl.constexpr, DOT_FP32: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n_m = tl.cdiv(L, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)  # int64 before multiplying by strides
    nh = pid // n_m
    pid_m = pid % n_m
    n = nh // H
    h = nh % H
    dt = V.dtype.element_ty
    q_base = QK + n * stride_qk_n + h * HEAD_DIM
    k_base = QK + n * stride_qk_n + (H + h) * HEAD_DIM
    v_base = V + n * stride_v_n + (2 * H + h) * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < L

    q = tl.load(q_base + offs_m[:, None] * stride_qk_l + offs_d[None, :], mask=mask_m[:, None],
                other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    qk_scale = sm_scale * LOG2E  # scores in log2 units: exp(x) = exp2(x * log2 e), exp2 is native
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        k = tl.load(k_base + offs_n[:, None] * stride_qk_l + offs_d[None, :],
                    mask=mask_n[:, None], other=0.0)
        v = tl.load(v_base + offs_n[:, None] * stride_v_l + offs_d[None, :],
                    mask=mask_n[:, None], other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        # keys past L -> -inf before the row max (the first key block always holds a valid key, so
        # m stays finite); an additive bias rides on the scale multiply (one FMA, no select)
        s = s * qk_scale + tl.where(mask_n, 0.0, float("-inf"))[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(dt)
        if DOT_FP32:
            p = p.to(tl.float32)
        acc = tl.dot(p, v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    tl.store(O + n * stride_o_n + h * HEAD_DIM + offs_m[:, None] * stride_o_l + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=mask_m[:, None])
    tl.store(LSE + nh * L + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453,  # natural log
             mask=mask_m)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, T, L, H, stride_o_n, stride_o_l, stride_do_n, stride_do_l,
                    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = t < T
    n = t // L
    pos = t % L
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    o_ptr = O + n[:, None] * stride_o_n + pos[:, None] * stride_o_l + offs_d
    do_ptr = DO + n[:, None] * stride_do_n + pos[:, None] * stride_do_l + offs_d
    for h in range(H):
        o = tl.load(o_ptr + h * HEAD_DIM, mask=mask[:, None], other=0.0).to(tl.float32)
        do = tl.load(do_ptr + h * HEAD_DIM, mask=mask[:, None], other=0.0).to(tl.float32)
        tl.store(DELTA + (n * H + h) * L + pos, tl.sum(o * do, 1), mask=mask)


@triton.autotune(configs=_BWD_CONFIGS, key=["L", "HEAD_DIM", "ROPE", "PRECISION"],
                 reset_to_zero=["DQ"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _attn_bwd(QK, V, DO, LSE, DELTA, DQ, DQKV, COS, SIN, sm_scale, L, H,
              stride_qk_n, stride_qk_l, stride_v_n, stride_v_l, stride_do_n, stride_do_l,
              stride_dq_n, stride_dq_l, stride_dqkv_n, stride_dqkv_l, stride_cs,
              HEAD_DIM: tl.constexpr, ROPE: tl.constexpr, DOT_FP32: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n_n = tl.cdiv(L, BLOCK_N)
    n_m = tl.cdiv(L, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    nh = pid // n_n
    pid_n = pid % n_n
    n = nh // H
    h = nh % H
    dt = V.dtype.element_ty
    q_base = QK + n * stride_qk_n + h * HEAD_DIM
    k_base = QK + n * stride_qk_n + (H + h) * HEAD_DIM
    v_base = V + n * stride_v_n + (2 * H + h) * HEAD_DIM
    do_base = DO + n * stride_do_n + h * HEAD_DIM
    dq_base = DQ + n * stride_dq_n + h * HEAD_DIM
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_n = offs_n < L

    k = tl.load(k_base + offs_n[:, None] * stride_qk_l + offs_d[None, :], mask=mask_n[:, None],
                other=0.0)
    v = tl.load(v_base + offs_n[:, None] * stride_v_l + offs_d[None, :], mask=mask_n[:, None],
                other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    qk_scale = sm_scale * LOG2E
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for i in range(0, n_m):
        start_m = ((i + pid_n) % n_m) * BLOCK_M  # staggered start: spreads one head's dQ atomics
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < L
        q = tl.load(q_base + offs_m[:, None] * stride_qk_l + offs_d[None, :],
                    mask=mask_m[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_do_l + offs_d[None, :],
                     mask=mask_m[:, None], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        # query rows past L: lse = +inf gives p = 0 (their q, dO and delta are 0 too: nothing leaks)
        lse2 = tl.load(LSE + nh * L + offs_m, mask=mask_m, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + nh * L + offs_m, mask=mask_m, other=0.0)
        sT = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (1) S^T [BLOCK_N, BLOCK_M]
        pT = tl.exp2(sT * qk_scale - lse2[None, :])
        # key rows past L load as 0, and exp(0 - lse) can overflow when every real score is very
        # negative; dQ sums over key rows, so those rows of P must be exactly 0 (inf * 0 is NaN)
        pT = tl.where(mask_n[:, None], pT, 0.0)
        ppT = pT.to(dt)
        if DOT_FP32:
            ppT = ppT.to(tl.float32)
        dv = tl.dot(ppT, do, dv, input_precision=PRECISION)  # (2) dV += P^T dO
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (3) dP^T = V dO^T
        dsT = (pT * (dpT - delta[None, :])).to(dt)  # dS = P * (dP - delta), softmax backward
        if DOT_FP32:
            dsT = dsT.to(tl.float32)
        dk = tl.dot(dsT, q, dk, input_precision=PRECISION)  # (4) dK += dS^T Q
        dq = tl.dot(tl.trans(dsT), k, input_precision=PRECISION)  # (5) dQ += dS K, over key blocks
        tl.atomic_add(dq_base + offs_m[:, None] * stride_dq_l + offs_d[None, :], dq,
                      mask=mask_m[:, None], sem="relaxed")  # only the sum matters (acq_rel fences)

    _store_rope_bwd(DQKV + n * stride_dqkv_n + (H + h) * HEAD_DIM, dk * sm_scale,
                    offs_n * stride_dqkv_l, offs_n, mask_n, COS, SIN, stride_cs,
                    BLOCK_N, HEAD_DIM, ROPE)
    tl.store(DQKV + n * stride_dqkv_n + (2 * H + h) * HEAD_DIM + offs_n[:, None] * stride_dqkv_l
             + offs_d[None, :], dv.to(DQKV.dtype.element_ty), mask=mask_n[:, None])


@triton.jit
def _attn_bwd_dq(DQ, DQKV, COS, SIN, sm_scale, T, L, H, stride_dq_n, stride_dq_l,
                 stride_dqkv_n, stride_dqkv_l, stride_cs,
                 HEAD_DIM: tl.constexpr, ROPE: tl.constexpr, BLOCK_T: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask = t < T
    n = t // L
    pos = t % L
    offs_d = tl.arange(0, HEAD_DIM)[None, :]
    row_off = n * stride_dqkv_n + pos * stride_dqkv_l
    for h in range(H):
        g = tl.load(DQ + n[:, None] * stride_dq_n + pos[:, None] * stride_dq_l + h * HEAD_DIM
                    + offs_d, mask=mask[:, None], other=0.0)
        _store_rope_bwd(DQKV + h * HEAD_DIM, g * sm_scale, row_off, pos, mask, COS, SIN,
                        stride_cs, BLOCK_T, HEAD_DIM, ROPE)


# --------------------------------------------------------------------------------------------------
# Host launch

def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


def _rotated_qk(qkv, H, D, cos, sin):
    """(buffer, stride_n, stride_l) with q, k at columns h*D, (H+h)*D: the RoPE'd copy, or qkv."""
    if cos is None:
        return qkv, qkv.stride(0), qkv.stride(1)
    N, L, _ = qkv.shape
    qk = torch.empty(N, L, 2 * H * D, device=qkv.device, dtype=qkv.dtype)
    _rope_qk[(triton.cdiv(N * L, _BLOCK_T),)](
        qkv, qk, cos, sin, N * L, L, H, qkv.stride(0), qkv.stride(1), cos.stride(0),
        HEAD_DIM=D, BLOCK_T=_BLOCK_T)
    return qk, qk.stride(0), qk.stride(1)


def attention_fwd(qkv, num_heads, cos, sin):
    """qkv [N, L, 3*H*D] (unit last stride), cos/sin fp32 or None -> o [N, L, H*D], lse [N*H, L]."""
    N, L, _ = qkv.shape
    H = num_heads
    D = qkv.shape[-1] // (3 * H)
    o = torch.empty(N, L, H * D, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(N * H, L, device=qkv.device, dtype=torch.float32)
    qk, s_n, s_l = _rotated_qk(qkv, H, D, cos, sin)
    grid = lambda meta: (N * H * triton.cdiv(L, meta["BLOCK_M"]),)  # noqa: E731
    _attn_fwd[grid](qk, qkv, o, lse, 1.0 / math.sqrt(D), L, H, s_n, s_l,
                    qkv.stride(0), qkv.stride(1), o.stride(0), o.stride(1),
                    HEAD_DIM=D, DOT_FP32=INTERPRET, PRECISION=_precision(qkv.dtype))
    return o, lse


def attention_bwd(do, qkv, o, lse, num_heads, cos, sin):
    """-> dqkv [N, L, 3*H*D] (contiguous) from the upstream gradient do [N, L, H*D]."""
    N, L, _ = qkv.shape
    H = num_heads
    D = qkv.shape[-1] // (3 * H)
    rope = cos is not None
    do = do.to(o.dtype)
    if do.stride(-1) != 1:
        do = do.contiguous()
    T = N * L
    delta = torch.empty_like(lse)
    _attn_bwd_delta[(triton.cdiv(T, _BLOCK_T),)](
        o, do, delta, T, L, H, o.stride(0), o.stride(1), do.stride(0), do.stride(1),
        HEAD_DIM=D, BLOCK_T=_BLOCK_T)
    qk, s_n, s_l = _rotated_qk(qkv, H, D, cos, sin)  # recomputed, not saved (module docstring)
    dq = torch.zeros(N, L, H * D, device=qkv.device, dtype=torch.float32)
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)  # all written below
    cs = (cos, sin, cos.stride(0)) if rope else (qkv, qkv, 0)  # dummies: unread when not ROPE
    sm_scale = 1.0 / math.sqrt(D)
    grid = lambda meta: (N * H * triton.cdiv(L, meta["BLOCK_N"]),)  # noqa: E731
    _attn_bwd[grid](qk, qkv, do, lse, delta, dq, dqkv, cs[0], cs[1], sm_scale, L, H, s_n, s_l,
                    qkv.stride(0), qkv.stride(1), do.stride(0), do.stride(1),
                    dq.stride(0), dq.stride(1), dqkv.stride(0), dqkv.stride(1), cs[2],
                    HEAD_DIM=D, ROPE=rope, DOT_FP32=INTERPRET, PRECISION=_precision(qkv.dtype))
    _attn_bwd_dq[(triton.cdiv(T, _BLOCK_T),)](
        dq, dqkv, cs[0], cs[1], sm_scale, T, L, H, dq.stride(0), dq.stride(1),
        dqkv.stride(0), dqkv.stride(1), cs[2], HEAD_DIM=D, ROPE=rope, BLOCK_T=_BLOCK_T)
    return dqkv


# --------------------------------------------------------------------------------------------------
# Custom ops (this file's autograd.Function: forward, backward, shape-only fakes for torch.compile)

@torch.library.custom_op("nanotrm::attention_fwd", mutates_args=())
def _attention_fwd_op(qkv: torch.Tensor, num_heads: int, cos: Optional[torch.Tensor],
                      sin: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_fwd(qkv, num_heads, cos, sin)


@_attention_fwd_op.register_fake
def _(qkv, num_heads, cos, sin):
    N, L, W = qkv.shape
    return qkv.new_empty(N, L, W // 3), qkv.new_empty(N * num_heads, L, dtype=torch.float32)


@torch.library.custom_op("nanotrm::attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                      num_heads: int, cos: Optional[torch.Tensor],
                      sin: Optional[torch.Tensor]) -> torch.Tensor:
    return attention_bwd(do, qkv, o, lse, num_heads, cos, sin)


@_attention_bwd_op.register_fake
def _(do, qkv, o, lse, num_heads, cos, sin):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, num_heads, cos, sin = inputs
    o, lse = output
    ctx.save_for_backward(qkv, o, lse, cos, sin)
    ctx.num_heads = num_heads


def _backward(ctx, do, dlse):
    # the backward kernels are not themselves differentiable: a double backward fails loudly
    qkv, o, lse, cos, sin = ctx.saved_tensors
    return _attention_bwd_op(do, qkv, o, lse, ctx.num_heads, cos, sin), None, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# Public function

def attention_triton(qkv, num_heads, cos=None, sin=None):
    """qkv [N, L, 3*H*D] packed [q heads | k heads | v heads] -> [N, L, H*D]; RoPE on q, k when
    cos/sin are given. Same function as `attention_reference`; the fixed cos/sin get no grad."""
    assert qkv.dim() == 3, f"qkv must be [N, L, 3*H*D], got {tuple(qkv.shape)}"
    N, L, three_hd = qkv.shape
    assert three_hd % (3 * num_heads) == 0, \
        f"last dim {three_hd} is not 3 * num_heads({num_heads}) * D"
    D = three_hd // (3 * num_heads)
    assert D in (16, 32, 64, 128), f"head dim {D} not supported (16, 32, 64, 128)"
    assert (cos is None) == (sin is None), "give both cos and sin, or neither"
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    if cos is not None:
        assert cos.shape == (L, D) and sin.shape == (L, D), f"cos/sin must be [L, D] = [{L}, {D}]"
        assert cos.device == qkv.device and sin.device == qkv.device, \
            "cos/sin must be on qkv's device"
        cos, sin = cos.detach().float().contiguous(), sin.detach().float().contiguous()
    return _attention_fwd_op(qkv, num_heads, cos, sin)[0]
