"""The products x @ W^T + b of the reference, on two paths with the same arithmetic up to fp32 rounding.

`linear(x, w, "att.wq", "att.bq")` is `F.linear(x, w["att.wq"], w["att.bq"])`, unless the weight dict also holds
`"att.wq" + PACKED`: a copy of the weight that `pack_linears` reordered once, at load, into oneDNN's blocked layout.
The engine does that on the CPU in float32 (`Engine(..., cpu_packed=True)`, the default there) because torch's CPU
`F.linear` goes to MKL's sgemm, which is slow on the few rows of a streaming step (M = streams x chunk frames; our
reading, not verified: it packs the whole weight matrix on every call). End to end on the full-size model this is
1.4-2.3x at 2 to 8 streams on the 2-core AMD EPYC CI machine (README, Benchmarks: `nemotron-engine bench --no-nemo`
with and without `--no-cpu-packed`). The prepacked product is also row-invariant (a row's result does not depend on
the other rows in the call, checked bitwise in tests/test_linear.py), which MKL's is not; its results differ from
F.linear's by fp32 rounding (about 1e-6 relative).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED = "#packed"


def linear(x: torch.Tensor, w: dict, weight: str, bias: str | None = None) -> torch.Tensor:
    """x @ w[weight]^T + w[bias] over the last dim of x; the prepacked weight when w holds one."""
    b = w.get(bias) if bias is not None else None
    packed = w.get(weight + PACKED)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    return F.linear(x, w[weight], b)


def packing_available() -> bool:
    """Whether this torch build can prepack fp32 linear weights for oneDNN on the CPU."""
    try:
        probe = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), None)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8), probe, None, "none", [], "")
        return torch.backends.mkldnn.is_available() and tuple(y.shape) == (2, 8)
    except (AttributeError, RuntimeError):
        return False


def pack_linears(w: dict, names: list[str]) -> int:
    """Replace each 2-D float32 CPU weight w[name] by w[name + PACKED] (oneDNN blocked layout; the dense copy is
    dropped, so the weights' memory does not double) -> bytes packed."""
    done = 0
    for name in names:
        t = w.get(name)
        if t is None or t.dim() != 2 or t.dtype != torch.float32 or t.device.type != "cpu":
            continue
        w[name + PACKED] = torch.ops.mkldnn._reorder_linear_weight(t.contiguous(), None)
        del w[name]
        done += t.numel() * t.element_size()
    return done
