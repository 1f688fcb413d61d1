"""Helpers shared by the Triton kernels."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cast_rne(x, dtype: tl.constexpr, RNE_BY_HAND: tl.constexpr):
    """fp32 x -> dtype, rounded to nearest even. RNE_BY_HAND (set under the interpreter only): round the bf16 bits
    here first, because the interpreter's fp32 -> bf16 cast truncates (triton 3.6); on the GPU the cast itself
    rounds to nearest even, and with RNE_BY_HAND False this is exactly `x.to(dtype)`."""
    if RNE_BY_HAND and dtype == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        x = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(dtype)
