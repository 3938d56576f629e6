"""trm.py — the Tiny Recursive Model (Jolicoeur-Martineau, "Less is More: Recursive Reasoning with
Tiny Networks", arXiv 2510.04871), read top to bottom as the whole model.

One small network (`L_level`, L_layers post-norm blocks) is applied recursively: the latent z
(`z_L`) is refined L_cycles times from (z, y, x), then the answer y (`z_H`) once from (y, z);
H_cycles such rounds make one ACT step, all but the last under no_grad (paper §4, "deep recursion").
Up to halt_max_steps ACT steps ("deep supervision") run per sample, the carry (z_H, z_L) detached
between them; a Q head decides when to halt (paper §4.6: TRM's ACT needs no second forward pass). A
learned vector per puzzle id (a sparse embedding, sign-SGD in train.py) is prepended.

This file computes the same function as the reference implementation (SamsungSAILMontreal/
TinyRecursiveModels) and loads its checkpoints: the state-dict keys are the reference's with the
prefixes `_orig_mod.` and `model.inner.` removed (`convert_reference_state_dict`). Where the
reference is broken: with `no_ACT_continue=False` it crashes in training; here the bootstrapped
Q-continue target is computed as HRM does. The stablemax CE is written branch-safe in float32
(kernels/cross_entropy.py) instead of float64. One option of our own, off by default: `conv_kernel`,
a 2-D mixer over the canvas inside each SwiGLU (`GridConv`), for grid tasks such as mazes.

The model protocol (all five models follow it; train.py and evaluate.py rely on nothing else):
    Config                      dataclass, paper defaults; `vocab_size`, `seq_len`,
                                `num_puzzle_identifiers` are filled from the dataset by train.py
    Model(config)               nn.Module
    model.initial_carry(batch)  -> carry (every sample halted, so the first call loads the batch)
    model(carry, batch)         -> (carry, loss, metrics, outputs); no model calls backward()
        loss     scalar: the whole objective, summed over the local batch
        metrics  dict of summed tensors: `count` (samples that halted this call), per-sample metrics
                 summed over them, and `*_loss` sums
        outputs  `logits` [B,L,V], `preds` [B,L], `q_halt_logits` [B] (optional), ...
    carry.halted                [B] bool
    Model.needs_demos           bool: batches carry the task's demonstrations (etrm)
    model.any_canvas (optional) True when weights and function do not depend on the canvas size
    TRAIN_DEFAULTS (optional)   train.TrainConfig keys the model's recipe sets; --config wins

Run:  python train.py --model trm --config data=toy          (CPU, minutes)
      torchrun --standalone --nproc_per_node=8 train.py --model trm --config data=arc1
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

import kernels


def heads_divide_width(c):
    """Attention splits D into num_heads equal heads."""
    if c.hidden_size % c.num_heads:
        return "num_heads", f"a divisor of hidden_size={c.hidden_size}"


def rope_head_size_even(c):
    """RoPE rotates pairs of dimensions of each head."""
    if c.pos_encodings == "rope" and c.hidden_size // c.num_heads % 2:
        return "num_heads", ("a head size hidden_size/num_heads that is even for RoPE "
                             f"(hidden_size={c.hidden_size})")


@dataclass
class Config:
    hidden_size: "int >= 1" = 512                   # D
    num_heads: "int >= 1" = 8                       # attention heads (head_dim = D / num_heads)
    expansion: "float > 0" = 4.0                    # SwiGLU width factor
    H_cycles: "int >= 1" = 3                        # T: answer updates per ACT step (T-1 no grad)
    L_cycles: "int >= 1" = 4                        # n: latent updates per answer update
    L_layers: "int >= 1" = 2                        # blocks in the one network
    pos_encodings: "str in rope|learned|none" = "rope"
    rope_theta: "float > 0" = 10000.0               # θ of RoPE
    rms_norm_eps: "float >= 0" = 1e-5
    mlp_t: "bool" = False                           # TRM-MLP: attention -> an MLP over the sequence
    # the 2-D mixer for grid tasks such as mazes (k odd; 3 gives each cell its 4 neighbours)
    conv_kernel: "int >= 0" = 0                     # k: zero-init depthwise k x k conv over the
                                                    # grid inside each SwiGLU (0 = off: the paper's)
    puzzle_emb_ndim: "int >= 0" = 512               # width of the per-puzzle embedding (0 = none)
    puzzle_emb_len: "int >= 0" = 16                 # P: prefix slots it takes (0 = ceil(ndim / D))
    halt_max_steps: "int >= 1" = 16                 # N_sup: deep-supervision steps
    halt_exploration_prob: "float in [0, 1]" = 0.1  # ε: chance of a random minimum number of steps
    no_ACT_continue: "bool" = True                  # TRM: halt on q_halt > 0; False: HRM's Q target
    loss_type: "str in stablemax|softmax" = "stablemax"  # cross-entropy
    vocab_size: "int >= 1" = 12                     # V (from the dataset)
    seq_len: "int >= 1" = 900                       # L (from the dataset)
    num_puzzle_identifiers: "int >= 1" = 1          # puzzle-embedding rows (from the dataset)
    forward_dtype: "str in auto|bfloat16|float32" = "auto"  # auto: bfloat16 on CUDA, float32 on CPU

    cross_rules = (heads_divide_width, rope_head_size_even)


# --------------------------------------------------------------------------------------------------
# Layers

def trunc_normal_init_(t, std=1.0, lower=-2.0, upper=2.0):
    """Truncated normal whose *truncated* std is `std` (JAX; torch's trunc_normal_ is off)."""
    if std == 0:
        return t.zero_()
    sqrt2 = math.sqrt(2)
    a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
    z = (b - a) / 2
    pdf_u, pdf_l = (math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi) for v in (upper, lower))
    comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
    with torch.no_grad():
        t.uniform_(a, b).erfinv_().mul_(sqrt2 * comp_std).clip_(lower * comp_std, upper * comp_std)
    return t


class CastedLinear(nn.Module):
    """Linear, float32 weights cast to the input dtype at use; LeCun truncated-normal init."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__()
        w = torch.empty(out_features, in_features)
        self.weight = nn.Parameter(trunc_normal_init_(w, 1 / math.sqrt(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num, dim, init_std, dtype):
        super().__init__()
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num, dim), init_std))
        self.dtype = dtype

    def forward(self, idx):
        return F.embedding(idx, self.embedding_weight.to(self.dtype))


class SparseEmbedding(nn.Module):
    """Per-puzzle vectors kept in a buffer, not a parameter: only the batch's rows get gradients.

    In training the rows of the batch are copied into `local_weights` (a leaf that requires grad);
    train.py's sign-SGD reads its grad and `local_ids`, all-gathers them across ranks, updates
    those rows of `weights` (the reference's sparse embedding optimiser) and clears the grad. The
    leaf is allocated once per batch size and refilled in place, as the reference does, so a
    compiled training step stays one graph. In eval the table is read directly."""

    def __init__(self, num, dim, dtype):
        super().__init__()
        self.register_buffer("weights", torch.zeros(num, dim))  # zero-initialised, as the reference
        self.dtype = dtype
        self.local_weights, self.local_ids = None, None

    def forward(self, ids):
        if not (self.training and torch.is_grad_enabled()):
            return self.weights[ids].to(self.dtype)
        leaf = self.local_weights
        if leaf is None or leaf.shape[0] != ids.shape[0] or leaf.device != ids.device:
            self.local_weights = torch.zeros(len(ids), self.weights.shape[1], device=ids.device,
                                             requires_grad=True)
            self.local_ids = torch.zeros_like(ids)
        self.local_weights.grad = None  # the grad belongs to this call's rows only
        with torch.no_grad():
            self.local_weights.copy_(self.weights[ids])
            self.local_ids.copy_(ids)
        return self.local_weights.to(self.dtype)


def rope_tables(head_dim, length, theta):
    """cos, sin [length, head_dim], float32, concat(freqs, freqs) (the reference's rotate_half)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class InputEmbedding(nn.Module):
    """Token ids -> x [B, P+L, D]: P prefix vectors (TRM's puzzle embedding, ETRM's context), then
    the token embeddings, plus learned positions if asked, all times sqrt(D) (std 1/sqrt(D) at init:
    x starts at unit scale). Holds the RoPE tables. TRM, HRM, PRR and ETRM share it."""

    def __init__(self, config, prefix_len, dtype):
        super().__init__()
        c, D = config, config.hidden_size
        self.prefix_len, self.pos_encodings, self.scale = prefix_len, c.pos_encodings, math.sqrt(D)
        total_len = c.seq_len + prefix_len
        self.embed_tokens = CastedEmbedding(c.vocab_size, D, 1 / self.scale, dtype)
        if c.pos_encodings == "rope":
            cos, sin = rope_tables(D // c.num_heads, total_len, c.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        elif c.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(total_len, D, 1 / self.scale, dtype)

    def forward(self, inputs, prefix=None):
        """inputs [B, L] ids; prefix None, [B, n] or [B, P, D], n <= P*D (zero-padded to P)."""
        e = self.embed_tokens(inputs.long())                              # [B, L, D]
        if self.prefix_len:
            B, D = e.shape[0], e.shape[-1]
            p = F.pad(prefix.reshape(B, -1), (0, self.prefix_len * D - prefix[0].numel()))
            e = torch.cat((p.view(B, self.prefix_len, D).to(e.dtype), e), dim=1)
        if self.pos_encodings == "learned":  # (e + pos) / sqrt(2): unit variance (the reference's)
            e = 0.707106781 * (e + self.embed_pos.embedding_weight.to(e.dtype))
        return self.scale * e

    def rope(self):
        return (self.rope_cos, self.rope_sin) if self.pos_encodings == "rope" else (None, None)


def puzzle_prefix_len(config):
    """P: slots the puzzle embedding takes: puzzle_emb_len or, if 0, ceil(ndim / D); 0 if none."""
    if config.puzzle_emb_ndim <= 0:
        return 0
    return config.puzzle_emb_len or -(-config.puzzle_emb_ndim // config.hidden_size)


def swiglu_width(expansion, width):
    """inter = round(expansion * width * 2/3) rounded up to a multiple of 256 (512, 4 -> 1536)."""
    return -(-round(expansion * width * 2 / 3) // 256) * 256


class Attention(nn.Module):
    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size)  # [q heads | k heads | v heads]
        self.o_proj = CastedLinear(hidden_size, hidden_size)

    def forward(self, h, cos=None, sin=None):
        return self.o_proj(kernels.attention(self.qkv_proj(h), self.num_heads, cos, sin))


def grid_side(config):
    """Side of the square canvas (seq_len = side^2) that conv_kernel k > 0 convolves over."""
    k, L = config.conv_kernel, config.seq_len
    if k % 2 == 0:
        raise ValueError(f"conv_kernel must be odd (a window centred on each cell), got {k}")
    side = math.isqrt(L)
    if side * side != L:
        raise ValueError(f"conv_kernel={k} needs a square canvas, but seq_len={L} is not a square")
    return side


class GridConv(nn.Module):
    """h + conv(h): a depthwise k x k convolution over the canvas cells (the last side^2 positions),
    prefix slots unchanged; zero-initialised, so the block starts as the paper's. The "board-aware"
    MLP of public TRM reimplementations: where 1-D attention must learn that a cell's neighbours sit
    at offsets +-1 and +-side, a 3 x 3 convolution hands each cell its 4 neighbours in one layer."""

    def __init__(self, channels, kernel, side):
        super().__init__()
        self.side, self.pad = side, kernel // 2
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel, kernel))

    def forward(self, h):
        B, n, C = h.shape
        s, P = self.side, n - self.side ** 2
        grid = h[:, P:].transpose(1, 2).reshape(B, C, s, s)
        mixed = F.conv2d(grid, self.weight.to(h.dtype), padding=self.pad, groups=C)
        return h + F.pad(mixed.flatten(2).transpose(1, 2), (0, 0, P, 0))


class SwiGLU(nn.Module):
    """down(swiglu(gate_up(x))); with conv_kernel > 0 the inner activations pass a GridConv too."""

    def __init__(self, hidden_size, expansion, conv_kernel=0, side=0):
        super().__init__()
        inter = swiglu_width(expansion, hidden_size)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter)  # gate first, then up
        self.down_proj = CastedLinear(inter, hidden_size)
        if conv_kernel:
            self.conv = GridConv(inter, conv_kernel, side)

    def forward(self, x):
        h = kernels.swiglu(self.gate_up_proj(x))
        return self.down_proj(self.conv(h) if hasattr(self, "conv") else h)


class Block(nn.Module):
    """Post-norm block: h = rms(h + attn(h)); h = rms(h + mlp(h)). With mlp_t the attention is a
    SwiGLU over the sequence axis (TRM paper §4.5, "less is more" for small fixed contexts such as
    Sudoku). `grid`: h is prefix + canvas, so conv_kernel applies (the demo encoders pass False)."""

    def __init__(self, config, total_len, grid=False):
        super().__init__()
        self.eps = config.rms_norm_eps
        if config.mlp_t:
            self.mlp_t = SwiGLU(total_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        k = config.conv_kernel if grid else 0
        self.mlp = SwiGLU(config.hidden_size, config.expansion, k, grid_side(config) if k else 0)

    def forward(self, h, cos=None, sin=None):
        if hasattr(self, "mlp_t"):
            ht = h.transpose(1, 2)  # [B, D, L+P]: mixes tokens, and the reference norms over them
            h = kernels.rms_norm(ht, self.mlp_t(ht), self.eps).transpose(1, 2)
        else:
            h = kernels.rms_norm(h, self.self_attn(h, cos, sin), self.eps)
        return kernels.rms_norm(h, self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """net(h, injection): h + injection, then the blocks (TRM's and HRM's input injection)."""

    def __init__(self, config, num_layers, total_len, grid=False):
        super().__init__()
        self.layers = nn.ModuleList(Block(config, total_len, grid) for _ in range(num_layers))

    def forward(self, h, injection, cos=None, sin=None):
        h = h + injection
        for layer in self.layers:
            h = layer(h, cos, sin)
        return h


# --------------------------------------------------------------------------------------------------
# Loss head, shared by every model that predicts tokens

def token_loss_and_metrics(logits, labels, halted, loss_type):
    """Per-sample mean CE summed over the batch, and per-sample metrics summed over halted samples:
    (lm_loss, seq_correct [B] bool, metrics dict). Metrics count only samples that halted
    this call and have at least one label (the reference's `valid_metrics`)."""
    mask = labels != -100
    count = mask.sum(-1)
    divisor = count.clamp_min(1).unsqueeze(-1)
    preds = logits.argmax(-1)
    is_correct = mask & (preds == labels)
    seq_correct = is_correct.sum(-1) == count
    ce = kernels.cross_entropy(logits, labels, loss_type, -100)  # [B, L] float32, 0 where ignored
    lm_loss = (ce / divisor).sum()
    valid = halted & (count > 0)
    metrics = {"count": valid.sum(),
               "accuracy": torch.where(valid, (is_correct.float() / divisor).sum(-1), 0).sum(),
               "exact_accuracy": (valid & seq_correct).sum(), "lm_loss": lm_loss.detach()}
    return lm_loss, seq_correct, metrics


# ----------------------------------------------------------------------------------------------------
# The model

@dataclass
class Carry:
    z_H: torch.Tensor          # y, the answer state [B, P+L, D]
    z_L: torch.Tensor          # z, the latent state [B, P+L, D]
    steps: torch.Tensor        # [B] int32 ACT steps taken
    halted: torch.Tensor       # [B] bool
    current_data: dict         # the batch rows each sample is working on


def resolve_dtype(name):
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[name]


def deep_recursion(net, z_H, z_L, x, H_cycles, L_cycles, cos=None, sin=None):
    """One ACT step of recursion (paper Fig. 3, deep_recursion): H_cycles rounds of L_cycles latent updates
    z <- net(z, y + x) and one answer update y <- net(y, z); all rounds but the last run without gradient
    (they only move the state). TRM's network, ETRM's decoder and its iterative encoder all run this."""
    with torch.no_grad():
        for _ in range(H_cycles - 1):
            for _ in range(L_cycles):
                z_L = net(z_L, z_H + x, cos, sin)
            z_H = net(z_H, z_L, cos, sin)
    for _ in range(L_cycles):
        z_L = net(z_L, z_H + x, cos, sin)
    return net(z_H, z_L, cos, sin), z_L


class Model(nn.Module):
    """Subclasses change what they need through hooks: prefix_len and build_prefix (how many prefix slots
    and what fills them), build_reasoning (the networks) and reason (one ACT step of recursion)."""
    needs_demos = False  # True: the loader adds demo_inputs, demo_labels, demo_mask to every batch

    def __init__(self, config: Config):
        super().__init__()
        self.config = c = config
        self.dtype = resolve_dtype(c.forward_dtype)
        D = c.hidden_size
        self.puzzle_emb_len = self.prefix_len()
        self.embed = InputEmbedding(c, self.puzzle_emb_len, self.dtype)
        self.lm_head = CastedLinear(D, c.vocab_size)
        self.q_head = CastedLinear(D, 2, bias=True)
        self.build_prefix()
        self.build_reasoning(c.seq_len + self.puzzle_emb_len)
        # Initial states y0, z0: fixed random vectors (persistent buffers, truncated normal std 1).
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(D), 1.0).to(self.dtype))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(D), 1.0).to(self.dtype))
        # Q head starts silent: zero weights, bias -5, so early training almost never halts (as the reference).
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def prefix_len(self):
        """P, the sequence slots before the tokens: the puzzle embedding's (puzzle_prefix_len)."""
        return puzzle_prefix_len(self.config)

    def build_prefix(self):
        """What fills the P prefix slots: one learned vector per puzzle id (none when P is 0)."""
        c = self.config
        if c.puzzle_emb_ndim > 0:
            self.puzzle_emb = SparseEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim, self.dtype)

    def build_reasoning(self, total_len):
        self.L_level = ReasoningModule(self.config, self.config.L_layers, total_len, grid=True)

    # -- input embedding ----------------------------------------------------------------------------
    def input_embeddings(self, inputs, puzzle_identifiers):
        prefix = self.puzzle_emb(puzzle_identifiers.long()) if self.puzzle_emb_len else None  # [B, ndim]
        return self.embed(inputs, prefix)

    def rope(self):
        return self.embed.rope()

    # -- one ACT step of recursion (paper Fig. 3) ----------------------------------------------------
    def reason(self, z_H, z_L, x):
        c = self.config
        return deep_recursion(self.L_level, z_H, z_L, x, c.H_cycles, c.L_cycles, *self.rope())

    def inner_step(self, z_H, z_L, x):
        z_H, z_L = self.reason(z_H, z_L, x)
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]  # [B, L, V]
        q = self.q_head(z_H[:, 0]).float()                   # [B, 2]: halt, continue
        return z_H.detach(), z_L.detach(), logits, q[:, 0], q[:, 1]

    # -- ACT wrapper -------------------------------------------------------------------------------
    def initial_carry(self, batch):
        B = batch["inputs"].shape[0]
        shape = (B, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        dev = batch["inputs"].device
        return Carry(
            z_H=torch.zeros(shape, dtype=self.dtype, device=dev), z_L=torch.zeros(shape, dtype=self.dtype, device=dev),
            steps=torch.zeros(B, dtype=torch.int32, device=dev), halted=torch.ones(B, dtype=torch.bool, device=dev),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()})

    def reset(self, carry, batch):
        """Halted samples restart from (y0, z0) on the new batch's rows; running samples keep theirs."""
        h = carry.halted
        z_H = torch.where(h.view(-1, 1, 1), self.H_init, carry.z_H)
        z_L = torch.where(h.view(-1, 1, 1), self.L_init, carry.z_L)
        steps = torch.where(h, 0, carry.steps)
        data = {k: torch.where(h.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v) for k, v in carry.current_data.items()}
        return z_H, z_L, steps, data

    @torch.no_grad()
    def halt(self, steps, q_halt, q_continue, z_H, z_L, x, outputs):
        """Which samples stop after this step; adds HRM's Q-learning target to `outputs` when no_ACT_continue is off."""
        c = self.config
        is_last = steps >= c.halt_max_steps
        halted = is_last
        if self.training and c.halt_max_steps > 1:  # in evaluation every sample runs halt_max_steps
            halted = halted | ((q_halt > 0) if c.no_ACT_continue else (q_halt > q_continue))
            # Exploration (HRM's ACT, kept by TRM): sometimes force a random minimum of 2..N_sup steps.
            explore = torch.rand_like(q_halt) < c.halt_exploration_prob
            min_halt = explore * torch.randint_like(steps, 2, c.halt_max_steps + 1)
            halted = halted & (steps >= min_halt)
            if not c.no_ACT_continue:  # bootstrapped target from one more step (HRM; the TRM reference crashes here)
                _, _, _, next_halt, next_cont = self.inner_step(z_H, z_L, x)
                outputs["target_q_continue"] = torch.sigmoid(
                    torch.where(is_last, next_halt, torch.maximum(next_halt, next_cont)))
        return halted

    def forward(self, carry, batch):
        z_H, z_L, steps, data = self.reset(carry, batch)
        x = self.input_embeddings(data["inputs"], data["puzzle_identifiers"])
        z_H, z_L, logits, q_halt, q_continue = self.inner_step(z_H, z_L, x)
        steps = steps + 1
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        halted = self.halt(steps, q_halt, q_continue, z_H, z_L, x, outputs)
        carry = Carry(z_H, z_L, steps, halted, data)
        loss, metrics = self.act_loss(carry, outputs)
        outputs["preds"] = logits.argmax(-1)
        return carry, loss, metrics, {k: v.detach() for k, v in outputs.items()}

    def act_loss(self, carry, outputs):
        """loss = lm_loss + 0.5 (q_halt_loss + q_continue_loss), each summed over the batch (the reference's)."""
        q_halt = outputs["q_halt_logits"]
        lm_loss, seq_correct, metrics = token_loss_and_metrics(
            outputs["logits"], carry.current_data["labels"], carry.halted, self.config.loss_type)
        valid = carry.halted & (carry.current_data["labels"] != -100).any(-1)
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_correct.to(q_halt.dtype), reduction="sum")
        metrics["q_halt_accuracy"] = (valid & ((q_halt >= 0) == seq_correct)).sum()
        metrics["steps"] = torch.where(valid, carry.steps, 0).sum()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        loss = lm_loss + 0.5 * q_halt_loss
        if "target_q_continue" in outputs:
            q_cont_loss = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_cont_loss.detach()
            loss = loss + 0.5 * q_cont_loss
        return loss, metrics


# ----------------------------------------------------------------------------------------------------
# Reference checkpoints

def convert_reference_state_dict(sd):
    """A reference state dict (model wrapped in the loss head, maybe compiled) -> keys of this Model."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("_orig_mod.").removeprefix("model.").removeprefix("inner.")
        if "rotary_emb" in k:  # RoPE tables are rebuilt, never loaded
            continue
        if k.startswith(("embed_tokens.", "embed_pos.")):  # ours live in the InputEmbedding module
            k = "embed." + k
        out[k] = v
    return out

