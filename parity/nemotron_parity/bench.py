"""Real-time streams benchmark: how many concurrent streams the engine sustains per lookahead, beside NeMo.

    nemotron-engine bench [--size full|tiny] [--layers N] [--model DIR] [--lookahead-ms 80 160 560 1120]
                          [--streams 1 2 4 8 ...] [--audio-s 5] [--threads T] [--no-nemo] [--out DIR]

For each lookahead, N concurrent streams (N swept) are fed real-time-sized pieces of synthetic speech (one
chunk's worth, lookahead_ms of audio, per stream per tick) and the engine is stepped as fast as it computes. The
real-time factor is RTF(N) = compute time / audio duration of one stream: RTF <= 1 means the N streams are
sustained live. NeMo's own cache-aware streaming runs the same model and audio as a batch, as NeMo's example
script drives a batch (CacheAwareStreamingAudioBuffer with N streams appended, conformer_stream_step over the
batch); its preprocessing (append_audio) is timed too, as the engine's feature extraction (push) is.

Reported per lookahead and provider ("engine", "nemo"):
- max_rt_streams: the largest measured N with RTF <= 1 (sweep granularity; `capped` when the largest N measured
  was still real time, so it is a lower bound);
- rtfx: max over measured N of N / RTF(N) (at `best_batch`): seconds of audio processed per second of compute, in
  stream equivalents. It is an upper bound of the streams that batches of that size could sustain, and it is
  defined also where not even N = 1 is real time;
- ratio_rt_streams (engine / NeMo max_rt_streams, when NeMo sustains at least one stream) and ratio_rtfx; the
  issue's goals (560 ms: 4x, 80 ms: 10x) are checked on ratio_rt_streams, or on ratio_rtfx where NeMo sustains
  no stream (`goal_basis` says which);
- useful GFLOP/s: `useful_flops_per_frame` (a formula from the model shape, below) x encoder frames / time;
- bytes per stream: `engine.memory_report()` when the engine has it, else `bytes_per_stream` from the config.

The benchmark model is a random NeMo model of the requested shape (default: the full Nemotron shape), built with
the parity harness (nemotron_parity.nemo_harness: random weights, blank bias calibrated), saved as .nemo and
converted; both are cached on disk (--cache-dir / NEMOTRON_BENCH_CACHE) because the full build takes minutes.
NeMo is imported only inside the functions that need it: without NeMo the engine is benchmarked alone (a
converted model is then needed: --model DIR, or one already in the cache).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 16000
DEFAULT_LOOKAHEADS_MS = (80, 160, 560, 1120)
DEFAULT_STREAMS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# the issue's goals on a 2-core CPU: engine real-time streams / NeMo real-time streams, per lookahead
GOALS = {560: 4.0, 80: 10.0}
PROVIDERS = ("engine", "nemo")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def nemo_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nemo") is not None


# a sweep never stops early below this many streams (see Bench.sweep)
EARLY_STOP_MIN_STREAMS = 16


# ---- model shape ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """Architecture of the benchmark model; the fixed parts (layer-norm conv norm, no biases, no xscaling,
    untied position biases, chunked_limited [[70,13],[70,6],[70,1],[70,0]], joint dropout) are Nemotron's."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    ff_dim: int
    n_mels: int = 128
    subsampling_channels: int = 256
    conv_kernel_size: int = 9
    pred_hidden: int = 640
    pred_rnn_layers: int = 2
    joint_hidden: int = 640
    vocab_size: int = 1024

    @property
    def key(self) -> str:
        """Cache directory name: every field that changes the weights."""
        return (f"L{self.n_layers}-d{self.d_model}-h{self.n_heads}-ff{self.ff_dim}-m{self.n_mels}"
                f"-c{self.subsampling_channels}-k{self.conv_kernel_size}-p{self.pred_hidden}x{self.pred_rnn_layers}"
                f"-j{self.joint_hidden}-v{self.vocab_size}")


SIZES = {
    "full": Shape("full", n_layers=24, d_model=1024, n_heads=8, ff_dim=4096),
    "tiny": Shape("tiny", n_layers=2, d_model=64, n_heads=4, ff_dim=256, subsampling_channels=16, pred_hidden=32,
                  joint_hidden=32, vocab_size=128),
}


def make_shape(size: str = "full", layers: int | None = None, d_model: int | None = None, heads: int | None = None,
               ff: int | None = None, vocab: int | None = None) -> Shape:
    """A named size with optional overrides (ff defaults to 4 x d_model when d_model is overridden)."""
    base = SIZES[size]
    d = d_model or base.d_model
    changed = any(v is not None for v in (layers, d_model, heads, ff, vocab))
    return Shape(
        name=f"{size}-custom" if changed else size,
        n_layers=layers or base.n_layers,
        d_model=d,
        n_heads=heads or base.n_heads,
        ff_dim=ff or (4 * d if d_model else base.ff_dim),
        n_mels=base.n_mels,
        subsampling_channels=base.subsampling_channels,
        conv_kernel_size=base.conv_kernel_size,
        pred_hidden=base.pred_hidden,
        pred_rnn_layers=base.pred_rnn_layers,
        joint_hidden=base.joint_hidden,
        vocab_size=vocab or base.vocab_size,
    )


def variant_for(shape: Shape):
    """The parity harness Variant of a benchmark shape."""
    from nemotron_parity.nemo_harness import Variant

    if shape.ff_dim % shape.d_model:
        raise ValueError(f"ff_dim {shape.ff_dim} must be a multiple of d_model {shape.d_model}")
    return Variant(
        id=f"bench_{shape.key}", n_mels=shape.n_mels, d_model=shape.d_model, n_heads=shape.n_heads,
        n_layers=shape.n_layers, subsampling_conv_channels=shape.subsampling_channels,
        ff_expansion_factor=shape.ff_dim // shape.d_model, conv_kernel_size=shape.conv_kernel_size,
        conv_norm_type="layer_norm", use_bias=False, xscaling=False, untie_biases=True,
        pred_hidden=shape.pred_hidden, pred_rnn_layers=shape.pred_rnn_layers, joint_hidden=shape.joint_hidden,
        joint_dropout=0.1, max_symbols=10)


# ---- tokenizer -----------------------------------------------------------------------------------------------
_ONSETS = ("", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s", "t", "v", "w", "y",
           "z", "bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sc", "sh", "sk", "sl",
           "sm", "sn", "sp", "st", "str", "sw", "th", "tr", "tw", "wh", "wr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "au", "ea", "ee", "ei", "ie", "oa", "oi", "oo", "ou", "y")
_CODAS = ("", "", "", "b", "ck", "d", "ft", "g", "k", "l", "ld", "lt", "m", "mp", "n", "nd", "ng", "nk", "nt",
          "p", "r", "rd", "rk", "rn", "rt", "s", "sh", "sk", "st", "t", "th", "x")


def synthetic_text(n_sentences: int = 20000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English: a 6000-word lexicon of random syllable words, drawn with Zipf frequencies
    into sentences with capitals, commas, full stops and question marks (enough material for 1024 BPE pieces)."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))))

    lexicon = list(dict.fromkeys(word() for _ in range(7000)))[:6000]
    weights = [1.0 / (i + 1) for i in range(len(lexicon))]
    out = []
    for _ in range(n_sentences):
        words = rng.choices(lexicon, weights, k=rng.randint(4, 14))
        if rng.random() < 0.3:
            words[rng.randrange(1, len(words))] += ","
        out.append(" ".join(words).capitalize() + rng.choice(".....?"))
    return out


def train_tokenizer(out_dir: Path, vocab_size: int) -> Path:
    """A SentencePiece BPE tokenizer of `vocab_size` pieces in NeMo's layout (tokenizer.model, tokenizer.vocab,
    vocab.txt), trained on the harness's sentences plus `synthetic_text`, with the harness's conventions
    (<unk> = 0, no bos/eos/pad, "," "." "?" as user-defined symbols). Deterministic. Returns out_dir."""
    import sentencepiece as spm

    from nemotron_parity.nemo_harness import EXTRA_TEXTS
    from nemotron_parity.speech import SENTENCES

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "train_text.txt"
    text_file.write_text("\n".join(list(SENTENCES) + EXTRA_TEXTS + synthetic_text()) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, user_defined_symbols=[",", ".", "?"],
        num_threads=1, minloglevel=2)
    from nemotron_parity.nemo_harness import strip_trainer_paths

    strip_trainer_paths(out_dir / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    if sp.get_piece_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {sp.get_piece_size()} pieces, wanted {vocab_size}")
    lines = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_unknown(i) or sp.is_control(i))]
    (out_dir / "vocab.txt").write_text(
        "\n".join(p[1:] if p.startswith("\u2581") else f"##{p}" for p in lines) + "\n")
    return out_dir


# ---- model build / cache -------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("NEMOTRON_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "nemotron_engine" / "bench"


@dataclass
class Prepared:
    engine_dir: Path
    nemo_path: Path | None  # None: no .nemo (engine only)
    nemo_model: object = None  # the NeMo model, when it was just built (saves reloading it)
    build_s: float = 0.0  # seconds spent building / converting in this call (0 when all was cached)


def prepare_model(shape: Shape, cache_dir: Path, seed: int = 1234, calib_utts: int = 4,
                  keep_nemo_model: bool = True) -> Prepared:
    """Build (or reuse from `cache_dir/<shape.key>-s<seed>/`) the calibrated random NeMo model of `shape`: its
    .nemo and the converted engine directory. Building needs NeMo; a cached engine directory does not."""
    from nemotron_engine.weights.convert import convert

    d = Path(cache_dir) / f"{shape.key}-s{seed}"
    nemo_path, engine_dir = d / "model.nemo", d / "engine"
    t0 = time.perf_counter()
    model = None
    if not nemo_path.is_file():
        if not nemo_available():
            if (engine_dir / "config.json").is_file():
                return Prepared(engine_dir, None)
            raise RuntimeError("building the benchmark model needs NeMo (pip install 'nemo_toolkit[asr]==3.0.0'); "
                               "or pass --model DIR, a directory written by `nemotron-engine convert`")
        import nemotron_parity.nemo_harness as H
        import nemotron_parity.speech as speech

        _log(f"building the random {shape.name} model {shape.key} (seed {seed}) in {d}")
        tok = train_tokenizer(d / "tokenizer", shape.vocab_size)
        calib = [a for _, a in speech.speech_corpus(Path(cache_dir) / "audio", n=max(calib_utts, 1))]
        model = H.build_model(variant_for(shape), tok, seed=seed, calib_audio=calib[:calib_utts])
        _log(f"calibrated: {model._harness_meta['calibration']}; saving .nemo")
        tmp = d / "model.nemo.partial"
        H.save_nemo(model, tmp)
        tmp.rename(nemo_path)
    if not (engine_dir / "config.json").is_file():
        _log(f"converting {nemo_path}")
        convert(nemo_path, engine_dir, force=True)
    return Prepared(engine_dir, nemo_path, model if keep_nemo_model else None, time.perf_counter() - t0)


def load_nemo_model(prep: Prepared):
    """The NeMo model of a Prepared model (reloaded from its .nemo unless it was just built)."""
    if prep.nemo_model is not None:
        return prep.nemo_model
    import nemotron_parity.nemo_harness as H

    prep.nemo_model = H.load_nemo(prep.nemo_path)
    return prep.nemo_model


# ---- audio ---------------------------------------------------------------------------------------------------
def bench_audio(cache_dir: Path, n_streams: int, seconds: float, n_utts: int = 8) -> list[np.ndarray]:
    """`n_streams` signals of exactly `seconds` of espeak-ng speech (float32, 16 kHz): stream i concatenates
    the corpus utterances (different voices, 0.2 s gaps) from utterance i % n_utts on, and streams beyond
    n_utts start later in that concatenation, so no two streams are identical."""
    import nemotron_parity.speech as speech

    utts = [a for _, a in speech.speech_corpus(Path(cache_dir) / "audio", n=n_utts)]
    gap = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
    n = int(round(seconds * SAMPLE_RATE))
    out = []
    for i in range(n_streams):
        start = int((i // n_utts) * 0.37 * SAMPLE_RATE)
        parts, total, j = [], 0, i % n_utts
        while total < start + n:
            parts += [utts[j % n_utts], gap]
            total += len(utts[j % n_utts]) + len(gap)
            j += 1
        out.append(np.ascontiguousarray(np.concatenate(parts)[start: start + n], dtype=np.float32))
    return out


# ---- arithmetic: useful work, bytes, frames --------------------------------------------------------------------
def useful_flops_per_frame(cfg, r: int) -> dict:
    """Useful FLOPs of one 80 ms encoder frame at lookahead R (2 FLOPs per multiply-add), from the model shape.

    Per layer (d = d_model, f = ff_dim, k = conv kernel, W = left context + R + 1 keys per query):
      feed_forward      2 modules x 2 Linear x 2 d f      = 8 d f
      attention_proj    q, k, v, out: 4 x 2 d^2            = 8 d^2  (the frame's own K/V only: cached K/V are not
                                                                     re-projected; linear_pos is a load-time table)
      attention_window  content q.k, position q.p, weights.v over W keys = 3 x 2 d W
      conv_module       pointwise d->2d (GLU) 4 d^2 + depthwise 2 d k + pointwise d->d 2 d^2
    Once per frame: the dw_striding subsampling (C channels, mel bins F0 -> F1 -> F2 -> F3 with F -> F // 2 + 1;
    stage 1 makes 4 time steps per frame, stage 2 two, stage 3 one) 2 C 9 (4 F1) + (2 C 9 + 2 C^2)(2 F2) +
    (2 C 9 + 2 C^2) F3 + out Linear 2 (C F3) d, and the joint's encoder projection 2 d J.
    Not counted: the prediction network and the joint output (they scale with emitted symbols, ~1 % here), norms
    and activations. The dense layer terms are 2 x the encoder layers' weights: 1.158 GFLOP for Nemotron, the
    ~1.16 GFLOP per frame of ANCHORS.md; with the rest, ~1.19 GFLOP.
    """
    d, f, k, L = cfg.d_model, cfg.ff_dim, cfg.conv_kernel_size, cfg.n_layers
    w = cfg.left_context + r + 1
    c = cfg.subsampling_channels
    f1 = cfg.n_mels // 2 + 1
    f2 = f1 // 2 + 1
    f3 = f2 // 2 + 1
    parts = {
        "feed_forward": L * 8 * d * f,
        "attention_proj": L * 8 * d * d,
        "attention_window": L * 6 * d * w,
        "conv_module": L * (6 * d * d + 2 * d * k),
        "subsampling": 2 * c * 9 * 4 * f1 + (2 * c * 9 + 2 * c * c) * (2 * f2 + f3) + 2 * c * f3 * d,
        "joint_enc": 2 * d * cfg.joint_hidden,
    }
    parts["total"] = sum(parts.values())
    return parts


def bytes_per_stream(cfg, dtype_bytes: int = 4) -> dict:
    """State one stream holds in the engine, from the config (the engine keeps projected K and V):
    K/V cache 2 x layers x left x d_model, conv cache layers x d_model x (kernel - 1), the 9-frame mel cache,
    the STFT overlap (n_fft samples at most), decoder state (h, c per LSTM layer, last prediction output)."""
    from nemotron_engine.config import PRE_ENCODE_CACHE

    parts = {
        "kv_cache": 2 * cfg.n_layers * cfg.left_context * cfg.d_model * dtype_bytes,
        "conv_cache": cfg.n_layers * cfg.d_model * (cfg.conv_kernel_size - 1) * dtype_bytes,
        "mel_cache": PRE_ENCODE_CACHE * cfg.n_mels * 4,
        "audio_overlap": cfg.n_fft * 4,
        "decoder_state": (2 * cfg.pred_rnn_layers * cfg.pred_hidden + cfg.pred_hidden) * dtype_bytes + 8,
    }
    parts["total"] = sum(parts.values())
    return parts


def stream_frames(cfg, num_samples: int, r: int) -> int:
    """Encoder frames NeMo's streaming (and the engine) produce for one stream of `num_samples`: the mel frames
    L // hop + 1, minus a tail of fewer than 8 new frames after the first chunk (dropped), subsampled."""
    from nemotron_engine.config import SAMPLING_FRAMES, subsampled_length

    t_mel = num_samples // cfg.hop_length + 1
    first = cfg.first_chunk_mel(r)
    rest = t_mel - first
    tail = rest % cfg.chunk_mel(r) if rest > 0 else 0
    n = t_mel - (tail if 0 < tail < SAMPLING_FRAMES[1] else 0)
    return subsampled_length(n)


def _percentiles(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    a = np.asarray(xs) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 90))


def _loadavg() -> float | None:
    """The 1-minute load average (a shared machine inflates the timings; recorded with every run)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _sync() -> None:
    # CPU work is synchronous; a CUDA engine's steps must be finished before the clock is read
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# ---- the engine side -----------------------------------------------------------------------------------------
class EngineBatch:
    """N engine streams, each pushed one chunk's worth of audio (lookahead_ms) per `feed()`, through the public
    API only (open_stream, push, finish, step, result, close)."""

    def __init__(self, engine, lookahead_ms: int, audios: list[np.ndarray]):
        self.engine = engine
        self.lookahead_ms = lookahead_ms
        self.audios = audios
        self.piece = lookahead_ms * SAMPLE_RATE // 1000
        self.pos = 0
        self.streams = [engine.open_stream(lookahead_ms=lookahead_ms) for _ in audios]

    @property
    def input_left(self) -> bool:
        return self.pos < max(len(a) for a in self.audios)

    def feed(self) -> None:
        """Push the next piece to every stream; finish() the ones whose audio has ended."""
        lo, hi = self.pos, self.pos + self.piece
        for s, a in zip(self.streams, self.audios):
            if s.input_done:
                continue
            if lo < len(a):
                s.push(a[lo:hi])
            if hi >= len(a):
                s.finish()
        self.pos = hi

    def step(self) -> list:
        ups = self.engine.step()
        _sync()
        return ups

    @property
    def done(self) -> bool:
        return all(s.done for s in self.streams)

    def tokens(self) -> list[list[int]]:
        return [list(s.result().tokens) for s in self.streams]

    def close(self) -> None:
        for s in self.streams:
            self.engine.close(s)


def run_engine(engine, lookahead_ms: int, audios: list[np.ndarray]) -> dict:
    """Stream `audios` concurrently through `engine` as fast as it computes; timing of push + step."""
    b = EngineBatch(engine, lookahead_ms, audios)
    step_s: list[float] = []
    guard = 0
    gc.collect()
    t0 = time.perf_counter()
    while not b.done:
        if b.input_left:
            b.feed()
        while True:  # everything that is ready
            ts = time.perf_counter()
            ups = b.step()
            if not ups:
                break
            step_s.append(time.perf_counter() - ts)
        guard += 1
        if guard > 10 * len(audios[0]) // b.piece + 100:
            raise RuntimeError("engine made no progress (streams never turned final)")
    wall = time.perf_counter() - t0
    toks = b.tokens()
    b.close()
    return {"wall_s": wall, "steps": len(step_s), "step_s": step_s, "tokens": toks}


# ---- the NeMo side -------------------------------------------------------------------------------------------
class NemoBatch:
    """NeMo's cache-aware streaming of N streams as one batch, as NeMo's example script drives a batch
    (examples/asr/asr_cache_aware_streaming/speech_to_text_cache_aware_streaming_infer.py, perform_streaming):
    CacheAwareStreamingAudioBuffer(online_normalization=False, pad_and_drop_preencoded=False) with every stream
    appended (append_audio: whole-signal features), get_initial_cache_state(batch_size=N), then per buffer chunk
    conformer_stream_step(keep_all_outputs=buffer empty, previous hypotheses / predictions, drop_extra_pre_encoded
    0 on step 0 else the streaming config's, return_transcription=True)."""

    def __init__(self, model, r: int, audios: list[np.ndarray]):
        from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

        self.model = model
        self.r = r
        self.audios = audios
        self.configure()
        self.buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False,
                                                  pad_and_drop_preencoded=False)
        self.it = None

    def configure(self) -> None:
        """Set the model's lookahead (set_default_att_context_size) and greedy_batch decoding, as the script
        does; a no-op when the model is already set to this lookahead."""
        import nemotron_parity.nemo_harness as H

        H._quiet_nemo()
        enc = self.model.encoder
        left = int(enc.att_context_size_all[0][0])
        if list(enc.att_context_size) != [left, self.r] or getattr(self.model, "_bench_greedy", False) is False:
            enc.set_default_att_context_size([left, self.r])
            H.set_greedy_decoding(self.model)
            self.model._bench_greedy = True
        self.model.eval()

    def load(self) -> None:
        """Append every stream (NeMo computes each signal's features here) and reset the caches."""
        self.configure()
        self.buf.reset_buffer()
        with torch.inference_mode():
            for a in self.audios:
                self.buf.append_audio(a, stream_id=-1)
            self.caches = self.model.encoder.get_initial_cache_state(batch_size=len(self.audios),
                                                                     dtype=torch.float32)
        self.it = iter(self.buf)
        self.step_num = 0
        self.hyps = None
        self.pred_out = None

    def next_chunk(self):
        """The next (chunk [N, n_mels, T], lengths [N]) of the buffer, or None when it is exhausted."""
        return next(self.it, None)

    def step(self, chunk) -> None:
        audio, lengths = chunk
        enc = self.model.encoder
        drop = 0 if self.step_num == 0 else enc.streaming_cfg.drop_extra_pre_encoded
        with torch.inference_mode():
            out = self.model.conformer_stream_step(
                processed_signal=audio.to(torch.float32), processed_signal_length=lengths,
                cache_last_channel=self.caches[0], cache_last_time=self.caches[1],
                cache_last_channel_len=self.caches[2], keep_all_outputs=self.buf.is_buffer_empty(),
                previous_hypotheses=self.hyps, previous_pred_out=self.pred_out, drop_extra_pre_encoded=drop,
                return_transcription=True)
        _sync()
        self.pred_out, _texts, c0, c1, c2, self.hyps = out
        self.caches = (c0, c1, c2)
        self.step_num += 1

    def tokens(self) -> list[list[int]]:
        if self.hyps is None:
            return [[] for _ in self.audios]
        blank = self.model.decoding.blank_id
        out = []
        for h in self.hyps:
            ys = h.y_sequence.tolist() if isinstance(h.y_sequence, torch.Tensor) else list(h.y_sequence)
            out.append([int(t) for t in ys if int(t) != blank])
        return out


def nemo_cache_bytes_per_stream(model) -> dict:
    """NeMo's per-stream state, measured from get_initial_cache_state (layer inputs cached, not K/V) plus the
    decoder's LSTM state (h, c) per hypothesis."""
    c = model.encoder.get_initial_cache_state(batch_size=1, dtype=torch.float32)
    dec = model.decoder
    parts = {
        "cache_last_channel": int(c[0].nbytes),
        "cache_last_time": int(c[1].nbytes),
        "cache_last_channel_len": int(c[2].nbytes),
        "decoder_state": 2 * int(dec.pred_rnn_layers) * int(dec.pred_hidden) * 4,
    }
    parts["total"] = sum(parts.values())
    return parts


def run_nemo(model, r: int, audios: list[np.ndarray]) -> dict:
    """NeMo's batched cache-aware streaming of `audios`; timing of append_audio + every conformer_stream_step."""
    nb = NemoBatch(model, r, audios)
    step_s: list[float] = []
    gc.collect()
    t0 = time.perf_counter()
    nb.load()
    while (chunk := nb.next_chunk()) is not None:
        ts = time.perf_counter()
        nb.step(chunk)
        step_s.append(time.perf_counter() - ts)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "steps": len(step_s), "step_s": step_s, "tokens": nb.tokens()}


# ---- one step at a time (pytest-benchmark) --------------------------------------------------------------------
class EngineStepper:
    """Steady-state engine steps at N streams for `benchmark.pedantic(stepper.step, setup=stepper.setup)`:
    `setup` pushes one piece (lookahead_ms of audio) to every stream, so each has exactly one chunk ready; the
    streams are re-opened (untimed, first chunk stepped in setup) when their audio would run out."""

    def __init__(self, engine, lookahead_ms: int, audios: list[np.ndarray]):
        self.engine = engine
        self.lookahead_ms = lookahead_ms
        self.audios = audios
        self.batch: EngineBatch | None = None
        self.updates: list[int] = []  # updates returned by each timed step (N in steady state)

    def setup(self):
        b = self.batch
        shortest = min(len(a) for a in self.audios)
        if b is None or b.pos + b.piece >= shortest:  # the next piece would end the audio (finish())
            if b is not None:
                b.close()
            self.batch = b = EngineBatch(self.engine, self.lookahead_ms, self.audios)
            if 2 * b.piece >= shortest:
                raise ValueError(f"audio of {shortest / SAMPLE_RATE:.2f} s is too short for steady-state steps at "
                                 f"{self.lookahead_ms} ms: more than {2 * b.piece / SAMPLE_RATE:.2f} s needed")
            b.feed()
            b.step()  # the first chunk (1 + 8R mel frames) is not a steady-state step
        b.feed()
        return (), {}

    def step(self) -> list:
        ups = self.batch.step()
        self.updates.append(len(ups))
        return ups

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
            self.batch = None


class NemoStepper:
    """Steady-state NeMo conformer_stream_step calls over a batch of N streams, for benchmark.pedantic: `setup`
    takes the buffer's next chunk (untimed); the buffer is reloaded, and its first chunk stepped, before its last
    (shorter) chunk would be reached."""

    def __init__(self, model, r: int, audios: list[np.ndarray]):
        self.nb = NemoBatch(model, r, audios)
        self.chunk = None
        self.steps = 0

    def setup(self):
        nb = self.nb
        chunk = nb.next_chunk() if nb.it is not None else None
        if chunk is None or nb.buf.is_buffer_empty():
            nb.load()
            nb.step(nb.next_chunk())  # the first chunk is not a steady-state step
            chunk = nb.next_chunk()
        self.chunk = chunk
        return (), {}

    def step(self) -> None:
        self.nb.step(self.chunk)
        self.steps += 1


# ---- the sweep -------------------------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def accuracy_gate(model_dir: Path, dtype: torch.dtype, lookaheads_ms: list[int] | None = None) -> dict:
    """The accuracy of `dtype` against fp32 on a trained model and its example audio (model_dir/examples/*.wav):
    per lookahead, the largest relative error (max-norm) of any step's encoder output, and the fraction of files
    whose tokens are identical. Random models are chaotic (a tiny difference flips a token within ~100 tokens),
    so only trained weights make the comparison meaningful."""
    import soundfile as sf

    from nemotron_engine.config import ModelConfig
    from nemotron_engine.engine import Engine

    cfg = ModelConfig.load(model_dir)
    wavs = sorted(Path(model_dir, "examples").glob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"no example audio under {model_dir}/examples")
    pcms = [sf.read(w, dtype="float32")[0] for w in wavs]
    rows = []
    for ms in lookaheads_ms or [(r + 1) * cfg.frame_ms for r in cfg.lookaheads]:
        outs = {}
        for dt in (torch.float32, dtype):
            with Engine(model_dir, dtype=dt, max_streams=len(pcms), keep_encoder_outputs=True) as eng:
                ss = [eng.open_stream(ms) for _ in pcms]
                for s_, x in zip(ss, pcms):
                    s_.push(x)
                    s_.finish()
                for _ in eng.drain():
                    pass
                outs[dt] = [(s_.result().tokens, s_.encoder_outputs) for s_ in ss]
        err = 0.0
        for (_, e32), (_, elo) in zip(outs[torch.float32], outs[dtype]):
            for a, b in zip(e32, elo):
                err = max(err, float((a - b).abs().max() / a.abs().max().clamp(min=1e-30)))
        same = sum(a[0] == b[0] for a, b in zip(outs[torch.float32], outs[dtype]))
        rows.append({"lookahead_ms": ms, "files": len(pcms), "tokens_identical_files": same,
                     "encoder_max_rel_err": err})
    return {"model": str(model_dir), "dtype": str(dtype).replace("torch.", ""), "rows": rows}


def sgemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    """The CPU's fp32 matrix-product rate at the current torch thread count, GFLOP/s: the best of `repeats` n x n x n
    torch.mm (2 n^3 FLOPs each). The ceiling the "useful GFLOP/s" of a run can be read against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def device_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} ({os.cpu_count()} logical cores)"


class Bench:
    """One benchmark session: the engine (and NeMo) loaded once, audio cached, records collected."""

    def __init__(self, engine_dir: Path, nemo_model=None, cache_dir: Path | None = None, audio_s: float = 5.0,
                 dtype: torch.dtype = torch.float32, backend: str | None = None, max_streams: int = 64):
        from nemotron_engine.engine import Engine

        # the pool holds the sweep's largest N (a 128-stream sweep used to fail at N = 128 on the default 64)
        self.engine = Engine(engine_dir, dtype=dtype, backend=backend, max_streams=max_streams)
        self.cfg = self.engine.cfg
        self.nemo = nemo_model
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.audio_s = audio_s
        self.records: list[dict] = []
        self._audio: list[np.ndarray] = []
        self.device = device_name()
        self.engine_tokens: dict = {}  # (lookahead_ms, n) -> tokens per stream
        self.nemo_tokens: dict = {}

    def audios(self, n: int) -> list[np.ndarray]:
        if len(self._audio) < n:
            self._audio = bench_audio(self.cache_dir, max(n, 8), self.audio_s)
        return self._audio[:n]

    def warm_up(self, provider: str, lookahead_ms: int) -> None:
        audio = [a[: int(1.5 * SAMPLE_RATE)] for a in self.audios(2)]
        self._run(provider, lookahead_ms, audio)

    def _run(self, provider: str, lookahead_ms: int, audios: list[np.ndarray]) -> dict:
        if provider == "engine":
            return run_engine(self.engine, lookahead_ms, audios)
        return run_nemo(self.nemo, self.cfg.lookahead_from_ms(lookahead_ms), audios)

    def measure(self, provider: str, lookahead_ms: int, n: int) -> dict:
        """One timed run of n streams; returns (and keeps) its record."""
        r = self.cfg.lookahead_from_ms(lookahead_ms)
        audios = self.audios(n)
        res = self._run(provider, lookahead_ms, audios)
        audio_s = len(audios[0]) / SAMPLE_RATE
        frames = sum(stream_frames(self.cfg, len(a), r) for a in audios)
        p50, p90 = _percentiles(res["step_s"])
        rec = {
            "provider": provider, "lookahead_ms": lookahead_ms, "n_streams": n, "audio_s": audio_s,
            "wall_s": res["wall_s"], "rtf": res["wall_s"] / audio_s, "steps": res["steps"],
            "step_ms_p50": p50, "step_ms_p90": p90, "encoder_frames": frames,
            "useful_gflops": useful_flops_per_frame(self.cfg, r)["total"] * frames / res["wall_s"] / 1e9,
            "tokens": sum(len(t) for t in res["tokens"]), "device": self.device,
            "torch_threads": torch.get_num_threads(), "loadavg_1m_after": _loadavg(),
        }
        (self.engine_tokens if provider == "engine" else self.nemo_tokens)[(lookahead_ms, n)] = res["tokens"]
        other = (self.nemo_tokens if provider == "engine" else self.engine_tokens).get((lookahead_ms, n))
        if other is not None:
            mine = res["tokens"]
            match = sum(a == b for a, b in zip(mine, other)) / len(mine)
            rec["tokens_match"] = match
            for r_ in self.records:
                if (r_["lookahead_ms"], r_["n_streams"]) == (lookahead_ms, n) and r_["provider"] != provider:
                    r_["tokens_match"] = match
        self.records.append(rec)
        _log(f"{provider:6s} {lookahead_ms:5d} ms  N={n:4d}  RTF {rec['rtf']:.3f}  wall {rec['wall_s']:.2f} s  "
             f"step p50 {p50 or 0:.1f} ms  {rec['useful_gflops']:.1f} useful GFLOP/s")
        return rec

    def sweep(self, providers: tuple[str, ...], lookahead_ms: int, streams: list[int], early_stop: bool = True,
              max_run_s: float = 120.0, refine: bool = False) -> None:
        """Measure N in `streams` (ascending), the providers side by side: at each N every provider still sweeping
        runs once, in turn, so a change in the machine's load over the run falls on both alike.

        A provider stops, with early_stop, after a run that is not real time (RTF > 1) and whose throughput N / RTF
        is not 10 % above its best so far (batching no longer pays), and after any run longer than max_run_s. With
        refine, each bisects between its last real-time N and its first N that is not."""
        for p in providers:
            self.warm_up(p, lookahead_ms)
        state = {p: {"ok": 0, "bad": None, "best": 0.0} for p in providers}
        active = list(providers)
        for n in streams:
            for p in list(active):
                st = state[p]
                rec = self.measure(p, lookahead_ms, n)
                rtfx = n / rec["rtf"]
                if rec["rtf"] <= 1.0:
                    st["ok"] = max(st["ok"], n)
                elif st["bad"] is None:
                    st["bad"] = n
                # never before N = EARLY_STOP_MIN_STREAMS: on the CPU one stream runs matrix-vector products,
                # which are faster per row than 2-8 row products (measured: 66 vs 17-32 GB/s-equivalent for a
                # 4096 x 1024 fp32 weight), so throughput first dips and only then rises with the batch
                if (early_stop and n >= EARLY_STOP_MIN_STREAMS and rec["rtf"] > 1.0 and rtfx < 1.1 * st["best"]) \
                        or rec["wall_s"] > max_run_s:
                    active.remove(p)
                st["best"] = max(st["best"], rtfx)
        if not refine:
            return
        for p in providers:
            ok, bad = state[p]["ok"], state[p]["bad"]
            for _ in range(3):
                if not ok or not bad or bad - ok <= max(1, ok // 8):
                    break
                mid = (ok + bad) // 2
                if self.measure(p, lookahead_ms, mid)["rtf"] <= 1.0:
                    ok = mid
                else:
                    bad = mid


def summarise(records: list[dict], lookaheads: list[int]) -> list[dict]:
    """Per lookahead and provider: max_rt_streams, rtfx, GFLOP/s and step times at the best batch; engine/NeMo
    ratios and the issue's goals."""
    out = []
    for la in lookaheads:
        row: dict = {"lookahead_ms": la}
        for p in PROVIDERS:
            recs = [r for r in records if r["provider"] == p and r["lookahead_ms"] == la]
            if not recs:
                row[p] = None
                continue
            rt = [r for r in recs if r["rtf"] <= 1.0]
            best = max(recs, key=lambda r: r["n_streams"] / r["rtf"])
            at_max = max(rt, key=lambda r: r["n_streams"]) if rt else None
            row[p] = {
                "max_rt_streams": at_max["n_streams"] if at_max else 0,
                # the largest N measured was still real time: max_rt_streams is only a lower bound
                "capped": bool(at_max) and at_max["n_streams"] == max(r["n_streams"] for r in recs),
                "rtf_at_max": at_max["rtf"] if at_max else None,
                "rtfx": best["n_streams"] / best["rtf"],
                "best_batch": best["n_streams"],
                "useful_gflops": best["useful_gflops"],
                "step_ms_p50": best["step_ms_p50"],
                "step_ms_p90": best["step_ms_p90"],
                "measured_n": sorted({r["n_streams"] for r in recs}),
            }
        e, n = row.get("engine"), row.get("nemo")
        if e and n:
            row["ratio_rtfx"] = e["rtfx"] / n["rtfx"]
            row["ratio_rt_streams"] = (e["max_rt_streams"] / n["max_rt_streams"]) if n["max_rt_streams"] else None
            if la in GOALS:
                basis = "ratio_rt_streams" if row["ratio_rt_streams"] is not None else "ratio_rtfx"
                row["goal_ratio"] = GOALS[la]
                row["goal_basis"] = basis
                row["goal_met"] = row[basis] >= GOALS[la]
        matches = [r["tokens_match"] for r in records if r["lookahead_ms"] == la and "tokens_match" in r]
        row["tokens_match_min"] = min(matches) if matches else None
        out.append(row)
    return out


def plot(records: list[dict], path: Path, title: str) -> Path | None:
    """RTF vs streams (log-log), one colour per lookahead, engine solid, NeMo dashed, RTF = 1 marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    las = sorted({r["lookahead_ms"] for r in records})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, la in enumerate(las):
        for p, style, marker in (("engine", "-", "o"), ("nemo", "--", "x")):
            rs = sorted((r for r in records if r["provider"] == p and r["lookahead_ms"] == la),
                        key=lambda r: r["n_streams"])
            if rs:
                ax.plot([r["n_streams"] for r in rs], [r["rtf"] for r in rs], style, marker=marker,
                        color=colors[i % len(colors)], label=f"{p} {la} ms")
    ax.axhline(1.0, color="gray", lw=1, ls=":")
    ax.text(1, 1.0, " real time", va="bottom", color="gray", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams N")
    ax.set_ylabel("real-time factor (compute time / audio time)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ge(p: dict) -> str:
    return ">=" if p and p.get("capped") else ""


def format_table(summary: list[dict]) -> str:
    """Markdown table of `summarise`: ">=" marks a count the sweep did not reach the end of."""
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["lookahead | engine RT streams | NeMo RT streams | ratio | engine RTFx (@N) | NeMo RTFx (@N) | "
             "RTFx ratio | engine / NeMo useful GFLOP/s | engine step p50/p90 ms | goal",
             "---|---|---|---|---|---|---|---|---|---"]
    for row in summary:
        e, n = row.get("engine") or {}, row.get("nemo") or {}
        goal = ""
        if "goal_ratio" in row:
            goal = (f">= {row['goal_ratio']:g}x ({row['goal_basis'].replace('ratio_', '')}): "
                    f"{'met' if row['goal_met'] else 'not met'}")
        lines.append(
            f"{row['lookahead_ms']} ms | {_ge(e)}{e.get('max_rt_streams', '-')} | "
            f"{_ge(n)}{n.get('max_rt_streams', '-') if n else '-'} | {f(row.get('ratio_rt_streams'), '.1f')} | "
            f"{f(e.get('rtfx'), '.2f')} (@{e.get('best_batch', '-')}) | "
            f"{f(n.get('rtfx'), '.2f')} (@{n.get('best_batch', '-')}) | {f(row.get('ratio_rtfx'), '.1f')} | "
            f"{f(e.get('useful_gflops'), '.1f')} / {f(n.get('useful_gflops'), '.1f')} | "
            f"{f(e.get('step_ms_p50'), '.0f')}/{f(e.get('step_ms_p90'), '.0f')} | {goal}")
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _engine_memory(engine, cfg) -> dict:
    """The engine's own `memory_report()` when it has one (a dataclass or dict), beside the config formula."""
    formula = bytes_per_stream(cfg)
    report = getattr(engine, "memory_report", None)
    if callable(report):
        try:
            rep = report()
            rep = dataclasses.asdict(rep) if dataclasses.is_dataclass(rep) else rep
            per = rep.get("bytes_per_stream") if isinstance(rep, dict) else None
            return {"source": "engine.memory_report()", "bytes_per_stream": per, "report": rep,
                    "formula": formula}
        except Exception as e:  # an engine in the middle of a rewrite: fall back to the formula
            _log(f"engine.memory_report() failed ({e}); using the config formula")
    return {"source": "config formula (bench.bytes_per_stream)", "bytes_per_stream": formula["total"],
            "formula": formula}


# ---- command line --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nemotron-engine bench", description=__doc__.splitlines()[0])
    g = p.add_argument_group("model")
    g.add_argument("--size", choices=sorted(SIZES), default="full", help="model shape (default: full Nemotron)")
    g.add_argument("--layers", type=int, help="override the number of encoder layers")
    g.add_argument("--d-model", type=int, help="override d_model (ff becomes 4 x d_model)")
    g.add_argument("--heads", type=int, help="override the number of attention heads")
    g.add_argument("--ff", type=int, help="override the feed-forward width")
    g.add_argument("--vocab", type=int, help="override the SentencePiece vocabulary size")
    g.add_argument("--seed", type=int, default=1234, help="weights seed (default 1234)")
    g.add_argument("--calib-utts", type=int, default=4, help="utterances used to calibrate the blank bias")
    g.add_argument("--model", type=Path, help="a converted engine directory to benchmark instead of building one")
    g.add_argument("--nemo", type=Path, help="the .nemo for the NeMo side (with --model; else converted and used)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="where built models and audio are cached (default $NEMOTRON_BENCH_CACHE or "
                        "~/.cache/nemotron_engine/bench)")
    r = p.add_argument_group("run")
    r.add_argument("--lookahead-ms", type=int, nargs="+", default=list(DEFAULT_LOOKAHEADS_MS))
    r.add_argument("--streams", type=int, nargs="+", default=list(DEFAULT_STREAMS),
                   help="N values to sweep, ascending (default 1 2 4 ... 256)")
    r.add_argument("--audio-s", type=float, default=5.0, help="seconds of speech per stream (default 5)")
    r.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    r.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="engine weights and activations (bf16 needs --gate-model: speed is reported beside accuracy)")
    r.add_argument("--gate-model", type=Path, default=None,
                   help="a trained engine directory (weights/demo) on which bf16 is compared with fp32")
    r.add_argument("--no-nemo", action="store_true", help="benchmark the engine alone")
    r.add_argument("--backend", choices=["cpu", "torch"], default=None,
                   help="the engine's op table: cpu (the CPU default: prepacked oneDNN products, channels-last "
                        "subsampling, attention per stream) or torch (the plain reference ops)")
    r.add_argument("--no-early-stop", action="store_true",
                   help="measure every N (default: a provider's sweep stops after the first N with RTF > 1)")
    r.add_argument("--max-run-s", type=float, default=120.0,
                   help="stop a sweep after a single run took longer than this (default 120 s)")
    r.add_argument("--refine", action="store_true",
                   help="bisect between the last real-time N and the first that is not (up to 3 more runs)")
    r.add_argument("--out", type=Path, default=Path("bench-results"),
                   help="output directory for bench.json and bench.png (default ./bench-results)")
    return p


def run(args) -> dict:
    """The benchmark of parsed `args`; writes bench.json and bench.png under args.out; returns the report."""
    t_start = time.perf_counter()
    cache_dir = Path(args.cache_dir or default_cache_dir())
    use_nemo = not args.no_nemo
    if use_nemo and not nemo_available():
        _log("NeMo is not installed: reporting the engine alone (pip install 'nemo_toolkit[asr]==3.0.0')")
        use_nemo = False
    shape = None
    if args.model is not None:
        prep = Prepared(Path(args.model), args.nemo)
    elif args.nemo is not None:
        from nemotron_engine.weights.convert import convert

        engine_dir = cache_dir / f"converted-{args.nemo.stem}"
        if not (engine_dir / "config.json").is_file():
            convert(args.nemo, engine_dir, force=True)
        prep = Prepared(engine_dir, args.nemo)
    else:
        shape = make_shape(args.size, args.layers, args.d_model, args.heads, args.ff, args.vocab)
        prep = prepare_model(shape, cache_dir, seed=args.seed, calib_utts=args.calib_utts,
                             keep_nemo_model=use_nemo)
    if use_nemo and prep.nemo_path is None:
        _log("no .nemo for this model (pass --nemo PATH): reporting the engine alone")
        use_nemo = False
    nemo_model = None
    if use_nemo:
        t0 = time.perf_counter()
        nemo_model = load_nemo_model(prep)
        _log(f"NeMo model ready ({time.perf_counter() - t0:.1f} s)")
    dtype = DTYPES[args.dtype]
    gate = None
    if dtype != torch.float32:
        if args.gate_model is None:
            raise ValueError(f"--dtype {args.dtype} needs --gate-model DIR (a trained model, e.g. weights/demo): "
                             "its speed is reported only beside its measured accuracy")
        gate = accuracy_gate(Path(args.gate_model), dtype)
        _log(f"accuracy gate ({args.dtype} vs fp32 on {args.gate_model}): {json.dumps(gate)}")
    bench = Bench(prep.engine_dir, nemo_model, cache_dir, args.audio_s, dtype=dtype,
                  backend=args.backend, max_streams=max(args.streams))
    _log(f"engine backend: {bench.engine.backend} (linear products: "
         f"{'prepacked oneDNN' if bench.engine.model.packed_bytes else 'F.linear'})")
    cfg = bench.cfg
    for la in args.lookahead_ms:
        cfg.lookahead_from_ms(la)  # a clear error for a lookahead the model does not have
    streams = sorted(set(args.streams))
    t_setup = time.perf_counter() - t_start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for la in args.lookahead_ms:
        bench.sweep(("engine", "nemo") if use_nemo else ("engine",), la, streams, early_stop=not args.no_early_stop,
                    max_run_s=args.max_run_s, refine=args.refine)
        # the records so far, in case a later sweep fails (a full CPU run takes most of an hour)
        (out / "records.partial.json").write_text(json.dumps(bench.records, indent=1, default=str))
    summary = summarise(bench.records, args.lookahead_ms)
    import nemotron_engine

    report = {
        "machine": {
            "device": bench.device, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "nemo": _nemo_version() if use_nemo else None, "sgemm_gflops": sgemm_gflops(),
        },
        "engine_version": getattr(nemotron_engine, "__version__", None),
        "git_commit": _git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "engine_dir": str(prep.engine_dir), "nemo": str(prep.nemo_path) if prep.nemo_path else None,
            "shape": asdict(shape) if shape else None, "random_weights": args.model is None and args.nemo is None,
            "n_layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads, "ff_dim": cfg.ff_dim,
            "vocab_size": cfg.vocab_size, "att_context_size": cfg.att_context_size,
        },
        "settings": {"audio_s": args.audio_s, "streams": streams, "lookahead_ms": args.lookahead_ms,
                     "early_stop": not args.no_early_stop, "refine": args.refine, "max_run_s": args.max_run_s,
                     "piece": "lookahead_ms of audio per stream per tick",
                     "rtf": "compute time (push/append_audio + steps) / audio seconds of one stream"},
        "useful_flops_per_frame": {la: useful_flops_per_frame(cfg, cfg.lookahead_from_ms(la))
                                   for la in args.lookahead_ms},
        "bytes_per_stream": {
            "engine": _engine_memory(bench.engine, cfg),
            "nemo": ({"source": "measured: get_initial_cache_state(batch_size=1) + LSTM h, c",
                      "report": nemo_cache_bytes_per_stream(nemo_model)} if nemo_model is not None else None),
        },
        "dtype": args.dtype,
        "backend": bench.engine.backend,
        "cpu_packed": bench.engine.model.packed_bytes > 0,
        "accuracy_gate": gate,
        "summary": summary,
        "records": bench.records,
        "timing_s": {"setup": t_setup, "build": prep.build_s, "total": time.perf_counter() - t_start},
    }
    (out / "records.partial.json").unlink(missing_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    title = (f"{cfg.n_layers}x{cfg.d_model} {'random ' if report['model']['random_weights'] else ''}model, "
             f"{args.audio_s:g} s/stream, {bench.device}, torch threads {torch.get_num_threads()}")
    png = plot(bench.records, out / "bench.png", title)
    report["files"] = {"json": str(out / "bench.json"), "png": str(png) if png else None}
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _nemo_version() -> str | None:
    try:
        import nemo

        return nemo.__version__
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        report = run(args)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"nemotron-engine bench: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    m = report["machine"]
    print(f"{m['device']}, torch {m['torch']} with {m['torch_threads']} threads (fp32 sgemm "
          f"{m['sgemm_gflops']:.0f} GFLOP/s); model "
          f"{report['model']['n_layers']}x{report['model']['d_model']}; {report['settings']['audio_s']:g} s of speech "
          "per stream")
    print(format_table(report["summary"]))
    be = report["bytes_per_stream"]
    print(f"bytes per stream: engine {be['engine']['bytes_per_stream']} ({be['engine']['source']}; config formula "
          f"{be['engine']['formula']['total']})"
          + (f", NeMo {be['nemo']['report']['total']} ({be['nemo']['source']})" if be["nemo"] else ""))
    print(f"wrote {report['files']['json']}" + (f" and {report['files']['png']}" if report["files"]["png"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
