"""encoders.py — the demonstration encoders of ETRM (etrm.py): K (input, output) pairs -> a
context [B, P, D] in the P slots of TRM's puzzle embedding. A file of its own because nine encoders
and the model would not fit in one file; only etrm.py imports it, and it imports only trm's building
blocks (deep_recursion included) and kernels.

Every encoder is three stages, chosen by `encoder_type` (Sağlam's ETRM report; LPN = Macfarlane &
Bonnet, "Searching Latent Program Spaces", arXiv 2411.08706, §3):

    pairs --grid--> e_i per valid demo --aggregate (+ Gaussian)--> z --project--> [B, P, D]

| encoder_type       | grid encoder (per pair)            | aggregate over demos     | project    |
| standard           | post-norm, x sqrt(D), RoPE, pooled | -- (z = the e_i)         | set encoder|
| lpn_standard       | CLS, pre-norm RMSNorm, RoPE not on | mean                     | linear to  |
|                    | the CLS                            |                          | P x D      |
| lpn_variational    | as lpn_standard                    | Gaussian per demo, mean  | linear     |
|                    |                                    | of the z_i               |            |
| lpn_variational_v2 | as lpn_standard                    | mean, then one Gaussian  | linear     |
| hybrid_standard    | as lpn_standard                    | -- (z = the e_i)         | set encoder|
| hybrid_variational | as lpn_standard                    | set encoder, mean over P,| linear     |
|                    |                                    | RMSNorm, one Gaussian    |            |
| lpn, lpn_var       | LPN paper: width 128, LayerNorm (no| mean (lpn_var: Gaussian  | linear     |
|                    | affine), SiLU MLP, learned row/    | per demo, latent         |            |
|                    | column/channel embeddings, CLS     | lpn_latent_dim = 32)     |            |
| iterative          | standard's, then a TRM recursion over its P tokens whose state persists |
|                    | across ACT steps                                                        |

The set encoder: P learned queries cross-attend over the e_i (masked demos excluded), SwiGLU,
post-norm, final RMSNorm. The Gaussian: mu and log sigma^2 heads, log sigma^2 clamped to [-10, 10],
z = mu + sigma * eps in training and mu in evaluation; KL(q || N(0, I)) in closed form, averaged
over valid demos when per demo. Choices where the report is silent: masked demos never enter the
grid encoder (the valid pairs are gathered first); a sample with no valid demo gets an all-zero
context; every Gaussian clamps log sigma^2 (the report says so for the hybrid one); the iterative
encoder keeps its context's gradient (the public code detaches it, so its encoder never trains) and
feeds its recursion the set encoder's P tokens, not one mean vector.
"""
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

import kernels
import trm


def to_tokens(demo_labels):
    """Demo outputs as encoder tokens: -100 (ignore) read as PAD 0."""
    return demo_labels.clamp_min(0)


def masked_softmax(scores, mask):
    """softmax over the last axis where mask; rows with no True give all zeros (not NaN)."""
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.where(mask.any(-1, keepdim=True), scores.float().softmax(-1), 0.0).to(scores.dtype)


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)


def has_demos(demo_mask):
    """[B, K] -> [B, 1, 1]: 1 for a sample with at least one valid demo (its context), else 0."""
    return demo_mask.any(-1)[:, None, None]


def masked_mean(e, mask):
    """e [B, K, d], mask [B, K] -> mean over the valid demos [B, d] (zero without any)."""
    m = mask[..., None].to(e.dtype)
    return (e * m).sum(1) / m.sum(1).clamp_min(1)


# -------------------------------------------------------------------------------------------------
# Set encoder (cross-attention over the demos)

class CrossAttention(nn.Module):
    """Queries [N,Q,D] attend over keys/values [N,S,D]; mask [N,S] True = attend. Plain PyTorch: the
    attention kernel has no mask, and S is the number of demos (<= 10)."""

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = trm.CastedLinear(hidden_size, hidden_size)
        self.kv_proj = trm.CastedLinear(hidden_size, 2 * hidden_size)
        self.o_proj = trm.CastedLinear(hidden_size, hidden_size)

    def forward(self, q, kv, mask):
        N, Q, D = q.shape
        H = self.num_heads
        q = self.q_proj(q).view(N, Q, H, D // H).transpose(1, 2)                  # (N, H, Q, d)
        k, v = self.kv_proj(kv).view(N, -1, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (N, H, S, d)
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


class SetEncoder(nn.Module):
    """P learned queries (std 0.02) cross-attend over the demo encodings e [B, K, D] -> [B, P, D],
    RMSNorm'd."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.rms_norm_eps
        queries = torch.empty(config.puzzle_emb_len, config.hidden_size)
        self.queries = nn.Parameter(trm.trunc_normal_init_(queries, 0.02))
        self.layers = nn.ModuleList(SetLayer(config) for _ in range(config.encoder_set_layers))

    def forward(self, e, demo_mask):
        q = self.queries.to(e.dtype).expand(e.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, e, demo_mask)
        return kernels.rms_norm(q, None, self.eps) * has_demos(demo_mask)  # no demos -> zeros


# -------------------------------------------------------------------------------------------------
# Grid encoders: valid pairs x, y [N, L] -> e [N, width]

class PairEmbedding(nn.Module):
    """[input; output] grids -> [N, 2L, D] with separate colour tables, x sqrt(D) (TRM's embedding
    scale)."""

    def __init__(self, config, dtype):
        super().__init__()
        D = config.hidden_size
        self.scale = math.sqrt(D)
        self.embed_in = trm.CastedEmbedding(config.vocab_size, D, 1 / self.scale, dtype)
        self.embed_out = trm.CastedEmbedding(config.vocab_size, D, 1 / self.scale, dtype)

    def forward(self, x, y):
        return self.scale * torch.cat((self.embed_in(x.long()), self.embed_out(y.long())), dim=1)


class PooledGridEncoder(nn.Module):
    """ETRM's `standard` grid encoder: post-norm TRM blocks over 2L tokens with 1-D RoPE, no padding
    mask in attention (only pooling skips PAD), pooled (mean | attention | weighted), then a linear
    map."""

    def __init__(self, config, dtype):
        super().__init__()
        c, D = config, config.hidden_size
        self.pooling = c.encoder_pooling_method
        self.embed = PairEmbedding(c, dtype)
        cos, sin = trm.rope_tables(D // c.num_heads, 2 * c.seq_len, c.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        block_config = replace(c, mlp_t=False)
        self.layers = nn.ModuleList(trm.Block(block_config, 2 * c.seq_len)
                                    for _ in range(c.encoder_num_layers))
        if self.pooling == "attention":
            self.pool_query = nn.Parameter(trm.trunc_normal_init_(torch.empty(1, D), 0.02))
            self.pool_attn = CrossAttention(D, c.num_heads)
        elif self.pooling == "weighted":
            self.pool_score = trm.CastedLinear(D, 1)
        self.proj = trm.CastedLinear(D, D)

    def forward(self, x, y):
        h = self.embed(x, y)                                   # (N, 2L, D)
        for layer in self.layers:
            h = layer(h, self.rope_cos, self.rope_sin)
        keep = torch.cat((x, y), dim=1) != 0                   # (N, 2L) non-PAD tokens
        if self.pooling == "mean":
            pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        elif self.pooling == "attention":
            query = self.pool_query.to(h.dtype).expand(h.shape[0], 1, -1)
            pooled = self.pool_attn(query, h, keep)[:, 0]
        else:
            pooled = (masked_softmax(self.pool_score(h)[..., 0], keep)[..., None] * h).sum(1)
        return self.proj(pooled)


class PreNormBlock(nn.Module):
    """h = h + attn(rms(h)); h = h + mlp(rms(h)) (the LPN-style grid encoder's blocks)."""

    def __init__(self, config):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = trm.Attention(config.hidden_size, config.num_heads)
        self.mlp = trm.SwiGLU(config.hidden_size, config.expansion)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(kernels.rms_norm(h, None, self.eps), cos, sin)
        return h + self.mlp(kernels.rms_norm(h, None, self.eps))


class CLSGridEncoder(nn.Module):
    """ETRM's LPN-style grid encoder: a CLS token before the 2L pair tokens, pre-norm blocks, RoPE
    on every token but CLS (which gets the identity rotation), output the normalised CLS [N, D]."""

    def __init__(self, config, dtype):
        super().__init__()
        c, D = config, config.hidden_size
        self.eps = c.rms_norm_eps
        self.embed = PairEmbedding(c, dtype)
        self.cls = nn.Parameter(trm.trunc_normal_init_(torch.empty(D), 1.0))
        cos, sin = trm.rope_tables(D // c.num_heads, 2 * c.seq_len, c.rope_theta)
        self.register_buffer("rope_cos", F.pad(cos, (0, 0, 1, 0), value=1.0), persistent=False)
        self.register_buffer("rope_sin", F.pad(sin, (0, 0, 1, 0), value=0.0), persistent=False)
        self.layers = nn.ModuleList(PreNormBlock(c) for _ in range(c.encoder_num_layers))

    def forward(self, x, y):
        h = self.embed(x, y)
        h = torch.cat((self.cls.to(h.dtype).expand(h.shape[0], 1, -1), h), dim=1)   # (N, 1 + 2L, D)
        for layer in self.layers:
            h = layer(h, self.rope_cos, self.rope_sin)
        return kernels.rms_norm(h[:, 0], None, self.eps)


def layer_norm(h):
    """LayerNorm without scale or bias (LPN's use_scale=False, use_bias=False), float32 stats."""
    return F.layer_norm(h.float(), h.shape[-1:]).to(h.dtype)


class PaperBlock(nn.Module):
    """LPN paper block: h = h + attn(LN(h)); h = h + W2 silu(W1 LN(h)); no RoPE (learned
    positions)."""

    def __init__(self, width, num_heads):
        super().__init__()
        self.self_attn = trm.Attention(width, num_heads)
        self.fc1, self.fc2 = trm.CastedLinear(width, 4 * width), trm.CastedLinear(4 * width, width)

    def forward(self, h):
        h = h + self.self_attn(layer_norm(h))
        return h + self.fc2(F.silu(self.fc1(layer_norm(h))))


class PaperGridEncoder(nn.Module):
    """The LPN paper's small encoder: one colour table, learned row, column and channel
    (input/output) embeddings added, a CLS token, `encoder_num_layers` PaperBlocks of width
    `lpn_width`, LayerNorm'd CLS out. The grid is read as square when seq_len is a square (30 x 30
    for ARC), else as one row."""

    def __init__(self, config, dtype):
        super().__init__()
        c, w, L = config, config.lpn_width, config.seq_len
        cols = math.isqrt(L) if math.isqrt(L) ** 2 == L else L
        self.register_buffer("row", torch.arange(L) // cols, persistent=False)
        self.register_buffer("col", torch.arange(L) % cols, persistent=False)
        self.colour = trm.CastedEmbedding(c.vocab_size, w, 0.02, dtype)
        self.rows = trm.CastedEmbedding(-(-L // cols), w, 0.02, dtype)
        self.cols = trm.CastedEmbedding(cols, w, 0.02, dtype)
        self.channel = trm.CastedEmbedding(2, w, 0.02, dtype)
        self.cls = nn.Parameter(trm.trunc_normal_init_(torch.empty(w), 0.02))
        self.layers = nn.ModuleList(PaperBlock(w, c.num_heads) for _ in range(c.encoder_num_layers))

    def forward(self, x, y):
        pos = self.rows(self.row) + self.cols(self.col)                                   # (L, w)
        ch = self.channel(torch.arange(2, device=x.device))
        x, y = self.colour(x.long()) + pos + ch[0], self.colour(y.long()) + pos + ch[1]
        h = torch.cat((self.cls.to(x.dtype).expand(x.shape[0], 1, -1), x, y), dim=1)  # (N, 1+2L, w)
        for layer in self.layers:
            h = layer(h)
        return layer_norm(h[:, 0])


# -------------------------------------------------------------------------------------------------
# The encoders

class Gaussian(nn.Module):
    """q(z | h) = N(mu, exp(logvar)), logvar clamped to [-10, 10]; z reparameterised in training, mu
    in eval (LPN §3). Returns (z, KL per row, mu). The log-variance head starts constant, at
    `init_logvar` (the public code: 0, so sigma = 1 everywhere; at small sizes that noise slows
    learning a lot, experiments/RESULTS.md)."""

    def __init__(self, width, latent, init_logvar):
        super().__init__()
        self.mu = trm.CastedLinear(width, latent, bias=True)
        self.logvar = trm.CastedLinear(width, latent, bias=True)
        with torch.no_grad():
            self.logvar.weight.zero_()
            self.logvar.bias.fill_(init_logvar)

    def forward(self, h):
        mu, logvar = self.mu(h).float(), self.logvar(h).float().clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return z, gaussian_kl(mu, logvar), mu


# encoder_type -> (grid encoder, Gaussian: None | "demo" (per demo) | "pooled" (one),
#                  aggregate: "set" | "mean")
KINDS = {
    "standard": ("pooled", None, "set"),
    "lpn_standard": ("cls", None, "mean"),
    "lpn_variational": ("cls", "demo", "mean"),
    "lpn_variational_v2": ("cls", "pooled", "mean"),
    "hybrid_standard": ("cls", None, "set"),
    "hybrid_variational": ("cls", "pooled", "set"),
    "lpn": ("paper", None, "mean"),
    "lpn_var": ("paper", "demo", "mean"),
    "iterative": ("pooled", None, "set"),
}
GRIDS = {"pooled": PooledGridEncoder, "cls": CLSGridEncoder, "paper": PaperGridEncoder}


class DemoEncoder(nn.Module):
    """latent(demos) -> (z, KL [B] or None, mu or None); project(z, mask) -> context [B, P, D].
    Test-time optimisation moves z between the two (for a set-encoder type, z is the per-demo
    encodings [B, K, D])."""

    def __init__(self, config, dtype):
        super().__init__()
        c, D = config, config.hidden_size
        self.P, self.D, self.eps = c.puzzle_emb_len, D, c.rms_norm_eps
        grid, self.vae, self.aggregate = KINDS[c.encoder_type]
        self.grid = GRIDS[grid](c, dtype)
        width = c.lpn_width if grid == "paper" else D
        latent = (c.lpn_latent_dim if grid == "paper" else c.latent_dim or D) if self.vae else width
        if self.aggregate == "set":
            self.set = SetEncoder(c)
        if self.vae:
            self.gaussian = Gaussian(width, latent, c.encoder_init_logvar)
        if self.aggregate == "mean" or self.vae == "pooled":
            self.head = trm.CastedLinear(latent, self.P * D)

    def latent(self, demo_inputs, demo_labels, demo_mask):
        B, K, L = demo_inputs.shape
        idx = demo_mask.reshape(-1).nonzero().squeeze(-1)      # only real demos are encoded
        e = self.grid(demo_inputs.reshape(-1, L)[idx], to_tokens(demo_labels).reshape(-1, L)[idx])
        e = e.new_zeros(B * K, e.shape[-1]).index_copy(0, idx, e).view(B, K, -1)  # 0 if masked
        if self.vae == "demo":  # LPN: a Gaussian per pair, then the mean of the z_i
            z, kl, mu = self.gaussian(e)
            kl = masked_mean(kl[..., None], demo_mask)[:, 0]
            return masked_mean(z, demo_mask), kl, masked_mean(mu, demo_mask)
        if self.aggregate == "set" and self.vae is None:
            return e, None, None
        if self.aggregate == "mean":
            h = masked_mean(e, demo_mask)
        else:  # hybrid: the set encoder's P tokens averaged, RMSNorm'd
            h = kernels.rms_norm(self.set(e, demo_mask).mean(1), None, self.eps)
        return self.gaussian(h) if self.vae else (h, None, None)

    def project(self, z, demo_mask):
        if not hasattr(self, "head"):
            return self.set(z, demo_mask)
        return self.head(z).view(z.shape[0], self.P, self.D) * has_demos(demo_mask)


class IterativeEncoder(DemoEncoder):
    """ETRM-Iterative: the `standard` encoder's P tokens are the input x_e of a TRM recursion
    (trm.deep_recursion: encoder_H_cycles rounds of encoder_L_cycles latent updates, the last with
    gradient) over the encoder's own state (z_e_H, z_e_L) [B, P, D], which persists across ACT steps
    as the decoder's does; the context is z_e_H."""

    def __init__(self, config, dtype):
        super().__init__(config, dtype)
        c, D = config, config.hidden_size
        self.cycles = c.encoder_H_cycles, c.encoder_L_cycles
        self.L_level = trm.ReasoningModule(replace(c, mlp_t=False), c.encoder_L_layers,
                                           c.puzzle_emb_len)
        self.register_buffer("H_init", trm.trunc_normal_init_(torch.empty(D), 1.0).to(dtype))
        self.register_buffer("L_init", trm.trunc_normal_init_(torch.empty(D), 1.0).to(dtype))

    def step(self, z_H, z_L, demo_inputs, demo_labels, demo_mask):
        """One ACT step: (state, demos) -> (context [B, P, D], new state, detached)."""
        e, _, _ = self.latent(demo_inputs, demo_labels, demo_mask)
        x = self.project(e, demo_mask)
        # no RoPE: the P tokens are told apart by their set-encoder queries
        z_H, z_L = trm.deep_recursion(self.L_level, z_H, z_L, x, *self.cycles)
        return z_H * has_demos(demo_mask), z_H.detach(), z_L.detach()
