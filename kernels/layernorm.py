"""LayerNorm over the last dimension, alone or fused with the layer's residual add.

Reference: `torch.nn.functional.layer_norm(x, x.shape[-1:], weight, bias, eps)` (what
`nemotron_engine.reference.encoder.layer_norm` calls), and for the fused op the residual pattern of
`reference.encoder.layer_step`: res = x + alpha * y (alpha = 0.5 after a macaron feed-forward, 1 after attention and
the conv module), then LN(res) for the next block.

One program per row; the row (D <= 65536) sits in registers, statistics in fp32 (biased variance, as torch), the
normalised row from the residual as stored (rounded to x's dtype), as the unfused reference sees it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cast_rne, interpreted


@triton.jit
def _add_layer_norm_fwd_kernel(
    x,  # [N, D]
    y,  # [N, D] (unused without HAS_RESIDUAL)
    w, b,  # [D]
    res,  # [N, D] x + alpha * y (unused without HAS_RESIDUAL)
    out,  # [N, D]
    D, alpha, eps,
    s_x, s_y, s_r, s_o,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RNE_BY_HAND: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < D
    b_x = tl.load(x + i_n * s_x + o_d, mask=m_d, other=0.0)
    if HAS_RESIDUAL:
        b_y = tl.load(y + i_n * s_y + o_d, mask=m_d, other=0.0)
        b_r = cast_rne(b_x.to(tl.float32) + alpha * b_y.to(tl.float32), b_x.dtype, RNE_BY_HAND)  # as stored
        tl.store(res + i_n * s_r + o_d, b_r, mask=m_d)
        b_x = b_r
    b_x = b_x.to(tl.float32)
    b_mean = tl.sum(b_x, 0) / D
    b_c = tl.where(m_d, b_x - b_mean, 0.0)
    b_rstd = 1.0 / tl.sqrt(tl.sum(b_c * b_c, 0) / D + eps)
    b_o = b_c * b_rstd
    if HAS_WEIGHT:
        b_o = b_o * tl.load(w + o_d, mask=m_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        b_o = b_o + tl.load(b + o_d, mask=m_d, other=0.0).to(tl.float32)
    tl.store(out + i_n * s_o + o_d, cast_rne(b_o, out.dtype.element_ty, RNE_BY_HAND), mask=m_d)


def _rows(t: torch.Tensor, name: str) -> torch.Tensor:
    """[..., D] -> [N, D] without a copy when the rows are evenly strided with a unit last stride."""
    r = t.reshape(-1, t.shape[-1])
    if r.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride along its last dimension (call .contiguous())")
    return r


def _launch(x, y, alpha, weight, bias, eps, res):
    D = x.shape[-1]
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"layer_norm supports float32 and bfloat16, got {x.dtype}")
    if D > 65536:
        raise ValueError(f"layer_norm keeps a row in registers: D = {D} > 65536 is not supported")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.shape != (D,) or p.stride(0) != 1):
            raise ValueError(f"{name} must be a contiguous [{D}] tensor, got {tuple(p.shape)}")
    xr = _rows(x, "x")
    yr = _rows(y, "y") if y is not None else xr
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    outr = out.view(-1, D)
    resr = res.view(-1, D) if res is not None else outr
    N = xr.shape[0]
    if N == 0:
        return out
    BLOCK_D = triton.next_power_of_2(D)
    num_warps = min(max(BLOCK_D // 256, 1), 16)  # ~8 fp32 values per thread
    _add_layer_norm_fwd_kernel[(N,)](
        xr, yr, weight if weight is not None else xr, bias if bias is not None else xr, resr, outr,
        D, float(alpha), float(eps),
        xr.stride(0), yr.stride(0), resr.stride(0), outr.stride(0),
        HAS_RESIDUAL=y is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_D=BLOCK_D,
        RNE_BY_HAND=interpreted(), num_warps=num_warps,
    )
    return out


def layer_norm(
    x: torch.Tensor,  # [..., D] float32 / bfloat16
    weight: torch.Tensor | None,  # [D]
    bias: torch.Tensor | None,  # [D]
    eps: float = 1e-5,
) -> torch.Tensor:
    """LN over the last dimension -> [..., D] in x's dtype. Must match F.layer_norm(x, (D,), weight, bias, eps).

    >>> z = layer_norm(x, w["att_norm.weight"], w["att_norm.bias"], cfg.layer_norm_eps)
    """
    return _launch(x, None, 0.0, weight, bias, eps, None)


def add_layer_norm(
    x: torch.Tensor,  # [..., D] the residual stream
    y: torch.Tensor,  # [..., D] a block's output
    alpha: float,
    weight: torch.Tensor | None,  # [D]
    bias: torch.Tensor | None,  # [D]
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(res, LN(res)) with res = x + alpha * y, both [..., D] in x's dtype, in one pass over the rows.

    Must match: res = x + alpha * y; F.layer_norm(res, (D,), weight, bias, eps) (layer_step's
    `res = res + 0.5 * feed_forward(...)` followed by the next block's LayerNorm).

    >>> res, z = add_layer_norm(res, ff1_out, 0.5, w["att_norm.weight"], w["att_norm.bias"], cfg.layer_norm_eps)
    """
    if y.shape != x.shape or y.dtype != x.dtype:
        raise ValueError(f"y {tuple(y.shape)} {y.dtype} must match x {tuple(x.shape)} {x.dtype}")
    res = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return res, _launch(x, y, alpha, weight, bias, eps, res)
