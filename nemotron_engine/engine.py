"""Engine and Stream: streams push audio at their own pace (from any thread); `engine.step()` runs one batched step
over every stream with a chunk ready.

The data path:
- `push` validates the samples and copies them into the stream's slot of the pool's audio ring; nothing else.
- `step` reads the per-slot counters (numpy arrays indexed by slot, not per-stream objects) to find the streams
  with a chunk ready, computes the log-mel frames of all their chunks in one batched call (features.py; a frame
  depends only on its own samples), puts each chunk together as [9 cached mel frames | new frames], runs the
  encoder step and the greedy decoder per group of streams (same lookahead, first chunk or not, same length), and
  turns the new tokens into updates (new tokens and new text only).

Chunking reproduces NeMo's cache-aware streaming buffer (CacheAwareStreamingAudioBuffer;
docs/streaming.md#2-chunking) exactly, per utterance:
- an utterance's first chunk is 1 + 8R mel frames, with no pre-encode cache and nothing dropped;
- every later chunk is the 9 previous mel frames (zero frames in front of the utterance's first) followed by
  8(R+1) new ones, and the first 2 subsampled frames are dropped;
- at the end of the utterance the last chunk is whatever remains (shorter), unless too few new frames remain to
  give an encoder frame (fewer than 8; fewer than 1 for a first chunk), in which case they are dropped, as NeMo
  drops them.
An utterance is what NeMo streams from a fresh state. `finish()` ends the last one of a stream; `finalize()` (and
endpointing) ends the open one and the stream goes on with a fresh one, so each segment equals NeMo's streaming of
that segment's audio alone.
"""
from __future__ import annotations

import gc
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import StreamCache, bytes_per_stream
from .config import PRE_ENCODE_CACHE, SAMPLING_FRAMES, SUBSAMPLING_FACTOR, ModelConfig, subsampled_length
from .encoder import encoder_step, joint_input
from .features import frames_ready, log_mel, preemphasize, span_length, span_start
from .graphs import StepGraphs
from .model import Model
from .ops import Ops, get_ops
from .reference.decoder import initial_state
from .tokenizer import Tokenizer

DETOKENIZE_CONTEXT = 8  # tokens before the new ones that decode_delta sees (word boundaries and punctuation)


@dataclass
class Segment:
    """One utterance's result: what NeMo's streaming of [start_ms, end_ms) of the stream's audio gives."""

    text: str
    tokens: list[int]  # token ids, blank excluded
    timestamps_ms: list[int]  # one per token, in stream time: its encoder frame x 80 ms + start_ms
    start_ms: float
    end_ms: float
    final: bool  # the utterance has ended and is fully decoded
    end_token: int | None = None  # the <EOU> / <EOB> id whose emission closed it (EOU models), else None


@dataclass
class Result:
    """A stream's open (or, once final, last) utterance."""

    text: str
    tokens: list[int]  # token ids, blank excluded
    timestamps_ms: list[int]  # one per token, in stream time
    final: bool  # the stream has finished and every chunk has been decoded
    audio_s: float = 0.0  # seconds of audio pushed so far
    start_ms: float = 0.0  # where the utterance starts in the stream


@dataclass(slots=True)
class Update:
    """What one step added to one stream."""

    stream: "Stream"
    tokens: list[int]  # the new tokens
    timestamps_ms: list[int]  # their times, in stream time
    text: str  # the new text: the utterance's text so far is the concatenation of its updates' texts
    final: bool  # the stream has finished and every chunk has been decoded
    needed_samples: int = 0  # samples of the stream that had to arrive for this step's chunk (its last one + 1)
    segment: Segment | None = None  # the segment that ended in this step (finalize, endpointing, finish, <EOU>)
    # every segment that ended in this step, in order (an EOU model can close several in one chunk: one per <EOU>
    # or <EOB> emitted); `segment` is the last of them
    segments: list[Segment] = field(default_factory=list)


@dataclass
class StepTimes:
    """What the engine's steps cost, accumulated since it was created (or since `reset`), for benchmarks. Wall time on
    the host: on a GPU, the feature time is the launches' unless the caller synchronises."""

    steps: int = 0
    stream_steps: int = 0  # streams stepped, summed over steps (a stream's chunk decoded = one stream-step)
    step_s: float = 0.0  # inside step()
    features_s: float = 0.0  # of which the batched feature computation (gather, pre-emphasis, STFT, mel, log)

    def reset(self) -> None:
        self.steps = self.stream_steps = 0
        self.step_s = self.features_s = 0.0


_F32 = np.dtype(np.float32)


def _as_float_pcm(pcm, sample_rate: int, expected: int) -> np.ndarray:
    """Validated samples as a float32 numpy array [N] (the array itself where no conversion is needed)."""
    if sample_rate != expected:
        raise ValueError(f"expected {expected} Hz mono audio, got {sample_rate} Hz; resample first")
    if type(pcm) is not np.ndarray:
        if isinstance(pcm, torch.Tensor):
            pcm = pcm.detach().cpu().numpy()
        elif not isinstance(pcm, np.ndarray):
            raise TypeError(f"push() takes a numpy array or torch tensor of samples, got {type(pcm).__name__}")
    if pcm.ndim != 1:
        raise ValueError(f"push() takes mono samples of shape [N], got shape {tuple(pcm.shape)}")
    dt = pcm.dtype
    if dt == np.int16:
        return pcm.astype(np.float32) / np.float32(32768.0)
    if dt != np.float32:
        if dt != np.float64:
            raise TypeError(f"push() takes float32 or int16 samples, got {dt}")
        pcm = pcm.astype(np.float32)
    # a NaN or an infinity makes the sum of squares NaN or infinite (one BLAS call); only a finite signal whose sum
    # of squares overflows takes the elementwise check
    if not math.isfinite(pcm.dot(pcm)) and not np.isfinite(pcm).all():
        bad = int(np.flatnonzero(~np.isfinite(pcm))[0])
        raise ValueError(f"audio contains a non-finite sample ({float(pcm[bad])}) at index {bad}")
    return pcm


def freeze_gc() -> None:
    """For a serving process, once its engine is built and warmed up: collect once, then move every object alive (the
    modules, the model, the engine's own) to the garbage collector's permanent generation (`gc.freeze()`). The loop
    allocates updates and lists every step; the objects that survive a young collection pile up until a full one runs,
    and a full one scans every tracked object: with the micro model at 1,024 streams (bench_host's loop, 10 ticks, timed
    with `gc.callbacks`), one full collection took about 80 ms (a step's worth of work, landing in a chunk's latency);
    with the process frozen, all collections of the run took 6-7 ms. The server, the Ray
    replicas, the loadtest and the host benchmark call it; an application embedding the engine may do the same."""
    gc.collect()
    gc.freeze()


class Stream:
    """One live audio source. Create with `Engine.open_stream()`; its counters live in the engine, by slot."""

    def __init__(self, engine: "Engine", sid: int, r: int, slot: int, endpoint_ms: int | None,
                 language: str | None = None, eou_reset: bool = False):
        self.engine = engine
        self.id = sid
        self.slot = slot  # this stream's slot and pages in the engine's pool
        self.r = r
        self.lookahead_ms = (r + 1) * engine.cfg.frame_ms
        self.endpoint_ms = endpoint_ms
        self.language = language  # a prompt model's language key (None for other models)
        self.eou_reset = eou_reset  # an emitted <EOU>/<EOB> also ends the utterance (fresh state), as finalize()
        self._seg_start_ms: float | None = None  # the open segment's start when an <EOU> began it, else None
        self._end_token: int | None = None  # the end token that requested the pending utterance end (eou_reset)
        self.closed = False
        self.input_done = False  # finish() was called
        self.done = False  # finished and fully decoded
        self.final_reported = False
        self._cuts: list[int] = []  # utterance ends (stream samples) requested after the open utterance's end
        # the open utterance: its tokens (for the result and the detokeniser's context) and text
        self.tokens: list[int] = []
        self.stamps_ms: list[int] = []
        self.text = ""
        self.encoder_outputs: list[torch.Tensor] = []  # per step [T, D], when the engine keeps them
        self.joint_inputs: list[torch.Tensor] = []  # per step [T, D] after the language prompt (prompt models), same
        self.features: list[torch.Tensor] = []  # per step, the chunk's new mel frames [n, n_mels], likewise

    # ---- input -----------------------------------------------------------------------------------------------
    def push(self, pcm, sample_rate: int | None = None) -> None:
        """Append audio: float32 in [-1, 1] or int16, numpy or torch, shape [N], 16 kHz mono. A copy into the
        stream's audio ring; safe to call from another thread than the one stepping the engine."""
        if self.closed:
            raise RuntimeError(f"stream {self.id} is closed")
        if self.input_done:
            raise RuntimeError(f"stream {self.id}: push() after finish()")
        eng = self.engine
        # the common case in a few cheap checks (a float32 numpy vector at the engine's rate whose sum of squares is
        # finite); anything else, and every error, takes the full validation (_as_float_pcm), with its messages
        if (sample_rate is None and type(pcm) is np.ndarray and pcm.dtype is _F32 and pcm.ndim == 1
                and math.isfinite(pcm.dot(pcm))):
            eng._write(self, pcm)
            return
        sr = eng.cfg.sample_rate if sample_rate is None else sample_rate
        eng._write(self, _as_float_pcm(pcm, sr, eng.cfg.sample_rate))

    def room(self) -> int:
        """Samples push() accepts now (max_queued_s minus what is queued ahead of the engine)."""
        return self.engine._room(self.slot)

    def finalize(self) -> None:
        """End the open utterance at the audio pushed so far, without closing the stream: its tail is decoded as at
        finish(), its segment turns final, and the audio pushed after this call starts a fresh utterance."""
        self.engine._cut(self, finish=False)

    def finish(self) -> None:
        """The input has ended: the remaining frames become available and the stream will turn final."""
        self.engine._cut(self, finish=True)

    @property
    def samples(self) -> int:
        """Audio samples pushed so far."""
        return self._samples_at_close if self.closed else int(self.engine._pushed[self.slot])

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.engine.close(self)

    # ---- output ------------------------------------------------------------------------------------------------
    def result(self) -> Result:
        """The open utterance so far (the last one, once the stream is final); O(1) in the stream's age."""
        eng = self.engine
        start = self._start_at_close if self.closed else int(eng._utt_start[self.slot])
        start_ms = start * 1000 / eng.cfg.sample_rate if self._seg_start_ms is None else self._seg_start_ms
        return Result(self.text, list(self.tokens), list(self.stamps_ms), self.done, self.samples / eng.cfg.sample_rate,
                      start_ms)


class Engine:
    """The streaming engine: a pool of streams, stepped in batches.

    >>> engine = Engine("out_dir")
    >>> s = engine.open_stream(lookahead_ms=560)
    >>> s.push(pcm); s.finish()
    >>> for u in engine.drain(): print(u.text, end="")
    """

    def __init__(self, model_dir: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
                 max_streams: int | None = None, memory_budget: int | None = None,
                 keep_encoder_outputs: bool = False, backend: str | Ops | None = None,
                 max_queued_s: float = 10.0, endpoint_ms: int | None = None, max_pages: int | None = None,
                 graphs: bool | list[int] = False):
        """max_streams or memory_budget (bytes for the pool) sizes the preallocated pool (default 64 streams), each
        slot able to hold a stream of the longest lookahead. A stream takes the attention pages of its own lookahead
        (C + r + 1 frames): max_pages sets the pool's pages lower (default: max_streams x the longest lookahead's),
        so that low-lookahead streams fill the slots in less memory; open_stream then raises when the free pages do
        not cover the stream's lookahead. `memory_report()` gives the pages and bytes per stream of each lookahead.
        keep_encoder_outputs: each stream keeps every step's encoder output in `encoder_outputs` and its new mel
        frames in `features` (for parity checks against NeMo, which compare activations step by step).

        backend: the op table the step runs (ops.py): "cpu" (the default on the CPU: the reference ops tuned for
        it, prepacked oneDNN products, channels-last subsampling, attention per stream; batch invariant bit for bit),
        "torch" (the plain reference ops on any device; on CUDA its greedy decoder reads every emitted token back to
        the host), "triton" (the default on CUDA: the Triton kernels and the CUDA greedy decoder of the compiled
        extension; an error when the extension is missing; on the CPU only under Triton's interpreter, for tests),
        or an `Ops` table of one's own (the benchmarks pass `ops.triton_ops(device, decoder_kernel="grid")`).

        max_queued_s: audio a stream may hold ahead of the engine (its ring); push() beyond it raises.
        endpoint_ms: the default of open_stream's endpointing (None: off, the NeMo-exact default).
        graphs: run the steady-state encoder step as CUDA graphs, one per (lookahead, batch bucket), captured here and
        replayed every step, batches padded to their bucket (graphs.py; `graph_report()`); a list of lookaheads (ms)
        captures those only (a faster start, less memory), the others run eagerly. On CUDA with the Triton backend
        only. On the CPU the same padded static step runs eagerly (for tests: no speed-up). Off by default
        until a GPU run has checked it (scripts/gpu_check.sh compares the tokens with and without).
        """
        self.keep_encoder_outputs = keep_encoder_outputs
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device here (torch.cuda.is_available() is False; torch "
                             f"{torch.__version__}); use device='cpu'")
        if not max_queued_s > 0:
            raise ValueError(f"max_queued_s must be > 0, got {max_queued_s}")
        self.ops: Ops = backend if isinstance(backend, Ops) else get_ops(backend, self.device)
        self.backend = self.ops.name
        self.model = Model.load(model_dir, dtype=dtype, device=self.device)
        self.ops.prepare(self.model)
        self.cfg: ModelConfig = self.model.cfg
        cfg = self.cfg
        self.tokenizer = Tokenizer(self.model_dir / "tokenizer.model")
        self.endpoint_ms = self._check_endpoint(endpoint_ms)
        self.max_queued_s = float(max_queued_s)
        # the ring holds the queue, plus what the next chunk still reads (its frames' windows, the sample before)
        self._max_queued = int(round(max_queued_s * cfg.sample_rate))
        # the most samples one chunk's frames read (span_length of the longest chunk): the ring holds that on top of
        # the queue, and repeats that many of its head after its end (the mirror, cache.py)
        r_max = max(cfg.lookaheads)
        chunk = span_length(cfg, max(cfg.first_chunk_mel(r_max), cfg.chunk_mel(r_max)))
        ring = self._max_queued + chunk
        if max_streams is not None and memory_budget is not None:
            raise ValueError("give max_streams or memory_budget, not both")
        if memory_budget is not None:
            per = bytes_per_stream(cfg, dtype, pcm_ring=ring, pcm_mirror=chunk)
            max_streams = memory_budget // per
            if max_streams < 1:
                raise ValueError(f"memory_budget {memory_budget} bytes holds no stream ({per} bytes per stream)")
        if graphs and self.device.type == "cuda" and self.ops.name != "triton":
            raise ValueError(f"graphs=True on CUDA needs the Triton backend, got backend={self.ops.name!r}")
        self.cache = StreamCache(cfg, 64 if max_streams is None else max_streams, dtype, device=self.device,
                                 pcm_ring=ring, pcm_mirror=chunk, max_pages=max_pages, scratch_slot=bool(graphs))
        S = self.cache.max_streams
        self._pcm = self.cache.pcm.numpy()  # the ring, as numpy: push() copies into it without torch's per-op cost
        # what push() reads on every call, as plain Python ints
        self._ring, self._mirror = self.cache.pcm_ring, self.cache.pcm_mirror
        self._hop = cfg.hop_length
        self._span_back = -span_start(cfg, 0)  # span_start(cfg, m) = m * hop - span_back
        # per-slot counters, in stream samples / mel frames / encoder frames of the open utterance
        self._pushed = np.zeros(S, np.int64)  # samples pushed (stream)
        self._utt_start = np.zeros(S, np.int64)  # the open utterance's first sample (stream)
        self._cut_at = np.full(S, -1, np.int64)  # the open utterance's end (stream sample), -1 while open
        self._next_mel = np.zeros(S, np.int64)  # the utterance's next mel frame to feed
        self._steps = np.zeros(S, np.int64)  # chunks decoded in the utterance
        self._valid_frames = np.zeros(S, np.int64)  # valid encoder frames decoded in the utterance
        self._last_token = np.full(S, -1, np.int64)  # encoder frame of the utterance's last token, -1: none
        self._r = np.zeros(S, np.int64)
        self._endpoint_frames = np.zeros(S, np.int64)  # 0: off
        self._live = np.zeros(S, bool)  # open and not yet final
        self._ring_touched = np.zeros(S, bool)  # the slot's audio ring has been written (open_stream)
        self._by_slot: list[Stream | None] = [None] * S
        # push() may run on other threads: it writes ring samples the step does not read and then publishes the
        # count under this lock; the step reads the counts under it, once, at its start
        self._lock = threading.Lock()
        self._stepping = False
        self._close_after_step: list[Stream] = []
        self._window_buf: torch.Tensor | None = None  # the step's chunk windows on the CPU (_window)
        # every stream starts from the same decoder state (one LSTM step on SOS): computed once
        with torch.inference_mode():
            self.dec_after_sos = initial_state(self.model, 1, self.ops.linear)
        self.streams: dict[int, Stream] = {}
        self._next_id = 0
        self.times = StepTimes()
        # last: captures over the finished pool
        self.graphs = None
        if graphs:
            only = None if graphs is True else sorted({cfg.lookahead_from_ms(ms) for ms in graphs})
            self.graphs = StepGraphs(self, lookaheads=only)

    def _check_endpoint(self, endpoint_ms):
        if endpoint_ms is not None and (endpoint_ms <= 0 or endpoint_ms % self.cfg.frame_ms):
            raise ValueError(f"endpoint_ms must be a positive multiple of {self.cfg.frame_ms} ms (one encoder frame), "
                             f"got {endpoint_ms}")
        return endpoint_ms

    # ---- streams -------------------------------------------------------------------------------------------------
    def open_stream(self, lookahead_ms: int | None = None, endpoint_ms: int | None = -1,
                    language: str | None = None, eou_reset: bool = False) -> Stream:
        """A new stream. endpoint_ms: finalise its utterance automatically after that much audio without a token
        following a token (default: the engine's endpoint_ms; None: off).

        language: a prompt model's language, a key of its prompt dictionary (`cfg.prompt_dictionary`; default
        `cfg.default_language`); streams of different languages share the engine's steps.
        eou_reset (EOU models): an emitted <EOU> or <EOB> always closes the open segment; by default the stream's
        state carries on, as in NeMo (tokens stay NeMo-exact over the whole stream); with eou_reset=True the
        utterance also ends there, where the decoded audio ends, as finalize() ends it (fresh state after it)."""
        r = self.cfg.lookahead_from_ms(lookahead_ms)
        endpoint_ms = self._check_endpoint(self.endpoint_ms if endpoint_ms == -1 else endpoint_ms)
        prompt = self.cfg.prompt_index(language)
        if eou_reset and not self.cfg.end_tokens:
            raise ValueError(f"eou_reset=True needs an end-of-utterance model; {self.cfg.model_class} has no <EOU> "
                             "token")
        if prompt >= 0 and language is None:
            language = self.cfg.default_language
        with torch.inference_mode(), self._lock:
            slot = self.cache.open(self.dec_after_sos, r)  # the pages of its own lookahead
            if not self._ring_touched[slot]:
                # the slot's first use: its audio ring's pages are mapped now (writing the zeros they hold), not by
                # the pushes of its first max_queued_s of audio (a page fault every 4 KiB otherwise)
                self._pcm[slot].fill(0.0)
                self._ring_touched[slot] = True
            self.cache.prompt[slot] = max(prompt, 0)
            s = Stream(self, self._next_id, r, slot, endpoint_ms, language, eou_reset)
            self._next_id += 1
            for a in (self._pushed, self._utt_start, self._next_mel, self._steps, self._valid_frames):
                a[slot] = 0
            self._cut_at[slot] = -1
            self._last_token[slot] = -1
            self._r[slot] = r
            self._endpoint_frames[slot] = (endpoint_ms or 0) // self.cfg.frame_ms
            self._live[slot] = True
            self._by_slot[slot] = s
            self.streams[s.id] = s
        return s

    def close(self, s: Stream) -> None:
        """Free everything the stream held (its slot and pages return to the pool)."""
        with self._lock:
            if s.closed:
                return
            s._samples_at_close, s._start_at_close = int(self._pushed[s.slot]), int(self._utt_start[s.slot])
            s.closed = True
            if self._stepping:  # the running step may still use the slot: freed when it returns
                self._close_after_step.append(s)
            else:
                self._free(s)

    def _free(self, s: Stream) -> None:
        if self.streams.pop(s.id, None) is not None:
            self._live[s.slot] = False
            self._by_slot[s.slot] = None
            self.cache.close(s.slot)

    def _room(self, slot: int) -> int:
        # the ring keeps the samples from the first one the next frame reads (its window, the sample before:
        # span_start); Python ints read with .item() (no numpy scalars): this runs on every push
        keep_from = self._utt_start.item(slot) + self._next_mel.item(slot) * self._hop - self._span_back
        return max(self._ring - (self._pushed.item(slot) - max(keep_from, 0)), 0)

    def _rooms(self, slots: np.ndarray) -> np.ndarray:
        """_room of many slots at once (int64 [len(slots)])."""
        keep_from = self._utt_start[slots] + self._next_mel[slots] * self._hop - self._span_back
        return np.maximum(self._ring - (self._pushed[slots] - np.maximum(keep_from, 0)), 0)

    def _queue_full(self, sid: int, room: int, n: int, advice: str) -> RuntimeError:
        """The error of a push that finds less room than its n samples."""
        sr = self.cfg.sample_rate
        return RuntimeError(
            f"stream {sid}: {(self._ring - room) / sr:.2f} s of audio already queued ahead of the engine and {n} "
            f"samples ({n / sr:.2f} s) more would exceed max_queued_s={self.max_queued_s}; step the engine "
            f"(engine.step()) before pushing more, push at most {advice} samples, or create the Engine with a larger "
            "max_queued_s")

    def _write(self, s: Stream, x: np.ndarray) -> None:
        n = x.size
        slot = s.slot
        with self._lock:
            if s.closed:
                raise RuntimeError(f"stream {s.id} is closed")
            room = self._room(slot)
            if n > room:
                raise self._queue_full(s.id, room, n, "stream.room()")
            pushed = self._pushed.item(slot)
            self._write_row(slot, pushed % self._ring, x)
            self._pushed[slot] = pushed + n

    def rooms(self, streams) -> np.ndarray:
        """Samples push() accepts now, per stream (int64 [len(streams)]): `Stream.room()` of many in one call."""
        return self._rooms(np.fromiter((s.slot for s in streams), np.int64, len(streams)))

    def push_many(self, streams, pcm) -> None:
        """Append one packet of audio to each of many streams: `pcm[i]` to `streams[i]`, all packets of the same
        length, as a float32 numpy array [B, N] (or anything `np.asarray` makes one of: a list of float32 vectors;
        int16 is scaled as in push()). What a serving loop calls once per tick instead of B push() calls: one
        validation and one scattered copy into the audio rings for the whole batch. All or nothing: a bad packet, a
        closed or finished stream, a stream given twice, or a stream without room raises, naming it, and no stream
        is written. Safe to call from another thread than the one stepping the engine, as push()."""
        streams = list(streams)
        b = len(streams)
        if type(pcm) is not np.ndarray:
            if isinstance(pcm, torch.Tensor):
                pcm = pcm.detach().cpu().numpy()
            else:
                try:
                    pcm = np.asarray(pcm)
                except ValueError as err:  # ragged
                    raise ValueError(f"push_many() takes packets of one length (an array [B, N]): {err}") from None
        if pcm.ndim != 2 or pcm.shape[0] != b:
            raise ValueError(f"push_many() takes an array [B, N] for B = {b} streams, got shape {tuple(pcm.shape)}")
        dt = pcm.dtype
        if dt == np.int16:
            pcm = pcm.astype(np.float32) / np.float32(32768.0)
        elif dt != np.float32:
            if dt != np.float64:
                raise TypeError(f"push_many() takes float32 or int16 samples, got {dt}")
            pcm = pcm.astype(np.float32)
        pcm = np.ascontiguousarray(pcm)
        flat = pcm.reshape(-1)
        if not math.isfinite(flat.dot(flat)) and not np.isfinite(flat).all():
            i, j = (int(v[0]) for v in np.nonzero(~np.isfinite(pcm)))
            raise ValueError(f"stream {streams[i].id}: audio contains a non-finite sample ({float(pcm[i, j])}) at "
                             f"index {j}")
        n = pcm.shape[1]
        if b == 0 or n == 0:
            return
        for s in streams:
            if s.engine is not self:
                raise ValueError(f"stream {s.id} belongs to another engine")
        slots = np.fromiter((s.slot for s in streams), np.int64, b)
        if np.bincount(slots).max() > 1:
            raise ValueError("push_many() was given a stream twice; give each stream one packet per call")
        ring = self._ring
        with self._lock:
            for s in streams:
                if s.closed:
                    raise RuntimeError(f"stream {s.id} is closed")
                if s.input_done:
                    raise RuntimeError(f"stream {s.id}: push() after finish()")
            pushed = self._pushed[slots]
            room = self._rooms(slots)
            if (short := np.flatnonzero(room < n)).size:
                k = int(short[0])
                err = self._queue_full(streams[k].id, int(room[k]), n, "engine.rooms(streams)")
                raise RuntimeError(f"{err}; nothing of this push_many() call was written")
            at = pushed % ring
            # one scattered copy through a strided view of the rings: win[slot, a] is row slot's samples [a, a + n);
            # a packet that wraps around the ring (rare: once a revolution) goes alone
            win = self._ring_windows(n)
            plain = at + n <= ring
            if plain.all():
                win[slots, at] = pcm
            else:
                win[slots[plain], at[plain]] = pcm[plain]
                for k in np.flatnonzero(~plain).tolist():
                    self._write_row(int(slots[k]), int(at[k]), pcm[k])
            self._pushed[slots] = pushed + n

    def _ring_windows(self, n: int) -> np.ndarray:
        """A writable view [S, ring + mirror - n + 1, n] of the audio rings: [slot, a] is the row's samples a..a+n."""
        p = self._pcm
        return np.lib.stride_tricks.as_strided(p, shape=(p.shape[0], p.shape[1] - n + 1, n),
                                               strides=(p.strides[0], p.strides[1], p.strides[1]), writeable=True)

    def _write_row(self, slot: int, at: int, x: np.ndarray) -> None:
        """Write x at ring position `at` of the slot's row, wrapping around the ring (the caller holds the lock and
        has checked the room). The mirror after the ring's end is not written here: the step renews it (_features)."""
        row = self._pcm[slot]
        end = at + x.size
        if end <= self._ring:
            row[at: end] = x
        else:
            first = self._ring - at
            row[at: self._ring] = x[:first]
            row[: end - self._ring] = x[first:]

    def _cut(self, s: Stream, finish: bool) -> None:
        with self._lock:
            if s.closed:
                raise RuntimeError(f"stream {s.id} is closed")
            if s.input_done:
                return
            at = int(self._pushed[s.slot])
            last = s._cuts[-1] if s._cuts else int(self._cut_at[s.slot])
            # an empty utterance is not one, except a stream's only one (NeMo decodes its single pad frame)
            empty = at == (last if last >= 0 else int(self._utt_start[s.slot]))
            if not empty or (finish and at == 0):
                if self._cut_at[s.slot] < 0:
                    self._cut_at[s.slot] = at
                else:
                    s._cuts.append(at)
            if finish:
                s.input_done = True

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
        while any(s.input_done and not s.final_reported for s in list(self.streams.values())):
            yield from self.step()

    def graph_report(self) -> dict | None:
        """The step graphs (graphs=True): buckets, lookaheads, graphs captured, capture time, replays; else None."""
        return None if self.graphs is None else self.graphs.report()

    def memory_report(self):
        """Bytes per stream and the number of streams the preallocated pool holds; the pages and bytes a stream of
        each lookahead takes (`pages_by_lookahead_ms`, `bytes_by_lookahead_ms`), the pool's pages and the free ones."""
        return self.cache.memory_report()

    def pending(self) -> bool:
        """True while some open stream is not final."""
        return any(not s.done for s in list(self.streams.values()))

    # ---- the step ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, streams=None) -> list[Update]:
        """One batched step over every stream with a chunk ready (or over those of `streams` only) -> an update per
        stepped stream."""
        cfg = self.cfg
        with self._lock:
            if streams is None:
                slots = np.flatnonzero(self._live)
            else:
                slots = np.array([s.slot for s in streams if not s.closed and not s.done], np.int64)
            pushed = self._pushed[slots].copy()
            cut = self._cut_at[slots].copy()
            self._stepping = True
        t0 = time.perf_counter()
        try:
            return self._step(cfg, slots, pushed, cut)
        finally:
            self.times.steps += 1
            self.times.step_s += time.perf_counter() - t0
            with self._lock:
                self._stepping = False
                for s in self._close_after_step:
                    self._free(s)
                self._close_after_step.clear()

    def _step(self, cfg, slots, pushed, cut) -> list[Update]:
        updates: list[Update] = []
        utt_start = self._utt_start[slots]
        ended = cut >= 0
        length = np.where(ended, cut, pushed) - utt_start  # samples of the open utterance so far
        have = frames_ready(cfg, length, ended) - self._next_mel[slots]
        r = self._r[slots]
        first = self._steps[slots] == 0
        want = np.where(first, 1 + SUBSAMPLING_FACTOR * r, SUBSAMPLING_FACTOR * (r + 1))  # cfg.(first_)chunk_mel
        min_tail = np.where(first, SAMPLING_FRAMES[0], SAMPLING_FRAMES[1])
        ready = (have >= want) | (ended & (have >= min_tail))
        # an ended utterance with no chunk left: its segment closes (NeMo drops a tail too short to give a frame)
        closing = slots[ended & ~ready]
        n_new = np.minimum(want, have)
        run = np.flatnonzero(ready)
        if run.size:
            stepped = self._run(cfg, slots[run], n_new[run], first[run], r[run], length[run], ended[run])
            # an utterance whose last chunk this was closes now, its segment on the same update
            done = set(slots[run][ended[run] & (have[run] - n_new[run] < SAMPLING_FRAMES[1])].tolist())
            if done:  # (in steady state none: no per-stream loop)
                for u in stepped:
                    if u.stream.slot in done:
                        end = self._end_utterance(u.stream)
                        u.segment, u.final = end.segment, end.final
                        u.segments.append(end.segment)
            updates += stepped
        for slot in closing:
            updates.append(self._end_utterance(self._by_slot[slot]))
        # a stream finished after its last utterance was already closed (nothing more to decode)
        for slot in slots[~ended & ~ready].tolist():
            s = self._by_slot[slot]
            if s is None or not s.input_done:  # (set once, under the lock: only a finished stream can turn final)
                continue
            with self._lock:  # finish() may have cut an utterance since the snapshot: then it is not final yet
                final = (s is not None and s.input_done and not s._cuts and not s.done
                         and self._cut_at[slot] < 0)
                if final:
                    s.done = s.final_reported = True
                    self._live[slot] = False
            if final:
                updates.append(Update(s, [], [], "", True, s.samples))
        return updates

    def _run(self, cfg, slots, n_new, first, r, length, ended) -> list[Update]:
        """Features, encoder and decoder for the ready streams, one group per (lookahead, first, chunk length): in
        steady state a single group, whose features are one batched computation."""
        self.times.stream_steps += slots.size
        updates = []
        # one int64 key per stream, ordered as (r, first, n_new) are; in steady state every key is the same and the
        # group is every stream (np.unique, a sort, costs about 2 us a stream with axis=0 and 0.3 us on the keys)
        key = (r * 2 + first) << 32 | n_new
        if key.size and key.min() == key.max():
            groups = [(slice(None), key[0])]
        else:
            keys, inverse = np.unique(key, return_inverse=True)
            groups = [(np.flatnonzero(inverse.reshape(-1) == g), k) for g, k in enumerate(keys.tolist())]
        for m, k in groups:
            gr, gfirst, gn = int(k) >> 33, bool(int(k) >> 32 & 1), int(k) & 0xFFFFFFFF
            new = self._features(slots[m], gn, length[m], ended[m])  # [B, n, n_mels]
            updates += self._run_group(slots[m], new, gr, gfirst, length[m], ended[m])
        return updates

    def _features(self, slots, n: int, length, ended) -> torch.Tensor:
        """The next n mel frames of each stream [B, n, n_mels], from the samples they read in the audio ring."""
        cfg, dev = self.cfg, self.device
        t0 = time.perf_counter()
        ring = self.cache.pcm_ring
        span = span_length(cfg, n)
        start = span_start(cfg, self._next_mel[slots])  # [B] utterance sample of each span's first
        # each span is one contiguous row of the mirrored ring (cache.py), starting at its first sample's place
        at = (self._utt_start[slots] + start) % ring
        # a span that crosses the ring's end reads on in the mirror: its head samples are copied there now (pushes
        # write the ring only). They were pushed before this step and the ring's room keeps them until it is done.
        for k in np.flatnonzero(at > ring - span).tolist():
            row, need = self._pcm[slots[k]], int(at[k]) + span - ring
            row[ring: ring + need] = row[:need]
        rows = self.cache.pcm.unfold(1, span, 1)  # [S, ring + mirror - span + 1, span] (a view)
        x = rows[torch.from_numpy(slots), torch.from_numpy(at)]  # [B, span]
        # samples outside the utterance (before its start, after its end) read as the STFT's zero padding; in
        # steady state no span reaches outside, and nothing is masked
        inside = (start >= 0) & (~ended | (start + span <= length))
        valid = None
        if not inside.all():
            pos = torch.from_numpy(start).unsqueeze(1) + torch.arange(span)  # [B, span] utterance sample index
            end = torch.from_numpy(np.where(ended, length, np.iinfo(np.int64).max)).unsqueeze(1)
            valid = (pos >= 0) & (pos < end)
        if dev.type != "cpu":
            x = x.to(dev, non_blocking=True)
            valid = None if valid is None else valid.to(dev, non_blocking=True)
        mel = log_mel(cfg, self.model.frontend, preemphasize(x, valid, cfg.preemph))  # [B, n, n_mels]
        # NeMo sets the frame at index L // hop of an ended signal (its last) to the pad value
        last = length // cfg.hop_length - self._next_mel[slots]  # [B] its index among the new frames
        pad = np.flatnonzero(ended & (last >= 0) & (last < n))
        if pad.size:
            mel[torch.from_numpy(pad).to(dev), torch.from_numpy(last[pad]).to(dev)] = cfg.pad_value
        self.times.features_s += time.perf_counter() - t0
        return mel

    def _window(self, mel_cache: torch.Tensor, slot_t: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """[cached mel frames | new frames] per stream [B, 9 + n, n_mels] (what torch.cat gives). On the CPU it is
        assembled in a buffer the engine keeps (valid until the next step; the encoder keeps no reference to its
        input): no fresh allocation of a few MB, and no intermediate gather, per step."""
        if new.device.type != "cpu" or new.dtype != mel_cache.dtype:
            return torch.cat([mel_cache[slot_t], new], dim=1)
        b, n, m = new.shape
        size = b * (PRE_ENCODE_CACHE + n) * m
        if self._window_buf is None or self._window_buf.numel() < size:
            self._window_buf = torch.empty(size, dtype=new.dtype)
        w = self._window_buf[:size].view(b, PRE_ENCODE_CACHE + n, m)
        torch.index_select(mel_cache, 0, slot_t, out=w[:, :PRE_ENCODE_CACHE])
        w[:, PRE_ENCODE_CACHE:] = new
        return w

    def _run_group(self, slots, new, r, first, length, ended) -> list[Update]:
        cfg, dev, cache = self.cfg, self.device, self.cache
        b, n = new.shape[:2]
        slot_t = torch.from_numpy(slots).to(dev)
        window = self._window(cache.mel, slot_t, new)  # [B, 9 + n, n_mels]
        cache.mel.index_copy_(0, slot_t, window[:, -PRE_ENCODE_CACHE:])
        mel = new if first else window
        # steady-state chunks replay their bucket's graph (graphs.py); first chunks, tails: the eager step
        ran = None if self.graphs is None or first else self.graphs.run(r, window, slot_t)
        if ran is not None:
            out, joint_in = ran
        else:
            mel = mel.to(self.model.dtype)
            mel_len = torch.full((b,), mel.shape[1], dtype=torch.int64, device=dev)
            out, _ = encoder_step(self.model, self.ops, mel, mel_len, cache, slot_t, r, first)
            joint_in = joint_input(self.model, self.ops, out, cache.prompt[slot_t])  # [B, T, D] per-stream language
        # the valid output frames, known on the host: no read-back of the encoder's lengths
        t_out = max(int(subsampled_length(mel.shape[1])) - (0 if first else 2), 0)
        offsets = self._valid_frames[slots]
        toks, stamps = self.ops.decode(self.model, joint_in, torch.full((b,), t_out, dtype=torch.int64, device=dev),
                                       cache, slot_t, torch.from_numpy(offsets).to(dev))
        self._next_mel[slots] += n
        self._steps[slots] += 1
        self._valid_frames[slots] += t_out
        hop, half, frame_ms = cfg.hop_length, cfg.n_fft // 2, cfg.frame_ms
        utt_start = self._utt_start[slots]
        # per stream, computed for all at once: the utterance's start in ms, and the samples this chunk needed (mel
        # frame m is complete once sample hop * m + n_fft // 2 - 1 of the utterance has arrived)
        start_ms = (utt_start * 1000 // cfg.sample_rate).tolist()
        needed = (utt_start + np.minimum(length, (self._next_mel[slots] - 1) * hop + half)).tolist()
        # an update per stream, built in one pass; the streams with new tokens (or kept activations) then get theirs
        by_slot = self._by_slot
        slot_list = slots.tolist()
        updates = [Update(by_slot[slot], t, [], "", False, nd) for slot, t, nd in zip(slot_list, toks, needed)]
        ends = set(cfg.end_tokens)
        eou_cut = []  # streams with eou_reset whose step emitted an end token
        for i in (range(b) if self.keep_encoder_outputs else [i for i, t in enumerate(toks) if t]):
            u = updates[i]
            s, new_toks = u.stream, u.tokens
            if new_toks:
                u.timestamps_ms = ms = [start_ms[i] + f * frame_ms for f in stamps[i]]
                u.text, closed = self._append(s, new_toks, ms, start_ms[i], split=not s.eou_reset)
                if closed:
                    u.segments, u.segment = closed, closed[-1]
                self._last_token[slot_list[i]] = stamps[i][-1]
                if s.eou_reset and ends.intersection(new_toks):
                    s._end_token = next(t for t in new_toks if t in ends)
                    eou_cut.append(i)
            if self.keep_encoder_outputs:
                s.encoder_outputs.append(out[i, :t_out].float().cpu())  # [T, D]
                if cfg.num_prompts:
                    s.joint_inputs.append(joint_in[i, :t_out].float().cpu())  # [T, D]
                s.features.append(new[i].cpu())  # [n, n_mels]
        # eou_reset: the utterance ends where the decoded audio ends (as endpointing ends it, below)
        for k in eou_cut:
            self._endpoint(self._by_slot[slots[k]], int(utt_start[k] + self._next_mel[slots[k]] * hop + half - hop))
        # endpointing: enough frames without a token after a token ends the utterance where the decoded audio ends
        # (hop * m + n_fft // 2 - hop samples: every frame fed so far read only samples before it)
        ep = self._endpoint_frames[slots]
        last = self._last_token[slots]
        for k in np.flatnonzero((ep > 0) & (last >= 0) & (self._valid_frames[slots] - 1 - last >= ep)).tolist():
            self._endpoint(self._by_slot[slots[k]], int(utt_start[k] + self._next_mel[slots[k]] * hop + half - hop))
        return updates

    def _append(self, s: Stream, toks: list[int], ms: list[int], utt_start_ms: float,
                split: bool) -> tuple[str, list[Segment]]:
        """Append a step's tokens to the stream's open segment -> (the new text, the segments closed). With split
        (an EOU model's default), each <EOU> / <EOB> closes the open segment right after itself: the segment ends
        with that token, at the end of its frame, and the next one starts there. End tokens never reach a text."""
        ends = self.cfg.end_tokens
        closed: list[Segment] = []
        text, a = "", 0
        for j, t in enumerate(toks):
            if split and t in ends:
                text += self._extend(s, toks[a: j + 1], ms[a: j + 1], ends)
                end_ms = ms[j] + self.cfg.frame_ms
                start = utt_start_ms if s._seg_start_ms is None else s._seg_start_ms
                closed.append(Segment(s.text, s.tokens, s.stamps_ms, start, end_ms, True, t))
                s.tokens, s.stamps_ms, s.text = [], [], ""
                s._seg_start_ms = end_ms
                a = j + 1
        return text + self._extend(s, toks[a:], ms[a:], ends), closed

    def _extend(self, s: Stream, toks: list[int], ms: list[int], ends: tuple[int, ...]) -> str:
        """Append tokens (and their times) to the open segment -> the text they add (end tokens have none)."""
        words = [t for t in toks if t not in ends] if ends else toks
        text = ""
        if words:
            context = s.tokens[-DETOKENIZE_CONTEXT:]
            text = self.tokenizer.decode_delta([t for t in context if t not in ends] if ends else context, words)
        s.tokens += toks
        s.stamps_ms += ms
        s.text += text
        return text

    def _endpoint(self, s: Stream, at: int) -> None:
        """End the open utterance at stream sample `at`, before any cut already requested (which then ends the next
        one). A cut at or before `at` wins: no frame fed so far read past it (a frame that read the zeros after it
        puts `at` after it)."""
        with self._lock:
            cut = int(self._cut_at[s.slot])
            if cut < 0:
                self._cut_at[s.slot] = at
            elif at < cut:
                s._cuts.insert(0, cut)
                self._cut_at[s.slot] = at

    def _end_utterance(self, s: Stream) -> Update:
        """The open utterance of s has ended and is decoded: its segment goes out; the stream turns final, or its
        slot is reset for the next utterance, which starts at the cut."""
        cfg = self.cfg
        slot = s.slot
        start, end = int(self._utt_start[slot]), int(self._cut_at[slot])
        start_ms = start * 1000 / cfg.sample_rate if s._seg_start_ms is None else s._seg_start_ms
        seg = Segment(s.text, s.tokens, s.stamps_ms, start_ms, end * 1000 / cfg.sample_rate, True, s._end_token)
        s._seg_start_ms = s._end_token = None
        with self._lock:
            final = s.input_done and not s._cuts
            if final:
                s.done = s.final_reported = True
                self._live[slot] = False
                return Update(s, [], [], "", True, end, seg, [seg])
            self._cut_at[slot] = s._cuts.pop(0) if s._cuts else -1
            self._utt_start[slot] = end
        with torch.inference_mode():
            self.cache.reset(slot, self.dec_after_sos)
        for a in (self._next_mel, self._steps, self._valid_frames):
            a[slot] = 0
        self._last_token[slot] = -1
        s.tokens, s.stamps_ms, s.text = [], [], ""
        return Update(s, [], [], "", False, end, seg, [seg])

    # ---- whole signals -------------------------------------------------------------------------------------------
    def transcribe(self, pcm, lookahead_ms: int | None = None, language: str | None = None) -> Result:
        """Stream one whole signal through the engine, chunk by chunk, and return its final result."""
        return self.transcribe_many([pcm], lookahead_ms, language)[0]

    def transcribe_many(self, pcms, lookahead_ms: int | None = None, language: str | None = None) -> list[Result]:
        """Stream several whole signals at once, each its own stream, batched into the same steps -> their final
        results, in order (every segment's tokens, timestamps and text together, with the engine's endpointing).
        Needs a free stream slot per signal; the audio is pushed as the steps consume it; the streams are closed on
        return. Only these streams are stepped: other streams of the engine are left for their owners to step."""
        streams, pcms = [], [_as_float_pcm(p, self.cfg.sample_rate, self.cfg.sample_rate) for p in pcms]
        try:
            for _ in pcms:
                streams.append(self.open_stream(lookahead_ms, language=language))
            pos = [0] * len(pcms)
            parts: list[list[Segment]] = [[] for _ in pcms]
            index = {s.id: i for i, s in enumerate(streams)}
            while not all(s.done for s in streams):
                for i, s in enumerate(streams):
                    if not s.input_done:
                        n = min(s.room(), len(pcms[i]) - pos[i])
                        if n:
                            s.push(pcms[i][pos[i]: pos[i] + n])
                            pos[i] += n
                        if pos[i] == len(pcms[i]):
                            s.finish()
                for u in self.step(streams):
                    parts[index[u.stream.id]] += u.segments
            out = []
            for i, s in enumerate(streams):
                segs = parts[i]
                out.append(Result(" ".join(g.text for g in segs if g.text), [t for g in segs for t in g.tokens],
                                  [t for g in segs for t in g.timestamps_ms], True, len(pcms[i]) / self.cfg.sample_rate))
            return out
        finally:
            for s in streams:
                self.close(s)
