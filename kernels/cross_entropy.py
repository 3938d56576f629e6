"""Per-token stablemax / softmax cross-entropy with ignore_index (TRM spec §5; kernels.md §6)."""
import torch
import torch.nn.functional as F


def _log_stablemax(x):
    # s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0. Branch-safe: each branch sees only inputs in its
    # own domain, so neither produces inf/NaN gradients that `where` would then multiply by zero.
    pos = x >= 0
    s = torch.where(pos, x.clamp(min=0) + 1, 1 / (1 - x.clamp(max=0)))
    return torch.log(s) - torch.log(s.sum(-1, keepdim=True))


def cross_entropy_reference(logits, labels, kind="stablemax", ignore_index=-100):
    x = logits.float()
    logp = _log_stablemax(x) if kind == "stablemax" else F.log_softmax(x, -1)
    mask = labels != ignore_index
    safe = torch.where(mask, labels, 0).long()
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, nll, 0.0)
