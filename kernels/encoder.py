"""The encoder step on the Triton path: the reference's `encoder_step_paged`, op for op, with the Triton kernels.

    subsample (kernels/subsample.py) -> per layer:
        LN -> FF1 -> add+LN (kernels/layernorm.py) -> Q, K, V projections (cuBLAS)
        -> paged relative-position attention over the stream cache, writing the chunk's K/V into the pages
           (kernels/attention.py) -> output projection -> add+LN
        -> conv module step, conv cache updated in place (kernels/conv_module.py) -> add+LN -> FF2 -> add+LN

The dense products (feed-forward, projections, the conv module's pointwise convs) stay cuBLAS GEMMs through
F.linear: they are what cuBLAS is for. Same signature and results as `reference.encoder.encoder_step_paged`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nemotron_engine.config import DROP_EXTRA_PRE_ENCODED

from .attention import paged_attention
from .conv_module import conv_module
from .layernorm import add_layer_norm, layer_norm
from .subsample import subsample


def _ffn(z: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    return F.linear(F.silu(F.linear(z, w[f"{name}.w1"], w.get(f"{name}.b1"))), w[f"{name}.w2"], w.get(f"{name}.b2"))


def _norm(w: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return w[f"{name}.weight"], w[f"{name}.bias"]


def encoder_step_paged(model, mel: torch.Tensor, mel_len: torch.Tensor, cache, slots: torch.Tensor, r: int,
                       first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One cache-aware step over the paged stream cache, updated in place -> (out [B, T, D], out_len [B])."""
    cfg = model.cfg
    eps = cfg.layer_norm_eps
    x, n = subsample(mel, mel_len, model.sub)
    if not first:
        x = x[:, DROP_EXTRA_PRE_ENCODED:]
        n = (n - DROP_EXTRA_PRE_ENCODED).clamp(min=0)
    if cfg.xscaling:
        x = x * math.sqrt(cfg.d_model)
    x = x.contiguous()
    b, t, _ = x.shape
    frames = cache.frames[slots]  # [B] frames before this chunk
    lookahead = torch.full((b,), r, dtype=torch.int64, device=x.device)
    pad = torch.arange(t, device=x.device).unsqueeze(0) >= n.unsqueeze(1)  # [B, T]
    for i, w in enumerate(model.layers):
        z = layer_norm(x, *_norm(w, "ff1_norm"), eps)
        res, z = add_layer_norm(x, _ffn(z, w, "ff1"), 0.5, *_norm(w, "att_norm"), eps)
        q = F.linear(z, w["att.wq"], w.get("att.bq"))
        k = F.linear(z, w["att.wk"], w.get("att.bk"))
        v = F.linear(z, w["att.wv"], w.get("att.bv"))
        a = paged_attention(q, k, v, cache.k[i], cache.v[i], cache.table, slots, cache.frames, n, lookahead,
                            model.pos[i], model.rel_lo, w["att.pos_bias_u"], w["att.pos_bias_v"], cfg.left_context)
        res, z = add_layer_norm(res, F.linear(a, w["att.wo"], w.get("att.bo")), 1.0, *_norm(w, "conv_norm"), eps)
        c = conv_module(z, cache.conv, i, slots, pad, w["conv"], cfg.conv_norm_type, cfg.batch_norm_eps)
        res, z = add_layer_norm(res, c, 1.0, *_norm(w, "ff2_norm"), eps)
        _, x = add_layer_norm(res, _ffn(z, w, "ff2"), 0.5, *_norm(w, "out_norm"), eps)
    # NeMo counts the chunk's padded length T (cache_last_channel_len += T)
    cache.frames[slots] = frames + t
    return x, n
