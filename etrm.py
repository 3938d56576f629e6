"""etrm.py — the encoder TRM: TRM with its puzzle-id embedding replaced by an encoder of the
task's demonstration pairs, so the rule is read from the demos at test time and the model can meet a
puzzle it never saw.

Source: B. D. Sağlam's ETRM (github bdsaglam/etrm, course report of January 2026) on top of TRM
(trm.py), with two upgrades from LPN (Macfarlane & Bonnet, "Searching Latent Program Spaces",
arXiv 2411.08706). The public ETRM is an honest negative result: every encoder collapsed to a
near-constant context and scored ~0% on held-out ARC puzzles. This file reproduces that setting;
what we measured is in experiments/RESULTS.md and docs/teach.md.

    demos [B,K,L] x2, mask [B,K] --encoder (encoders.py)--> context [B,P,D]
    context ++ token embeddings, x sqrt(D) (the puzzle embedding's P slots) --> TRM decoder

- The model is trm.Model with two hooks of its own: prefix_len (P = puzzle_emb_len context slots)
  and build_prefix (the encoder, no puzzle-embedding table). Everything else is TRM's.
- Encoders: `encoder_type` picks one of nine (table in encoders.py); variational ones add
  kl_weight * KL. `decoder_init` loads a trained TRM into the decoder (a nanoTRM checkpoint or the
  reference's state dict).
- Training modes. `act_mode=dynamic` (ETRM): TRM's ACT, carry persists, halted samples are
  replaced, and the FULL batch is re-encoded at every call (a context cached per sample gets
  gradients only from the newly loaded ~2% of the samples). `act_mode=fixed` (ETRM-FCT): every
  sample runs exactly `num_act_steps` calls, one optimizer step each, with a fresh carry. Both take
  a new sample into a row only when its old one halts, as TRM does: B / (steps per sample) fresh
  samples per optimizer step. In evaluation both run halt_max_steps.
- LPN upgrades, off by default: `leave_one_out` = p makes a training query one of its own demos
  (that demo leaves the context); `tto_steps` > 0 runs Adam on the context or the encoder latent at
  test time to lower the demos' reconstruction loss, keeping each sample's best (LPN §3).
- Metrics: `context_var`, the cross-sample variance of the context (the collapse detector; for
  variational encoders computed on the context of the mean mu, so sampling noise cannot hide a
  collapse), `kl_loss`, and a one-time warning when the context stays collapsed in training for
  `collapse_patience` calls.
Choices: TRAIN_DEFAULTS carries the public recipe's grad clip 1.0 (96.7% against 85.4% train
accuracy without); in evaluation the context is encoded once per sample and cached (no gradient
there).

Run:  python train.py --model etrm --config data=toy                    (CPU smoke run)
      python data.py arc1 --held-out --out data/arc1-heldout   (eval puzzles' demos never in train)
      torchrun --standalone --nproc_per_node=8 train.py --model etrm \
          --config data=data/arc1-heldout halt_exploration_prob=0.5 leave_one_out=0.5 \
          decoder_init=runs/trm-arc1/checkpoint.pt
      python evaluate.py --checkpoint runs/etrm-arc1-heldout/checkpoint.pt --config tto_steps=20
"""
import os
from dataclasses import dataclass

import torch

import kernels
import trm
from encoders import KINDS, DemoEncoder, IterativeEncoder


def tto_needs_feed_forward(c):
    """The iterative encoder changes its context at every ACT step: no one context to optimise."""
    if c.encoder_type == "iterative" and c.tto_steps > 0:
        return "tto_steps", ("0 with encoder_type=iterative (test-time optimisation needs a "
                             "feed-forward encoder)")


@dataclass
class Config(trm.Config):
    # TRM decoder fields are inherited (D = hidden_size 512, 8 heads, H_cycles 3, L_cycles 4, ...).
    puzzle_emb_len: "int >= 1" = 16          # context tokens from the encoder (TRM's prefix slots)
    puzzle_emb_ndim: "int >= 0" = 0          # unused: ETRM has no puzzle-embedding table
    encoder_type: "str in " + "|".join(KINDS) = "standard"  # one of nine (encoders.py)
    encoder_num_layers: "int >= 1" = 2       # blocks of the per-pair grid encoder (public final: 4)
    encoder_pooling_method: "str in mean|attention|weighted" = "mean"  # standard/iterative encoder
    encoder_set_layers: "int >= 1" = 1       # cross-attention layers of the set encoder
    latent_dim: "int >= 0" = 0               # Gaussian latent of the variational encoders (0 = D)
    lpn_width: "int >= 1" = 128              # lpn, lpn_var: width of the LPN paper's small encoder
    lpn_latent_dim: "int >= 1" = 32          # lpn_var: latent of its per-demo Gaussian
    encoder_H_cycles: "int >= 1" = 3         # iterative: recursion rounds per ACT step (public: 3)
    encoder_L_cycles: "int >= 1" = 1         # iterative: latent updates per round (public: 1)
    encoder_L_layers: "int >= 1" = 2         # iterative: blocks of its recursion network
    kl_weight: "float >= 0" = 1e-4           # beta of the KL term (variational encoders; LPN's)
    encoder_init_logvar: "float" = 0.0       # initial log sigma^2 of the Gaussians (public: 0)
    act_mode: "str in dynamic|fixed" = "dynamic"  # dynamic: ETRM, TRM's ACT; fixed: ETRM-FCT
    num_act_steps: "int >= 1" = 1            # N: ACT steps per sample in fixed mode (training)
    leave_one_out: "float in [0, 1]" = 0.0   # p: chance a training query becomes one of its demos
    tto_steps: "int >= 0" = 0                # test-time optimisation steps in evaluation (0 = off)
    tto_lr: "float >= 0" = 1e-2              # alpha: Adam step (LPN's 5e-2 overshoots here)
    tto_target: "str in context|latent" = "context"  # latent: before the encoder's projection
    tto_act_steps: "int >= 1" = 1            # decoder ACT steps per demo prediction inside TTO
    collapse_patience: "int >= 0" = 200      # collapsed calls before a warning (0 = off)
    decoder_init: "str" = ""                 # TRM checkpoint to initialise the decoder

    cross_rules = trm.Config.cross_rules + (tto_needs_feed_forward,)


# train.py applies these over its own defaults unless the user sets them: the public ETRM calls
# the clip essential (96.7% against 85.4% train accuracy on its overfit test; it also removed a
# collapse).
TRAIN_DEFAULTS = {"grad_clip": 1.0}
# Keys that only matter when a model is first built (cleared when a model is rebuilt from one of its
# own checkpoints, whose weights already hold the initialisation).
INIT_ONLY_KEYS = ("decoder_init", "encoder_init_logvar")
# Keys that change neither the weights' shapes nor what given weights compute in training: safe to
# differ between a checkpoint and a run that evaluates or starts from it.
RUNTIME_KEYS = ("tto_steps", "tto_lr", "tto_target", "tto_act_steps", "decoder_init",
                "leave_one_out", "kl_weight", "collapse_patience", "encoder_init_logvar")
COLLAPSED = 1e-3  # context_var below this fraction of the context's mean square counts as collapsed


def to_targets(demo_labels):
    """Demo outputs as decoder targets: PAD (0) and -100 ignored, as the ARC builder's labels."""
    return torch.where(demo_labels > 0, demo_labels, -100)


def context_variance(context, rows):
    """Cross-sample variance of the context over the batch rows where `rows` [B] is True, averaged
    over tokens and dims (the collapse detector). Weighted, not indexed: the shape stays static."""
    w = rows.float().view(-1, 1, 1)
    n = w.sum().clamp_min(1)
    x = context.float()
    mean = (w * x).sum(0) / n
    return ((w * (x - mean).square()).sum(0) / n).mean()


def leave_one_out(batch, p):
    """With probability p per sample (>= 2 demos), the query becomes one of its demos, chosen
    uniformly, and that demo leaves the context: a pair never sees itself."""
    mask = batch["demo_mask"].bool()
    B, K = mask.shape
    dev = mask.device
    swap = ((torch.rand(B, device=dev) < p) & (mask.sum(-1) >= 2))[:, None]
    j = torch.rand(B, K, device=dev).masked_fill(~mask, -1.0).argmax(-1)   # a random valid demo
    rows = torch.arange(B, device=dev)
    target = to_targets(batch["demo_labels"][rows, j]).to(batch["labels"].dtype)
    left = mask & ~(swap & (torch.arange(K, device=dev) == j[:, None]))
    return dict(batch, inputs=torch.where(swap, batch["demo_inputs"][rows, j], batch["inputs"]),
                labels=torch.where(swap, target, batch["labels"]),
                demo_mask=left.to(batch["demo_mask"].dtype))


# -------------------------------------------------------------------------------------------------
# The model

@dataclass
class Carry(trm.Carry):
    context: torch.Tensor = None   # [B, P, D] cached per sample in evaluation only
    tto_loss: torch.Tensor = None  # [B, 2] demo loss before / after test-time optimisation (eval)
    enc_H: torch.Tensor = None     # [B, P, D] the iterative encoder's own state, else None
    enc_L: torch.Tensor = None


class Model(trm.Model):
    needs_demos = True  # the loader adds demo_inputs, demo_labels, demo_mask to every batch

    def __init__(self, config: Config):
        super().__init__(config)
        self.collapsed_calls, self.collapse_warned = 0, False
        if config.decoder_init:
            load_trm_decoder(self, config.decoder_init)

    def prefix_len(self):
        return self.config.puzzle_emb_len  # P context tokens in TRM's puzzle-embedding slots

    def build_prefix(self):
        """The demonstration encoder fills the P slots; there is no puzzle-embedding table."""
        self.iterative = self.config.encoder_type == "iterative"
        kind = IterativeEncoder if self.iterative else DemoEncoder
        self.encoder = kind(self.config, self.dtype)

    # -- context ------------------------------------------------------------------------------
    def encode(self, data):
        """-> (context [B, P, D], KL [B] or None, context of the mean latent mu without gradient):
        the full batch, with gradient."""
        mask = data["demo_mask"].bool()
        z, kl, mu = self.encoder.latent(data["demo_inputs"], data["demo_labels"], mask)
        context = self.encoder.project(z, mask).to(self.dtype)   # a Gaussian's z is float32
        if mu is None or not self.training:  # deterministic, or evaluation (z is mu)
            return context, kl, context.detach()
        with torch.no_grad():
            return context, kl, self.encoder.project(mu, mask)

    def context_of(self, carry, data):
        """-> (context, KL or None, context for the collapse detector, carry fields tto_loss, enc_H,
        enc_L) of this call."""
        halted, kl = carry.halted, None
        tto_loss, enc_H, enc_L = carry.tto_loss, carry.enc_H, carry.enc_L
        if self.iterative:  # its state restarts with its sample, then moves one step per call
            h, enc = halted.view(-1, 1, 1), self.encoder
            context, enc_H, enc_L = enc.step(
                torch.where(h, enc.H_init, enc_H), torch.where(h, enc.L_init, enc_L),
                data["demo_inputs"], data["demo_labels"], data["demo_mask"].bool())
            return context, kl, context.detach(), tto_loss, enc_H, enc_L
        if self.training:  # the whole batch at every step: every sample's loss reaches the encoder
            context, kl, mean_context = self.encode(data)
            return context, kl, mean_context, tto_loss, enc_H, enc_L
        context = carry.context  # evaluation: encode (and optimise) new samples once, then reuse
        if bool(halted.any()):
            idx = halted.nonzero().squeeze(-1)
            sub = {k: v[idx] for k, v in data.items()}
            if self.config.tto_steps > 0:
                new, losses = self.test_time_optimise(sub)
                tto_loss = tto_loss.index_copy(0, idx, losses)
            else:
                new = self.encode(sub)[0]
            context = context.index_copy(0, idx, new.to(context.dtype))
        return context, kl, context, tto_loss, enc_H, enc_L

    # -- ACT wrapper ----------------------------------------------------------------------------
    def initial_carry(self, batch):
        base = super().initial_carry(batch)
        B, dev = batch["inputs"].shape[0], batch["inputs"].device
        ctx = torch.zeros(B, self.puzzle_emb_len, self.config.hidden_size, dtype=self.dtype,
                          device=dev)
        enc = ctx.clone() if self.iterative else None
        return Carry(**vars(base), context=ctx, tto_loss=torch.zeros(B, 2, device=dev), enc_H=enc,
                     enc_L=None if enc is None else enc.clone())

    def forward(self, carry, batch):
        c = self.config
        if self.training and c.leave_one_out > 0:  # only halted rows take from `batch`: new samples
            batch = leave_one_out(batch, c.leave_one_out)
        z_H, z_L, steps, data = self.reset(carry, batch)
        context, kl, mean_context, tto_loss, enc_H, enc_L = self.context_of(carry, data)
        x = self.embed(data["inputs"], context)
        z_H, z_L, logits, q_halt, q_continue = self.inner_step(z_H, z_L, x)
        steps = steps + 1
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        if self.training and c.act_mode == "fixed":  # ETRM-FCT: everyone halts after N steps
            halted = steps >= c.num_act_steps
        else:                                         # TRM's ACT with exploration (trm.py)
            halted = self.halt(steps, q_halt, q_continue, z_H, z_L, x, outputs)
        carry = Carry(z_H, z_L, steps, halted, data, context=context.detach(), tto_loss=tto_loss,
                      enc_H=enc_H, enc_L=enc_L)
        loss, metrics = self.act_loss(carry, outputs)
        real = (data["labels"] != -100).any(-1)  # not the padding rows of a last test batch
        valid = halted & real
        var = context_variance(mean_context, real)
        metrics["context_var"] = var * valid.sum()  # per-sample metrics are sums; logging divides
        if self.training:
            self.watch_collapse(var, mean_context)
        if kl is not None:
            metrics["kl_loss"] = kl.sum().detach()
            loss = loss + c.kl_weight * kl.sum()
        if not self.training and c.tto_steps > 0:
            metrics["tto_demo_loss_init"] = torch.where(valid, tto_loss[:, 0], 0).sum()
            metrics["tto_demo_loss_best"] = torch.where(valid, tto_loss[:, 1], 0).sum()
        outputs["preds"] = logits.argmax(-1)
        outputs["context"] = context
        return carry, loss, metrics, {k: v.detach() for k, v in outputs.items()}

    def watch_collapse(self, var, context):
        """Print once when the context has barely varied across the batch for `collapse_patience`
        training calls in a row: the encoder gives every task the same context and the decoder can
        only memorise."""
        c = self.config
        if self.collapse_warned or c.collapse_patience <= 0:
            return
        collapsed = bool(var <= COLLAPSED * context.float().square().mean())
        self.collapsed_calls = self.collapsed_calls + 1 if collapsed else 0
        if self.collapsed_calls >= c.collapse_patience and os.environ.get("RANK", "0") == "0":
            print(f"etrm: warning: context_var has stayed below {COLLAPSED:g} of the context's "
                  f"mean square for {self.collapsed_calls} training steps: the encoder "
                  f"({c.encoder_type}) gives every task the same context (collapse). Try: "
                  "grad_clip=1.0 if it is off, a lower lr, leave_one_out=0.5, fewer "
                  "encoder_num_layers, a smaller kl_weight for a variational encoder, or "
                  "decoder_init from a trained TRM.", flush=True)
        self.collapse_warned = self.collapsed_calls >= c.collapse_patience

    # -- test-time optimisation (LPN §3) ---------------------------------------------------
    def demo_loss(self, context, inputs, labels):
        """Per-row mean CE of the decoder predicting `labels` from `inputs` with `context`, after
        tto_act_steps ACT steps from (y0, z0); the gradient flows through the last step's last
        round."""
        N = inputs.shape[0]
        shape = (N, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        z_H, z_L = self.H_init.expand(shape), self.L_init.expand(shape)
        x = self.embed(inputs, context)
        with torch.no_grad():
            for _ in range(self.config.tto_act_steps - 1):
                z_H, z_L = self.reason(z_H, z_L, x)
        z_H, _ = self.reason(z_H, z_L, x)
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        ce = kernels.cross_entropy(logits, labels, self.config.loss_type, -100)
        return ce.sum(-1) / (labels != -100).sum(-1).clamp_min(1)

    def test_time_optimise(self, data):
        """Encoder output -> tto_steps Adam steps lowering the demos' loss -> best context per
        sample. Returns (context [B, P, D], losses [B, 2]: loss at the encoder's output, best)."""
        c, mask = self.config, data["demo_mask"].bool()
        B = mask.shape[0]
        owner, slot = mask.nonzero(as_tuple=True)  # one row per real demo
        x, y = data["demo_inputs"][owner, slot], to_targets(data["demo_labels"][owner, slot])
        n = mask.sum(-1).clamp_min(1).float()
        with torch.no_grad():
            z = self.encoder.latent(data["demo_inputs"], data["demo_labels"], mask)[0]
            if c.tto_target == "context":
                z = self.encoder.project(z, mask)
        param = z.detach().float().clone().requires_grad_(True)
        opt = torch.optim.Adam([param], lr=c.tto_lr)  # per element: samples stay independent
        best, best_loss, init_loss = param.detach().clone(), None, None
        with torch.enable_grad():
            for step in range(c.tto_steps + 1):
                ctx = param if c.tto_target == "context" else \
                    self.encoder.project(param.to(z.dtype), mask)
                per_demo = self.demo_loss(ctx[owner], x, y)
                loss = per_demo.new_zeros(B).index_add(0, owner, per_demo) / n
                if step == 0:
                    init_loss, best_loss = loss.detach(), loss.detach()
                better = loss.detach() < best_loss
                keep = better.view((-1,) + (1,) * (best.ndim - 1))
                best = torch.where(keep, param.detach(), best)
                best_loss = torch.minimum(best_loss, loss.detach())
                if step == c.tto_steps or len(owner) == 0:
                    break
                (param.grad,) = torch.autograd.grad(loss.sum(), [param])  # weights get no .grad
                opt.step()
        with torch.no_grad():
            if c.tto_target == "latent":
                best = self.encoder.project(best.to(z.dtype), mask)
        return best.to(self.dtype), torch.stack((init_loss, best_loss), -1)


# -------------------------------------------------------------------------------------------------
# Decoder initialisation from a trained TRM (the public ETRM starts from a converged one)

def load_trm_decoder(model, source):
    """Copy a TRM's weights into the decoder of `model`: `source` is a nanoTRM checkpoint path (EMA
    weights when present), the reference's state dict path, or a state dict. The puzzle embedding
    is skipped and the encoder left as initialised. Raises if a decoder weight is missing or has
    another shape."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"etrm decoder_init: no checkpoint at {source}")
        sd = torch.load(source, map_location="cpu", weights_only=False)
    else:
        sd = source
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = {**sd["model"], **(sd.get("ema") or {})}  # nanoTRM checkpoint: EMA over raw weights
    sd = {k: v for k, v in trm.convert_reference_state_dict(sd).items()
          if not k.startswith("puzzle_emb")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    missing = sorted(set(own) - set(sd))
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
           if k in sd and sd[k].shape != v.shape]
    if missing or bad:
        raise ValueError("etrm decoder_init: TRM weights do not fit this decoder; "
                         f"missing {missing}, shapes {bad}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k].to(v.dtype))
