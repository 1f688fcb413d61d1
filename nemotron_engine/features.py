"""Incremental log-mel features: PCM pushed in pieces of any size -> mel frames equal to NeMo's whole-file features.

NeMo FilterbankFeatures (docs/streaming.md#1-features), for a stream of L samples:
  y = pre-emphasis(x) (y[0] = x[0], y[t] = x[t] - 0.97 x[t-1]); STFT with center=True (256 zeros each side),
  n_fft 512, hop 160, the checkpoint's 400-tap window centred in 512; power = |X|^2 (sqrt first, then squared);
  mel = fb @ power; log(mel + 2^-24); T = L // 160 + 1 frames, of which the last (index L // 160) is set to the
  pad value (frames >= seq_len = L // 160 are padding).
Frame t covers padded samples [160 t, 160 t + 512), i.e. original samples [160 t - 256, 160 t + 256): it is final
once sample 160 t + 255 has arrived, so the extractor emits frames as soon as they are complete and the last ones
(which see the right zero padding) when the stream finishes.
"""
from __future__ import annotations

import torch


class MelFrontend:
    """Per-stream incremental feature extractor.

    >>> fe = MelFrontend(model.cfg, model.frontend)
    >>> a = fe.push(pcm[:1000]); b = fe.push(pcm[1000:]); c = fe.finish()
    >>> torch.cat([a, b, c])     # [L // 160 + 1, n_mels], NeMo's whole-file features
    """

    def __init__(self, cfg, frontend: dict):
        self.cfg = cfg
        self.window = frontend["window"]  # [win_length]
        self.fb64 = frontend["fb"].to(torch.float64)  # [n_mels, n_fft // 2 + 1]
        self.pad = cfg.n_fft // 2
        # pre-emphasised samples with the 256-sample left padding, from the first sample the next frame needs
        self.buf = torch.zeros(self.pad, dtype=torch.float32)
        self.prev = None  # last raw sample (for pre-emphasis across pushes)
        self.n_samples = 0  # raw samples received
        self.n_frames = 0  # frames emitted
        self.finished = False

    def _frames(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """Log-mel of n frames over y (starting at a frame boundary) -> [n, n_mels]."""
        cfg = self.cfg
        spec = torch.stft(y[: (n - 1) * cfg.hop_length + cfg.n_fft], n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                          win_length=cfg.win_length, window=self.window, center=False, return_complex=True)
        mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1))  # [F, n]
        if cfg.mag_power != 1.0:
            mag = mag.pow(cfg.mag_power)
        # NeMo: torch.matmul(fb, power) in float32, whose rounding depends on how many frames share the call
        # (gemv for one frame, blocked gemm for many). Accumulating in float64 and rounding once makes every frame
        # independent of how the audio was pushed; it stays within an ulp of NeMo's whole-file features.
        mel = torch.matmul(self.fb64, mag.to(torch.float64)).to(torch.float32)  # [n_mels, n]
        return torch.log(mel + cfg.log_zero_guard).transpose(0, 1)

    def push(self, pcm: torch.Tensor) -> torch.Tensor:
        """Append float32 samples [N]; return the newly completed frames [n, n_mels] (n may be 0)."""
        if self.finished:
            raise RuntimeError("push() after finish(): this stream's input has ended")
        x = pcm.to(torch.float32).flatten()
        if x.numel() == 0:
            return torch.zeros(0, self.cfg.n_mels)
        # same float32 arithmetic as NeMo: x[1:] - 0.97 * x[:-1]
        prev = x[:1] if self.prev is None else self.prev
        shifted = torch.cat([prev, x[:-1]])
        y = x - self.cfg.preemph * shifted
        if self.prev is None:
            y[0] = x[0]
        self.prev = x[-1:].clone()
        self.n_samples += x.numel()
        self.buf = torch.cat([self.buf, y])
        # frame t is complete when the padded buffer holds 160 t + 512 samples
        hop, nfft = self.cfg.hop_length, self.cfg.n_fft
        n = (self.buf.numel() - nfft) // hop + 1 if self.buf.numel() >= nfft else 0
        return self._emit(n)

    def _emit(self, n: int) -> torch.Tensor:
        if n <= 0:
            return torch.zeros(0, self.cfg.n_mels)
        out = self._frames(self.buf, n)
        self.buf = self.buf[n * self.cfg.hop_length:]
        self.n_frames += n
        return out

    def finish(self) -> torch.Tensor:
        """End of input: emit the remaining frames (right zero padding); the very last frame is the pad value."""
        if self.finished:
            return torch.zeros(0, self.cfg.n_mels)
        self.finished = True
        cfg = self.cfg
        total = self.n_samples // cfg.hop_length + 1
        remaining = total - self.n_frames
        self.buf = torch.cat([self.buf, torch.zeros(self.pad + cfg.n_fft, dtype=torch.float32)])
        out = self._emit(remaining)
        if remaining > 0:
            # NeMo masks frames t >= seq_len = L // hop: the last STFT frame becomes pad_value
            out[-1] = cfg.pad_value
        self.buf = torch.zeros(0)
        return out


def whole_file_features(cfg, frontend: dict, pcm: torch.Tensor) -> torch.Tensor:
    """All features of a complete signal at once -> [L // 160 + 1, n_mels] (what NeMo's streaming buffer holds)."""
    fe = MelFrontend(cfg, frontend)
    return torch.cat([fe.push(pcm), fe.finish()])
