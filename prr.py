"""prr.py — the Parallel Recursive Reasoner: K latent hypotheses refined at once by one shared tiny
core, judged by a learned scorer, mixed by score-weighted soft communication, trained with a
Best-of-K loss.

Source: T. Reddi, PRR (github REDDITARUN/PRR, February 2026): code only, no paper, no published
numbers. Built from trm.py's blocks (input embedding, post-norm core, LM head, sparse puzzle
embedding, loss kernels).

    x [B,L] --trm.InputEmbedding--> e [B,P+L,D]  tokens + puzzle embedding in P slots, x sqrt(D)
    z_k(0) = b_k (+ N(0, σ²) in training)        K learned vectors over positions, [B,K,P+L,D]
    for t in 0..S-1 (the first S - grad_steps under no_grad):
        z_k <- core(z_k, e + b_k)                B*K sequences through the shared blocks at once
        s_k = scorer(z_k[:, 0])                  MLP D -> D/2 -> 1 on the first (puzzle) slot
        if exchange after t:  w = softmax(s / temp);  z_k <- z_k + α (Σ_j w_j z_j - z_k)
    logits_k = lm_head(z_k)[P:]                  [B,K,L,V]; the prediction is branch argmax_k s_k
    l_k = mean stablemax CE of branch k;  loss = -τ log Σ_k exp(-l_k / τ)
          + λ_s CE(s, argmin_k l_k) + λ_div mean_{j≠k} cos(mean_pos z_j, mean_pos z_k)
No ACT: one forward runs the whole rollout and halts every sample (the carry holds only `halted`).

Choices. The public code has two defects, fixed here by default (`public_schedule=True` restores
them):
- b_k joins the injection at every step, not only z(0): used only in the no-grad phase, the public
  inits never learn; here they reach the gradient window and keep each branch distinct (at eval,
  without noise, b_k is the only source of diversity, and every exchange pulls the branches
  together).
- Exchanges are counted from the end, after t = S-2, S-2-c, ... >= 0 (S=8, c=2: after 0, 2, 4, 6).
  The public schedule ((t+1) % c == 0 and t < S-1) exchanges only under no_grad, so its
  "differentiable" communication gets no gradient; here the last exchange lies inside the gradient
  window whenever grad_steps >= 2.
- Outputs: `preds`/`logits` of the scorer's top branch and its score as `q_halt_logits` (ARC voting
  uses it unchanged), `scores` [B,K], `branch_preds` [B,K,L], `oracle_preds` (the branch most
  accurate against the labels). Metrics add the oracle's (pass@K over branches), scorer_picks_best
  (pick == argmin_k l_k, the scorer's target), the spread of branch accuracies and 1 - the mean
  branch cosine.
- Rows without labels get no loss; scores, weights and losses in float32, the state in
  forward_dtype. The auxiliary loss at intermediate steps that the public README advertises is not
  in its code, nor here.
- `conv_kernel`: trm.py's 2-D grid mixer in the core's blocks (off by default).
TRAIN_DEFAULTS: the public config's global batch of 256 (activations grow as B*K*L*D); its other
training values are train.py's defaults. Measured runs: experiments/RESULTS.md.

Run:  python train.py --model prr --config data=toy hidden_size=64 num_heads=4 num_branches=4 \
          num_steps=4 puzzle_emb_ndim=64 puzzle_emb_len=1 global_batch_size=32 lr=1e-3 ema=False
      torchrun --standalone --nproc_per_node=4 train.py --model prr --config data=arc1
      python train.py --model prr --config data=arc1 public_schedule=True      (the public code)
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
import trm

TRAIN_DEFAULTS = {"global_batch_size": 256}  # the public config's (train.py's, TRM's, is 768)


def grad_steps_within_steps(c):
    """Only the last grad_steps of the num_steps recursion steps run with gradient."""
    if c.grad_steps > c.num_steps:
        return "grad_steps", f"in [1, num_steps={c.num_steps}]"


def scorer_reads_a_summary_slot(c):
    """The scorer reads slot 0, the puzzle embedding's (a CLS token); without one it would read the
    first grid cell, so K > 1 branches need it."""
    if c.num_branches > 1 and c.puzzle_emb_ndim == 0:
        return "puzzle_emb_ndim", f"> 0 with num_branches={c.num_branches} (the scorer reads it)"


@dataclass
class Config:
    num_branches: "int >= 1" = 8        # K: parallel latent hypotheses
    num_steps: "int >= 1" = 8           # S: recursion steps per forward (no ACT)
    grad_steps: "int >= 1" = 2          # last steps run with gradient (the rest no_grad)
    hidden_size: "int >= 1" = 256       # D
    num_heads: "int >= 1" = 4           # attention heads (head_dim = D / num_heads)
    expansion: "float > 0" = 4.0        # SwiGLU width factor (inner 768 at D=256)
    num_layers: "int >= 1" = 2          # post-norm blocks in the shared core
    pos_encodings: "str in rope|learned|none" = "rope"
    rope_theta: "float > 0" = 10000.0   # θ of RoPE
    rms_norm_eps: "float >= 0" = 1e-5   # ε of RMSNorm
    mlp_t: "bool" = False               # TRM-MLP: attention -> an MLP over the sequence
    conv_kernel: "int >= 0" = 0         # k: trm.py's 2-D grid mixer in each SwiGLU, odd (0 = off)
    puzzle_emb_ndim: "int >= 0" = 256   # width of the per-puzzle embedding (0 = none)
    puzzle_emb_len: "int >= 0" = 16     # P: prefix slots it occupies (0 = ceil(ndim / D))
    init_noise_std: "float >= 0" = 0.1  # σ: N(0, σ²) noise on the branch inits, training only
    comm_alpha: "float >= 0" = 0.1      # α: pull of each branch toward the score-weighted mean
    comm_temp: "float > 0" = 1.0        # temperature of w = softmax(s / temp)
    comm_interval: "int >= 0" = 2       # c: steps between exchanges (0 = never)
    public_schedule: "bool" = False     # public code: b_k at step 0 only, no grad exchange
    tau: "float > 0" = 0.1              # τ: Best-of-K soft-min temperature
    scorer_weight: "float >= 0" = 0.5   # λ_s: scorer CE weight (target: lowest-loss branch)
    diversity_weight: "float >= 0" = 0.1  # λ_div: weight of the mean off-diagonal branch cosine
    loss_type: "str in stablemax|softmax" = "stablemax"  # cross-entropy
    vocab_size: "int >= 1" = 12         # V (from the dataset)
    seq_len: "int >= 1" = 900           # L (from the dataset)
    num_puzzle_identifiers: "int >= 1" = 1  # rows of the puzzle-embedding table (from the dataset)
    forward_dtype: "str in auto|bfloat16|float32" = "auto"  # auto: bfloat16 on CUDA, float32 on CPU

    cross_rules = (trm.heads_fit, grad_steps_within_steps, scorer_reads_a_summary_slot)


@dataclass
class Carry:
    halted: torch.Tensor                # [B] bool; every sample halts after one call (no ACT)


def soft_min(losses, tau):
    """-τ log Σ_k exp(-l_k / τ) over the last axis: min_k l_k as τ -> 0; d/dl = softmax(-l / τ)."""
    return -tau * torch.logsumexp(-losses / tau, dim=-1)


def branch_cosine(z):
    """Mean off-diagonal cosine of the branches' position-mean latents: z [B,K,L,D] -> [B]."""
    K = z.shape[1]
    if K < 2:
        return z.new_zeros(z.shape[0], dtype=torch.float32)
    u = F.normalize(z.float().mean(2), dim=-1)           # [B, K, D]
    sim = u @ u.transpose(1, 2)                          # [B, K, K]
    return (sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)) / (K * (K - 1))


class Scorer(nn.Module):
    """s = Linear(D/2 -> 1)(SiLU(Linear(D -> D/2)(h))); the last layer starts at weight 0, bias -5,
    so all branches start with equal scores (uniform communication weights)."""

    def __init__(self, D):
        super().__init__()
        self.fc1 = trm.CastedLinear(D, D // 2, bias=True)
        self.fc2 = trm.CastedLinear(D // 2, 1, bias=True)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.fill_(-5)

    def forward(self, h):
        return self.fc2(F.silu(self.fc1(h))).squeeze(-1).float()


class Model(nn.Module):
    needs_demos = False  # True: the loader adds demo_inputs, demo_labels, demo_mask to every batch

    def __init__(self, config: Config):
        super().__init__()
        self.config = c = config
        self.dtype = trm.resolve_dtype(c.forward_dtype)
        D = c.hidden_size
        self.puzzle_emb_len = trm.puzzle_prefix_len(c)
        total_len = c.seq_len + self.puzzle_emb_len
        self.embed = trm.InputEmbedding(c, self.puzzle_emb_len, self.dtype)  # exactly TRM's input
        self.lm_head = trm.CastedLinear(D, c.vocab_size)
        if c.puzzle_emb_ndim > 0:
            self.puzzle_emb = trm.SparseEmbedding(c.num_puzzle_identifiers, c.puzzle_emb_ndim,
                                                  self.dtype)
        # one core shared by all branches and steps
        self.core = trm.ReasoningModule(c, c.num_layers, total_len, grid=True)
        self.scorer = Scorer(D)
        b = trm.trunc_normal_init_(torch.empty(c.num_branches, D), 1.0)
        self.branch_init = nn.Parameter(b)  # b_k

    # -- the rollout -------------------------------------------------------------------------------
    def exchanges_after(self, t):
        """Whether branches communicate after step t (the module docstring: the two schedules)."""
        c, S = self.config, self.config.num_steps
        if c.comm_interval <= 0:
            return False
        if c.public_schedule:
            return (t + 1) % c.comm_interval == 0 and t < S - 1
        return t <= S - 2 and (S - 2 - t) % c.comm_interval == 0

    def communicate(self, z, scores):
        """z_k <- z_k + α (Σ_j w_j z_j - z_k), w = softmax(s / temp). z [B,K,L,D], scores [B,K]."""
        c = self.config
        w = torch.softmax(scores / c.comm_temp, dim=-1).to(z.dtype)  # [B, K]
        mean = torch.einsum("bk,bkld->bld", w, z).unsqueeze(1)        # [B, 1, L, D]
        return z + c.comm_alpha * (mean - z)

    def rollout(self, inputs, puzzle_identifiers):
        """S steps of all K branches -> the final state z [B,K,P+L,D] and the final scores [B,K]."""
        c, (cos, sin) = self.config, self.embed.rope()
        K, S = c.num_branches, c.num_steps
        prefix = self.puzzle_emb(puzzle_identifiers.long()) if self.puzzle_emb_len else None
        e = self.embed(inputs, prefix)                                 # [B, P+L, D]
        B, Lt, D = e.shape
        b = self.branch_init.to(self.dtype).view(1, K, 1, D)
        z = b.expand(B, K, Lt, D)
        if self.training and c.init_noise_std > 0:
            z = z + c.init_noise_std * torch.randn(B, K, Lt, D, device=e.device, dtype=self.dtype)
        inj = e.unsqueeze(1) if c.public_schedule else e.unsqueeze(1) + b  # [B, 1 or K, P+L, D]
        inj = inj.expand(B, K, Lt, D).reshape(B * K, Lt, D)
        grad_on = torch.is_grad_enabled()
        for t in range(S):
            with torch.set_grad_enabled(grad_on and t >= S - c.grad_steps):
                z = self.core(z.reshape(B * K, Lt, D), inj, cos, sin).view(B, K, Lt, D)
                scores = self.scorer(z[:, :, 0])                      # [B, K] float32
                if self.exchanges_after(t):
                    z = self.communicate(z, scores)
        return z, scores

    def decode(self, z):
        return self.lm_head(z[:, :, self.puzzle_emb_len:])             # [B, K, L, V]

    # -- the protocol ------------------------------------------------------------------------------
    def initial_carry(self, batch):
        x = batch["inputs"]
        return Carry(halted=torch.ones(x.shape[0], dtype=torch.bool, device=x.device))

    def forward(self, carry, batch):
        labels = batch["labels"]
        z, scores = self.rollout(batch["inputs"], batch["puzzle_identifiers"])
        logits = self.decode(z)
        loss, metrics, outputs = self.loss_and_metrics(z, scores, logits, labels)
        halted = torch.ones_like(carry.halted)
        return Carry(halted), loss, metrics, {k: v.detach() for k, v in outputs.items()}

    def loss_and_metrics(self, z, scores, logits, labels):
        """Best-of-K soft-min + λ_s scorer CE + λ_div diversity (the module docstring), summed over
        the batch."""
        c = self.config
        B, K, L, V = logits.shape
        mask = labels != -100                                           # [B, L]
        count = mask.sum(-1)
        has_label = count > 0
        targets = labels.unsqueeze(1).expand(B, K, L).reshape(B * K, L)
        ce = kernels.cross_entropy(logits.reshape(B * K, L, V), targets,
                                   c.loss_type, -100).view(B, K, L)
        branch_loss = ce.sum(-1) / count.clamp_min(1).unsqueeze(-1)     # l_k [B, K]
        main = torch.where(has_label, soft_min(branch_loss, c.tau), 0).sum()  # no loss on padding
        best = branch_loss.detach().argmin(-1)                          # k*: the scorer's target
        scorer_ce = torch.where(has_label, F.cross_entropy(scores, best, reduction="none"), 0).sum()
        cosine = branch_cosine(z)                                       # [B]
        loss = main + c.scorer_weight * scorer_ce + c.diversity_weight * cosine.sum()

        with torch.no_grad():
            rows = torch.arange(B, device=logits.device)
            pick = scores.argmax(-1)                                     # the scorer's branch
            sel_logits = logits[rows, pick]                              # [B, L, V]
            _, _, metrics = trm.token_loss_and_metrics(sel_logits, labels, has_label, c.loss_type)
            preds = logits.argmax(-1)                                    # [B, K, L]
            correct = mask.unsqueeze(1) & (preds == labels.unsqueeze(1))
            acc = correct.sum(-1) / count.clamp_min(1).unsqueeze(-1)     # [B, K] token accuracy
            oracle = acc.argmax(-1)                                      # exact if any branch is
            oracle_acc = acc[rows, oracle]
            oracle_exact = correct.sum(-1)[rows, oracle] == count

            def summed(x):
                return torch.where(has_label, x.float(), 0).sum()
            metrics.update(
                lm_loss=main.detach(), scorer_loss=scorer_ce.detach(),
                diversity_loss=cosine.sum().detach(), scorer_accuracy=summed(acc[rows, pick]),
                scorer_exact_accuracy=metrics["exact_accuracy"],
                oracle_accuracy=summed(oracle_acc), oracle_exact_accuracy=summed(oracle_exact),
                scorer_picks_best=summed(pick == best),
                branch_accuracy_spread=summed(acc.max(-1).values - acc.min(-1).values),
                mean_branch_diversity=summed(1 - cosine))
        outputs = {"logits": sel_logits, "preds": preds[rows, pick],
                   "q_halt_logits": scores[rows, pick], "scores": scores, "branch_preds": preds,
                   "oracle_preds": preds[rows, oracle],
                   "oracle_q_halt_logits": scores[rows, oracle]}
        return loss, metrics, outputs
