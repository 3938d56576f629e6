"""SwiGLU gate from the packed gate_up projection: silu(gate) * up (TRM spec §1)."""
import torch.nn.functional as F


def swiglu_reference(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
