"""hrm.py — the Hierarchical Reasoning Model (Wang et al., "Hierarchical Reasoning Model", arXiv
2506.21734), the baseline TRM was measured against, as the TRM reference repository carries it.

Two networks instead of TRM's one: a slow high-level module `H_level` (H_layers blocks) and a fast
low-level module `L_level` (L_layers blocks). Per ACT step, H_cycles rounds of: L_cycles updates of
the low-level state z_L <- L_level(z_L, z_H + x), then one high-level update z_H <- H_level(z_H,
z_L). Training uses the paper's "one-step gradient" (a 1-step approximation of the
implicit-function-theorem gradient, HRM §3.3): every update runs under no_grad except the very last
L update and the very last H update, so backward costs one L call and one H call whatever H_cycles
and L_cycles are. Everything else is TRM's: the input embedding with the puzzle embedding prefix,
the lm and Q heads, the ACT wrapper with halting and exploration, and the loss. HRM's default
halting is Q-learning (no_ACT_continue=False): halt when q_halt > q_continue, and q_continue is
trained towards a target bootstrapped from one more no-grad step (sigmoid(max(next q_halt, next
q_continue)), or next q_halt on the last step), only in training.

This file is a subclass of trm.Model: it overrides `build_reasoning` (two modules) and `reason` (the
one-step-gradient schedule); blocks, heads, ACT and loss come from trm.py unchanged. Reference
checkpoints load with `convert_reference_state_dict` (the same prefix stripping as TRM's; HRM adds
`H_level.layers.*`). Parameter count at the ARC config: 27,276,290 (as the reference's).

Choices of our own: none beyond trm.py's (its `conv_kernel` mixer reaches both levels). HRM has no
`puzzle_emb_len` key; the default 0 here gives ceil(puzzle_emb_ndim / hidden_size) = 1 prefix slot,
as the reference.

Run:  python train.py --model hrm --config data=toy hidden_size=64 num_heads=4 H_layers=1 L_layers=1
      torchrun --standalone --nproc_per_node=8 train.py --model hrm --config data=arc1
      python evaluate.py --checkpoint runs/hrm-arc1/checkpoint.pt
"""
from dataclasses import dataclass

import torch

import trm
from trm import ReasoningModule, convert_reference_state_dict

__all__ = ["Config", "Model", "convert_reference_state_dict"]  # the last one is trm's


@dataclass
class Config(trm.Config):
    H_cycles: "int >= 1" = 2            # N: high-level updates per ACT step
    L_cycles: "int >= 1" = 2            # low-level updates per high-level update
    H_layers: "int >= 1" = 4            # blocks in the high-level module H_level
    L_layers: "int >= 1" = 4            # blocks in the low-level module L_level
    puzzle_emb_len: "int >= 0" = 0      # P: prefix slots (0 = ceil(ndim / D); HRM has no such key)
    no_ACT_continue: "bool" = False     # HRM's Q-learning halting: halt when q_halt > q_continue


class Model(trm.Model):
    def build_reasoning(self, total_len):
        c = self.config
        self.H_level = ReasoningModule(c, c.H_layers, total_len, grid=True)
        self.L_level = ReasoningModule(c, c.L_layers, total_len, grid=True)

    def reason(self, z_H, z_L, x):
        """One ACT step with HRM's one-step gradient: all but the last L and last H update without
        gradient; the hierarchy z_L <- L(z_L, z_H + x) L_cycles times, then z_H <- H(z_H, z_L)."""
        c, (cos, sin) = self.config, self.rope()
        with torch.no_grad():
            for h in range(c.H_cycles):
                for l in range(c.L_cycles):
                    if h == c.H_cycles - 1 and l == c.L_cycles - 1:
                        break  # the very last L update carries the gradient, below
                    z_L = self.L_level(z_L, z_H + x, cos, sin)
                if h < c.H_cycles - 1:
                    z_H = self.H_level(z_H, z_L, cos, sin)
        z_L = self.L_level(z_L, z_H + x, cos, sin)  # 1-step gradient: only these two calls
        z_H = self.H_level(z_H, z_L, cos, sin)
        return z_H, z_L
