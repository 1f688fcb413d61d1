"""One tolerance table for the whole suite, and the comparison every parity test uses.

fp32: encoder activations must match NeMo within 1e-5 relative (max |a - b| / max |b|). Measured on the random
models: 1.7e-7 .. 8.3e-7 per step (`bash scripts/demo.sh` prints the table); the bound is the project's contract,
not a fit.
"""
import numpy as np
import torch

RTOL = {torch.float32: 1e-5}


def _f64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)  # CUDA tensors too
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def rel_err(ref, out) -> float:
    """max |out - ref| / max |ref| (0 when both are empty)."""
    ref, out = _f64(ref), _f64(out)
    assert ref.shape == out.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), "output has NaN"
    if ref.numel() == 0:
        return 0.0
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def assert_close(name: str, ref, out, dtype=torch.float32) -> float:
    err = rel_err(ref, out)
    assert err <= RTOL[dtype], f"{name}: relative error {err:.3g} > {RTOL[dtype]:g}"
    return err
