"""Cache-aware relative-position attention over the paged stream cache, one launch for a batch of streams.

Reference: `nemotron_engine.reference.attention.rel_attention` with the mask of
`nemotron_engine.reference.encoder.attention_mask` over the keys [window | chunk], the window read by
`StreamCache.gather_window(layer, slots, frames - C)` and the chunk's rows stored by
`StreamCache.write_rows(layer, slots, frames, k_new, v_new)` (as `encoder_step_paged` calls them).

One program per (stream, head). The position term is computed once for every relative position the chunk can use,
rel = (C + i) - p in [-(T-1), C+T-1]: M = (q + v) @ pos[rows]^T, then the rel-shift is a gather along each row,
bd[i, p] = (q_i + v) . pos[rel(i, p) - rel_lo] = M[i, C + i - p + T - 1]. Keys come in blocks of one page (the
window, from the page boundary at or below its first frame), then the chunk's own T rows, with an online softmax
that keeps NeMo's semantics: masked scores are -10000 and count in the denominator, their probabilities are zeroed
(a query that sees no key outputs 0), columns outside the reference's [C | T] score matrix do not exist.
Page rows a query may not see (before the stream's first frame, other streams' pages, stale rows) are never read
into a product: their loads are masked, so NaN or garbage there cannot reach the output.
fp32: products in full fp32 (no TF32); bf16: tensor cores, fp32 accumulation and softmax.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import cast_rne, interpreted

from nemotron_engine.reference.attention import MASK_VALUE


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    """a @ b with fp32 accumulation; DOT_FP32: widen the operands and multiply at full fp32 precision (no TF32)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _paged_attention_fwd_kernel(
    q, k_new, v_new,  # [B, T, D] (row strides free, unit stride along D)
    k_pages, v_pages,  # [P, PAGE_SIZE, D]
    table,  # [S, PPS] int
    slots, frames, lengths, lookahead,  # [B], [S], [B], [B] int
    pos,  # [H, R, DH]
    bias_u, bias_v,  # [H, DH]
    out,  # [B, T, D]
    T, R, rel_lo, pps, sm_scale,
    s_qb, s_qt, s_kb, s_kt, s_vb, s_vt, s_ob, s_ot,
    s_kp, s_kr, s_vp, s_vr, s_tab, s_ph, s_pr, s_uh, s_vh,
    C: tl.constexpr,
    DH: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DC: tl.constexpr,
    MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    RNE_BY_HAND: tl.constexpr,
    CONTENT_DC: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1).to(tl.int64)
    slot = tl.load(slots + i_b).to(tl.int64)
    f0 = tl.load(frames + slot).to(tl.int64)  # frames written before this chunk
    n = tl.load(lengths + i_b).to(tl.int64)  # valid frames of the chunk
    r1 = tl.load(lookahead + i_b).to(tl.int64) + 1  # frames per attention chunk
    p_tab = table + slot * s_tab

    o_t = tl.arange(0, BLOCK_T)  # query i (key position C + i)
    o_r = tl.arange(0, PAGE_SIZE)  # row of a page
    o_d = tl.arange(0, BLOCK_D)
    m_t = o_t < T
    m_d = o_d < DH
    o_hd = i_h * DH + o_d  # this head's columns of D
    c_q = (C + o_t) // r1  # attention chunk of each query
    m_q = o_t < n  # padded queries see nothing

    # position term for every relative position the chunk can use, column j <-> rel = j - (T - 1):
    # M[i, j] = (q_i + v) . pos[rel - rel_lo], accumulated over slices of DH
    o_j = tl.arange(0, BLOCK_R)
    o_pr = o_j - (T - 1) - rel_lo
    m_pr = (o_pr >= 0) & (o_pr < R)
    b_m = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    for d0 in tl.static_range(0, BLOCK_D, BLOCK_DC):
        o_dc = d0 + tl.arange(0, BLOCK_DC)
        m_dc = o_dc < DH
        b_qc = tl.load(q + i_b * s_qb + o_t[:, None] * s_qt + (i_h * DH + o_dc)[None, :],
                       mask=m_t[:, None] & m_dc[None, :], other=0.0)
        b_vc = tl.load(bias_v + i_h * s_vh + o_dc, mask=m_dc, other=0.0)
        b_qv = cast_rne(b_qc.to(tl.float32) + b_vc.to(tl.float32)[None, :], b_qc.dtype, RNE_BY_HAND)
        b_pos = tl.load(pos + i_h * s_ph + o_pr[:, None] * s_pr + o_dc[None, :], mask=m_pr[:, None] & m_dc[None, :],
                        other=0.0)  # [BLOCK_R, BLOCK_DC]
        b_m += _dot(b_qv, tl.trans(b_pos), DOT_FP32)

    p_qrow = q + i_b * s_qb + o_t * s_qt + i_h * DH  # [BLOCK_T] this head's part of each query row
    p_u = bias_u + i_h * s_uh
    if CONTENT_DC == 0:
        b_q = tl.load(p_qrow[:, None] + o_d[None, :], mask=m_t[:, None] & m_d[None, :], other=0.0)
        b_u = tl.load(p_u + o_d, mask=m_d, other=0.0)
        b_qu = cast_rne(b_q.to(tl.float32) + b_u.to(tl.float32)[None, :], b_q.dtype, RNE_BY_HAND)  # [BLOCK_T, BLOCK_D]
    else:
        b_qu = None  # the content product reads (q + u) slice by slice (_content)

    # online softmax over key blocks; starting the running max at MASK keeps it finite (every row has in-range
    # columns, scored MASK when masked) and leaves NeMo's result unchanged
    b_mx = tl.full([BLOCK_T], MASK, dtype=tl.float32)
    b_l = tl.zeros([BLOCK_T], dtype=tl.float32)
    b_acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)

    # the window, frames A .. A + C - 1 (key p = frame - A), one page per block: blocks start at the page boundary
    # at or below A, so rows of a block are contiguous in one page
    A = f0 - C
    shift = (A + PAGE_SIZE * tl.cdiv(C, PAGE_SIZE)) % PAGE_SIZE  # A mod PAGE_SIZE, from a non-negative operand
    for blk in range(tl.cdiv(C + PAGE_SIZE - 1, PAGE_SIZE)):
        fb = A - shift + blk * PAGE_SIZE  # first frame of the block (a multiple of PAGE_SIZE)
        o_p = fb - A + o_r  # key positions of the block's rows
        m_in = (o_p >= 0) & (o_p < C)  # columns of the reference's score matrix
        m_key = m_in & (fb + o_r >= 0)  # rows of frames before the stream's start are never read
        pg = tl.load(p_tab + (tl.maximum(fb, 0) // PAGE_SIZE) % pps, mask=fb >= 0, other=0).to(tl.int64)
        m_kd = m_key[:, None] & m_d[None, :]
        p_krow = k_pages + pg * s_kp + o_r * s_kr + i_h * DH  # [PAGE_SIZE]
        b_vv = tl.load(v_pages + pg * s_vp + o_r[:, None] * s_vr + o_hd[None, :], mask=m_kd, other=0.0)
        b_ac = _content(b_qu, p_qrow, p_u, m_t, p_krow, m_key, o_d, m_d, DH, BLOCK_D, CONTENT_DC, DOT_FP32,
                        RNE_BY_HAND)
        b_mx, b_l, b_acc = _block(b_ac, b_vv, b_m, o_t, o_p, m_in, m_key, c_q, m_q, r1, b_mx, b_l, b_acc,
                                  sm_scale, C, T, BLOCK_R, MASK, DOT_FP32, RNE_BY_HAND)

    # the chunk's own keys, p = C .. C + T - 1 (the padded ones are masked, still in the denominator)
    o_c = tl.arange(0, BLOCK_T)
    m_c = o_c < T
    m_cd = m_c[:, None] & m_d[None, :]
    p_knrow = k_new + i_b * s_kb + o_c * s_kt + i_h * DH  # [BLOCK_T]
    b_kn = tl.load(p_knrow[:, None] + o_d[None, :], mask=m_cd, other=0.0)
    b_vn = tl.load(v_new + i_b * s_vb + o_c[:, None] * s_vt + o_hd[None, :], mask=m_cd, other=0.0)
    b_ac = _content(b_qu, p_qrow, p_u, m_t, p_knrow, m_c, o_d, m_d, DH, BLOCK_D, CONTENT_DC, DOT_FP32, RNE_BY_HAND,
                    b_kn)
    b_mx, b_l, b_acc = _block(b_ac, b_vn, b_m, o_t, C + o_c, m_c, o_c < n, c_q, m_q, r1, b_mx, b_l, b_acc,
                              sm_scale, C, T, BLOCK_R, MASK, DOT_FP32, RNE_BY_HAND)

    b_o = tl.where((b_l > 0)[:, None], b_acc / b_l[:, None], 0.0)
    tl.store(out + i_b * s_ob + o_t[:, None] * s_ot + o_hd[None, :], cast_rne(b_o, out.dtype.element_ty, RNE_BY_HAND),
             mask=m_t[:, None] & m_d[None, :])

    # the chunk's keys and values into the pages at frames f0 .. f0 + T - 1 (this head's columns); the ring holds
    # at least C + T frames, so these rows are never the window rows read above
    f_new = f0 + o_c
    pg_new = tl.load(p_tab + (f_new // PAGE_SIZE) % pps, mask=m_c, other=0).to(tl.int64)
    row_new = f_new % PAGE_SIZE
    tl.store(k_pages + pg_new[:, None] * s_kp + row_new[:, None] * s_kr + o_hd[None, :], b_kn, mask=m_cd)
    tl.store(v_pages + pg_new[:, None] * s_vp + row_new[:, None] * s_vr + o_hd[None, :], b_vn, mask=m_cd)


@triton.jit
def _content(b_qu, p_qrow, p_u, m_t, p_krow, m_key, o_d, m_d, DH: tl.constexpr, BLOCK_D: tl.constexpr,
             CONTENT_DC: tl.constexpr, DOT_FP32: tl.constexpr, RNE_BY_HAND: tl.constexpr, b_k_loaded=None):
    """The content term (q + u) . k of a block of keys [BLOCK_T, BLOCK_K]: keys at row pointers p_krow [BLOCK_K]
    (m_key: rows that may be read), queries at p_qrow [BLOCK_T].

    CONTENT_DC == 0: over whole rows, (q + u) held in b_qu and the keys loaded here (or given, b_k_loaded).
    CONTENT_DC > 0: DH in slices of CONTENT_DC columns, each slice of (q + u) and of the keys loaded as it is used:
    the [BLOCK_T, BLOCK_K, CONTENT_DC] products of a slice are all a thread holds at once, not the whole
    [BLOCK_T, BLOCK_K, BLOCK_D] (a register-pressure variant; it sums DH in slices, so it rounds differently)."""
    if CONTENT_DC == 0:
        if b_k_loaded is None:
            b_k = tl.load(p_krow[:, None] + o_d[None, :], mask=m_key[:, None] & m_d[None, :], other=0.0)
        else:
            b_k = b_k_loaded
        if DOT_FP32:
            # multiply-reduce: tl.dot's FMA path would hold a whole row and column of the DH reduction per thread
            # (it spills at DH = 128); the products of widened bf16 operands are exact in fp32
            b_ac = tl.sum(b_qu.to(tl.float32)[:, None, :] * b_k.to(tl.float32)[None, :, :], 2)
        else:
            b_ac = tl.dot(b_qu, tl.trans(b_k))
    else:
        b_ac = tl.zeros([p_qrow.shape[0], p_krow.shape[0]], dtype=tl.float32)
        for d0 in tl.static_range(0, BLOCK_D, CONTENT_DC):
            o_dc = d0 + tl.arange(0, CONTENT_DC)
            m_dc = o_dc < DH
            b_qc = tl.load(p_qrow[:, None] + o_dc[None, :], mask=m_t[:, None] & m_dc[None, :], other=0.0)
            b_uc = tl.load(p_u + o_dc, mask=m_dc, other=0.0)
            b_quc = cast_rne(b_qc.to(tl.float32) + b_uc.to(tl.float32)[None, :], b_qc.dtype, RNE_BY_HAND)
            b_kc = tl.load(p_krow[:, None] + o_dc[None, :], mask=m_key[:, None] & m_dc[None, :], other=0.0)
            if DOT_FP32:
                b_ac += tl.sum(b_quc.to(tl.float32)[:, None, :] * b_kc.to(tl.float32)[None, :, :], 2)
            else:
                b_ac += tl.dot(b_quc, tl.trans(b_kc))
    return b_ac


@triton.jit
def _block(b_ac, b_vv, b_m, o_t, o_p, m_in, m_key, c_q, m_q, r1, b_mx, b_l, b_acc,
           sm_scale, C: tl.constexpr, T, BLOCK_R: tl.constexpr, MASK: tl.constexpr, DOT_FP32: tl.constexpr,
           RNE_BY_HAND: tl.constexpr):
    """One block of keys at positions o_p [BLOCK_K], content term b_ac, into the running (max, denominator,
    weighted sum)."""
    # rel-shift: the position term of (i, p) is column C + i - p + T - 1 of M
    i_rel = C + o_t[:, None] - o_p[None, :] + (T - 1)
    b_bd = tl.gather(b_m, tl.minimum(tl.maximum(i_rel, 0), BLOCK_R - 1).to(tl.int32), 1)
    # chunked_limited: 0 <= c(i) - c(p) <= C // r1  (diff <= C // r1  <=>  diff * r1 <= C for integers)
    diff = c_q[:, None] - (tl.maximum(o_p, 0) // r1)[None, :]
    m_vis = (diff >= 0) & (diff * r1 <= C) & m_key[None, :] & m_q[:, None]
    # NeMo: masked scores are MASK (they count in the denominator), their probabilities zeroed; columns outside
    # the reference's score matrix do not exist
    b_s = tl.where(m_vis, (b_ac + b_bd) * sm_scale, MASK)
    b_s = tl.where(m_in[None, :], b_s, float("-inf"))
    b_mx_new = tl.maximum(b_mx, tl.max(b_s, 1))
    b_alpha = tl.exp(b_mx - b_mx_new)
    b_p = tl.exp(b_s - b_mx_new[:, None])
    b_l = b_l * b_alpha + tl.sum(b_p, 1)
    b_p = tl.where(m_vis, b_p, 0.0)
    b_acc = b_acc * b_alpha[:, None] + _dot(cast_rne(b_p, b_vv.dtype, RNE_BY_HAND), b_vv, DOT_FP32)
    return b_mx_new, b_l, b_acc


TUNABLE = ("CONTENT_DC", "BLOCK_DC", "num_warps", "num_stages", "maxnreg")


def _config(T: int, C: int, dh: int, page_size: int, dtype: torch.dtype, interpreted: bool) -> dict:
    """The kernel's constexprs and launch options (one place, also used by the offline sm_90 compile check)."""
    BLOCK_D = max(16, triton.next_power_of_2(dh))
    # fp32 at full precision; bf16 on the tensor cores, except under the interpreter, whose tl.dot (triton 3.6)
    # multiplies the raw 16-bit patterns: there the operands are widened first (the same exact products)
    dot_fp32 = dtype == torch.float32 or interpreted
    return dict(
        C=C, DH=dh, PAGE_SIZE=page_size,
        BLOCK_T=max(16, triton.next_power_of_2(T)),  # tl.dot needs every dimension >= 16
        BLOCK_R=max(16, triton.next_power_of_2(C + 2 * T - 1)),  # relative positions -(T-1) .. C+T-1
        BLOCK_D=BLOCK_D,
        BLOCK_DC=min(BLOCK_D, 16 if dot_fp32 else 32),  # DH slice of the position product
        MASK=MASK_VALUE, DOT_FP32=dot_fp32, RNE_BY_HAND=interpreted, CONTENT_DC=0,
        # sm_90 at Nemotron's dh = 128: 8 warps keep the per-thread tiles in registers (ptxas: no spills)
        num_warps=8 if BLOCK_D >= 128 or (dot_fp32 and BLOCK_D >= 64) else 4,
        num_stages=2,
    )


def paged_attention(
    q: torch.Tensor,  # [B, T, D] projected queries of the chunk
    k_new: torch.Tensor,  # [B, T, D] projected keys of the chunk (written into the pages)
    v_new: torch.Tensor,  # [B, T, D] projected values of the chunk (written into the pages)
    k_pages: torch.Tensor,  # [P, page_size, D] one layer's key pool, e.g. cache.k[i]
    v_pages: torch.Tensor,  # [P, page_size, D] one layer's value pool
    table: torch.Tensor,  # [S, pages_per_stream] int page table (cache.table)
    slots: torch.Tensor,  # [B] int the streams' slots
    frames: torch.Tensor,  # [S] int frames written per slot before this chunk (cache.frames)
    lengths: torch.Tensor,  # [B] int valid frames of each chunk (the rest is padding)
    lookahead: torch.Tensor,  # [B] int each stream's lookahead r (chunk = r + 1 frames)
    pos: torch.Tensor,  # [H, R, dh] position projections for relative positions rel_lo .. rel_lo + R - 1
    rel_lo: int,
    pos_bias_u: torch.Tensor,  # [H, dh]
    pos_bias_v: torch.Tensor,  # [H, dh]
    left_context: int,  # C, the window of cached frames
    out: torch.Tensor | None = None,  # [B, T, D]
    tuning: dict | None = None,
) -> torch.Tensor:
    """Attention of each stream's chunk over [its C cached frames | the chunk], the chunk's K/V written to pages.

    Must match, per stream b with f0 = frames[slots[b]]:
        k_win, v_win = cache.gather_window(layer, slots, frames[slots] - C)          # [B, C, D]
        masked = attention_mask(T, C, frames[slots].clamp(max=C), valid, C, r)       # per stream r = lookahead[b]
        out = rel_attention(q, cat(k_win, k_new), cat(v_win, v_new), pos, rel_lo, u, v, masked)
        cache.write_rows(layer, slots, frames[slots], k_new, v_new)                  # all T rows
    `frames` is not advanced here (the caller adds T after the last layer). Streams of any fill level and lookahead
    share the launch. fp32 inputs are multiplied at full fp32 precision (no TF32); bf16/fp16 inputs use the tensor
    cores with fp32 accumulation. Returns `out` [B, T, D] in q's dtype.
    tuning: overrides of the launch configuration (TUNABLE: CONTENT_DC, BLOCK_DC, num_warps, num_stages, maxnreg),
    for bench/sweep_kernels.py and the tests; the defaults come from `_config`.

    >>> out = paged_attention(q, k, v, cache.k[i], cache.v[i], cache.table, slots, cache.frames, n,
    ...                       torch.full_like(n, r), model.pos[i], model.rel_lo, w["att.pos_bias_u"],
    ...                       w["att.pos_bias_v"], cfg.left_context)
    """
    B, T, D = q.shape
    H, R, dh = pos.shape
    P, page_size, _ = k_pages.shape
    C = int(left_context)
    for name, x in (("k_new", k_new), ("v_new", v_new)):
        if x.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected q's shape {tuple(q.shape)}")
    if H * dh != D:
        raise ValueError(f"pos has {H} heads x {dh} = {H * dh} columns, but q has D = {D}")
    if k_pages.shape != v_pages.shape or k_pages.shape[2] != D:
        raise ValueError(f"k_pages {tuple(k_pages.shape)} / v_pages {tuple(v_pages.shape)} must be [P, page_size, {D}]")
    if page_size < 16 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two >= 16 (one page is one block of keys), got {page_size}")
    if table.shape[1] * page_size < C + T:
        raise ValueError(f"{table.shape[1]} pages of {page_size} rows per stream hold fewer than C + T = {C + T} "
                         "frames: writing the chunk would overwrite the window being read")
    if rel_lo > -(T - 1) or rel_lo + R - 1 < C + T - 1:
        raise ValueError(f"pos covers relative positions {rel_lo} .. {rel_lo + R - 1}, a chunk of T = {T} needs "
                         f"{-(T - 1)} .. {C + T - 1}; build it with position_projection over [-R_max, C + R_max]")
    if q.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"paged_attention supports float32 and bfloat16, got {q.dtype}")
    if not (q.dtype == k_new.dtype == v_new.dtype == k_pages.dtype == v_pages.dtype == pos.dtype):
        raise TypeError(f"q, k_new, v_new, pages and pos must share one dtype; got {q.dtype}, {k_new.dtype}, "
                        f"{v_new.dtype}, {k_pages.dtype}, {v_pages.dtype}, {pos.dtype}")
    for name, x in (("q", q), ("k_new", k_new), ("v_new", v_new), ("k_pages", k_pages), ("v_pages", v_pages),
                    ("pos", pos), ("pos_bias_u", pos_bias_u), ("pos_bias_v", pos_bias_v)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride along its last dimension (call .contiguous())")
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with unit last stride, got {tuple(out.shape)} "
                         f"{out.dtype}")
    if B == 0 or T == 0:
        return out

    cfg = _config(T, C, dh, page_size, q.dtype, interpreted())
    if tuning:
        bad = sorted(set(tuning) - set(TUNABLE))
        if bad:
            raise ValueError(f"tuning: unknown keys {bad}; tunable: {list(TUNABLE)}")
        cfg.update(tuning)
        if cfg["CONTENT_DC"] and (cfg["CONTENT_DC"] < 16 or cfg["BLOCK_D"] % cfg["CONTENT_DC"]):
            raise ValueError(f"tuning: CONTENT_DC must be 0 or a power of two >= 16 dividing {cfg['BLOCK_D']}, got "
                             f"{cfg['CONTENT_DC']}")
    _paged_attention_fwd_kernel[(B, H)](
        q, k_new, v_new, k_pages, v_pages, table, slots, frames, lengths, lookahead, pos, pos_bias_u, pos_bias_v,
        out,
        T, R, rel_lo, table.shape[1], 1.0 / math.sqrt(dh),
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        out.stride(0), out.stride(1),
        k_pages.stride(0), k_pages.stride(1), v_pages.stride(0), v_pages.stride(1), table.stride(0),
        pos.stride(0), pos.stride(1), pos_bias_u.stride(0), pos_bias_v.stride(0),
        **cfg,
    )
    return out

