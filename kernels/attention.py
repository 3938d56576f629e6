"""Non-causal multi-head attention from the packed qkv projection, RoPE applied to q and k (TRM spec §1)."""
import torch
import torch.nn.functional as F


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    # x [N, L, H, D]; cos, sin [L, D]. In float32, then rounded back to x.dtype (the reference rounds here).
    xf = x.float()
    return (xf * cos[:, None, :].float() + rotate_half(xf) * sin[:, None, :].float()).to(x.dtype)


def attention_reference(qkv, num_heads, cos=None, sin=None):
    N, L, three_hd = qkv.shape
    D = three_hd // (3 * num_heads)
    q, k, v = qkv.view(N, L, 3, num_heads, D).unbind(2)  # each [N, L, H, D]
    if cos is not None:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # [N, H, L, D]
    return o.transpose(1, 2).reshape(N, L, num_heads * D)
