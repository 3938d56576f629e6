"""etrm.py — the encoder TRM: TRM with its puzzle-id embedding replaced by an encoder of the demonstration
pairs, so the rule is read from the demos at test time and the model can meet a puzzle it never saw.

Source: B. D. Sağlam, ETRM (github bdsaglam/etrm, report 2026-01-18; ../shared/spec/etrm.md §3) on top of
TRM (trm.py); upgrades from LPN (Macfarlane & Bonnet, "Searching Latent Program Spaces", arXiv 2411.08706).
The public ETRM is an honest negative result: every encoder collapsed to a near-constant context and
scored ~0% on held-out ARC puzzles (spec §3.5). This file reproduces that setting and adds the two LPN
upgrades, each off by default:

    demos [B,K,L] x2, mask [B,K] --encoder--> context [B,T,D] --(in the puzzle embedding's slots)--> TRM

- Encoders (`encoder_type`, spec §3.3). `standard` (default): per pair, separate input/output colour
  tables over [input; output] (2L tokens), x sqrt(D), 1-D RoPE over 2L positions, `encoder_num_layers`
  post-norm blocks (no padding mask in attention; only pooling ignores PAD), pooling mean over non-PAD
  (| `attention`: a learned query cross-attends | `weighted`: softmax-scored mean), linear -> e_i; then a
  set encoder: T learned queries (std 0.02) cross-attend over the e_i with masked demos excluded, SwiGLU,
  post-norm; final RMSNorm. `lpn_standard`: CLS token, pre-norm blocks, RoPE on all but CLS, mean of the
  valid demos' CLS vectors -> linear -> T x D. `lpn_variational`: per demo mu_i, log sigma^2_i (latent
  `latent_dim`), z_i reparameterised in training (mu_i in eval), mean over valid demos -> linear;
  loss += kl_weight * KL, KL = mean over valid demos of -1/2 sum_d (1 + log s^2 - mu^2 - s^2).
- The TRM decoder is trm.Model unchanged (its `puzzle_emb_len` = T slots take the context; the whole
  sequence is scaled by sqrt(D) as TRM does with its puzzle embedding). `decoder_init` loads a trained
  TRM's weights (a nanoTRM checkpoint or the reference's state dict), puzzle embedding skipped.
- Training modes (briefing §3). `act_mode=dynamic` (ETRM): TRM's ACT, carry persists across calls,
  halted samples are replaced, and the FULL batch is re-encoded at every call: caching the context in
  the carry gave the encoder gradients from ~2% of samples per step and 35-50% train accuracy (spec
  §3.4). `act_mode=fixed` (ETRM-FCT): every sample halts after exactly `num_act_steps` calls, so the same
  batch is held for N forward/backward/optimizer steps with a fresh carry per batch; train.py is
  unchanged, so the loader batches that arrive in between are skipped (data is used at 1/N the rate).
  In evaluation both modes run halt_max_steps steps, and the context is encoded once per sample and
  cached in the carry (no gradient there, so caching is harmless and saves compute).
- Beyond the public ETRM [OURS, spec §3.7]: (1) `leave_one_out` = p: at load time a training sample's
  query is, with probability p, replaced by one of its own demos chosen uniformly, that demo masked out of
  its context (only when >= 2 demos), so every demo pair is a supervised target and no pair sees itself;
  (2) `tto_steps` > 0: test-time optimisation in evaluation (LPN §3): starting from the encoder's output,
  Adam steps (lr `tto_lr`) on the context (`tto_target=context`) or on the encoder's latent before its
  projection (`latent`: the per-demo encodings for `standard`, the pooled latent for the lpn encoders)
  to lower the loss of predicting every demo output from its input, keeping each sample's best (so the
  demo loss never rises). The gradient is TRM's own approximation (through the last recursion round of
  the last of `tto_act_steps` ACT steps only), not the exact one: on the tiny test config it points
  downhill at about half the true slope, so keep steps small. The demo loss before/after is reported
  (`tto_demo_loss_init`, `tto_demo_loss_best`); compare accuracy with it on and off by evaluating twice
  (`tto_steps=0` / `tto_steps=N`). (With reference-layout data that has no demo flags, data.py already
  makes every train pair a target with itself left out of its demos.)
- Metrics beyond TRM's: `context_var`, the cross-sample variance of the context over the batch (mean
  over T and D): the collapse detector (public runs: 0.36 deterministic, 0.15 iterative, spec §3.5);
  `kl_loss` for the variational encoder.

What it does here: on the tiny colour-map family of tests/test_etrm.py (each puzzle a map of 4 colours
shown only by its demos; 200 maps trained, 56 held out) a 32-wide ETRM reaches 0.99-1.0 held-out cell
accuracy in 600 CPU steps, and ~0.27 (chance) with another puzzle's demos. On a harder variant (random
demo grids, so input and output cells must be paired inside the grid encoder) context_var fell to 0 within
50 steps: the public collapse in miniature; a 1-layer encoder recovered (0.54 held-out after 400 steps), a
2-layer one stayed collapsed at chance for 600 steps. Nothing is claimed for ARC yet.

Choices where the spec is silent [OURS]: masked demos are not run through the grid encoder at all (the
valid pairs are gathered first; ~3x less encoder compute on ARC, ~3.3 of 10 slots are real); a sample
with no valid demo gets an all-zero context; the set encoder's cross-attention is written in plain
PyTorch (kernels.attention has no mask); the encoder's final RMSNorm is kept although after a post-norm
layer it changes nothing; demo labels may carry PAD as 0 or -100 (both read as PAD).

Run:  python train.py --model etrm --config data=toy grad_clip=1.0          (CPU smoke run; toy rules are shared
                                                                          between its train and test splits)
      python data.py arc1 --held-out --out data/arc1-heldout            (eval puzzles' demos never in train)
      torchrun --standalone --nproc_per_node=8 train.py --model etrm --config data=data/arc1-heldout \
          grad_clip=1.0 halt_exploration_prob=0.5 decoder_init=runs/trm-arc1/checkpoint.pt leave_one_out=0.5
      python evaluate.py --checkpoint runs/etrm-arc1-heldout/checkpoint.pt
ETRM needs gradient clipping (grad_clip=1.0: 96.7% vs 85.4% on the public overfit test); train.py's
default is 0, so pass it.
"""
import math
import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

import kernels
import trm


@dataclass
class Config(trm.Config):
    # TRM decoder fields are inherited (D = hidden_size 512, 8 heads, T=3 H_cycles, n=4 L_cycles, ...).
    puzzle_emb_len: int = 16              # T: context tokens from the encoder (TRM's puzzle-embedding slots)
    puzzle_emb_ndim: int = 0              # unused: ETRM has no puzzle-embedding table
    encoder_type: str = "standard"        # standard | lpn_standard | lpn_variational
    encoder_num_layers: int = 2           # blocks of the per-pair grid encoder (LPN docs: 4-8)
    encoder_pooling_method: str = "mean"  # standard only: mean | attention | weighted
    encoder_set_layers: int = 1           # standard only: cross-attention layers of the set encoder
    latent_dim: int = 0                   # lpn_variational: dim of mu_i, log sigma^2_i (0 = hidden_size)
    kl_weight: float = 1e-4               # beta of the KL term (lpn_variational)
    act_mode: str = "dynamic"             # dynamic (ETRM, TRM's ACT) | fixed (ETRM-FCT)
    num_act_steps: int = 1                # N: ACT steps per batch in fixed mode (training)
    leave_one_out: float = 0.0            # p: chance a training query is swapped for one of its demos
    tto_steps: int = 0                    # test-time optimisation steps in evaluation (0 = off)
    tto_lr: float = 1e-2                  # alpha: Adam step size (LPN: 5e-2 on its 256-d latent; overshoots here)
    tto_target: str = "context"           # context (T x D) | latent (before the encoder's projection)
    tto_act_steps: int = 1                # decoder ACT steps per demo prediction inside test-time optimisation
    decoder_init: str = ""                # a trained TRM checkpoint to initialise the decoder from


# Keys that only matter when a model is first built (train.py / evaluate.py may clear them when rebuilding
# a model from one of its own checkpoints, whose weights already hold the initialisation).
INIT_ONLY_KEYS = ("decoder_init",)
# Keys that change neither the weights' shapes nor what given weights compute in training (evaluation- or
# training-only knobs; safe to differ between a checkpoint and a run that evaluates or starts from it).
RUNTIME_KEYS = ("tto_steps", "tto_lr", "tto_target", "tto_act_steps", "decoder_init", "leave_one_out", "kl_weight")


# ----------------------------------------------------------------------------------------------------
# Encoder parts

def to_tokens(demo_labels):
    """Demo outputs as encoder tokens: -100 (ignore) read as PAD 0."""
    return demo_labels.clamp_min(0)


def to_targets(demo_labels):
    """Demo outputs as decoder targets: PAD (0) and -100 ignored, as the ARC builder's labels."""
    return torch.where(demo_labels > 0, demo_labels, -100)


def masked_softmax(scores, mask):
    """softmax over the last axis where mask; rows with no True give all zeros (not NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.where(mask.any(-1, keepdim=True), scores.float().softmax(-1), 0.0).to(scores.dtype)


class CrossAttention(nn.Module):
    """Queries [N,Q,D] attend over keys/values [N,S,D]; mask [N,S] True = attend."""

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = trm.CastedLinear(hidden_size, hidden_size)
        self.kv_proj = trm.CastedLinear(hidden_size, 2 * hidden_size)
        self.o_proj = trm.CastedLinear(hidden_size, hidden_size)

    def forward(self, q, kv, mask):
        N, Q, D = q.shape
        H = self.num_heads
        q = self.q_proj(q).view(N, Q, H, D // H).transpose(1, 2)                      # (N, H, Q, d)
        k, v = self.kv_proj(kv).view(N, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)       # (N, H, S, d) each
        w = masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), mask[:, None, None, :])
        return self.o_proj((w @ v).transpose(1, 2).reshape(N, Q, D))


class SetLayer(nn.Module):
    """Post-norm, as the TRM blocks: q = rms(q + cross_attn(q, demos)); q = rms(q + mlp(q))."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.attn = CrossAttention(config.hidden_size, config.num_heads)
        self.mlp = trm.SwiGLU(config.hidden_size, config.expansion)

    def forward(self, q, demos, demo_mask):
        q = kernels.rms_norm(q, self.attn(q, demos, demo_mask), self.eps)
        return kernels.rms_norm(q, self.mlp(q), self.eps)


class PreNormBlock(nn.Module):
    """h = h + attn(rms(h)); h = h + mlp(rms(h)) (the LPN grid encoder's blocks)."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = trm.Attention(config.hidden_size, config.num_heads)
        self.mlp = trm.SwiGLU(config.hidden_size, config.expansion)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(kernels.rms_norm(h, None, self.eps), cos, sin)
        return h + self.mlp(kernels.rms_norm(h, None, self.eps))


class PairEmbedding(nn.Module):
    """[input; output] grids -> [N, 2L, D] with separate colour tables, x sqrt(D) (TRM's embedding scale)."""

    def __init__(self, config, dtype):
        super().__init__()
        D = config.hidden_size
        self.scale = math.sqrt(D)
        self.embed_in = trm.CastedEmbedding(config.vocab_size, D, 1 / self.scale, dtype)
        self.embed_out = trm.CastedEmbedding(config.vocab_size, D, 1 / self.scale, dtype)

    def forward(self, x, y):
        return self.scale * torch.cat((self.embed_in(x.long()), self.embed_out(y.long())), dim=1)


class StandardDemoEncoder(nn.Module):
    """Per-pair grid encoder (post-norm, pooled, projected) then a set encoder with T learned queries."""

    def __init__(self, config, dtype):
        super().__init__()
        c, D = config, config.hidden_size
        self.config, self.dtype = c, dtype
        block_cfg = replace(c, mlp_t=False)
        self.embed = PairEmbedding(c, dtype)
        cos, sin = trm.rope_tables(D // c.num_heads, 2 * c.seq_len, c.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.layers = nn.ModuleList(trm.Block(block_cfg, 2 * c.seq_len) for _ in range(c.encoder_num_layers))
        if c.encoder_pooling_method == "attention":
            self.pool_query = nn.Parameter(trm.trunc_normal_init_(torch.empty(1, D), 0.02))
            self.pool_attn = CrossAttention(D, c.num_heads)
        elif c.encoder_pooling_method == "weighted":
            self.pool_score = trm.CastedLinear(D, 1)
        elif c.encoder_pooling_method != "mean":
            raise ValueError(f"encoder_pooling_method must be mean, attention or weighted, got {c.encoder_pooling_method!r}")
        self.proj = trm.CastedLinear(D, D)
        self.queries = nn.Parameter(trm.trunc_normal_init_(torch.empty(c.puzzle_emb_len, D), 0.02))
        self.set_layers = nn.ModuleList(SetLayer(c) for _ in range(c.encoder_set_layers))

    def encode_pairs(self, x, y):
        """x, y [N, L] tokens of N valid pairs -> e [N, D]."""
        h = self.embed(x, y)                                   # (N, 2L, D)
        for layer in self.layers:                              # no padding mask: only pooling skips PAD
            h = layer(h, self.rope_cos, self.rope_sin)
        keep = torch.cat((x, y), dim=1) != 0                   # (N, 2L) non-PAD tokens
        method = self.config.encoder_pooling_method
        if method == "mean":
            pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        elif method == "attention":
            q = self.pool_query.to(h.dtype).expand(h.shape[0], 1, -1)
            pooled = self.pool_attn(q, h, keep)[:, 0]
        else:
            w = masked_softmax(self.pool_score(h)[..., 0], keep)
            pooled = (w[..., None] * h).sum(1)
        return self.proj(pooled)

    def latent(self, demo_inputs, demo_labels, demo_mask):
        """-> (e [B, K, D] per-demo encodings, zero where masked; KL [B] or None)."""
        B, K, L = demo_inputs.shape
        flat = demo_mask.reshape(-1)
        idx = flat.nonzero().squeeze(-1)                       # only real demos are encoded
        e_valid = self.encode_pairs(demo_inputs.reshape(-1, L)[idx], to_tokens(demo_labels).reshape(-1, L)[idx])
        e = torch.zeros(B * K, e_valid.shape[-1], dtype=e_valid.dtype, device=e_valid.device)
        return e.index_copy(0, idx, e_valid).view(B, K, -1), None

    def project(self, e, demo_mask):
        """Set encoder: T queries cross-attend over the demo encodings -> context [B, T, D]."""
        q = self.queries.to(e.dtype).expand(e.shape[0], -1, -1)
        for layer in self.set_layers:
            q = layer(q, e, demo_mask)
        ctx = kernels.rms_norm(q, None, self.config.rms_norm_eps)
        return ctx * demo_mask.any(-1)[:, None, None]          # no demos -> zero context, not the bare queries


class LPNDemoEncoder(nn.Module):
    """LPN-style: CLS-pooled pre-norm grid encoder, mean over demos, linear to T x D; optionally a per-demo
    Gaussian (mu_i, log sigma^2_i) with the reparameterisation trick (LPN §3)."""

    def __init__(self, config, dtype, variational):
        super().__init__()
        c, D = config, config.hidden_size
        self.config, self.variational = c, variational
        self.embed = PairEmbedding(c, dtype)
        self.cls = nn.Parameter(trm.trunc_normal_init_(torch.empty(D), 1.0))
        cos, sin = trm.rope_tables(D // c.num_heads, 2 * c.seq_len, c.rope_theta)
        # RoPE on all tokens but CLS: CLS gets the identity rotation (cos 1, sin 0).
        self.register_buffer("rope_cos", F.pad(cos, (0, 0, 1, 0), value=1.0), persistent=False)
        self.register_buffer("rope_sin", F.pad(sin, (0, 0, 1, 0), value=0.0), persistent=False)
        self.layers = nn.ModuleList(PreNormBlock(c) for _ in range(c.encoder_num_layers))
        d = c.latent_dim or D
        if variational:
            self.mu = trm.CastedLinear(D, d, bias=True)
            self.logvar = trm.CastedLinear(D, d, bias=True)
        self.proj = trm.CastedLinear(d if variational else D, c.puzzle_emb_len * D)

    def latent(self, demo_inputs, demo_labels, demo_mask):
        """-> (z [B, d] mean over valid demos, KL [B] or None)."""
        B, K, L = demo_inputs.shape
        idx = demo_mask.reshape(-1).nonzero().squeeze(-1)
        h = self.embed(demo_inputs.reshape(-1, L)[idx], to_tokens(demo_labels).reshape(-1, L)[idx])
        h = torch.cat((self.cls.to(h.dtype).expand(h.shape[0], 1, -1), h), dim=1)   # (N, 1 + 2L, D)
        for layer in self.layers:
            h = layer(h, self.rope_cos, self.rope_sin)
        e = kernels.rms_norm(h[:, 0], None, self.config.rms_norm_eps)                # (N, D) CLS
        kl = None
        if self.variational:
            mu, logvar = self.mu(e).float(), self.logvar(e).float()
            e = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
            kl_valid = gaussian_kl(mu, logvar)                                       # (N,)
        e_all = torch.zeros(B * K, e.shape[-1], dtype=e.dtype, device=e.device).index_copy(0, idx, e).view(B, K, -1)
        n = demo_mask.sum(-1, keepdim=True).clamp_min(1)
        z = e_all.sum(1) / n.to(e_all.dtype)                                        # (B, d) mean over valid demos
        if self.variational:
            kl = torch.zeros(B * K, device=e.device).index_copy(0, idx, kl_valid).view(B, K).sum(1) / n[:, 0]
        return z, kl

    def project(self, z, demo_mask):
        ctx = self.proj(z).view(z.shape[0], self.config.puzzle_emb_len, self.config.hidden_size)
        return ctx * demo_mask.any(-1)[:, None, None]          # no demos -> zero context, as `standard`


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis (the closed form the encoder uses)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)


def context_variance(context, rows):
    """Cross-sample variance of the context over the batch rows where `rows` [B] is True, averaged over tokens
    and dims (the collapse detector). Weighted, not indexed, so the shape stays static."""
    w = rows.float().view(-1, 1, 1)
    n = w.sum().clamp_min(1)
    x = context.float()
    mean = (w * x).sum(0) / n
    return ((w * (x - mean).square()).sum(0) / n).mean()


def leave_one_out(batch, p):
    """With probability p per sample (>= 2 demos), the query becomes one of its demos, chosen uniformly,
    and that demo leaves the context: a pair never sees itself."""
    mask = batch["demo_mask"].bool()
    B, K = mask.shape
    swap = (torch.rand(B, device=mask.device) < p) & (mask.sum(-1) >= 2)
    j = torch.rand(B, K, device=mask.device).masked_fill(~mask, -1.0).argmax(-1)   # a random valid demo
    rows = torch.arange(B, device=mask.device)
    out = dict(batch)
    out["inputs"] = torch.where(swap[:, None], batch["demo_inputs"][rows, j], batch["inputs"])
    out["labels"] = torch.where(swap[:, None], to_targets(batch["demo_labels"][rows, j]).to(batch["labels"].dtype),
                                batch["labels"])
    out["demo_mask"] = (mask & ~(swap[:, None] & (torch.arange(K, device=mask.device) == j[:, None]))).to(batch["demo_mask"].dtype)
    return out


ENCODERS = {
    "standard": lambda c, dt: StandardDemoEncoder(c, dt),
    "lpn_standard": lambda c, dt: LPNDemoEncoder(c, dt, variational=False),
    "lpn_variational": lambda c, dt: LPNDemoEncoder(c, dt, variational=True),
}


# ----------------------------------------------------------------------------------------------------
# The model

@dataclass
class Carry(trm.Carry):
    context: torch.Tensor = None   # [B, T, D] cached per sample in evaluation only
    tto_loss: torch.Tensor = None  # [B, 2] demo loss before / after test-time optimisation (evaluation)


class Model(trm.Model):
    needs_demos = True  # train.py / evaluate.py build the loader with demo_inputs, demo_labels, demo_mask

    def __init__(self, config: Config):
        c = config
        if c.puzzle_emb_len < 1:
            raise ValueError("etrm needs puzzle_emb_len >= 1 context tokens")
        for key, allowed in (("encoder_type", ENCODERS), ("act_mode", ("dynamic", "fixed")),
                             ("tto_target", ("context", "latent"))):
            if getattr(c, key) not in allowed:
                raise ValueError(f"etrm: {key} must be one of {', '.join(allowed)}, got {getattr(c, key)!r}")
        # The TRM decoder with T prefix slots; its 1x1 puzzle table is built only to be dropped.
        super().__init__(replace(c, puzzle_emb_ndim=1, num_puzzle_identifiers=1))
        del self.puzzle_emb
        self.config = c
        self.encoder = ENCODERS[c.encoder_type](c, self.dtype)
        if c.decoder_init:
            load_trm_decoder(self, c.decoder_init)

    # -- context ----------------------------------------------------------------------------------------
    def encode(self, data):
        """-> (context [B, T, D], KL [B] or None); the full batch, with gradient (no cache in training)."""
        z, kl = self.encoder.latent(data["demo_inputs"], data["demo_labels"], data["demo_mask"].bool())
        return self.encoder.project(z, data["demo_mask"].bool()), kl

    def input_embeddings(self, inputs, context):
        """TRM's embedding with the context [B, T, D] in the puzzle embedding's place."""
        return self.embed(inputs, context)

    # -- ACT wrapper ------------------------------------------------------------------------------------
    def initial_carry(self, batch):
        base = super().initial_carry(batch)
        B, dev = batch["inputs"].shape[0], batch["inputs"].device
        return Carry(**vars(base), context=torch.zeros(B, self.puzzle_emb_len, self.config.hidden_size,
                                                       dtype=self.dtype, device=dev),
                     tto_loss=torch.zeros(B, 2, device=dev))

    def forward(self, carry, batch, loss_scale=1.0):
        c, halted = self.config, carry.halted
        if self.training and c.leave_one_out > 0:  # only halted rows take from `batch`, so new samples only
            batch = leave_one_out(batch, c.leave_one_out)
        z_H, z_L, steps, data = self.reset(carry, batch)

        kl, tto_loss = None, carry.tto_loss
        if self.training:  # re-encode the whole batch at every step: every sample's loss reaches the encoder
            context, kl = self.encode(data)
        else:              # evaluation: encode (and optimise) newly loaded samples once, then reuse
            context = carry.context
            if bool(halted.any()):
                idx = halted.nonzero().squeeze(-1)
                sub = {k: v[idx] for k, v in data.items()}
                if c.tto_steps > 0:
                    new, losses = self.test_time_optimise(sub)
                    tto_loss = tto_loss.index_copy(0, idx, losses)
                else:
                    new, _ = self.encode(sub)
                context = context.index_copy(0, idx, new.to(context.dtype))

        x = self.input_embeddings(data["inputs"], context)
        z_H, z_L, logits, q_halt, q_continue = self.inner_step(z_H, z_L, x)
        steps = steps + 1
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}

        if self.training and c.act_mode == "fixed":  # ETRM-FCT: everyone halts after N steps
            halted = steps >= c.num_act_steps
        else:                                         # TRM's ACT with exploration (trm.py)
            halted = self.halt(steps, q_halt, q_continue, z_H, z_L, x, outputs)

        carry = Carry(z_H, z_L, steps, halted, data, context=context.detach(), tto_loss=tto_loss)
        loss, metrics = self.act_loss(carry, outputs)
        valid = halted & (data["labels"] != -100).any(-1)
        real = (data["labels"] != -100).any(-1)  # not the padding rows of a last test batch
        metrics["context_var"] = context_variance(context.detach(), real) * valid.sum()  # logging divides by count
        if kl is not None:
            kl_loss = kl.sum()
            metrics["kl_loss"] = kl_loss.detach()
            loss = loss + c.kl_weight * kl_loss
        if not self.training and c.tto_steps > 0:
            metrics["tto_demo_loss_init"] = torch.where(valid, tto_loss[:, 0], 0).sum()
            metrics["tto_demo_loss_best"] = torch.where(valid, tto_loss[:, 1], 0).sum()
        outputs["preds"] = logits.argmax(-1)
        outputs["context"] = context
        return carry, loss, metrics, {k: v.detach() for k, v in outputs.items()}

    # -- test-time optimisation (LPN §3, our upgrade 2) -------------------------------------------------
    def demo_loss(self, context, inputs, labels):
        """Per-row mean CE of the decoder predicting `labels` from `inputs` with `context`, after
        tto_act_steps ACT steps from (y0, z0); the gradient flows through the last step's last round."""
        N = inputs.shape[0]
        shape = (N, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        z_H, z_L = self.H_init.expand(shape), self.L_init.expand(shape)
        x = self.input_embeddings(inputs, context)
        with torch.no_grad():
            for _ in range(self.config.tto_act_steps - 1):
                z_H, z_L = self.reason(z_H, z_L, x)
        z_H, _ = self.reason(z_H, z_L, x)
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        ce = kernels.cross_entropy(logits, labels, self.config.loss_type, -100)
        return ce.sum(-1) / (labels != -100).sum(-1).clamp_min(1)

    def test_time_optimise(self, data):
        """Encoder output -> tto_steps Adam steps lowering the demos' loss -> best context per sample.
        Returns (context [B, T, D], losses [B, 2] = (loss at the encoder's output, best loss))."""
        c, mask = self.config, data["demo_mask"].bool()
        B = mask.shape[0]
        owner, slot = mask.nonzero(as_tuple=True)                       # one row per real demo
        x, y = data["demo_inputs"][owner, slot], to_targets(data["demo_labels"][owner, slot])
        n = mask.sum(-1).clamp_min(1).float()
        with torch.no_grad():
            z, _ = self.encoder.latent(data["demo_inputs"], data["demo_labels"], mask)
            if c.tto_target == "context":
                z = self.encoder.project(z, mask)
        param = z.detach().float().clone().requires_grad_(True)
        opt = torch.optim.Adam([param], lr=c.tto_lr)   # Adam is per element, so samples stay independent
        best, best_loss, init_loss = param.detach().clone(), None, None
        with torch.enable_grad():
            for step in range(c.tto_steps + 1):
                ctx = param if c.tto_target == "context" else self.encoder.project(param.to(z.dtype), mask)
                per_demo = self.demo_loss(ctx[owner], x, y)
                loss = torch.zeros(B, device=per_demo.device).index_add(0, owner, per_demo.float()) / n
                if step == 0:
                    init_loss, best_loss = loss.detach(), loss.detach()
                better = loss.detach() < best_loss
                best = torch.where(better.view((-1,) + (1,) * (best.ndim - 1)), param.detach(), best)
                best_loss = torch.minimum(best_loss, loss.detach())
                if step == c.tto_steps or len(owner) == 0:
                    break
                (param.grad,) = torch.autograd.grad(loss.sum(), [param])  # model weights get no .grad
                opt.step()
        with torch.no_grad():
            ctx = best if c.tto_target == "context" else self.encoder.project(best.to(z.dtype), mask)
        return ctx.to(self.dtype), torch.stack((init_loss, best_loss), -1)


# ----------------------------------------------------------------------------------------------------
# Decoder initialisation from a trained TRM (spec §3.4: step 518071, puzzle_emb skipped)

def load_trm_decoder(model, source):
    """Copy a TRM's weights into the decoder of `model`: `source` is a nanoTRM checkpoint path (EMA weights
    when present), the reference's state dict path, or a state dict. The puzzle embedding is skipped and the
    encoder is left as initialised. Raises if a decoder weight is missing or has another shape."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"etrm decoder_init: no checkpoint at {source}")
        sd = torch.load(source, map_location="cpu", weights_only=False)
    else:
        sd = source
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = {**sd["model"], **(sd.get("ema") or {})}  # nanoTRM checkpoint: EMA parameters over raw ones
    sd = {k: v for k, v in trm.convert_reference_state_dict(sd).items() if not k.startswith("puzzle_emb")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    missing = sorted(set(own) - set(sd))
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if missing or bad:
        raise ValueError(f"etrm decoder_init: TRM weights do not fit this decoder; missing {missing}, shapes {bad}")
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k in own:
                v.copy_(sd[k].to(v.dtype))
