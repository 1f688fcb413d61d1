"""Helpers shared by the Triton kernels."""
from __future__ import annotations

from collections.abc import Mapping

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


def interpreted() -> bool:
    """True when the kernels were built by Triton's interpreter, i.e. TRITON_INTERPRET=1 was set when the kernels
    were imported (`triton.jit` then returns an interpreted function instead of a JITFunction). The launchers then
    apply the interpreter's workarounds (rounding to bf16 by hand, widened product operands)."""
    return not isinstance(cast_rne, triton.runtime.JITFunction)


def launch_config(default: Mapping, overrides: Mapping | None) -> dict:
    """A launcher's configuration: a fresh copy of its `default` table with the caller's `overrides` (a launcher's
    `tiles=` argument) applied; keys the default does not have are a ValueError that names the known ones."""
    cfg = dict(default)
    if overrides:
        bad = sorted(set(overrides) - set(cfg))
        if bad:
            raise ValueError(f"tiles: unknown keys {bad}; known: {list(cfg)}")
        cfg.update(overrides)
    return cfg
