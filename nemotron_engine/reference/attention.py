"""Relative-position multi-head self-attention (NeMo RelPositionMultiHeadAttention) and its streaming mask.

Queries are the chunk's frames; keys and values are [cached frames | chunk frames] (streaming) or the whole
utterance (offline). Keys and values enter already projected: the streaming cache stores K and V, never the
layer inputs, so cached frames are never re-projected (NeMo caches LayerNorm-ed inputs and re-projects them; the
result is the same linear map of the same rows).

The position term uses a per-layer table P = linear_pos(pe(r)) over relative positions r. NeMo builds the
2N-1 row table every step and aligns it with rel_shift; here bd[i, j] = (q_i + v) . P[r(i, j)] with
r(i, j) = (N - T + i) - j (query absolute position minus key absolute position) is a plain gather.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# NeMo INF_VAL: masked scores are filled with -10000 (not -inf), and the probabilities re-zeroed after softmax.
MASK_VALUE = -10000.0


def sinusoid_table(rel: torch.Tensor, d_model: int) -> torch.Tensor:
    """Interleaved sin/cos rows for relative positions rel [N] (float32) -> [N, d_model].

    Same arithmetic as NeMo RelPositionalEncoding.create_pe: w_k = exp(2k * -(ln 10000 / d)),
    pe[r, 2k] = sin(r w_k), pe[r, 2k+1] = cos(r w_k), all in float32.
    """
    pos = rel.to(torch.float32).unsqueeze(1)  # [N, 1]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=rel.device)
                    * -(math.log(10000.0) / d_model))
    pe = torch.zeros(rel.numel(), d_model, dtype=torch.float32, device=rel.device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


def position_projection(w_pos: torch.Tensor, rel_lo: int, rel_hi: int, n_heads: int) -> torch.Tensor:
    """P = linear_pos(pe(r)) for r = rel_lo .. rel_hi, split into heads -> [H, rel_hi - rel_lo + 1, d_head].

    linear_pos never has a bias in NeMo. Computed once per layer at load for streaming (the rows never change).
    """
    d_model = w_pos.shape[1]
    rel = torch.arange(rel_lo, rel_hi + 1, device=w_pos.device)
    p = F.linear(sinusoid_table(rel, d_model).to(w_pos.dtype), w_pos)  # [R, D]
    return p.view(rel.numel(), n_heads, -1).transpose(0, 1).contiguous()  # [H, R, dh]


def attention_mask(t: int, cached: int, filled: torch.Tensor, valid: torch.Tensor, left: int, r: int) -> torch.Tensor:
    """NeMo's chunked_limited attention mask (`_create_masks`), sliced to the query rows -> masked [B, T, cached + T].

    Positions p = 0 .. cached + T - 1 (cache first). allowed(i, j) = 0 <= c(i) - c(j) <= left // (R+1) with
    c(p) = p // (R+1) (chunk index, not a sliding window); a key is valid when its cache row is filled
    (p >= cached - filled) and it is not padding; padded queries see nothing.

    t: query frames; cached: cache rows in front of the chunk; filled [B]: how many of them hold real frames;
    valid [B, T]: the chunk's real (not padded) frames; left: the left context C; r: the lookahead R.
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


def position_scores(qv: torch.Tensor, pos: torch.Tensor, rel_lo: int, n: int) -> torch.Tensor:
    """The position term bd[b, h, i, j] = qv[b, h, i] . P[h, r(i, j)], r(i, j) = (n - t + i) - j -> [B, H, T, N].

    qv [B, H, T, dh] (queries plus pos_bias_v); pos [H, R, dh] covers relative positions rel_lo .. rel_lo + R - 1.
    """
    b, h, t, _ = qv.shape
    lo, hi = 1 - t, n - 1  # the relative positions the chunk uses
    table = pos[:, lo - rel_lo: hi - rel_lo + 1].transpose(1, 2)  # [H, dh, n + t - 1]
    rows = torch.matmul(qv, table)  # [B, H, T, n + t - 1]
    return gather_positions(rows, n)


def gather_positions(rows: torch.Tensor, n: int) -> torch.Tensor:
    """rows [B, H, T, n + T - 1] over relative positions 1 - T .. n - 1 -> bd [B, H, T, N] at r(i, j)."""
    b, h, t, _ = rows.shape
    i = torch.arange(t, device=rows.device).unsqueeze(1)
    j = torch.arange(n, device=rows.device).unsqueeze(0)
    return torch.gather(rows, -1, ((n - t + i) - j - (1 - t)).expand(b, h, t, n))


def masked_softmax(scores: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """NeMo's masking: scores [B, H, T, N] filled with -10000 where masked [B, T, N], softmax, then re-zeroed."""
    masked = masked.unsqueeze(1)  # [B, 1, T, N]
    return torch.softmax(scores.masked_fill(masked, MASK_VALUE), dim=-1).masked_fill(masked, 0.0)


def rel_attention(
    q: torch.Tensor,  # [B, T, D] projected queries of the chunk
    k: torch.Tensor,  # [B, N, D] projected keys, N = cached + T (the chunk's rows are the last T)
    v: torch.Tensor,  # [B, N, D] projected values
    pos: torch.Tensor,  # [H, R, dh] position projections for r = rel_lo .. rel_lo + R - 1
    rel_lo: int,
    pos_bias_u: torch.Tensor,  # [H, dh]
    pos_bias_v: torch.Tensor,  # [H, dh]
    masked: torch.Tensor,  # [B, T, N] True where the key is not visible to the query
) -> torch.Tensor:
    """Scores (content + position) / sqrt(dh), -10000 masking, softmax, re-zeroing -> heads merged [B, T, D]."""
    b, t, d = q.shape
    n = k.shape[1]
    h, _, dh = pos.shape
    q = q.view(b, t, h, dh)
    k = k.view(b, n, h, dh).permute(0, 2, 3, 1)  # [B, H, dh, N]
    v = v.view(b, n, h, dh).transpose(1, 2)  # [B, H, N, dh]
    qu = (q + pos_bias_u).transpose(1, 2)  # [B, H, T, dh]
    qv = (q + pos_bias_v).transpose(1, 2)
    ac = torch.matmul(qu, k)  # [B, H, T, N]
    bd = position_scores(qv, pos, rel_lo, n)  # [B, H, T, N]
    attn = masked_softmax((ac + bd) / math.sqrt(dh), masked)
    out = torch.matmul(attn, v)  # [B, H, T, dh]
    return out.transpose(1, 2).reshape(b, t, d)
