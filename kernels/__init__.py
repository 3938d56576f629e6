"""kernels/ — the fused ops every model calls, one public function each.

    rms_norm(x, residual=None, eps=1e-5)   rms(x + residual), post-norm of a TRM block
    swiglu(gate_up)                        silu(gate) * up from the packed gate_up projection
    cross_entropy(logits, labels, kind)    per-token stablemax / softmax CE, ignore_index -100
    attention(qkv, num_heads, cos, sin)    non-causal attention from the packed qkv, RoPE inside

Dispatch (nanochat's override hook): Triton on CUDA tensors, the pure-PyTorch reference on CPU.
`NANOTRM_KERNELS=torch` in the environment forces the reference everywhere; tests flip the
module-level switch `USE_TRITON` instead. Each op's file holds, in order: the reference, the
Triton kernel(s), the host launch functions, the autograd registration, the public function.

torch.compile: every Triton forward and backward is a torch.library custom op (`torch.ops.nanotrm.*`
with a shape-only fake and autograd registered on the forward op), so a compiled training step
keeps them in its graph, opaque, with no graph break (torch.library.custom_op: torch >= 2.4).

Under TRITON_INTERPRET=1 (set before this package is imported) the Triton kernels also run on CPU
tensors; the kernel tests call each file's `*_triton` function directly to exercise that path.
"""
import os

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
USE_TRITON = os.environ.get("NANOTRM_KERNELS", "auto") != "torch"


def _rows(t, width):
    """2-D [M, width] view with a unit last stride (copies only when it must): the ops' layout."""
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


from . import (rmsnorm as _rmsnorm, swiglu as _swiglu, cross_entropy as _ce,  # noqa: E402
               attention as _attn)


def _triton_ok(x):
    """Triton where it is fast (CUDA), never on CPU outside the kernel tests."""
    return USE_TRITON and x.is_cuda


def rms_norm(x, residual=None, eps=1e-5):
    """s * rsqrt(mean(s^2) + eps) with s = x + residual; s in x.dtype, statistics in float32."""
    if _triton_ok(x):
        return _rmsnorm.rms_norm_triton(x, residual, eps)
    return _rmsnorm.rms_norm_reference(x, residual, eps)


def swiglu(gate_up):
    """[..., 2*inter] (gate first, then up) -> silu(gate) * up, [..., inter]."""
    if _triton_ok(gate_up):
        return _swiglu.swiglu_triton(gate_up)
    return _swiglu.swiglu_reference(gate_up)


def cross_entropy(logits, labels, kind="stablemax", ignore_index=-100):
    """Per-token CE (kind: stablemax | softmax), float32, shaped like labels, 0 where ignored."""
    if _triton_ok(logits):
        return _ce.cross_entropy_triton(logits, labels, kind, ignore_index)
    return _ce.cross_entropy_reference(logits, labels, kind, ignore_index)


def attention(qkv, num_heads, cos=None, sin=None):
    """qkv [N, L, 3*H*D] packed [q | k | v heads] -> [N, L, H*D]; RoPE on q, k if cos/sin given."""
    if _triton_ok(qkv):
        return _attn.attention_triton(qkv, num_heads, cos, sin)
    return _attn.attention_reference(qkv, num_heads, cos, sin)
