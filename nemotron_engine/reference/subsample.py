"""The 8x dw_striding causal subsampling frontend (NeMo ConvSubsampling).

mel [B, T, F] -> three causal stride-2 3x3 convolutions (full conv, then twice depthwise + pointwise, each followed
by ReLU) over (time, freq) -> flatten (channel-major: c * F3 + f) -> Linear -> [B, T3, D].

Facts relied on (NeMo 3.0 `subsampling.py`, `causal_convs.py`):
- CausalConv2D pads 2 before and 1 after on both time and frequency, then runs a valid stride-2 conv.
- MaskedConvSequential multiplies the activations by the time mask (t < length) before every module (convs and
  ReLUs alike), updates the length after every strided conv as len // 2 + 1 (float floor division, exact for our
  sizes), and masks once more at the end.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import linear


def _time_mask(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # x: [B, C, T, F], lengths: [B] -> x with frames t >= length zeroed
    t = torch.arange(x.shape[2], device=x.device)
    keep = (t[None, :] < lengths[:, None]).to(x.dtype)  # [B, T]
    return x * keep[:, None, :, None]


def _causal_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    # x: [B, C, T, F]; (left, right) = (2, 1) zeros on both axes, then a valid stride-2 conv
    return F.conv2d(F.pad(x, (2, 1, 2, 1)), w, b, stride=2, groups=groups)


def subsample(
    mel: torch.Tensor,  # [B, T, n_mels]
    lengths: torch.Tensor | None,  # [B] valid mel frames (int64); None: every frame is valid
    w: dict,  # engine keys under "subsample."
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample mel frames 8x in time: returns (x [B, f(f(f(T))), D], lengths [B]), f(n) = n // 2 + 1.

    >>> x, n = subsample(mel, torch.tensor([105]), model.sub)   # 105 mel frames -> 14 frames
    """
    x, n = conv_stages(mel, lengths, w)
    return linear(x, w, "out.weight", "out.bias"), n


def conv_stages(mel: torch.Tensor, lengths: torch.Tensor | None, w: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The three conv stages of `subsample`, module by module in [B, C, T, F] as NeMo runs them, flattened
    channel-major -> (y [B, T3, C * F3], lengths [B]); `subsample` applies the output Linear to y."""
    if lengths is None:
        lengths = torch.full((mel.shape[0],), mel.shape[1], dtype=torch.int64, device=mel.device)
    x = mel.unsqueeze(1)  # [B, 1, T, F]
    n = lengths.clone()
    stages = [
        ("conv0", 1, None),  # full 3x3 conv, 1 -> C channels
        ("dw1", "depthwise", "pw1"),
        ("dw2", "depthwise", "pw2"),
    ]
    for conv, kind, pointwise in stages:
        x = _time_mask(x, n)
        groups = 1 if kind == 1 else x.shape[1]
        x = _causal_conv2d(x, w[f"{conv}.weight"], w[f"{conv}.bias"], groups)
        n = n // 2 + 1
        if pointwise is not None:
            x = _time_mask(x, n)
            x = F.conv2d(x, w[f"{pointwise}.weight"], w[f"{pointwise}.bias"])
        x = _time_mask(x, n)  # masked before the ReLU, as MaskedConvSequential does
        x = torch.relu(x)
    x = _time_mask(x, n)
    b, c, t, f = x.shape
    return x.transpose(1, 2).reshape(b, t, c * f), n  # [B, T3, C * F3], flatten index c * F3 + f


