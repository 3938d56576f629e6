"""optim.py — the optimisers train.py (and solve.py) use, and the distributed gradient sum.

AdamATan2 (Everett et al. 2024, as the TRM reference uses it) for the weights; sign-SGD with
decoupled weight decay for the sparse puzzle embeddings (the TRM reference's choice for its
800k-row table); the learning-rate schedule; torchrun's environment and one flat all-reduce over
every gradient (one collective per step, not one per parameter).
"""
import math
import os

import torch
import torch.distributed as dist

import trm


class AdamATan2(torch.optim.Optimizer):
    """Adam with atan2 in place of m / (sqrt(v) + eps): scale-invariant, no epsilon (Everett et al.
    2024).

    p <- p (1 - lr wd);  m <- lerp(m, g, 1 - b1);  v <- lerp(v, g^2, 1 - b2)
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v) / sqrt(1 - b2^t))   (a = b = 1, as the reference)"""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                t, g = st["step"], p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st["m"].lerp_(g, 1 - b1)
                st["v"].lerp_(g.square(), 1 - b2)
                denom = st["v"].sqrt() / math.sqrt(1 - b2 ** t)
                p.add_(torch.atan2(st["m"], denom), alpha=-group["lr"] / (1 - b1 ** t))


@torch.no_grad()
def sign_sgd_update(emb, lr, weight_decay, world_size):
    """Sparse sign-SGD on the rows of the batch: gather ids and grads from all ranks, sum per unique
    id, p <- p (1 - lr wd) - lr sign(g). Only rows present decay (the reference's lazy decay)."""
    if emb.local_weights is None or emb.local_weights.grad is None:
        return
    ids, grad = emb.local_ids.long(), emb.local_weights.grad
    if world_size > 1:
        all_ids = [torch.empty_like(ids) for _ in range(world_size)]
        all_grad = [torch.empty_like(grad) for _ in range(world_size)]
        dist.all_gather(all_ids, ids)
        dist.all_gather(all_grad, grad)
        ids, grad = torch.cat(all_ids), torch.cat(all_grad)
    uniq, inverse = ids.unique(return_inverse=True)
    summed = grad.new_zeros(len(uniq), grad.shape[1]).index_add_(0, inverse, grad)
    rows = emb.weights[uniq]
    emb.weights[uniq] = rows * (1 - lr * weight_decay) - lr * summed.sign().to(rows.dtype)
    emb.local_weights.grad = None  # the leaf is reused by the next forward


def lr_at(step, base, cfg, total_steps):
    """Linear warm-up, then cosine from base to base * lr_min_ratio."""
    if step < cfg.lr_warmup_steps:
        return base * step / cfg.lr_warmup_steps
    progress = (step - cfg.lr_warmup_steps) / max(1, total_steps - cfg.lr_warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return base * (cfg.lr_min_ratio + max(0.0, (1 - cfg.lr_min_ratio) * cosine))


def sparse_embeddings(model):
    return [m for m in model.modules() if isinstance(m, trm.SparseEmbedding)]


def setup_distributed():
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


@torch.no_grad()
def allreduce_flat(tensors):
    """Sum `tensors` across ranks with one collective over one flat buffer (not one per tensor)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def non_finite(model, embs, stats):
    """Name the first non-finite loss or gradient (one reduction over all gradients; names only on a
    fault)."""
    bad = [k for k, v in sorted(stats.items(), key=lambda kv: kv[0] != "loss")
           if (k == "loss" or k.endswith("_loss")) and not math.isfinite(v)]
    if bad:
        return f"loss '{bad[0]}'"
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    grads += [(f"{i}.local_weights", e.local_weights.grad) for i, e in enumerate(embs)
              if e.local_weights is not None and e.local_weights.grad is not None]
    if grads and not torch.isfinite(torch.stack([g.float().norm() for _, g in grads]).sum()):
        return "gradient of " + next(n for n, g in grads if not torch.isfinite(g).all())
    return None
