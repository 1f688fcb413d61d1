"""The cache-aware FastConformer encoder, written once: one streaming step over the paged stream cache, and the
offline forward, both calling their ops through an op table (ops.py) so that every backend runs this code.

A layer is the macaron Conformer block (docs/streaming.md#4-encoder-layer):
    x += 0.5 FF1(LN x);  x += MHSA(LN x);  x += Conv(LN x);  x += 0.5 FF2(LN x);  x = LN_out x
Streaming state per layer, in the pool (cache.py): the projected keys and values of the last C frames (C = the left
context, 70 for Nemotron) and the last K-1 GLU outputs of the conv module; per stream, the frame position of the
next chunk (`cache.frames`, padded frames included, NeMo's cache_last_channel_len before its clamp to C;
docs/streaming.md#7-caches-and-their-counters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from .config import DROP_EXTRA_PRE_ENCODED
from .reference.attention import attention_mask, position_projection, rel_attention
from .reference.conv_module import glu_conv_norm
from .reference.prompt import prompt_project


@dataclass
class StepPlan:
    """What every layer of one step shares, computed once per step (the attention mask only if a backend asks)."""

    slots: torch.Tensor  # [B] int64 the streams' slots in the pool
    start: torch.Tensor  # [B] int64 frame position of the chunk's first frame (cache.frames before the step)
    lengths: torch.Tensor  # [B] int64 valid frames of the chunk (the rest of its T frames is padding)
    t: int  # frames in the chunk, padding included
    r: int  # lookahead of these streams (chunk = r + 1 frames)
    left_context: int  # C
    memo: dict = field(default_factory=dict)  # what a backend computes once per step for every layer (ops._paged)

    @cached_property
    def pad(self) -> torch.Tensor:  # [B, T] True for padded frames
        return torch.arange(self.t, device=self.lengths.device).unsqueeze(0) >= self.lengths.unsqueeze(1)

    @cached_property
    def masked(self) -> torch.Tensor:  # [B, T, C + T] keys [window | chunk] each query may not see
        C = self.left_context
        return attention_mask(self.t, C, self.start.clamp(max=C), ~self.pad, C, self.r)

    @cached_property
    def lookahead(self) -> torch.Tensor:  # [B] int64, r per stream (the Triton kernel takes one per stream)
        return torch.full_like(self.lengths, self.r)


def feed_forward(ops, z: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    """Linear -> SiLU -> Linear: [B, T, D] -> [B, T, D]."""
    return ops.linear(torch.nn.functional.silu(ops.linear(z, w, f"{name}.w1", f"{name}.b1")), w, f"{name}.w2",
                      f"{name}.b2")


def layer_step(
    ops,
    x: torch.Tensor,  # [B, T, D]
    w: dict,  # one layer's weights (keys without the "layers.{i}." prefix; w["conv"]: the conv module's)
    eps: float,  # LayerNorm eps
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    conv: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One Conformer layer over a chunk -> [B, T, D].

    attend(q, k, v) -> [B, T, D]: the attention of the chunk's projected queries over the keys and values in front of
    the chunk and the chunk's own k, v [B, T, D] (storing k, v where the caller keeps a cache).
    conv(a) -> [B, T, D]: SiLU(norm(depthwise(GLU(a)))) of the first pointwise conv's output a [B, T, 2D], over the
    caller's conv cache (updated).
    """
    z = ops.layer_norm(x, w, "ff1_norm", eps)
    res, z = ops.add_layer_norm(x, feed_forward(ops, z, w, "ff1"), 0.5, w, "att_norm", eps)
    q = ops.linear(z, w, "att.wq", "att.bq")
    k = ops.linear(z, w, "att.wk", "att.bk")
    v = ops.linear(z, w, "att.wv", "att.bv")
    res, z = ops.add_layer_norm(res, ops.linear(attend(q, k, v), w, "att.wo", "att.bo"), 1.0, w, "conv_norm", eps)
    wc = w["conv"]
    y = conv(ops.linear(z, wc, "pw1.weight", "pw1.bias"))
    res, z = ops.add_layer_norm(res, ops.linear(y, wc, "pw2.weight", "pw2.bias"), 1.0, w, "ff2_norm", eps)
    _, x = ops.add_layer_norm(res, feed_forward(ops, z, w, "ff2"), 0.5, w, "out_norm", eps)
    return x


def frontend(ops, model, mel: torch.Tensor, mel_len: torch.Tensor, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsampling, the frames of the re-fed pre-encode cache dropped, xscaling -> (x [B, T, D], lengths [B])."""
    x, n = ops.conv_stages(mel, mel_len, model.sub)
    x = ops.linear(x, model.sub, "out.weight", "out.bias")
    if drop:
        # NeMo forward_internal: the first frames come from the re-fed pre-encode cache; slice them off
        x = x[:, drop:]
        n = (n - drop).clamp(min=0)
    if model.cfg.xscaling:
        x = x * math.sqrt(model.cfg.d_model)
    return x.contiguous(), n


def encoder_step(
    model,
    ops,
    mel: torch.Tensor,  # [B, T_in, n_mels] re-fed pre-encode frames (none on a first chunk) + the chunk's frames
    mel_len: torch.Tensor,  # [B] int64 valid input frames
    cache,  # StreamCache: keys/values in pages, conv caches and frame positions in slots; updated in place
    slots: torch.Tensor,  # [B] int64 the streams' slots, distinct
    r: int,  # lookahead of these streams
    first: bool,  # a stream's first chunk: no pre-encode cache, nothing dropped
) -> tuple[torch.Tensor, torch.Tensor]:
    """One cache-aware streaming step (NeMo cache_aware_stream_step) -> (out [B, T, D], out_len [B]).

    Per layer, ops.attention writes the chunk's projected keys and values into the pages at their frame positions and
    attends over the window of the C frames before the chunk and the chunk itself (the pages hold C + R_max + 1
    frames, so the chunk's rows never overwrite the window's; frames before the stream's start are masked), and
    ops.conv rewrites the layer's conv caches in the streams' slots.
    """
    cfg = model.cfg
    x, n = frontend(ops, model, mel, mel_len, 0 if first else DROP_EXTRA_PRE_ENCODED)
    plan = StepPlan(slots, cache.frames[slots], n, x.shape[1], r, cfg.left_context)
    for i, w in enumerate(model.layers):
        x = layer_step(
            ops, x, w, cfg.layer_norm_eps,
            attend=lambda q, k, v: ops.attention(q, k, v, cache, i, plan, model.pos[i], model.rel_lo,
                                                 w["att.pos_bias_u"], w["att.pos_bias_v"]),
            conv=lambda a: ops.conv(a, cache, i, plan, w["conv"], cfg.conv_norm_type, cfg.batch_norm_eps))
    # NeMo counts the chunk's padded length T (cache_last_channel_len += T)
    cache.frames[slots] = plan.start + plan.t
    return x, n


def joint_input(
    model,
    ops,
    x: torch.Tensor,  # [B, T, D] encoder output
    prompt: torch.Tensor,  # [B] int64 each stream's language index (unused for a model without a prompt)
) -> torch.Tensor:
    """What the joint sees -> [B, T, D]: the encoder output, through the language prompt's MLP on prompt models
    (NeMo conformer_stream_step's `_apply_prompt_to_encoded`; reference.prompt.prompt_project)."""
    if not model.cfg.num_prompts:
        return x
    return prompt_project(x, prompt, model.prompt, model.cfg.num_prompts, ops.linear)


def encoder_offline(
    model,
    ops,
    mel: torch.Tensor,  # [B, T, n_mels]
    mel_len: torch.Tensor,  # [B] int64
    r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole utterance at once with chunked_limited attention at lookahead R -> (out [B, T3, D], len [B]).

    NeMo ConformerEncoder.forward without caches: causal convs pad with zeros, which is an empty attention cache
    and a zero conv cache. Attention and the conv module run their references; `ops` gives the products and norms.
    """
    cfg = model.cfg
    x, n = frontend(ops, model, mel, mel_len, 0)
    b, t, d = x.shape
    valid = torch.arange(t, device=x.device).unsqueeze(0) < n.unsqueeze(1)
    masked = attention_mask(t, 0, torch.zeros(b, dtype=torch.int64, device=x.device), valid, cfg.left_context, r)
    conv0 = x.new_zeros(b, d, cfg.conv_kernel_size - 1)
    for w in model.layers:
        pos = position_projection(w["att.wpos"], -(t - 1), t - 1, cfg.n_heads)
        x = layer_step(
            ops, x, w, cfg.layer_norm_eps,
            attend=lambda q, k, v: rel_attention(q, k, v, pos, -(t - 1), w["att.pos_bias_u"], w["att.pos_bias_v"],
                                                 masked),
            conv=lambda a: glu_conv_norm(a, conv0, ~valid, w["conv"], cfg.conv_norm_type, cfg.batch_norm_eps)[0])
    return x, n
