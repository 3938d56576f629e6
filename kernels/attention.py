"""Non-causal multi-head attention from the packed qkv projection, RoPE applied to q and k (TRM spec §1).

    attention_triton(qkv, num_heads, cos=None, sin=None)    qkv [N, L, 3*H*D] -> [N, L, H*D]

N is batch x branches (any N), qkv is packed [q heads | k heads | v heads] along the last dim (TRM's
layout, num_key_value_heads == num_heads), cos/sin are [L, D] float32 tables (concat(freqs, freqs)).

The reference (`attention_reference`) is the TRM path: split q/k/v, RoPE in float32 rounded back to
the input dtype, transpose to [N, H, L, D], torch SDPA (scale 1/sqrt(D)), transpose back. The Triton
path computes the same function in one forward kernel and three backward kernels, with no layout
copies around them:

  _attn_fwd        grid (cdiv(L, BLOCK_M), N*H). Flash-attention forward (online softmax, float32
                   statistics, exp2 with the scale folded in). Reads q, k, v straight from the packed
                   projection with strides (q at column h*D, k at (H+h)*D, v at (2H+h)*D), applies RoPE
                   to q and k in float32 and rounds them to the input dtype before the dots (the
                   reference rounds there too), writes o as [N, L, H*D] and the natural-log
                   log-sum-exp of the scaled scores as [N*H, L] float32.
  _attn_bwd_delta  delta = rowsum(dO * O), [N*H, L] float32 (the softmax-backward correction term).
  _attn_bwd_dkdv   grid (cdiv(L, BLOCK_N), N*H): one key block per program, loops over all query
                   blocks (non-causal), accumulates dK and dV in float32, applies the RoPE backward to
                   dK and writes dk, dv into the packed dqkv.
  _attn_bwd_dq     grid (cdiv(L, BLOCK_M), N*H): one query block per program, loops over all key
                   blocks, writes dq (RoPE backward applied) into the packed dqkv.
Two passes (dK/dV, then dQ) rather than one kernel with atomic dQ: no float32 dQ buffer, no zero
fill, no extra pass to cast and un-rotate it, and deterministic. The price is recomputing
P = exp(S - lse) twice. Nothing L x L is ever materialized.

RoPE in halves. rotate_half(x) = cat(-x2, x1), so with x = (x1, x2) and per-half tables c, s:
    y1 = x1*c1 - x2*s1,    y2 = x2*c2 + x1*s2                       (forward)
    dx1 = dy1*c1 + dy2*s2, dx2 = dy2*c2 - dy1*s1                    (backward = transpose)
The kernels therefore keep every q/k tile as two [*, D/2] halves and write q.k = q1.k1 + q2.k2 as two
accumulating dots. This needs no gathered "rotated" reload of the tile, works the same without RoPE,
and needs D/2 >= 16 (tl.dot's minimum K), hence head dims 32, 64, 128. The rounding of the rotated
q, k to bf16 is a straight-through step in the backward, exactly as autograd treats `.to()`.

Numerics: float32 accumulators and softmax statistics; P and dS are cast to the input dtype before
their dots (as in FlashAttention-2), so bf16 results differ from the reference at bf16 precision
(tests use relative RMS). fp32 inputs use input_precision="ieee" on the GPU (Triton's default for
fp32 dots is TF32; kernels.md §4.1).

Interpreter (TRITON_INTERPRET=1, CPU tests; kernels.md §5): bf16 tl.dot is garbage there, so
DOT_FP32 upcasts the (already bf16-rounded) tiles to fp32 before every dot; multi-config autotune
fails there, so one config per kernel. Note the interpreter rounds fp32 -> bf16 toward zero (probed:
about half the values differ by one ulp from torch's round-to-nearest-even), the GPU rounds to
nearest-even.
"""
import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
import triton
import triton.language as tl

from . import INTERPRET


# ----------------------------------------------------------------------------------------------------
# Reference


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # x [N, L, H, D]; cos, sin [L, D]. In float32, then rounded back to x.dtype (the reference rounds here).
    xf = x.float()
    return (xf * cos[:, None, :].float() + rotate_half(xf) * sin[:, None, :].float()).to(x.dtype)


def attention_reference(qkv, num_heads, cos=None, sin=None):
    N, L, three_hd = qkv.shape
    D = three_hd // (3 * num_heads)
    q, k, v = qkv.view(N, L, 3, num_heads, D).unbind(2)  # each [N, L, H, D]
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [N, H, L, D]
    return o.transpose(1, 2).reshape(N, L, num_heads * D)


# ----------------------------------------------------------------------------------------------------
# Triton kernels

@triton.jit
def _load_rope(base, offs_l, mask_l, stride_l, COS, SIN, stride_cs,
               HALF: tl.constexpr, ROPE: tl.constexpr, DOT_FP32: tl.constexpr):
    """Tile rows offs_l of one head as two halves [BLOCK, HALF], RoPE'd in fp32 and rounded to the input dtype."""
    offs_h = tl.arange(0, HALF)
    ptr = base + offs_l[:, None] * stride_l + offs_h[None, :]
    x1 = tl.load(ptr, mask=mask_l[:, None], other=0.0)
    x2 = tl.load(ptr + HALF, mask=mask_l[:, None], other=0.0)
    if ROPE:
        dt = x1.dtype
        cptr = offs_l[:, None] * stride_cs + offs_h[None, :]
        c1 = tl.load(COS + cptr, mask=mask_l[:, None], other=0.0).to(tl.float32)
        c2 = tl.load(COS + cptr + HALF, mask=mask_l[:, None], other=0.0).to(tl.float32)
        s1 = tl.load(SIN + cptr, mask=mask_l[:, None], other=0.0).to(tl.float32)
        s2 = tl.load(SIN + cptr + HALF, mask=mask_l[:, None], other=0.0).to(tl.float32)
        x1f = x1.to(tl.float32)
        x2f = x2.to(tl.float32)
        x1 = (x1f * c1 - x2f * s1).to(dt)  # the reference rounds q, k to the input dtype after RoPE
        x2 = (x2f * c2 + x1f * s2).to(dt)
    if DOT_FP32:
        x1 = x1.to(tl.float32)
        x2 = x2.to(tl.float32)
    return x1, x2


@triton.jit
def _store_rope_bwd(base, g1, g2, offs_l, mask_l, stride_l, COS, SIN, stride_cs,
                    HALF: tl.constexpr, ROPE: tl.constexpr):
    """Store the gradient w.r.t. the pre-RoPE tile: (g1*c1 + g2*s2, g2*c2 - g1*s1); g is fp32 [BLOCK, HALF]."""
    offs_h = tl.arange(0, HALF)
    if ROPE:
        cptr = offs_l[:, None] * stride_cs + offs_h[None, :]
        c1 = tl.load(COS + cptr, mask=mask_l[:, None], other=0.0).to(tl.float32)
        c2 = tl.load(COS + cptr + HALF, mask=mask_l[:, None], other=0.0).to(tl.float32)
        s1 = tl.load(SIN + cptr, mask=mask_l[:, None], other=0.0).to(tl.float32)
        s2 = tl.load(SIN + cptr + HALF, mask=mask_l[:, None], other=0.0).to(tl.float32)
        t1 = g1 * c1 + g2 * s2
        g2 = g2 * c2 - g1 * s1
        g1 = t1
    ptr = base + offs_l[:, None] * stride_l + offs_h[None, :]
    dt = base.dtype.element_ty
    tl.store(ptr, g1.to(dt), mask=mask_l[:, None])
    tl.store(ptr + HALF, g2.to(dt), mask=mask_l[:, None])


# Block sizes. GPU: autotuned per (L, HEAD_DIM, ROPE, dtype). The candidates are the Triton fused-attention
# tutorial's ranges (kernels.md §3: fwd BLOCK_M in {64, 128}, BLOCK_N in {32, 64}, 3-4 stages, 4-8
# warps; bwd 32x128 / 128x32 tiles), a few more for L = 81 (Sudoku) where a 128-row tile wastes 37%.
# wgmma wants BLOCK_M >= 64 and warps in multiples of 4 (§4.5); configs that do not fit shared memory
# are skipped by the autotuner. Interpreter: one config (§4.4), small tiles with BLOCK_M != BLOCK_N so
# that index mix-ups show, and few programs (the interpreter's cost scales with program count, §5).
# Few configs on purpose: every config compiles on the first call of each (HEAD_DIM, ROPE, dtype), and
# an ahead-of-time sm_90 compile here (triton 3.9, 2 busy CPU cores) took 3-9 s per bf16 kernel at
# D = 64 and 11-25 s at D = 128. All of them compiled; the RoPE variants stage the rotated tiles through
# shared memory (D=64 forward 128x64x3 stages: 96 KB with RoPE, 32 KB without; D=128: 192 KB of 227 KB).
def _configs(pairs, names):
    return [triton.Config({names[0]: a, names[1]: b}, num_warps=w, num_stages=s) for a, b, w, s in pairs]


if INTERPRET:
    _FWD_CONFIGS = _configs([(64, 32, 4, 1)], ("BLOCK_M", "BLOCK_N"))
    _DKDV_CONFIGS = _configs([(64, 32, 4, 1)], ("BLOCK_N", "BLOCK_M"))  # key block, inner query block
    _DQ_CONFIGS = _configs([(64, 32, 4, 1)], ("BLOCK_M", "BLOCK_N"))
else:
    _FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 32, 4, 3),
                             (64, 64, 4, 3), (64, 32, 4, 3)], ("BLOCK_M", "BLOCK_N"))
    _DKDV_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3)],
                             ("BLOCK_N", "BLOCK_M"))
    _DQ_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 64, 4, 3)],
                           ("BLOCK_M", "BLOCK_N"))
_TUNE_KEY = ["L", "HEAD_DIM", "ROPE", "PRECISION"]  # the autotuner adds the tensor dtypes; not N (kernels.md §4.4)


@triton.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _attn_fwd(QKV, O, LSE, COS, SIN, sm_scale, L, H,
              stride_qkv_n, stride_qkv_l, stride_o_n, stride_o_l, stride_cs,
              HEAD_DIM: tl.constexpr, ROPE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_m = tl.program_id(0)
    nh = tl.program_id(1).to(tl.int64)  # int64 before multiplying by strides (kernels.md §4.6)
    n = nh // H
    h = nh % H
    dt = QKV.dtype.element_ty
    q_base = QKV + n * stride_qkv_n + h * HEAD_DIM
    k_base = QKV + n * stride_qkv_n + (H + h) * HEAD_DIM
    v_base = QKV + n * stride_qkv_n + (2 * H + h) * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < L

    q1, q2 = _load_rope(q_base, offs_m, mask_m, stride_qkv_l, COS, SIN, stride_cs, HALF, ROPE, DOT_FP32)
    qk_scale = sm_scale * 1.4426950408889634  # scores in log2 units: exp(x) = exp2(x * log2 e), exp2 is native
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        k1, k2 = _load_rope(k_base, offs_n, mask_n, stride_qkv_l, COS, SIN, stride_cs, HALF, ROPE, DOT_FP32)
        v = tl.load(v_base + offs_n[:, None] * stride_qkv_l + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
        s = tl.dot(q2, tl.trans(k2), s, input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        # keys past L -> -inf before the row max (the first key block always holds a valid key, so m stays
        # finite); as an additive bias the mask rides on the scale multiply (one FMA, no select per score)
        s = s * qk_scale + tl.where(mask_n, 0.0, float("-inf"))[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(dt)
        if DOT_FP32:
            p = p.to(tl.float32)
            v = v.to(tl.float32)
        acc = tl.dot(p, v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    o = acc / l_i[:, None]
    tl.store(O + n * stride_o_n + h * HEAD_DIM + offs_m[:, None] * stride_o_l + offs_d[None, :],
             o.to(O.dtype.element_ty), mask=mask_m[:, None])
    tl.store(LSE + nh * L + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=mask_m)  # natural log


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, L, H, stride_o_n, stride_o_l, stride_do_n, stride_do_l,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    nh = tl.program_id(1).to(tl.int64)
    n = nh // H
    h = nh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < L
    o = tl.load(O + n * stride_o_n + h * HEAD_DIM + offs_m[:, None] * stride_o_l + offs_d[None, :],
                mask=mask_m[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + n * stride_do_n + h * HEAD_DIM + offs_m[:, None] * stride_do_l + offs_d[None, :],
                 mask=mask_m[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + nh * L + offs_m, tl.sum(o * do, 1), mask=mask_m)


@triton.autotune(configs=_DKDV_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _attn_bwd_dkdv(QKV, DO, LSE, DELTA, DQKV, COS, SIN, sm_scale, L, H,
                   stride_qkv_n, stride_qkv_l, stride_do_n, stride_do_l, stride_dqkv_n, stride_dqkv_l, stride_cs,
                   HEAD_DIM: tl.constexpr, ROPE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_n = tl.program_id(0)
    nh = tl.program_id(1).to(tl.int64)
    n = nh // H
    h = nh % H
    dt = QKV.dtype.element_ty
    q_base = QKV + n * stride_qkv_n + h * HEAD_DIM
    k_base = QKV + n * stride_qkv_n + (H + h) * HEAD_DIM
    v_base = QKV + n * stride_qkv_n + (2 * H + h) * HEAD_DIM
    do_base = DO + n * stride_do_n + h * HEAD_DIM
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_n = offs_n < L

    # Key rows past L load as 0 and may turn inf/NaN below (exp(0 - lse) overflows when all real scores are
    # very negative); rows of dK/dV are independent and those rows are never stored, so they need no mask.
    k1, k2 = _load_rope(k_base, offs_n, mask_n, stride_qkv_l, COS, SIN, stride_cs, HALF, ROPE, DOT_FP32)
    v = tl.load(v_base + offs_n[:, None] * stride_qkv_l + offs_d[None, :], mask=mask_n[:, None], other=0.0)
    if DOT_FP32:
        v = v.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    dk1 = tl.zeros([BLOCK_N, HALF], tl.float32)
    dk2 = tl.zeros([BLOCK_N, HALF], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < L
        q1, q2 = _load_rope(q_base, offs_m, mask_m, stride_qkv_l, COS, SIN, stride_cs, HALF, ROPE, DOT_FP32)
        do = tl.load(do_base + offs_m[:, None] * stride_do_l + offs_d[None, :], mask=mask_m[:, None], other=0.0)
        if DOT_FP32:
            do = do.to(tl.float32)
        # query rows past L: lse = +inf gives p = 0 (their q, dO and delta are 0 too, so nothing leaks)
        lse2 = tl.load(LSE + nh * L + offs_m, mask=mask_m, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + nh * L + offs_m, mask=mask_m, other=0.0)
        sT = tl.dot(k1, tl.trans(q1), input_precision=PRECISION)
        sT = tl.dot(k2, tl.trans(q2), sT, input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        pT = tl.exp2(sT * qk_scale - lse2[None, :])
        ppT = pT.to(dt)
        if DOT_FP32:
            ppT = ppT.to(tl.float32)
        dv = tl.dot(ppT, do, dv, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dsT = (pT * (dpT - delta[None, :])).to(dt)  # dS = P * (dP - delta), softmax backward
        if DOT_FP32:
            dsT = dsT.to(tl.float32)
        dk1 = tl.dot(dsT, q1, dk1, input_precision=PRECISION)
        dk2 = tl.dot(dsT, q2, dk2, input_precision=PRECISION)

    sm = sm_scale
    _store_rope_bwd(DQKV + n * stride_dqkv_n + (H + h) * HEAD_DIM, dk1 * sm, dk2 * sm, offs_n, mask_n,
                    stride_dqkv_l, COS, SIN, stride_cs, HALF, ROPE)
    tl.store(DQKV + n * stride_dqkv_n + (2 * H + h) * HEAD_DIM + offs_n[:, None] * stride_dqkv_l + offs_d[None, :],
             dv.to(DQKV.dtype.element_ty), mask=mask_n[:, None])


@triton.autotune(configs=_DQ_CONFIGS, key=_TUNE_KEY)
@triton.jit
def _attn_bwd_dq(QKV, DO, LSE, DELTA, DQKV, COS, SIN, sm_scale, L, H,
                 stride_qkv_n, stride_qkv_l, stride_do_n, stride_do_l, stride_dqkv_n, stride_dqkv_l, stride_cs,
                 HEAD_DIM: tl.constexpr, ROPE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_m = tl.program_id(0)
    nh = tl.program_id(1).to(tl.int64)
    n = nh // H
    h = nh % H
    dt = QKV.dtype.element_ty
    q_base = QKV + n * stride_qkv_n + h * HEAD_DIM
    k_base = QKV + n * stride_qkv_n + (H + h) * HEAD_DIM
    v_base = QKV + n * stride_qkv_n + (2 * H + h) * HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < L

    q1, q2 = _load_rope(q_base, offs_m, mask_m, stride_qkv_l, COS, SIN, stride_cs, HALF, ROPE, DOT_FP32)
    do = tl.load(DO + n * stride_do_n + h * HEAD_DIM + offs_m[:, None] * stride_do_l + offs_d[None, :],
                 mask=mask_m[:, None], other=0.0)
    if DOT_FP32:
        do = do.to(tl.float32)
    lse2 = tl.load(LSE + nh * L + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + nh * L + offs_m, mask=mask_m, other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    dq1 = tl.zeros([BLOCK_M, HALF], tl.float32)
    dq2 = tl.zeros([BLOCK_M, HALF], tl.float32)
    for start_n in range(0, L, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        k1, k2 = _load_rope(k_base, offs_n, mask_n, stride_qkv_l, COS, SIN, stride_cs, HALF, ROPE, DOT_FP32)
        v = tl.load(v_base + offs_n[:, None] * stride_qkv_l + offs_d[None, :], mask=mask_n[:, None], other=0.0)
        if DOT_FP32:
            v = v.to(tl.float32)
        s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)
        s = tl.dot(q2, tl.trans(k2), s, input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        # keys past L: their k and v load as 0, but exp(0 - lse) can overflow when every real score is very
        # negative, and inf * 0 is NaN in dq, so mask p itself
        p = tl.exp2(s * qk_scale - lse2[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = (p * (dp - delta[:, None])).to(dt)
        if DOT_FP32:
            ds = ds.to(tl.float32)
        dq1 = tl.dot(ds, k1, dq1, input_precision=PRECISION)
        dq2 = tl.dot(ds, k2, dq2, input_precision=PRECISION)

    sm = sm_scale
    _store_rope_bwd(DQKV + n * stride_dqkv_n + h * HEAD_DIM, dq1 * sm, dq2 * sm, offs_m, mask_m,
                    stride_dqkv_l, COS, SIN, stride_cs, HALF, ROPE)


# ----------------------------------------------------------------------------------------------------
# Host launch


def _prepare(qkv, num_heads, cos, sin):
    assert qkv.dim() == 3, f"qkv must be [N, L, 3*H*D], got {tuple(qkv.shape)}"
    N, L, three_hd = qkv.shape
    assert three_hd % (3 * num_heads) == 0, f"last dim {three_hd} is not 3 * num_heads({num_heads}) * D"
    D = three_hd // (3 * num_heads)
    assert D in (32, 64, 128), f"head dim {D} not supported (32, 64, 128)"
    assert (cos is None) == (sin is None), "give both cos and sin, or neither"
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    if cos is not None:
        assert cos.shape == (L, D) and sin.shape == (L, D), f"cos/sin must be [L, D] = [{L}, {D}]"
        assert cos.device == qkv.device and sin.device == qkv.device, "cos/sin must be on qkv's device"
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
    return qkv, N, L, D, cos, sin


def _precision(dtype):
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


def _attention_fwd(qkv, num_heads, cos, sin):
    N, L, _ = qkv.shape
    H = num_heads
    D = qkv.shape[-1] // (3 * H)
    rope = cos is not None
    o = torch.empty(N, L, H * D, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(N * H, L, device=qkv.device, dtype=torch.float32)
    cs = (cos, sin) if rope else (qkv, qkv)  # dummies: never read when ROPE is False
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), N * H)  # noqa: E731
    _attn_fwd[grid](qkv, o, lse, cs[0], cs[1], 1.0 / math.sqrt(D), L, H,
                    qkv.stride(0), qkv.stride(1), o.stride(0), o.stride(1), D,
                    HEAD_DIM=D, ROPE=rope, DOT_FP32=INTERPRET, PRECISION=_precision(qkv.dtype))
    return o, lse


def _attention_bwd(do, qkv, o, lse, num_heads, cos, sin):
    N, L, _ = qkv.shape
    H = num_heads
    D = qkv.shape[-1] // (3 * H)
    rope = cos is not None
    do = do.to(o.dtype)
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = torch.empty_like(lse)
    _attn_bwd_delta[(triton.cdiv(L, 64), N * H)](o, do, delta, L, H, o.stride(0), o.stride(1),
                                                 do.stride(0), do.stride(1), HEAD_DIM=D, BLOCK_M=64)
    dqkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)  # every element is written below
    cs = (cos, sin) if rope else (qkv, qkv)
    args = (qkv, do, lse, delta, dqkv, cs[0], cs[1], 1.0 / math.sqrt(D), L, H,
            qkv.stride(0), qkv.stride(1), do.stride(0), do.stride(1), dqkv.stride(0), dqkv.stride(1), D)
    meta = dict(HEAD_DIM=D, ROPE=rope, DOT_FP32=INTERPRET, PRECISION=_precision(qkv.dtype))
    _attn_bwd_dkdv[lambda m: (triton.cdiv(L, m["BLOCK_N"]), N * H)](*args, **meta)
    _attn_bwd_dq[lambda m: (triton.cdiv(L, m["BLOCK_M"]), N * H)](*args, **meta)
    return dqkv


# ----------------------------------------------------------------------------------------------------
# autograd.Function and public function


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, num_heads, cos, sin):
        o, lse = _attention_fwd(qkv, num_heads, cos, sin)
        ctx.save_for_backward(qkv, o, lse, cos, sin)
        ctx.num_heads = num_heads
        return o

    @staticmethod
    @once_differentiable  # the backward kernels are not themselves differentiable: fail loudly on double backward
    def backward(ctx, do):
        qkv, o, lse, cos, sin = ctx.saved_tensors
        return _attention_bwd(do, qkv, o, lse, ctx.num_heads, cos, sin), None, None, None


def attention_triton(qkv, num_heads, cos=None, sin=None):
    """qkv [N, L, 3*H*D] packed [q heads | k heads | v heads] -> [N, L, H*D]; RoPE on q, k when cos/sin given.

    Same function as `attention_reference`; cos/sin get no gradient (they are fixed tables).
    """
    qkv, _, _, _, cos, sin = _prepare(qkv, num_heads, cos, sin)
    return _AttentionFn.apply(qkv, num_heads, cos, sin)
