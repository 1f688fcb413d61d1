"""Greedy RNN-T decoding of one engine step straight on the stream cache: one launch for every stream, state read
and written in place at the streams' slots, one device-to-host copy at the end.

The engine calls `greedy_decode_pool` instead of gathering the decoder state, running the reference
`greedy_decode` and scattering it back. impl="cuda" is the kernel (nemotron_engine._C, csrc/rnnt_greedy.cu);
impl="torch" its host-sync-free torch twin (`_ext.rnnt_greedy_ref`), on any device. Both follow
`nemotron_engine.reference.decoder.greedy_decode` (docs/streaming.md#8-greedy-rnn-t-decoding) token for token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _ext

__all__ = ["greedy_decode_pool"]


def _as_index(name: str, x, b: int, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.dim() != 1 or x.shape[0] != b:
        raise ValueError(f"greedy_decode_pool: {name} must be [B] = [{b}] integers, got shape {list(x.shape)} "
                         f"dtype {x.dtype}")
    return x.to(device=device, dtype=torch.int64).contiguous()


def greedy_decode_pool(
    model,
    enc: torch.Tensor,  # [B, T, D] encoder frames of this step
    lengths: torch.Tensor,  # [B] valid frames
    cache,  # StreamCache (or anything with h, c [L, S, H], pred [S, J], label [S])
    slots: torch.Tensor,  # [B] each stream's slot in the cache, distinct
    frame_offset: torch.Tensor,  # [B] global index of enc[:, 0]
    *,
    impl: str = "cuda",
    streams_per_block: int = 0,
    kernel: str = "blocked",
) -> tuple[list[list[int]], list[list[int]]]:
    """Greedy RNN-T over the step's frames for every stream -> (tokens per stream, global frame per token).

    The decoder state of stream b (cache.h, cache.c, cache.pred, cache.label at slots[b]) is updated in place; a
    stream with lengths[b] == 0 is left untouched. Same results as `greedy_decode` on the gathered state.
    impl: "cuda" (the kernel; CUDA tensors, float32 or bfloat16) or "torch" (any device). kernel: which CUDA kernel
    ("blocked" or "grid", see `_ext.rnnt_greedy`); streams_per_block: passed on.

    >>> toks, stamps = greedy_decode_pool(engine.model, enc, enc_len, engine.cache, slots, offsets)
    """
    if impl not in ("cuda", "torch"):
        raise ValueError(f"greedy_decode_pool: impl must be 'cuda' or 'torch', got {impl!r}")
    cfg = model.cfg
    if enc.dim() != 3:
        raise ValueError(f"greedy_decode_pool: enc must be [B, T, D], got shape {list(enc.shape)}")
    b = enc.shape[0]
    dev = cache.h.device
    lengths = _as_index("lengths", lengths, b, dev)
    slots = _as_index("slots", slots, b, dev)
    frame_offset = _as_index("frame_offset", frame_offset, b, dev)
    f = F.linear(enc, model.joint["enc.weight"], model.joint["enc.bias"]).contiguous()  # [B, T, J]
    op = _ext.rnnt_greedy if impl == "cuda" else _ext.rnnt_greedy_ref
    tokens, frames, counts = op(f, lengths, slots, frame_offset, cache.h, cache.c, cache.pred, cache.label,
                                model.dec, model.joint, max_symbols=cfg.max_symbols, blank_id=cfg.blank_id,
                                streams_per_block=streams_per_block, kernel=kernel)
    # the step's one device -> host copy: counts, tokens and frames side by side
    host = torch.cat([counts.view(b, 1).to(torch.int32), tokens, frames], dim=1).cpu().numpy()  # [B, 1 + 2N]
    n_out = tokens.shape[1]
    bad = [i for i in range(b) if host[i, 0] < 0]
    if bad:
        raise ValueError(f"greedy_decode_pool: slots {slots[bad].tolist()} (streams {bad}) are outside the cache's "
                         f"{cache.h.shape[1]} slots; those streams were not decoded")
    toks = [host[i, 1: 1 + host[i, 0]].tolist() for i in range(b)]
    stamps = [host[i, 1 + n_out: 1 + n_out + host[i, 0]].tolist() for i in range(b)]
    return toks, stamps
