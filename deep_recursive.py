"""deep_recursive.py — TRM's deep recursion around a convolutional network: the answer y and
a latent z are refined step after step on the 2-D canvas, with deep supervision over detached
segments.

Source: a design note (the "Deep Recursive Model") that cites arXiv 2511.14761; that paper is
VARC ("ARC Is a Vision Problem!", a feed-forward ViT / U-Net), not a recursive model. This file is
the note's design made sound, inspired by TRM's deep supervision and VARC's U-Net; it has no
published numbers to match. docs/deep_recursive.md: what the note got wrong, and measured runs.

One step, on the side x side canvas (side = sqrt(L), L the batch's sequence length):
    h = E_x[x] + softmax(y) @ E_y        input tokens and the current answer, embedded, summed
  trunk=unet (the note's design; its bottleneck at 1/8 size spans the whole canvas):
    s_0 = res(stem(h));  s_i = res(conv_s2(s_i-1))   channels C, 2C, 4C, then latent_channels
    z   = res( FiLM(s_3; task) + W_z z )              the latent, carried between steps
    y   = head( U-Net decoder(z, s_2, s_1, s_0) )     new answer logits [B, V, S, S]
  trunk=conv (no global bottleneck: stride-1 3x3 convs at full resolution):
    z   = res( FiLM(conv([h, act(z)]); task) )        the input re-read every step ("recall",
    y   = head(act(z))                                Bansal et al. 2022), z [B, C, S, S]
  Nothing in trunk=conv depends on the canvas, so one set of weights runs on any side
  (`any_canvas`): trained on small mazes it solves bigger ones by running more steps
  (Schwarzschild et al. 2021, "Can you learn an algorithm?").
Task: TRM's per-puzzle vector (zero-initialised, sign-SGD in train.py) -> FiLM (1 + gamma) x +
beta, the identity at init. Training: n_outer segments of n_inner steps, each step differentiated,
(y, z) detached between segments; `loss` = mean over segments of the per-sample mean CE over
labelled cells (padding, label -100, gets none), summed over the batch. `progressive=True`
instead runs n random steps without gradient and then k random differentiated steps, supervised
once: Bansal et al.'s progressive loss, what lets trunk=conv solve mazes bigger than its training
mazes by running more steps (docs/deep_recursive.md). Evaluation (or no grad): eval_n_steps
steps, the last answer scored, outputs["step_preds"] [B, steps, L] the answer after each step.
  memory_efficient=True: each segment runs under torch.utils.checkpoint (non-reentrant) and is
    recomputed in the backward pass: peak activations are one segment's graph (1/n_outer of the
    standard mode's), the gradients the standard mode's.
  memory_efficient=False: every segment's graph is held until the caller's backward.
Every sample halts after one call; outputs: `logits` [B,L,V], `preds` [B,L] (no q_halt_logits).

Choices: y carried as logits (y_0 = 0, the uniform answer); no z at the first U-Net step, z_0 = 0
for the conv trunk; pre-activation residual blocks (GroupNorm in float32, per-cell RMSNorm in the
conv trunk, GELU, 3x3 conv, twice), the second conv zero-initialised so each block starts as the
identity; stride-2 convs down, nearest up-sampling to each skip then a 3x3 conv over [up, skip];
no dropout; softmax CE (`loss_type=stablemax` is TRM's); float32 master weights cast at use.
TRAIN_DEFAULTS is the note's recipe; the measured maze recipe for trunk=conv is in
docs/deep_recursive.md. Not yet run under torch.compile (nothing inside forward breaks the graph
now that it calls no backward).

Run:  python train.py --model deep_recursive --config data=toy base_channels=16 \
          latent_channels=64 ema=False
      python train.py --model deep_recursive --config data=arc1
      python evaluate.py --checkpoint runs/deep_recursive-arc1/checkpoint.pt
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import kernels
import trm

TRAIN_DEFAULTS = {"ema_rate": 0.9995, "grad_clip": 1.0}  # the note's recipe


@dataclass
class Config:
    base_channels: "int >= 1" = 64      # C: channels at full resolution (2C, 4C below)
    latent_channels: "int >= 1" = 512   # channels of the U-Net's latent z at 1/8 resolution
    n_res_blocks: "int >= 1" = 2        # residual blocks per U-Net stage / per conv-trunk step
    n_inner: "int >= 1" = 3             # steps per segment, all differentiated
    n_outer: "int >= 1" = 3             # segments (deep supervision), (y, z) detached between them
    eval_n_steps: "int >= 1" = 9        # steps at evaluation (more may help)
    progressive: "bool" = False         # train from a random step (Bansal et al. 2022): see forward
    memory_efficient: "bool" = True     # checkpoint each segment (peak memory: one segment)
    trunk: "str in unet|conv" = "unet"  # one step's network: unet | conv (full res., any canvas)
    puzzle_emb_ndim: "int >= 0" = 512   # width of the per-puzzle task vector (0 = none)
    loss_type: "str in softmax|stablemax" = "softmax"  # cross-entropy
    vocab_size: "int >= 1" = 12         # V (from the dataset)
    seq_len: "int >= 1" = 900           # L = side^2 (from the dataset; must be a square)
    num_puzzle_identifiers: "int >= 1" = 1  # rows of the puzzle-embedding table (from the dataset)
    forward_dtype: "str in auto|bfloat16|float32" = "auto"  # auto: bfloat16 on CUDA, float32 on CPU


# ------------------------------------------------------------------------------------------------
# Layers

class CastedConv2d(nn.Conv2d):
    """Conv, float32 master weights cast to the input dtype at use; LeCun truncated-normal init."""

    def __init__(self, cin, cout, k, stride=1, zero=False, bias=True):
        super().__init__(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
        with torch.no_grad():
            trm.trunc_normal_init_(self.weight, 0.0 if zero else 1 / math.sqrt(cin * k * k))
            if bias:
                self.bias.zero_()

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


def act(x, local=False):
    """GELU after a norm without affine, statistics in float32: GroupNorm (groups of up to 8
    channels, statistics over the whole canvas) or, `local`, RMSNorm over each cell's channels, so
    a cell's output depends on its neighbourhood alone, whatever the rest of the canvas holds."""
    if local:
        return F.gelu(kernels.rms_norm(x.movedim(1, -1)).movedim(-1, 1))
    return F.gelu(F.group_norm(x.float(), math.gcd(8, x.shape[1])).to(x.dtype))


class ResBlock(nn.Module):
    """x + conv(act(conv(act(x)))); the second conv starts at zero: the block starts as identity."""

    def __init__(self, ch, local=False):
        super().__init__()
        self.local = local
        # No bias on conv1: the GroupNorm after it removes any per-channel constant, so its gradient
        # is rounding noise, which AdamATan2 (atan2 ~ sign for tiny v) would turn into full steps.
        self.conv1 = CastedConv2d(ch, ch, 3, bias=False)
        self.conv2 = CastedConv2d(ch, ch, 3, zero=True)

    def forward(self, x):
        return x + self.conv2(act(self.conv1(act(x, self.local)), self.local))


def res_blocks(ch, n, local=False):
    return nn.Sequential(*(ResBlock(ch, local) for _ in range(n)))


def film(h, gamma_beta):
    return h if gamma_beta is None else h * (1 + gamma_beta[0]) + gamma_beta[1]


class UpStage(nn.Module):
    """Nearest up-sampling to the skip's size, 3x3 conv over [up, skip], one residual block."""

    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.conv, self.res = CastedConv2d(cin + cskip, cout, 3), ResBlock(cout)

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.res(self.conv(torch.cat((x, skip), dim=1)))


class UNet(nn.Module):
    """One U-Net step: h [B,C,S,S], z [B,latent,s,s] or None -> (logits [B,V,S,S], z)."""

    def __init__(self, c):
        super().__init__()
        C = c.base_channels
        chans = [C, 2 * C, 4 * C, c.latent_channels]
        self.stem = CastedConv2d(C, C, 3)
        self.down = nn.ModuleList(CastedConv2d(a, b, 3, stride=2) for a, b in zip(chans, chans[1:]))
        self.enc = nn.ModuleList(res_blocks(ch, c.n_res_blocks) for ch in chans)
        self.z_proj = CastedConv2d(chans[3], chans[3], 1)                  # W_z: carry the latent
        self.mid = res_blocks(chans[3], c.n_res_blocks)
        self.up = nn.ModuleList(UpStage(chans[i + 1], chans[i], chans[i]) for i in (2, 1, 0))
        self.head = CastedConv2d(C, c.vocab_size, 1)
        self.film_channels = chans[3]

    def forward(self, h, z, gamma_beta):
        h = self.enc[0](self.stem(h))
        skips = [h]
        for down, enc in zip(self.down, self.enc[1:]):
            h = enc(down(h))
            skips.append(h)
        h = film(h, gamma_beta)
        z = self.mid(h if z is None else h + self.z_proj(z))
        h = z
        for up, skip in zip(self.up, reversed(skips[:-1])):
            h = up(h, skip)
        return self.head(h), z


class ConvTrunk(nn.Module):
    """One full-resolution step: h [B,C,S,S], z [B,C,S,S] or None -> (logits [B,V,S,S], z).
    A cell sees 1 + 2 n_res_blocks cells further per step: more steps reach further."""

    def __init__(self, c):
        super().__init__()
        C = c.base_channels
        self.recall = CastedConv2d(2 * C, C, 3)     # [input + answer, latent] -> latent
        self.blocks = res_blocks(C, c.n_res_blocks, local=True)
        self.head = CastedConv2d(C, c.vocab_size, 1)
        self.film_channels = C

    def forward(self, h, z, gamma_beta):
        z = torch.zeros_like(h) if z is None else act(z, local=True)
        z = self.blocks(film(self.recall(torch.cat((h, z), dim=1)), gamma_beta))
        return self.head(act(z, local=True)), z


@dataclass
class Carry:
    halted: torch.Tensor  # [B] bool; all True after every call (the recursion is inside forward)


# ------------------------------------------------------------------------------------------------
# The model

class Model(nn.Module):
    needs_demos = False  # True: the loader adds demo_inputs, demo_labels, demo_mask to every batch

    def __init__(self, config: Config):
        super().__init__()
        self.config = c = config
        side_of(c.seq_len)
        self.any_canvas = c.trunk == "conv"  # weights and function independent of the canvas side
        self.dtype = trm.resolve_dtype(c.forward_dtype)
        C, V = c.base_channels, c.vocab_size
        self.embed_x = trm.CastedEmbedding(V, C, 1.0, self.dtype)                   # E_x: input
        self.embed_y = nn.Parameter(trm.trunc_normal_init_(torch.empty(V, C), 1.0))  # E_y: answer
        self.trunk = {"unet": UNet, "conv": ConvTrunk}[c.trunk](c)
        if c.puzzle_emb_ndim > 0:
            self.puzzle_emb = trm.SparseEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim,
                                                  self.dtype)
            self.film = trm.CastedLinear(c.puzzle_emb_ndim, 2 * self.trunk.film_channels)

    def step(self, x_emb, y, z, gamma_beta):
        """x_emb [B,C,S,S], y logits [B,V,S,S], z or None, gamma_beta (FiLM) or None -> (y, z)."""
        y_emb = torch.einsum("bvhw,vc->bchw", y.float().softmax(1), self.embed_y).to(self.dtype)
        return self.trunk(x_emb + y_emb, z, gamma_beta)

    def segment(self, x_emb, y, z, gamma_beta, n=None):
        for _ in range(self.config.n_inner if n is None else n):
            y, z = self.step(x_emb, y, z, gamma_beta)
        return y, z

    def progressive_start(self, x_emb, y, z, gamma_beta):
        """Bansal et al. 2022, Alg. 1: n ~ U{0..N-1} steps without gradient, N = n_inner x n_outer,
        then k ~ U{1..N-n} differentiated steps. The network learns to improve any state it makes,
        not to reach the answer in a fixed number of steps: what carries to longer runs."""
        N = self.config.n_inner * self.config.n_outer
        n = int(torch.randint(N, ()))
        with torch.no_grad():
            y, z = self.segment(x_emb, y, z, gamma_beta, n)
        return y.detach(), None if z is None else z.detach(), int(torch.randint(1, N - n + 1, ()))

    def embed(self, inputs, task):
        """Canvas [B, L] -> [B, C, S, S]; task [B, ndim] -> FiLM (gamma, beta) [B, ch, 1, 1]."""
        B, S = inputs.shape[0], side_of(inputs.shape[1])
        x = self.embed_x(inputs.long()).view(B, S, S, -1).permute(0, 3, 1, 2)
        if task is None:
            return x, None
        return x, tuple(self.film(task).view(B, 2, -1, 1, 1).unbind(1))

    # -- protocol ----------------------------------------------------------------------------------
    def initial_carry(self, batch):
        inputs = batch["inputs"]
        return Carry(halted=torch.ones(inputs.shape[0], dtype=torch.bool, device=inputs.device))

    def forward(self, carry, batch):
        c = self.config
        inputs, labels = batch["inputs"], batch["labels"]
        (B, L), V = inputs.shape, c.vocab_size
        S = side_of(L)
        ids = batch["puzzle_identifiers"].long()
        task = self.puzzle_emb(ids) if c.puzzle_emb_ndim > 0 else None
        x, gamma_beta = self.embed(inputs, task)
        y = torch.zeros(B, V, S, S, dtype=self.dtype, device=inputs.device)  # y_0: uniform answer
        z = None
        halted = torch.ones(B, dtype=torch.bool, device=inputs.device)
        to_tokens = lambda y: y.permute(0, 2, 3, 1).reshape(B, L, V)  # noqa: E731

        if not (self.training and torch.is_grad_enabled()):  # evaluation: the last answer is scored
            step_preds = []
            for _ in range(c.eval_n_steps):
                y, z = self.step(x, y, z, gamma_beta)
                step_preds.append(y.argmax(1).view(B, L))
            logits = to_tokens(y)
            loss, _, metrics = trm.token_loss_and_metrics(logits, labels, halted, c.loss_type)
            extra = {"step_preds": torch.stack(step_preds, 1)}
        else:
            loss, extra, k, segments = 0.0, {}, None, c.n_outer
            if c.progressive:  # one supervised segment of k steps from a random start
                (y, z, k), segments = self.progressive_start(x, y, z, gamma_beta), 1
            for _ in range(segments):
                if c.memory_efficient:
                    y, z = checkpoint(self.segment, x, y, z, gamma_beta, k, use_reentrant=False)
                else:
                    y, z = self.segment(x, y, z, gamma_beta, k)
                logits = to_tokens(y)
                seg_loss, _, metrics = trm.token_loss_and_metrics(logits, labels, halted,
                                                                  c.loss_type)
                loss = loss + seg_loss / segments
                y, z = y.detach(), z.detach()
            metrics["lm_loss"] = loss.detach()  # the whole objective; accuracy: the last segment's
        outputs = {"logits": logits.detach(), "preds": logits.argmax(-1), **extra}
        return Carry(halted=halted), loss, metrics, outputs


def side_of(seq_len):
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        raise ValueError(f"deep_recursive works on a square canvas: seq_len must be a perfect "
                         f"square (900 = 30x30 for ARC), got seq_len={seq_len}")
    return side
