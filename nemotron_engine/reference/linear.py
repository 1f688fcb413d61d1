"""The model's dense products, by weight name: x @ w[weight]^T + w[bias].

The reference functions take their weights as dicts of engine keys (see `Model`) and name the product they need;
a backend may bind another implementation of the same product (the CPU backend's prepacked one, cpu_ops.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, w: dict, weight: str, bias: str | None = None) -> torch.Tensor:
    """x @ w[weight]^T + w[bias] over the last dim of x (no bias when `bias` is None or absent from w)."""
    return F.linear(x, w[weight], w.get(bias) if bias is not None else None)
