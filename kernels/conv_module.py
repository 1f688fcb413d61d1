"""The causal Conformer conv module step over the slot-addressed conv cache pool, in Triton.

Matches `nemotron_engine.reference.conv_module.conv_module` on `cache = conv_pool[layer, slots]`, and leaves the
reference's new cache in `conv_pool[layer, slots]` (what `encoder_step_paged` does with `cache.conv[i, slots] = cv`).

z [B, T, D] -> pw1 (D -> 2D) -> GLU -> zero padded frames -> causal depthwise conv (kernel K) over
[K-1 cached GLU outputs | chunk] -> LayerNorm over channels or BatchNorm (eval statistics) -> SiLU -> pw2 -> [B, T, D]

Two kernels between the two pointwise GEMMs:

1. `_conv_glu_fwd_kernel` writes seq [B, K-1+T, D] = [old cache (transposed from the pool's [D, K-1]) | GLU(a)
   with padded frames zeroed], one tile of rows x channels per program.
2. `_conv_dw_norm_fwd_kernel`: per program BLOCK_T frames of one stream with all D channels on chip, the depthwise
   conv as K shifted row loads of seq, the norm (the LayerNorm reduction over D happens in registers), SiLU ->
   y [B, T, D]; the stream's first program also writes the new cache, seq rows T .. T+K-2, into the pool.

`glu_conv_norm` launches the two kernels (the microbenchmark also times it alone); `conv_module` adds the GEMMs.

Why seq: the new cache overwrites the old one in place, and the conv reads the old one. With the old cache copied
into seq by kernel 1, kernel 2 reads only seq and writes only the pool, so no program can read a cache column
after another one overwrote it (within one kernel, Triton gives no order between programs, nor between threads
of one program without a barrier). The copy costs (K-1) x D elements per stream (8 KB per layer in bf16).

The pointwise convs are `torch.nn.functional.linear` (cuBLAS), as in the reference: they are plain dense GEMMs
[B*T, D] x [D, 2D] and [B*T, D] x [D, D] that cuBLAS runs near the device's peak (full-precision SGEMM for fp32
under the default `torch.backends.cuda.matmul.allow_tf32 = False`, tensor cores for bf16), while a Triton fp32
product with `input_precision="ieee"` runs on the FMA units at a fraction of that. Fusing the GLU into pw1's
epilogue would save one write and read of a [B, T, 2D] tensor, small beside the GEMM itself.

Precision: the GLU, conv, norm and SiLU compute in fp32 from the stored dtype; seq and y are stored in z's dtype
(bf16: the GLU outputs are rounded once, as the reference's are, so the new cache holds the reference's values).
"""
from __future__ import annotations

from types import MappingProxyType

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import cast_rne, launch_config


@triton.jit
def _conv_glu_fwd_kernel(
    a,  # [B, T, 2D] pw1 output
    pad,  # [B, T] uint8, nonzero for padded frames
    cache,  # [S, D, K-1] one layer of the conv pool (strides s_slot, s_d, s_k)
    slots,  # [B] int64
    seq,  # [B, K-1+T, D] out: [old cache | GLU(a), padded frames zeroed]
    T, D, s_slot, s_d, s_k,
    KM1: tl.constexpr,  # K - 1 cached frames
    ROUND_BF16: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_r, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    slot = tl.load(slots + i_b).to(tl.int64)
    o_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R] row of seq
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D

    m_c = (o_r < KM1)[:, None] & m_d[None, :]
    p_c = cache + slot * s_slot + o_d[None, :] * s_d + o_r[:, None] * s_k
    b_c = tl.load(p_c, mask=m_c, other=0.).to(tl.float32)

    o_t = o_r - KM1  # frame of the chunk
    m_t = (o_r >= KM1) & (o_t < T)
    b_pad = tl.load(pad + i_b * T + o_t, mask=m_t, other=1)
    m_g = (m_t & (b_pad == 0))[:, None] & m_d[None, :]
    p_a = a + (i_b * T + o_t)[:, None] * (2 * D) + o_d[None, :]
    b_v = tl.load(p_a, mask=m_g, other=0.).to(tl.float32)
    b_gate = tl.load(p_a + D, mask=m_g, other=0.).to(tl.float32)
    b_x = tl.where(m_c, b_c, b_v * tl.sigmoid(b_gate))  # padded frames: 0 * sigmoid(0) = 0

    p_s = seq + (i_b * (KM1 + T) + o_r)[:, None] * D + o_d[None, :]
    tl.store(p_s, cast_rne(b_x, seq.dtype.element_ty, ROUND_BF16), mask=(o_r < KM1 + T)[:, None] & m_d[None, :])


@triton.jit
def _conv_dw_norm_fwd_kernel(
    seq,  # [B, K-1+T, D]
    dw_w,  # [D, K]
    dw_b,  # [D] (when HAS_BIAS)
    n_w,  # [D] norm weight
    n_b,  # [D] norm bias
    n_mean,  # [D] BatchNorm running mean (when not LAYER_NORM)
    n_var,  # [D] BatchNorm running variance
    y,  # [B, T, D] out: SiLU(norm(dw conv))
    cache,  # [S, D, K-1] one layer of the conv pool, out: seq rows T .. T+K-2 at the streams' slots
    slots,  # [B] int64
    T, D, s_slot, s_d, s_k, eps,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    LAYER_NORM: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,  # >= D: the norm needs every channel
    BLOCK_K: tl.constexpr,  # >= K - 1
    BLOCK_DC: tl.constexpr,  # channels per step of the cache write
):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_t = i_t * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    m = m_t[:, None] & m_d[None, :]
    p_seq = seq + i_b * (K - 1 + T) * D

    # output frame t reads seq rows t .. t+K-1 (cache rows first); channels d >= D stay 0 throughout
    b_acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        b_acc += tl.load(dw_b + o_d, mask=m_d, other=0.).to(tl.float32)[None, :]
    for k in range(K):  # a loop, not unrolled: fewer registers, more programs resident
        b_x = tl.load(p_seq + (o_t + k)[:, None] * D + o_d[None, :], mask=m, other=0.).to(tl.float32)
        b_w = tl.load(dw_w + o_d * K + k, mask=m_d, other=0.).to(tl.float32)
        b_acc += b_x * b_w[None, :]

    b_nw = tl.load(n_w + o_d, mask=m_d, other=0.).to(tl.float32)
    b_nb = tl.load(n_b + o_d, mask=m_d, other=0.).to(tl.float32)
    if LAYER_NORM:
        b_mean = tl.sum(b_acc, axis=1) / D
        b_xc = tl.where(m_d[None, :], b_acc - b_mean[:, None], 0.)
        b_rstd = 1. / tl.sqrt_rn(tl.sum(b_xc * b_xc, axis=1) / D + eps)
        b_y = b_xc * b_rstd[:, None] * b_nw[None, :] + b_nb[None, :]
    else:
        b_mu = tl.load(n_mean + o_d, mask=m_d, other=0.).to(tl.float32)
        b_rstd = 1. / tl.sqrt_rn(tl.load(n_var + o_d, mask=m_d, other=1.).to(tl.float32) + eps)
        b_y = (b_acc - b_mu[None, :]) * (b_rstd * b_nw)[None, :] + b_nb[None, :]
    b_y = b_y * tl.sigmoid(b_y)
    p_y = y + (i_b * T + o_t)[:, None] * D + o_d[None, :]
    tl.store(p_y, cast_rne(b_y, y.dtype.element_ty, ROUND_BF16), mask=m)

    # the new cache: the last K-1 rows of seq, written by the stream's first program, BLOCK_DC channels at a time
    if i_t == 0:
        slot = tl.load(slots + i_b).to(tl.int64)
        o_j = tl.arange(0, BLOCK_K)
        for d0 in range(0, BLOCK_D, BLOCK_DC):
            o_dc = d0 + tl.arange(0, BLOCK_DC)
            m_j = (o_j < K - 1)[:, None] & (o_dc < D)[None, :]
            b_c = tl.load(p_seq + (T + o_j)[:, None] * D + o_dc[None, :], mask=m_j, other=0.)
            tl.store(cache + slot * s_slot + o_dc[None, :] * s_d + o_j[:, None] * s_k, b_c, mask=m_j)


# The default launch configuration, read-only, per device kind ("cuda", or "interpreter" for any other device): GLU
# kernel rows x channels per program (glu_rows, glu_d); norm kernel frames x channels per program
# (BLOCK_T * BLOCK_D <= norm_elems) and its warps (norm_warps). A caller overrides some of these keys with
# `conv_module(..., tiles=...)` / `glu_conv_norm(..., tiles=...)` (the sweep, the tests). The GPU tiles were chosen
# by compiling for sm_90 (Triton's bundled ptxas; the test test_conv_module_compiles_for_sm90_without_spills repeats
# it; `python bench/ptxas_report.py --only conv_module` prints it) and reading the register use (at D = 1024: 37-54
# registers, no spills); they are not yet tuned by timing. The interpreter's cost is per program and per operation,
# not per element, so on the CPU a program takes a whole stream; tests also run the GPU tiling there, by passing
# TILES["cuda"] as `tiles`.
TILES = MappingProxyType({
    "cuda": MappingProxyType({"glu_rows": 8, "glu_d": 256, "norm_elems": 2048, "norm_warps": 8}),
    "interpreter": MappingProxyType({"glu_rows": 1 << 30, "glu_d": 1 << 30, "norm_elems": 1 << 30, "norm_warps": 4}),
})


def conv_module(
    z: torch.Tensor,  # [B, T, D] LayerNorm-ed input
    conv_pool: torch.Tensor,  # [L, S, D, K-1] conv caches of every layer and slot; updated in place at [layer, slots]
    layer: int,
    slots: torch.Tensor,  # [B] int64 the streams' slots (distinct)
    pad: torch.Tensor,  # [B, T] bool, True for padded frames (beyond the valid length)
    w: dict,  # engine keys under "layers.{i}.conv." (biases optional)
    norm_type: str,  # "layer_norm" or "batch_norm"
    eps: float,
    tiles: dict | None = None,
) -> torch.Tensor:
    """One conv module step: returns out [B, T, D] in z's dtype and rewrites conv_pool[layer, slots].

    Parameters
    ----------
    z : [B, T, D] float32 or bfloat16, the dtype of the weights and of conv_pool
    conv_pool : [L, S, D, K-1], any strides; conv_pool[layer, slots] holds the caches before the step and the
        reference's new caches after it; other slots and layers are not touched
    slots : [B] int64, distinct (two streams in one slot would race on it)
    pad : [B, T] bool
    tiles : overrides of the launch configuration, keys of TILES[kind] (glu_rows, glu_d, norm_elems, norm_warps);
        the rest comes from TILES for z's device. Unknown keys are a ValueError.

    >>> out = conv_module(z, cache.conv, i, slots, ~valid, model.layers[i]["conv"], "layer_norm", 1e-5)
    """
    B, T, D = z.shape
    K = w["dw.weight"].shape[-1]
    if conv_pool.shape[2:] != (D, K - 1) or conv_pool.dtype != z.dtype or conv_pool.device != z.device:
        raise ValueError(f"conv_pool is {tuple(conv_pool.shape)} {conv_pool.dtype} on {conv_pool.device}; expected "
                         f"[L, S, {D}, {K - 1}] {z.dtype} on {z.device} for d_model {D} and conv kernel {K}")
    if norm_type not in ("layer_norm", "batch_norm"):
        raise ValueError(f"norm_type must be 'layer_norm' or 'batch_norm', got {norm_type!r}")
    a = F.linear(z, w["pw1.weight"], w.get("pw1.bias"))  # [B, T, 2D]
    y = glu_conv_norm(a, conv_pool, layer, slots, pad, w, norm_type, eps, tiles)
    return F.linear(y, w["pw2.weight"], w.get("pw2.bias"))


def glu_conv_norm(
    a: torch.Tensor,  # [B, T, 2D] pw1 output
    conv_pool: torch.Tensor,  # [L, S, D, K-1]
    layer: int,
    slots: torch.Tensor,  # [B]
    pad: torch.Tensor,  # [B, T] bool
    w: dict,
    norm_type: str,
    eps: float,
    tiles: dict | None = None,  # overrides of TILES[kind], as in `conv_module`
) -> torch.Tensor:
    """The two Triton kernels of `conv_module` (everything between the pointwise convs): SiLU(norm(dwconv(GLU))) as
    y [B, T, D], with conv_pool[layer, slots] rewritten."""
    B, T, D2 = a.shape
    D, K = D2 // 2, w["dw.weight"].shape[-1]
    layer_norm = norm_type == "layer_norm"
    dev, dt = a.device, a.dtype
    tiles = launch_config(TILES["cuda" if dev.type == "cuda" else "interpreter"], tiles)
    y = torch.empty(B, T, D, dtype=dt, device=dev)
    if B == 0:
        return y
    a = a.contiguous()
    cache = conv_pool[layer]  # [S, D, K-1] view
    slots = slots.contiguous()
    pad = pad.contiguous().view(torch.uint8)
    seq = torch.empty(B, K - 1 + T, D, dtype=dt, device=dev)
    round_bf16 = dt == torch.bfloat16 and dev.type != "cuda"

    block_r = min(tiles["glu_rows"], triton.next_power_of_2(K - 1 + T))
    block_d = min(tiles["glu_d"], triton.next_power_of_2(D))
    grid = (triton.cdiv(K - 1 + T, block_r), triton.cdiv(D, block_d), B)
    _conv_glu_fwd_kernel[grid](
        a, pad, cache, slots, seq, T, D, *cache.stride(),
        KM1=K - 1, ROUND_BF16=round_bf16, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )

    dw_w = w["dw.weight"].reshape(D, K).contiguous()
    has_bias = "dw.bias" in w
    if layer_norm:
        n_mean = n_var = w["norm.weight"]  # unused
    else:
        n_mean, n_var = w["norm.running_mean"], w["norm.running_var"]
    block_d = triton.next_power_of_2(D)
    block_t = min(triton.next_power_of_2(T), max(1, tiles["norm_elems"] // block_d))
    grid = (triton.cdiv(T, block_t), B)
    _conv_dw_norm_fwd_kernel[grid](
        seq, dw_w, w["dw.bias"] if has_bias else dw_w, w["norm.weight"], w["norm.bias"], n_mean, n_var, y,
        cache, slots, T, D, *cache.stride(), eps,
        K=K, HAS_BIAS=has_bias, LAYER_NORM=layer_norm, ROUND_BF16=round_bf16,
        BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_K=triton.next_power_of_2(K - 1), BLOCK_DC=min(block_d, 256),
        num_warps=tiles["norm_warps"],
    )
    return y
