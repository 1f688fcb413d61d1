"""Engine and Stream: streams push audio at their own pace; `engine.step()` runs one batched step over every
stream with a chunk ready.

Chunking reproduces NeMo's cache-aware streaming buffer (CacheAwareStreamingAudioBuffer;
docs/streaming.md#2-chunking) exactly:
- a stream's first chunk is 1 + 8R mel frames, with no pre-encode cache and nothing dropped;
- every later chunk is the 9 previous mel frames (left-padded with zero frames when fewer exist) followed by
  8(R+1) new ones, and the first 2 subsampled frames are dropped;
- at the end of input the last chunk is whatever remains (shorter), unless too few new frames remain to give an
  encoder frame (fewer than 8; fewer than 1 for a first chunk), in which case they are dropped, as NeMo drops them.
Every stream's encoder and decoder state lives in the engine's paged StreamCache (cache.py), preallocated at
start-up; a step reads and updates it in place for the streams it runs. The step's ops come from the backend's op
table (ops.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import StreamCache, bytes_per_stream
from .config import PRE_ENCODE_CACHE, SAMPLING_FRAMES, ModelConfig
from .features import MelFrontend
from .encoder import encoder_step
from .model import Model
from .ops import Ops, get_ops
from .reference.decoder import initial_state
from .tokenizer import Tokenizer


@dataclass
class Result:
    """A stream's transcript so far."""

    text: str
    tokens: list[int]  # token ids, blank excluded
    timestamps_ms: list[int]  # one per token: its encoder frame x 80 ms
    final: bool  # the stream has finished and every chunk has been decoded
    audio_s: float = 0.0  # seconds of audio pushed so far


@dataclass
class Update:
    """What one step added to one stream."""

    stream: "Stream"
    tokens: list[int]
    timestamps_ms: list[int]
    text: str  # the whole transcript so far
    final: bool
    needed_samples: int = 0  # samples of the stream that had to arrive for this step's chunk (its last one + 1)


def _as_float_pcm(pcm, sample_rate: int, expected: int) -> torch.Tensor:
    if sample_rate != expected:
        raise ValueError(f"expected {expected} Hz mono audio, got {sample_rate} Hz; resample first")
    if isinstance(pcm, np.ndarray):
        pcm = torch.from_numpy(pcm)
    if not isinstance(pcm, torch.Tensor):
        raise TypeError(f"push() takes a numpy array or torch tensor of samples, got {type(pcm).__name__}")
    if pcm.dim() != 1:
        raise ValueError(f"push() takes mono samples of shape [N], got shape {tuple(pcm.shape)}")
    if pcm.dtype == torch.int16:
        pcm = pcm.to(torch.float32) / 32768.0
    elif pcm.dtype in (torch.float32, torch.float64):
        pcm = pcm.to(torch.float32)
    else:
        raise TypeError(f"push() takes float32 or int16 samples, got {pcm.dtype}")
    if not bool(torch.isfinite(pcm).all()):
        bad = int((~torch.isfinite(pcm)).nonzero()[0, 0])
        raise ValueError(f"audio contains a non-finite sample ({float(pcm[bad])}) at index {bad}")
    return pcm.cpu()


class Stream:
    """One live audio source. Create with `Engine.open_stream()`."""

    def __init__(self, engine: "Engine", sid: int, r: int, slot: int):
        cfg = engine.cfg
        self.engine = engine
        self.id = sid
        self.slot = slot  # this stream's slot and pages in the engine's StreamCache
        self.r = r
        self.lookahead_ms = (r + 1) * cfg.frame_ms
        self.fe = MelFrontend(cfg, engine.model.frontend)
        self.mel = torch.zeros(0, cfg.n_mels)  # [n, n_mels] frames from index `mel_base` on
        self.mel_base = 0
        self.next_mel = 0  # index of the first mel frame not yet fed to the encoder
        self.steps = 0
        self.valid_frames = 0  # valid (not padded) encoder frames decoded so far: the next token timestamp's base
        self.tokens: list[int] = []
        self.stamps: list[int] = []
        self.input_done = False
        self.done = False
        self.final_reported = False
        self.encoder_outputs: list[torch.Tensor] = []  # per step [T, D], when the engine keeps them
        self.closed = False
        self.samples = 0  # audio samples pushed

    # ---- input -----------------------------------------------------------------------------------------------
    def push(self, pcm, sample_rate: int | None = None) -> None:
        """Append audio: float32 in [-1, 1] or int16, numpy or torch, shape [N], 16 kHz mono."""
        if self.closed:
            raise RuntimeError(f"stream {self.id} is closed")
        if self.input_done:
            raise RuntimeError(f"stream {self.id}: push() after finish()")
        sr = self.engine.cfg.sample_rate if sample_rate is None else sample_rate
        x = _as_float_pcm(pcm, sr, self.engine.cfg.sample_rate)
        self.samples += x.numel()
        self._append(self.fe.push(x))

    def finish(self) -> None:
        """The input has ended: the remaining frames become available and the stream will turn final."""
        if self.closed:
            raise RuntimeError(f"stream {self.id} is closed")
        if not self.input_done:
            self.input_done = True
            self._append(self.fe.finish())
            self._check_done()

    def _check_done(self) -> None:
        # NeMo stops when no frame is left, or drops a tail too short to produce an output frame
        # (fewer than 1 mel frame for a first chunk, fewer than 8 later)
        left = self.mel_available - self.next_mel
        if self.input_done and left < SAMPLING_FRAMES[0 if self.steps == 0 else 1]:
            self.done = True

    def _append(self, frames: torch.Tensor) -> None:
        if frames.shape[0]:
            self.mel = torch.cat([self.mel, frames])

    # ---- chunking (NeMo CacheAwareStreamingAudioBuffer semantics) -------------------------------------------
    @property
    def mel_available(self) -> int:
        return self.mel_base + self.mel.shape[0]

    def next_chunk(self) -> tuple[torch.Tensor, bool] | None:
        """The next chunk's encoder input [T_in, n_mels] and whether it is the first, or None if not ready."""
        if self.done:
            return None
        cfg = self.engine.cfg
        first = self.steps == 0
        want = cfg.first_chunk_mel(self.r) if first else cfg.chunk_mel(self.r)
        have = self.mel_available - self.next_mel
        if have < want and not self.input_done:
            return None
        n = min(want, have)
        lo = self.next_mel - self.mel_base
        new = self.mel[lo: lo + n]
        if first:
            return new, True
        cache_lo = max(self.next_mel - PRE_ENCODE_CACHE, 0)
        cache = self.mel[cache_lo - self.mel_base: lo]
        pad = new.new_zeros(PRE_ENCODE_CACHE - cache.shape[0], cfg.n_mels)  # zero (log-mel 0.0) frames
        return torch.cat([pad, cache, new]), False

    def _consumed(self, n_new: int) -> None:
        self.next_mel += n_new
        self.steps += 1
        # keep only the 9 frames the next pre-encode cache needs
        keep_from = max(self.next_mel - PRE_ENCODE_CACHE, 0)
        self.mel = self.mel[keep_from - self.mel_base:]
        self.mel_base = keep_from
        self._check_done()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.engine.close(self)

    # ---- output ------------------------------------------------------------------------------------------------
    def result(self) -> Result:
        eng = self.engine
        return Result(eng.tokenizer.decode(self.tokens), list(self.tokens),
                      [f * eng.cfg.frame_ms for f in self.stamps], self.done, self.samples / eng.cfg.sample_rate)


class Engine:
    """The streaming engine: a pool of streams, stepped in batches.

    >>> engine = Engine("out_dir")
    >>> s = engine.open_stream(lookahead_ms=560)
    >>> s.push(pcm); s.finish()
    >>> while not s.result().final: engine.step()
    >>> s.result().text
    """

    def __init__(self, model_dir: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                 max_streams: int | None = None,
                 memory_budget: int | None = None, keep_encoder_outputs: bool = False,
                 backend: str | Ops | None = None):
        """max_streams or memory_budget (bytes for the stream cache) sizes the preallocated pool (default 64
        streams). keep_encoder_outputs: each stream keeps every step's encoder output in `encoder_outputs` (for
        parity checks against NeMo, which compare activations step by step).

        backend: the op table the step runs (ops.py): "cpu" (the default on the CPU: the reference ops tuned for
        it, prepacked oneDNN products, channels-last subsampling, attention per stream; batch invariant bit for bit),
        "torch" (the plain reference ops on any device; on CUDA its greedy decoder reads every emitted token back to
        the host), "triton" (the default on CUDA: the Triton kernels and the CUDA greedy decoder of the compiled
        extension; an error when the extension is missing; on the CPU only under Triton's interpreter, for tests),
        or an `Ops` table of one's own (the benchmarks pass `ops.triton_ops(device, decoder_kernel="grid")`).
        """
        self.keep_encoder_outputs = keep_encoder_outputs
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device here (torch.cuda.is_available() is False; torch "
                             f"{torch.__version__}); use device='cpu'")
        self.ops: Ops = backend if isinstance(backend, Ops) else get_ops(backend, self.device)
        self.backend = self.ops.name
        self.model = Model.load(model_dir, dtype=dtype, device=self.device)
        self.ops.prepare(self.model)
        self.cfg: ModelConfig = self.model.cfg
        self.tokenizer = Tokenizer(self.model_dir / "tokenizer.model")
        if max_streams is not None and memory_budget is not None:
            raise ValueError("give max_streams or memory_budget, not both")
        if memory_budget is not None:
            max_streams = memory_budget // bytes_per_stream(self.cfg, dtype)
            if max_streams < 1:
                raise ValueError(f"memory_budget {memory_budget} bytes holds no stream "
                                 f"({bytes_per_stream(self.cfg, dtype)} bytes per stream)")
        self.cache = StreamCache(self.cfg, 64 if max_streams is None else max_streams, dtype, device=self.device)
        # every stream starts from the same decoder state (one LSTM step on SOS): computed once
        with torch.inference_mode():
            self.dec_after_sos = initial_state(self.model, 1, self.ops.linear)
        self.streams: dict[int, Stream] = {}
        self._next_id = 0

    def open_stream(self, lookahead_ms: int | None = None) -> Stream:
        r = self.cfg.lookahead_from_ms(lookahead_ms)
        with torch.inference_mode():
            slot = self.cache.open(self.dec_after_sos)
        s = Stream(self, self._next_id, r, slot)
        self._next_id += 1
        self.streams[s.id] = s
        return s

    def close(self, s: Stream) -> None:
        """Free everything the stream held (its slot and pages return to the pool)."""
        if self.streams.pop(s.id, None) is not None:
            self.cache.close(s.slot)
        s.closed = True

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        for s in list(self.streams.values()):
            self.close(s)

    def drain(self):
        """Step until every open stream whose input has finished is final, yielding each update (the updates of
        every stream stepped meanwhile, whether finished or not).

        >>> s.finish()
        >>> for u in engine.drain(): print(u.stream.id, u.text, u.final)
        """
        while any(s.input_done and not s.final_reported for s in self.streams.values()):
            yield from self.step()

    def memory_report(self):
        """Bytes per stream and the number of streams the preallocated pool holds."""
        return self.cache.memory_report()

    def pending(self) -> bool:
        """True while some open stream is not final."""
        return any(not s.done for s in self.streams.values())

    @torch.inference_mode()
    def step(self, streams=None) -> list[Update]:
        """One batched step over every stream with a chunk ready (or over those of `streams` only) -> an update per
        stepped stream."""
        groups: dict[tuple, list[tuple[Stream, torch.Tensor]]] = {}
        updates = []
        for s in (self.streams.values() if streams is None else streams):
            if s.closed:
                continue
            if s.done:
                if not s.final_reported:  # turned final at finish() without another chunk
                    s.final_reported = True
                    updates.append(Update(s, [], [], self.tokenizer.decode(s.tokens), True, s.samples))
                continue
            chunk = s.next_chunk()
            if chunk is not None:
                mel, first = chunk
                groups.setdefault((s.r, first, mel.shape[0]), []).append((s, mel))
        for (r, first, _), items in groups.items():
            updates += self._run_group(r, first, items)
        return updates

    def _run_group(self, r: int, first: bool, items: list[tuple[Stream, torch.Tensor]]) -> list[Update]:
        streams = [s for s, _ in items]
        b = len(streams)
        dev = self.device
        mel = torch.stack([m for _, m in items]).to(device=dev, dtype=self.model.dtype)  # [B, T_in, n_mels]
        mel_len = torch.full((b,), mel.shape[1], dtype=torch.int64, device=dev)
        slots = torch.tensor([s.slot for s in streams], dtype=torch.int64, device=dev)
        cache = self.cache
        out, out_len = encoder_step(self.model, self.ops, mel, mel_len, cache, slots, r, first)
        offsets = torch.tensor([s.valid_frames for s in streams], device=dev)
        toks, stamps = self.ops.decode(self.model, out, out_len, cache, slots, offsets)
        updates = []
        n_new = mel.shape[1] - (0 if first else PRE_ENCODE_CACHE)
        lens = out_len.tolist()  # one device-to-host read per group, after the decoder has returned the tokens
        for i, s in enumerate(streams):
            s.valid_frames += lens[i]
            s.tokens += toks[i]
            s.stamps += stamps[i]
            s._consumed(n_new)
            if self.keep_encoder_outputs:
                s.encoder_outputs.append(out[i, : lens[i]].float().cpu())  # [T, D]
            s.final_reported = s.done
            # mel frame m is complete once sample hop * m + n_fft // 2 - 1 has arrived (features.py)
            needed = min(s.samples, (s.next_mel - 1) * self.cfg.hop_length + self.cfg.n_fft // 2)
            updates.append(Update(s, toks[i], [f * self.cfg.frame_ms for f in stamps[i]],
                                  self.tokenizer.decode(s.tokens), s.done, needed))
        return updates

    def transcribe(self, pcm, lookahead_ms: int | None = None) -> Result:
        """Stream one whole signal through the engine, chunk by chunk, and return its final result."""
        return self.transcribe_many([pcm], lookahead_ms)[0]

    def transcribe_many(self, pcms, lookahead_ms: int | None = None) -> list[Result]:
        """Stream several whole signals at once, each its own stream, batched into the same steps -> their final
        results, in order. Needs a free stream slot per signal; the streams are closed on return. Only these streams
        are stepped: other streams of the engine are left for their owners to step."""
        streams = []
        try:
            for pcm in pcms:
                streams.append(self.open_stream(lookahead_ms))
                streams[-1].push(pcm)
                streams[-1].finish()
            while any(not s.done for s in streams):
                self.step(streams)
            return [s.result() for s in streams]
        finally:
            for s in streams:
                self.close(s)
