"""The 8x dw_striding causal subsampling frontend (NeMo ConvSubsampling, SPEC.md §2).

mel [B, T, F] -> three causal stride-2 3x3 convolutions (full conv, then twice depthwise + pointwise, each followed
by ReLU) over (time, freq) -> flatten (channel-major: c * F3 + f) -> Linear -> [B, T3, D].

Facts relied on (NeMo 3.0 `subsampling.py`, `causal_convs.py`):
- CausalConv2D pads 2 before and 1 after on both time and frequency, then runs a valid stride-2 conv.
- MaskedConvSequential multiplies the activations by the time mask (t < length) before every module (convs and
  ReLUs alike), updates the length after every strided conv as len // 2 + 1 (float floor division, exact for our
  sizes), and masks once more at the end.

Two layouts compute the same values (up to fp32 rounding, tested in tests/test_subsample.py):
- `subsample_nchw`, the form above, op by op as NeMo runs it: the reference for every device and dtype;
- `subsample_nhwc`, channels last, what `subsample` runs for float32 on the CPU (the engine's CPU path): the first
  conv as one product of 3x3 patches, the depthwise convs on oneDNN's channels-last kernels, the masks in place,
  and only where a value can change; one stream at a time, so the intermediates stay in cache, no large buffer is
  allocated per step, and a stream's frontend never shares a product with another stream (MKL's F.linear is not
  row-invariant, so a block of streams need not give a stream's rows bit for bit; tests/test_subsample.py checks
  a stream alone against the batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import subsampled_length
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
    """Subsample mel frames 8x in time: returns (x [B, f(f(f(T))), D], lengths [B]).

    >>> x, n = subsample(mel, torch.tensor([105]), model.sub)   # 105 mel frames -> 14 frames
    """
    if mel.device.type == "cpu" and mel.dtype == torch.float32:
        return subsample_nhwc(mel, lengths, w)
    return subsample_nchw(mel, lengths, w)


def subsample_nchw(mel: torch.Tensor, lengths: torch.Tensor | None, w: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`subsample` as NeMo computes it, module by module in [B, C, T, F]."""
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
    x = x.transpose(1, 2).reshape(b, t, c * f)  # [B, T3, C * F3], flatten index c * F3 + f
    return linear(x, w, "out.weight", "out.bias"), n


# ---- channels last -----------------------------------------------------------------------------------------------
def _mask_time_(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames t >= length of x [B, T, ...] in place (nothing to do without lengths).

    masked_fill instead of NeMo's multiplication by the 0/1 mask: the same values for finite activations (a
    masked negative value becomes +0 instead of -0, which no later sum can tell apart).
    """
    if lengths is None:
        return x
    pad = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)  # [B, T]
    return x.masked_fill_(pad.view(*pad.shape, *([1] * (x.dim() - 2))), 0.0)


def _depthwise_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal stride-2 3x3 depthwise conv of x [B, T, F, C] -> [B, T // 2 + 1, F // 2 + 1, C] (a strided view).

    Symmetric padding 2 instead of (2, 1): every kept output reads the same inputs and zeros (the extra right zeros
    only feed an extra last row or column, which is sliced off), and oneDNN runs it without a padded copy.
    """
    b, t, f, c = x.shape
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=2, padding=2, groups=c)  # channels last, [B, C, T', F']
    return y[:, :, : t // 2 + 1, : f // 2 + 1].permute(0, 2, 3, 1)


def _pointwise_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """1x1 conv over the channels of x [B, T, F, C] -> [B, T, F, C_out] (contiguous)."""
    return F.linear(x, weight.flatten(1), bias).contiguous()


def _stream_nhwc(mel: torch.Tensor, lengths: torch.Tensor | None, w: dict) -> torch.Tensor:
    """The three conv stages for one stream, mel [1, T, F] -> [1, T3, C * F3] (flatten index c * F3 + f)."""
    b = mel.shape[0]
    n1 = n2 = n3 = None
    if lengths is not None:
        n1 = lengths // 2 + 1
        n2 = n1 // 2 + 1
        n3 = n2 // 2 + 1
        mel = _mask_time_(mel.clone(), lengths)
    # conv0, 1 -> C channels: every output is one 3x3 patch of the padded input times the 9 weights of a channel
    w0 = w["conv0.weight"]
    c = w0.shape[0]
    patches = F.pad(mel, (2, 1, 2, 1)).unfold(1, 3, 2).unfold(2, 3, 2)  # [B, T1, F1, 3 (time), 3 (freq)]
    _, t1, f1 = patches.shape[:3]
    x = F.linear(patches.reshape(-1, 9), w0.view(c, 9), w.get("conv0.bias")).view(b, t1, f1, c)
    x = _mask_time_(x, n1).relu_()  # NeMo's masks before the ReLU and before dw1 (the second changes nothing)
    x = _depthwise_nhwc(x, w["dw1.weight"], w.get("dw1.bias"))
    x = _pointwise_nhwc(_mask_time_(x.contiguous(), n2), w["pw1.weight"], w.get("pw1.bias"))
    x = _mask_time_(x, n2).relu_()
    x = _depthwise_nhwc(x, w["dw2.weight"], w.get("dw2.bias"))
    x = _pointwise_nhwc(_mask_time_(x.contiguous(), n3), w["pw2.weight"], w.get("pw2.bias"))
    x = _mask_time_(x, n3).relu_()  # [B, T3, F3, C]; the final mask of NeMo changes nothing either
    return x.permute(0, 1, 3, 2).reshape(b, x.shape[1], -1)  # [B, T3, C * F3]


def subsample_nhwc(mel: torch.Tensor, lengths: torch.Tensor | None, w: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`subsample` in channels-last layout, one stream at a time (see the module docstring)."""
    b = mel.shape[0]
    if lengths is None:
        lengths_out = torch.full((b,), subsampled_length(mel.shape[1]), dtype=torch.int64, device=mel.device)
    else:
        lengths_out = subsampled_length(lengths)
    x = torch.cat([_stream_nhwc(mel[i: i + 1], None if lengths is None else lengths[i: i + 1], w) for i in range(b)])
    return linear(x, w, "out.weight", "out.bias"), lengths_out
