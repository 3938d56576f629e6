"""deep_recursive.py — TRM's deep recursion around a convolutional U-Net: the answer y and a latent z are
refined step after step on the 2-D canvas, with deep supervision over detached segments.

Source: a design note (the "Deep Recursive Model") that cites arXiv 2511.14761; that paper is VARC ("ARC Is
a Vision Problem!", a feed-forward ViT / U-Net), not a recursive model. This file is the note's design made
sound, inspired by TRM's deep supervision and VARC's U-Net; it has no published numbers to match.
docs/deep_recursive.md lists what the note's code got wrong and how it is fixed here.

One step, on the side x side canvas (side = sqrt(seq_len): 30 for ARC's 900 tokens):
    h   = E_x[x] + softmax(y) @ E_y                 input tokens and the current answer, embedded and summed
    s_0 = res(stem(h));  s_i = res(conv_s2(s_i-1))  channels C, 2C, 4C, then latent_channels at 1/8 size
    z   = res( FiLM(s_3; task) + W_z z )            the latent, carried between steps; the task enters here
    y   = head( U-Net decoder(z, s_2, s_1, s_0) )   new answer logits [B, V, S, S]
Task: TRM's per-puzzle vector (zero-initialised, sign-SGD in train.py) -> FiLM s_3 (1 + gamma) + beta, the
identity at init. Training: n_outer segments of n_inner steps, each step differentiated, (y, z) detached
between segments; objective = mean over segments of the per-sample mean CE over labelled cells (padding,
label -100, gets none), summed over the batch. Evaluation (or no grad): eval_n_steps steps, the last answer.
  memory_efficient=True: backward inside forward. Each segment but the last is back-propagated at once,
    times forward's `loss_scale` (the factor the caller applies to the returned loss before its backward),
    and forward returns only the last segment's share as `loss`; metrics["total_loss"] is the whole
    objective, so the logged curve is the same in both modes. Peak activations: one segment's graph.
  memory_efficient=False: one graph, one backward by the caller (same gradients up to float rounding).
Every sample halts after one call; outputs are `logits` [B,L,V] and `preds` [B,L] (no q_halt_logits).

Choices: y carried as logits (y_0 = 0, the uniform answer), no z at the first step; pre-activation residual
blocks (GroupNorm in float32, GELU, 3x3 conv, twice), the second conv zero-initialised so each block starts
as the identity; stride-2 convs down, nearest up-sampling to each skip then a 3x3 conv over [up, skip]; no
dropout; softmax CE (`loss_type=stablemax` is TRM's); float32 master weights cast at use. The note's
recipe is TRAIN_DEFAULTS (EMA 0.9995, grad clip 1.0). Not yet run under torch.compile: the inner
.backward() calls are graph breaks (pass compile=False if compiling fails). Measured: experiments/RESULTS.md.

Run:  python train.py --model deep_recursive --config data=toy base_channels=16 latent_channels=64 ema=False
      python train.py --model deep_recursive --config data=arc1
      python evaluate.py --checkpoint runs/deep_recursive-arc1/checkpoint.pt
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import trm

TRAIN_DEFAULTS = {"ema_rate": 0.9995, "grad_clip": 1.0}  # the design note's recipe (train.py: 0.999, no clip)


@dataclass
class Config:
    base_channels: "int >= 1" = 64      # C: channels at full resolution (2C, 4C below)
    latent_channels: "int >= 1" = 512   # channels of the latent z at 1/8 resolution
    n_res_blocks: "int >= 1" = 2        # residual blocks per encoder stage and at the bottleneck
    n_inner: "int >= 1" = 3             # steps per segment, all differentiated
    n_outer: "int >= 1" = 3             # segments (deep supervision), (y, z) detached between them
    eval_n_steps: "int >= 1" = 9        # steps at evaluation (more may help)
    memory_efficient: "bool" = True     # backward per segment (peak memory: one segment)
    puzzle_emb_ndim: "int >= 0" = 512   # width of the per-puzzle task vector (0 = none)
    loss_type: "str in softmax|stablemax" = "softmax"  # cross-entropy
    vocab_size: "int >= 1" = 12         # V (from the dataset)
    seq_len: "int >= 1" = 900           # L = side^2 (from the dataset; must be a square)
    num_puzzle_identifiers: "int >= 1" = 1  # rows of the puzzle-embedding table (from the dataset)
    forward_dtype: "str in auto|bfloat16|float32" = "auto"  # auto: bfloat16 on CUDA, float32 on CPU


# ----------------------------------------------------------------------------------------------------
# Layers

class CastedConv2d(nn.Conv2d):
    """3x3 / 1x1 conv, float32 master weights cast to the input dtype at use; LeCun truncated-normal init."""

    def __init__(self, cin, cout, k, stride=1, zero=False, bias=True):
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
        with torch.no_grad():
            trm.trunc_normal_init_(self.weight, 0.0 if zero else 1 / math.sqrt(cin * k * k))
            if bias:
                self.bias.zero_()

    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def group_norm(x, groups):
    return F.group_norm(x.float(), groups).to(x.dtype)  # statistics in float32, no affine


class ResBlock(nn.Module):
    """x + conv(gelu(gn(conv(gelu(gn(x)))))); the second conv starts at zero, so the block starts as identity."""

    def __init__(self, ch):
        super().__init__()
        self.groups = math.gcd(8, ch)
        # No bias on conv1: the GroupNorm after it removes any per-channel constant, so its gradient is 0 up to
        # rounding, and AdamATan2 (scale-free, atan2 ~ sign for tiny v) would turn that rounding into full steps.
        self.conv1, self.conv2 = CastedConv2d(ch, ch, 3, bias=False), CastedConv2d(ch, ch, 3, zero=True)

    def forward(self, x):
        h = self.conv1(F.gelu(group_norm(x, self.groups)))
        return x + self.conv2(F.gelu(group_norm(h, self.groups)))


class UpStage(nn.Module):
    """Nearest up-sampling to the skip's size, 3x3 conv over [up, skip], one residual block."""

    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.conv, self.res = CastedConv2d(cin + cskip, cout, 3), ResBlock(cout)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.res(self.conv(torch.cat((x, skip), dim=1)))


@dataclass
class Carry:
    halted: torch.Tensor  # [B] bool; always all True after a call: the recursion happens inside forward


# ----------------------------------------------------------------------------------------------------
# The model

class Model(nn.Module):
    needs_demos = False  # True: the loader adds demo_inputs, demo_labels, demo_mask to every batch

    def __init__(self, config: Config):
        super().__init__()
        self.config = c = config
        self.side = math.isqrt(c.seq_len)
        if self.side ** 2 != c.seq_len:
            raise ValueError(f"deep_recursive works on a square canvas: seq_len must be a perfect square "
                             f"(900 = 30x30 for ARC), got seq_len={c.seq_len}")
        self.dtype = trm.resolve_dtype(c.forward_dtype)
        C, V = c.base_channels, c.vocab_size
        chans = [C, 2 * C, 4 * C, c.latent_channels]
        self.embed_x = trm.CastedEmbedding(V, C, 1.0, self.dtype)          # E_x: input tokens
        self.embed_y = nn.Parameter(trm.trunc_normal_init_(torch.empty(V, C), 1.0))  # E_y: answer distribution
        self.stem = CastedConv2d(C, C, 3)
        self.down = nn.ModuleList(CastedConv2d(chans[i - 1], chans[i], 3, stride=2) for i in range(1, 4))
        self.enc = nn.ModuleList(nn.Sequential(*(ResBlock(ch) for _ in range(c.n_res_blocks))) for ch in chans)
        self.z_proj = CastedConv2d(chans[3], chans[3], 1)                  # W_z: carry the previous latent
        self.mid = nn.Sequential(*(ResBlock(chans[3]) for _ in range(c.n_res_blocks)))
        self.up = nn.ModuleList(UpStage(chans[i + 1], chans[i], chans[i]) for i in (2, 1, 0))
        self.head = CastedConv2d(C, V, 1)
        if c.puzzle_emb_ndim > 0:
            self.puzzle_emb = trm.SparseEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim, self.dtype)
            self.film = trm.CastedLinear(c.puzzle_emb_ndim, 2 * chans[3])  # -> gamma, beta

    # -- one recursion step -----------------------------------------------------------------------------
    def step(self, x_emb, y, z, film):
        """x_emb [B,C,S,S], y logits [B,V,S,S], z [B,latent,s,s] or None, film (gamma, beta) or None."""
        y_emb = torch.einsum("bvhw,vc->bchw", y.float().softmax(1), self.embed_y).to(self.dtype)
        h = self.enc[0](self.stem(x_emb + y_emb))
        skips = [h]
        for down, enc in zip(self.down, self.enc[1:]):
            h = enc(down(h))
            skips.append(h)
        if film is not None:
            h = h * (1 + film[0]) + film[1]
        if z is not None:
            h = h + self.z_proj(z)
        z = self.mid(h)
        h = z
        for up, skip in zip(self.up, reversed(skips[:-1])):
            h = up(h, skip)
        return self.head(h), z

    def embed(self, inputs, task):
        """Token canvas [B, L] -> [B, C, S, S]; task vector [B, ndim] -> FiLM (gamma, beta) [B, latent, 1, 1]."""
        B, S = inputs.shape[0], self.side
        x = self.embed_x(inputs.long()).view(B, S, S, -1).permute(0, 3, 1, 2)
        if task is None:
            return x, None
        gamma, beta = self.film(task).view(B, 2, -1, 1, 1).unbind(1)
        return x, (gamma, beta)

    # -- protocol ---------------------------------------------------------------------------------------
    def initial_carry(self, batch):
        return Carry(halted=torch.ones(batch["inputs"].shape[0], dtype=torch.bool, device=batch["inputs"].device))

    def forward(self, carry, batch, loss_scale=1.0):
        c = self.config
        inputs, labels = batch["inputs"], batch["labels"]
        B, S = inputs.shape[0], self.side
        task = self.puzzle_emb(batch["puzzle_identifiers"].long()) if c.puzzle_emb_ndim > 0 else None
        y = torch.zeros(B, c.vocab_size, S, S, dtype=self.dtype, device=inputs.device)  # y_0: uniform answer
        z = None
        halted = torch.ones(B, dtype=torch.bool, device=inputs.device)
        to_tokens = lambda logits: logits.permute(0, 2, 3, 1).reshape(B, S * S, -1)  # noqa: E731  [B, L, V]

        if not (self.training and torch.is_grad_enabled()):  # evaluation: eval_n_steps, loss of the last answer
            x, film = self.embed(inputs, task)
            for _ in range(c.eval_n_steps):
                y, z = self.step(x, y, z, film)
            logits = to_tokens(y)
            loss, _, metrics = trm.token_loss_and_metrics(logits, labels, halted, c.loss_type)
        else:
            pending, total = 0.0, 0.0  # not-yet-backpropagated loss; the whole objective for logging
            for seg in range(c.n_outer):
                # Embeddings are recomputed per segment: a graph shared across segments would be freed by
                # the first segment's backward in memory-efficient mode.
                x, film = self.embed(inputs, task)
                for _ in range(c.n_inner):
                    y, z = self.step(x, y, z, film)
                logits = to_tokens(y)
                seg_loss, _, metrics = trm.token_loss_and_metrics(logits, labels, halted, c.loss_type)
                seg_loss = seg_loss / c.n_outer
                total = total + seg_loss.detach()
                if c.memory_efficient and seg < c.n_outer - 1:
                    (seg_loss * loss_scale).backward()
                else:
                    pending = pending + seg_loss
                y, z = y.detach(), z.detach()
            loss = pending  # memory-efficient: the last segment's share; standard: the whole objective
            metrics["lm_loss"] = metrics["total_loss"] = total
        outputs = {"logits": logits.detach(), "preds": logits.argmax(-1)}
        return Carry(halted=halted), loss, metrics, outputs
