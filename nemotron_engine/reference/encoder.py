"""The cache-aware FastConformer encoder: one streaming step for a batch of streams, and the offline forward.

SPEC.md §3. A layer is the macaron Conformer block
    x += 0.5 FF1(LN x);  x += MHSA(LN x);  x += Conv(LN x);  x += 0.5 FF2(LN x);  x = LN_out x
Streaming state per layer: projected keys and values of the last C frames (C = the left context, 70), and the last
K-1 GLU outputs of the conv module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import DROP_EXTRA_PRE_ENCODED
from .attention import position_projection, rel_attention
from .conv_module import conv_module
from .linear import linear
from .subsample import subsample


@dataclass
class EncoderState:
    """Dense per-stream encoder caches (the paged pool of the engine holds the same rows)."""

    k: torch.Tensor  # [L, B, C, D] projected keys of the last C frames (oldest first)
    v: torch.Tensor  # [L, B, C, D] projected values
    conv: torch.Tensor  # [L, B, D, K-1] last K-1 GLU outputs
    filled: torch.Tensor  # [B] int64, how many of the C cache rows hold real frames (NeMo cache_last_channel_len)

    @staticmethod
    def zeros(model, batch: int) -> "EncoderState":
        c = model.cfg
        L, C, D, K = c.n_layers, c.left_context, c.d_model, c.conv_kernel_size
        kw = dict(dtype=model.dtype, device=model.device)
        return EncoderState(
            k=torch.zeros(L, batch, C, D, **kw),
            v=torch.zeros(L, batch, C, D, **kw),
            conv=torch.zeros(L, batch, D, K - 1, **kw),
            filled=torch.zeros(batch, dtype=torch.int64, device=model.device),
        )

    def select(self, idx: list[int]) -> "EncoderState":
        return EncoderState(self.k[:, idx], self.v[:, idx], self.conv[:, idx], self.filled[idx])


def layer_norm(x: torch.Tensor, w: dict, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)


def feed_forward(z: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    """Linear -> SiLU -> Linear: [B, T, D] -> [B, T, D]."""
    h = F.silu(linear(z, w, f"{name}.w1", f"{name}.b1"))
    return linear(h, w, f"{name}.w2", f"{name}.b2")


def attention_mask(t: int, cached: int, filled: torch.Tensor, valid: torch.Tensor, left: int, r: int) -> torch.Tensor:
    """NeMo _create_masks for chunked_limited attention, sliced to the query rows -> masked [B, T, cached + T].

    Positions p = 0 .. cached + T - 1 (cache first). allowed(i, j) = 0 <= c(i) - c(j) <= left // (R+1) with
    c(p) = p // (R+1) (chunk index, not a sliding window); a key is valid when its cache row is filled
    (p >= cached - filled) and it is not padding; padded queries see nothing.
    """
    n = cached + t
    chunk = torch.arange(n, device=valid.device) // (r + 1)
    diff = chunk[cached:].unsqueeze(1) - chunk.unsqueeze(0)  # [T, N]
    allowed = (diff >= 0) & (diff <= left // (r + 1))
    p = torch.arange(n, device=valid.device)
    key_ok = (p.unsqueeze(0) >= (cached - filled).unsqueeze(1))  # [B, N]
    key_ok[:, cached:] &= valid
    ok = allowed.unsqueeze(0) & key_ok.unsqueeze(1) & valid.unsqueeze(2)  # [B, T, N]
    return ~ok


def layer_step(
    x: torch.Tensor,  # [B, T, D]
    w: dict,  # one layer's weights (keys without the "layers.{i}." prefix; w["conv"]: the conv module's)
    pos: torch.Tensor,  # [H, R, dh] position projections, first row at relative position rel_lo
    rel_lo: int,
    masked: torch.Tensor,  # [B, T, C + T]
    pad: torch.Tensor,  # [B, T] True for padded frames
    kv: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    conv_cache: torch.Tensor,  # [B, D, K-1]
    norm_type: str,
    ln_eps: float,
    bn_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Conformer layer over a chunk -> (y [B, T, D], k_chunk [B, T, D], v_chunk [B, T, D], conv_cache').

    kv(k_chunk, v_chunk) -> (k, v) [B, C + T, D] takes the chunk's projected keys and values, stores them if the
    caller keeps a cache, and returns what the chunk attends to: the projected keys and values of the C frames
    before the chunk, then the chunk's own (see dense_window, and encoder_step_paged, which reads them from the pool).
    """
    res = x + 0.5 * feed_forward(layer_norm(x, w, "ff1_norm", ln_eps), w, "ff1")
    z = layer_norm(res, w, "att_norm", ln_eps)
    q = linear(z, w, "att.wq", "att.bq")
    k_new = linear(z, w, "att.wk", "att.bk")  # [B, T, D]
    v_new = linear(z, w, "att.wv", "att.bv")
    k, v = kv(k_new, v_new)  # [B, C + T, D]
    a = rel_attention(q, k, v, pos, rel_lo, w["att.pos_bias_u"], w["att.pos_bias_v"], masked)
    res = res + linear(a, w, "att.wo", "att.bo")
    c, conv_cache = conv_module(layer_norm(res, w, "conv_norm", ln_eps), conv_cache, pad, w["conv"], norm_type,
                                bn_eps)
    res = res + c
    res = res + 0.5 * feed_forward(layer_norm(res, w, "ff2_norm", ln_eps), w, "ff2")
    return layer_norm(res, w, "out_norm", ln_eps), k_new, v_new, conv_cache


def dense_window(k_cache: torch.Tensor, v_cache: torch.Tensor):
    """layer_step's kv for dense caches k_cache, v_cache [B, C, D]: the window is [cache | chunk]."""
    return lambda k, v: (torch.cat([k_cache, k], dim=1), torch.cat([v_cache, v], dim=1))


def _frontend(model, mel: torch.Tensor, mel_len: torch.Tensor, drop: int):
    x, n = subsample(mel, mel_len, model.sub)
    if drop:
        # NeMo forward_internal: the first frames come from the re-fed pre-encode cache; slice them off
        x = x[:, drop:]
        n = (n - drop).clamp(min=0)
    if model.cfg.xscaling:
        x = x * math.sqrt(model.cfg.d_model)
    return x, n


def encoder_step(
    model,
    mel: torch.Tensor,  # [B, T_in, n_mels] re-fed pre-encode frames (none on a first chunk) + the chunk's frames
    mel_len: torch.Tensor,  # [B] int64 valid input frames
    state: EncoderState,
    r: int,  # lookahead of these streams
    first: bool,  # a stream's first chunk: no pre-encode cache, nothing dropped
) -> tuple[torch.Tensor, torch.Tensor, EncoderState]:
    """One cache-aware streaming step -> (out [B, T, D], out_len [B], new state). NeMo cache_aware_stream_step."""
    cfg = model.cfg
    x, n = _frontend(model, mel, mel_len, 0 if first else DROP_EXTRA_PRE_ENCODED)
    b, t, _ = x.shape
    cached = cfg.left_context
    valid = torch.arange(t, device=x.device).unsqueeze(0) < n.unsqueeze(1)  # [B, T]
    masked = attention_mask(t, cached, state.filled, valid, cfg.left_context, r)
    ks, vs, convs = [], [], []
    for i, w in enumerate(model.layers):
        x, k, v, cv = layer_step(x, w, model.pos[i], model.rel_lo, masked, ~valid, dense_window(state.k[i], state.v[i]),
                                 state.conv[i], cfg.conv_norm_type, cfg.layer_norm_eps, cfg.batch_norm_eps)
        # NeMo's cache update: the last C rows of [cache | chunk]
        ks.append(torch.cat([state.k[i], k], dim=1)[:, -cached:])
        vs.append(torch.cat([state.v[i], v], dim=1)[:, -cached:])
        convs.append(cv)
    # NeMo: cache_last_channel_len = clamp(len + T, max=C), counting the chunk's padded length T
    filled = (state.filled + t).clamp(max=cached)
    return x, n, EncoderState(torch.stack(ks), torch.stack(vs), torch.stack(convs), filled)


def encoder_step_paged(
    model,
    mel: torch.Tensor,  # [B, T_in, n_mels] as for encoder_step
    mel_len: torch.Tensor,  # [B]
    cache,  # StreamCache: keys/values in pages, conv caches and frame counters in slots
    slots: torch.Tensor,  # [B] int64 the streams' slots
    r: int,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """encoder_step over the paged stream cache, updated in place -> (out [B, T, D], out_len [B]).

    Same arithmetic as encoder_step: the chunk's projected keys and values are written into the pages at their
    frame positions, then the window of the C frames before the chunk and the chunk itself is read back through the
    page table in one gather (the pages hold C + R_max + 1 frames, so the chunk's rows never overwrite the window's;
    frames before the stream's start are masked), and the conv caches are rewritten in their slots.
    """
    cfg = model.cfg
    x, n = _frontend(model, mel, mel_len, 0 if first else DROP_EXTRA_PRE_ENCODED)
    b, t, _ = x.shape
    C = cfg.left_context
    pos = cache.frames[slots]  # [B] frames before this chunk
    valid = torch.arange(t, device=x.device).unsqueeze(0) < n.unsqueeze(1)  # [B, T]
    masked = attention_mask(t, C, pos.clamp(max=C), valid, C, r)
    start = pos - C
    for i, w in enumerate(model.layers):
        def window(k, v, i=i):
            cache.write_rows(i, slots, pos, k, v)
            return cache.gather_window(i, slots, start, C + t, reuse=True)  # [B, C + T, D], the pool's workspace

        x, _, _, cv = layer_step(x, w, model.pos[i], model.rel_lo, masked, ~valid, window, cache.conv[i, slots],
                                 cfg.conv_norm_type, cfg.layer_norm_eps, cfg.batch_norm_eps)
        cache.conv[i, slots] = cv
    # NeMo counts the chunk's padded length T (cache_last_channel_len += T)
    cache.frames[slots] = pos + t
    return x, n


def encoder_offline(
    model,
    mel: torch.Tensor,  # [B, T, n_mels]
    mel_len: torch.Tensor,  # [B] int64
    r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole utterance at once with chunked_limited attention at lookahead R -> (out [B, T3, D], len [B]).

    NeMo ConformerEncoder.forward without caches: causal convs pad with zeros, which is an empty attention cache
    and a zero conv cache.
    """
    cfg = model.cfg
    x, n = _frontend(model, mel, mel_len, 0)
    b, t, d = x.shape
    valid = torch.arange(t, device=x.device).unsqueeze(0) < n.unsqueeze(1)
    masked = attention_mask(t, 0, torch.zeros(b, dtype=torch.int64, device=x.device), valid, cfg.left_context, r)
    conv0 = x.new_zeros(b, d, cfg.conv_kernel_size - 1)
    for w in model.layers:
        pos = position_projection(w["att.wpos"], -(t - 1), t - 1, cfg.n_heads)
        x, _, _, _ = layer_step(x, w, pos, -(t - 1), masked, ~valid, lambda k, v: (k, v), conv0, cfg.conv_norm_type,
                                cfg.layer_norm_eps, cfg.batch_norm_eps)
    return x, n
