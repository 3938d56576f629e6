"""Fused RMSNorm without weight, and the post-norm form rms(x + residual) (TRM spec §1)."""
import torch


def rms_norm_reference(x, residual=None, eps=1e-5):
    # The residual sum is formed in the input dtype (bf16 in training) and only then upcast:
    # the reference rounds there, and kernels-on / kernels-off runs must round at the same point.
    if residual is not None:
        x = x + residual
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).to(x.dtype)
