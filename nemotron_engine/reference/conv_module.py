"""The Conformer convolution module, causal (NeMo ConformerConvolution with conv_context_size "causal").

z [B, T, D] -> pointwise conv D -> 2D, GLU -> zero padded frames -> causal depthwise conv (kernel K) over
[K-1 cached frames | chunk] -> LayerNorm over channels or BatchNorm (eval statistics) -> SiLU -> pointwise conv
-> [B, T, D]. The conv cache holds the last K-1 GLU outputs (after the pad mask), which is what NeMo's
CausalConv1D.update_cache keeps (cache_drop_size 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import linear


def conv_norm(g: torch.Tensor, w: dict, norm_type: str, eps: float) -> torch.Tensor:
    """The conv module's norm over channels: g [B, T, D] -> [B, T, D]."""
    if norm_type == "layer_norm":
        return F.layer_norm(g, g.shape[-1:], w["norm.weight"], w["norm.bias"], eps)
    # BatchNorm1d in eval: (g - running_mean) / sqrt(running_var + eps) * weight + bias, over channels
    # computed in float32 at least (the statistics are kept in float32 at load, bf16 weights are widened); for
    # float32 (or float64) tensors this is the plain op
    ct = torch.float64 if g.dtype == torch.float64 else torch.float32
    x = g.transpose(1, 2).to(ct)  # [B, D, T]
    x = F.batch_norm(x, w["norm.running_mean"].to(ct), w["norm.running_var"].to(ct), w["norm.weight"].to(ct),
                     w["norm.bias"].to(ct), training=False, eps=eps)
    return x.transpose(1, 2).to(g.dtype)


def conv_module(
    z: torch.Tensor,  # [B, T, D] LayerNorm-ed input
    cache: torch.Tensor,  # [B, D, K-1] last K-1 GLU outputs before this chunk (zeros at stream start / offline)
    pad: torch.Tensor,  # [B, T] True for padded frames (beyond the valid length)
    w: dict,  # engine keys under "layers.{i}.conv."
    norm_type: str,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [B, T, D], new cache [B, D, K-1])."""
    y, new_cache = glu_conv_norm(linear(z, w, "pw1.weight", "pw1.bias"), cache, pad, w, norm_type, eps)
    return linear(y, w, "pw2.weight", "pw2.bias"), new_cache


def glu_conv_norm(
    a: torch.Tensor,  # [B, T, 2D] output of the first pointwise conv
    cache: torch.Tensor,  # [B, D, K-1]
    pad: torch.Tensor,  # [B, T]
    w: dict,
    norm_type: str,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Everything between the two pointwise convs: SiLU(norm(depthwise(GLU(a)))) -> (y [B, T, D], new cache)."""
    g = F.glu(a, dim=-1).masked_fill(pad.unsqueeze(-1), 0.0)  # [B, T, D]
    g = torch.cat([cache, g.transpose(1, 2)], dim=2)  # [B, D, K-1 + T]
    k = w["dw.weight"].shape[-1]
    new_cache = g[:, :, g.shape[2] - (k - 1):]
    d = g.shape[1]
    y = F.conv1d(g, w["dw.weight"].unsqueeze(1), w.get("dw.bias"), groups=d)  # [B, D, T]
    y = conv_norm(y.transpose(1, 2), w, norm_type, eps)  # [B, T, D]
    return F.silu(y), new_cache
