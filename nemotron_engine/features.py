"""Log-mel features, frame by frame, batched over any frames of any streams: equal to NeMo's whole-file features.

NeMo FilterbankFeatures (docs/streaming.md#1-features), for a signal of L samples:
  y = pre-emphasis(x) (y[0] = x[0], y[t] = x[t] - 0.97 x[t-1]); STFT with center=True (256 zeros each side),
  n_fft 512, hop 160, the checkpoint's 400-tap window centred in 512; power = |X|^2 (sqrt first, then squared);
  mel = fb @ power; log(mel + 2^-24); T = L // 160 + 1 frames, of which the last (index L // 160) is set to the
  pad value (frames >= seq_len = L // 160 are padding).
Frame t covers padded samples [160 t, 160 t + 512), i.e. original samples [160 t - 256, 160 t + 256) (and the one
before, for pre-emphasis): it is final once sample 160 t + 255 has arrived, or once the signal has ended. A frame is
computed from its own 513 samples only, so its value does not depend on how the audio was pushed, when it was
computed, or which other frames share the call.
"""
from __future__ import annotations

import numpy as np
import torch


def frames_ready(cfg, n_samples: np.ndarray, ended: np.ndarray) -> np.ndarray:
    """Mel frames of a signal that can be computed: with `n_samples` received, frames t with 160 t + 256 <= n_samples;
    once the signal has ended, all n_samples // 160 + 1 (numpy arrays or scalars)."""
    live = np.maximum((n_samples - cfg.n_fft // 2) // cfg.hop_length + 1, 0)
    return np.where(ended, n_samples // cfg.hop_length + 1, live)


def span_start(cfg, frame):
    """Signal index of the first sample frames `frame`, `frame` + 1, ... read: frame * hop - n_fft // 2, and the one
    before it, for pre-emphasis (ints, numpy or torch)."""
    return frame * cfg.hop_length - cfg.n_fft // 2 - 1


def span_length(cfg, n_frames: int) -> int:
    """Samples n consecutive frames read, the one before the first included: (n - 1) * hop + n_fft + 1."""
    return (n_frames - 1) * cfg.hop_length + cfg.n_fft + 1


def preemphasize(x: torch.Tensor, valid: torch.Tensor | None, preemph: float) -> torch.Tensor:
    """Pre-emphasised spans: x [B, S] raw samples (the one before the span first), valid [B, S] where the sample is
    part of the signal (None: all of it) -> y [B, S - 1], zero outside the signal (the STFT's padding).

    Samples before the signal's start read as zeros, so y[0] = x[0] - 0.97 * 0 = x[0] exactly, NeMo's first sample.
    """
    if valid is None:
        return x[:, 1:] - preemph * x[:, :-1]  # the same float32 arithmetic as NeMo: x[1:] - 0.97 * x[:-1]
    x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    y = x[:, 1:] - preemph * x[:, :-1]
    return torch.where(valid[:, 1:], y, torch.zeros((), dtype=y.dtype, device=y.device))


MEL_BAND = 8  # mel filters per banded product (log_mel)


def _prepared(cfg, frontend: dict, device: torch.device) -> tuple[torch.Tensor, list]:
    """The frontend as log_mel uses it, made once per device and kept in the frontend dict: the window zero-padded
    to n_fft (centred, as torch.stft pads it) and the filterbank as float64 bands, (first mel, first bin, [bins,
    mels] block) for MEL_BAND consecutive filters over the bins where any of them is nonzero."""
    key = f"prepared:{device}"
    if key not in frontend:
        win = frontend["window"].to(torch.float32)
        left = (cfg.n_fft - win.numel()) // 2
        window = torch.nn.functional.pad(win, (left, cfg.n_fft - win.numel() - left)).to(device)
        fb = frontend["fb"].to(torch.float64)  # [n_mels, F]
        bands = []
        for m in range(0, fb.shape[0], MEL_BAND):
            block = fb[m: m + MEL_BAND]
            bins = torch.nonzero(block.abs().sum(0)).flatten()
            lo, hi = (int(bins[0]), int(bins[-1]) + 1) if bins.numel() else (0, 1)
            bands.append((m, lo, block[:, lo:hi].T.contiguous().to(device)))  # [bins, mels]
        frontend[key] = (window, bands)
    return frontend[key]


def log_mel(cfg, frontend: dict, y: torch.Tensor) -> torch.Tensor:
    """Log-mel of the consecutive frames of pre-emphasised spans y [B, (n - 1) * hop + n_fft] -> [B, n, n_mels]
    (float32). Each frame is computed from its own n_fft samples only: the same bits whatever else is in the call.

    The STFT (center=False) as torch.stft computes it: the frames times the window zero-padded to n_fft, one real
    FFT each, here laid out frame-major ([B, n, F], no transposed copy). The power NeMo's way: |X| = sqrt(re^2 +
    im^2), then |X|^2. The mel product: NeMo runs torch.matmul(fb, power) in float32, whose rounding depends on how
    many frames share the call (gemv for one frame, blocked gemm for many). Accumulating in float64 and rounding once
    makes every frame independent of the others in the call; it stays within an ulp of NeMo's whole-file features.
    The filterbank is banded (each filter is nonzero over a few adjacent bins), so the product runs per band of
    MEL_BAND filters over the bins they cover: the same nonzero terms, about 10x fewer operations than the dense
    product. A frame's row is the same whatever rows share a product.
    """
    b = y.shape[0]
    n = (y.shape[1] - cfg.n_fft) // cfg.hop_length + 1
    if b == 0 or n <= 0:
        return y.new_zeros(b, max(n, 0), cfg.n_mels)
    window, bands = _prepared(cfg, frontend, y.device)
    frames = y.unfold(1, cfg.n_fft, cfg.hop_length) * window  # [B, n, n_fft]
    ri = torch.view_as_real(torch.fft.rfft(frames, dim=-1))  # [B, n, F, 2]
    re, im = ri[..., 0], ri[..., 1]
    mag = torch.sqrt(re * re + im * im)  # [B, n, F]
    if cfg.mag_power != 1.0:
        mag = mag.pow(cfg.mag_power)
    rows = mag.view(b * n, -1).to(torch.float64)  # [B n, F]
    mel = torch.empty(b * n, cfg.n_mels, dtype=torch.float64, device=y.device)
    for m, lo, block in bands:
        torch.matmul(rows[:, lo: lo + block.shape[0]], block, out=mel[:, m: m + block.shape[1]])
    return torch.log(mel.to(torch.float32).view(b, n, -1) + cfg.log_zero_guard)


def whole_file_features(cfg, frontend: dict, pcm: torch.Tensor) -> torch.Tensor:
    """All features of a complete signal at once -> [L // 160 + 1, n_mels] (what NeMo's streaming buffer holds)."""
    x = pcm.to(torch.float32).flatten()
    n = x.numel()
    frames = n // cfg.hop_length + 1
    pos = span_start(cfg, 0) + torch.arange(span_length(cfg, frames))  # signal index of each sample read
    valid = (pos >= 0) & (pos < n)
    raw = x[pos.clamp(0, max(n - 1, 0))] if n else torch.zeros(pos.shape)
    out = log_mel(cfg, frontend, preemphasize(raw.unsqueeze(0), valid.unsqueeze(0), cfg.preemph))[0]
    out[-1] = cfg.pad_value  # NeMo masks frames t >= seq_len = L // hop: the last STFT frame is the pad value
    return out
