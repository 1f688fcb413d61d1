"""Relative-position multi-head self-attention (NeMo RelPositionMultiHeadAttention, SPEC.md §3.6).

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


def rel_attention(
    q: torch.Tensor,  # [B, T, D] projected queries of the chunk
    k: torch.Tensor,  # [B, N, D] projected keys, N = cached + T (the chunk's rows are the last T)
    v: torch.Tensor,  # [B, N, D] projected values
    pos: torch.Tensor,  # [H, R, dh] position projections for r = rel_lo .. rel_lo + R - 1
    rel_lo: int,
    pos_bias_u: torch.Tensor,  # [H, dh]
    pos_bias_v: torch.Tensor,  # [H, dh]
    masked: torch.Tensor,  # [B, T, N] True where the key is not visible to the query
    per_stream: bool | None = None,  # one product per stream; default: on the CPU
) -> torch.Tensor:
    """Scores (content + position) / sqrt(dh), -10000 masking, softmax, re-zeroing -> heads merged [B, T, D].

    On the CPU (per_stream) each stream gets its own products, batched over the H heads and read straight from the
    keys' and values' interleaved rows ([B, N, H, dh] as stored, no transposed copies), so a stream's numbers are
    the same bit for bit whatever streams share the call: MKL rounds a batched product differently with the batch
    size (measured: torch.bmm over B streams differs from the same stream alone at T = 7), and a flipped near tie
    changes the tokens (the bench caught one). Elsewhere the products are batched over streams and heads in one
    call (torch.matmul may copy the permuted keys and values into its own layout).
    """
    b, t, d = q.shape
    n = k.shape[1]
    h, _, dh = pos.shape
    q = q.view(b, t, h, dh)
    k = k.view(b, n, h, dh).permute(0, 2, 3, 1)  # [B, H, dh, N] (a view)
    v = v.view(b, n, h, dh).transpose(1, 2)  # [B, H, N, dh] (a view)
    qu = (q + pos_bias_u).transpose(1, 2)  # [B, H, T, dh]
    qv = (q + pos_bias_v).transpose(1, 2)
    # relative position of query i (absolute n - t + i) to key j: rel = n - t + i - j, from 1 - t to n - 1
    lo, hi = 1 - t, n - 1
    table = pos[:, lo - rel_lo : hi - rel_lo + 1].transpose(1, 2)  # [H, dh, n + t - 1] (a view)
    if per_stream is None:
        per_stream = q.device.type == "cpu"
    if per_stream:
        ac = q.new_empty(b, h, t, n)
        bd_rows = q.new_empty(b, h, t, table.shape[2])  # [B, H, T, n + t - 1]
        for s in range(b):
            torch.bmm(qu[s], k[s], out=ac[s])
            torch.bmm(qv[s], table, out=bd_rows[s])
    else:
        ac = torch.matmul(qu, k)  # [B, H, T, N]
        bd_rows = torch.matmul(qv, table)
    i = torch.arange(t, device=q.device).unsqueeze(1)
    j = torch.arange(n, device=q.device).unsqueeze(0)
    bd = torch.gather(bd_rows, -1, ((n - t + i) - j - lo).expand(b, h, t, n))  # [B, H, T, N]
    scores = (ac + bd) / math.sqrt(dh)
    masked = masked.unsqueeze(1)  # [B, 1, T, N]
    attn = torch.softmax(scores.masked_fill(masked, MASK_VALUE), dim=-1).masked_fill(masked, 0.0)
    if per_stream:
        # each stream's heads into a contiguous [H, T, dh] block, merged into [B, T, D] by one copy at the end
        # (not bmm into a strided out= view of [B, T, H, dh], which torch does not write in place)
        out = q.new_empty(b, h, t, dh)
        for s in range(b):
            torch.bmm(attn[s], v[s], out=out[s])
    else:
        out = torch.matmul(attn, v)  # [B, H, T, dh]
    return out.transpose(1, 2).reshape(b, t, d)
