"""ModelConfig: every architecture value the engine needs, read from a converted model's config.json.

The converter (`nemotron_engine.weights.convert`) writes config.json; this module reads it back and derives the
streaming constants (chunk sizes, caches) that NeMo's `setup_streaming_params` derives for chunked_limited
attention. The rules are NeMo 3.0's, stated in docs/streaming.md#2-chunking and docs/streaming.md#3-subsampling.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1

# dw_striding x8 with causal padding: three stride-2 convolutions, kernel 3, padding (2 left, 1 right).
SUBSAMPLING_STAGES = 3
SUBSAMPLING_FACTOR = 8
# NeMo ConvSubsampling.get_streaming_cache_size() for causal dw_striding x8: 1 + 8 = 9 mel frames re-fed.
PRE_ENCODE_CACHE = 9
# NeMo streaming_cfg.drop_extra_pre_encoded = 1 + (9 - 1) // 8: frames computed from the re-fed cache.
DROP_EXTRA_PRE_ENCODED = 2
# NeMo sampling_frames = [1, 8]: a first chunk needs >= 1 mel frame, later chunks >= 8, or the tail is dropped.
SAMPLING_FRAMES = (1, 8)


def subsampled_length(n_mel):
    """Encoder frames produced from n_mel mel frames: f(f(f(n))) with f(n) = n // 2 + 1 (NeMo calc_length).

    n_mel: an int, or an int64 tensor of lengths (the same arithmetic, elementwise)."""
    for _ in range(SUBSAMPLING_STAGES):
        n_mel = n_mel // 2 + 1
    return n_mel


@dataclass(frozen=True)
class ModelConfig:
    # preprocessor
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 128
    preemph: float = 0.97
    mag_power: float = 2.0
    log_zero_guard: float = 2.0**-24
    pad_value: float = 0.0
    # encoder
    d_model: int = 1024
    n_layers: int = 24
    n_heads: int = 8
    ff_dim: int = 4096
    subsampling_channels: int = 256
    conv_kernel_size: int = 9
    conv_norm_type: str = "layer_norm"  # or "batch_norm"
    xscaling: bool = False
    use_bias: bool = False
    att_context_size: list = field(default_factory=lambda: [[70, 13], [70, 6], [70, 1], [70, 0]])
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5
    # decoder / joint
    vocab_size: int = 1024  # SentencePiece pieces, blank excluded
    blank_id: int = 1024
    pred_hidden: int = 640
    pred_rnn_layers: int = 2
    joint_hidden: int = 640
    max_symbols: int = 10
    has_ctc: bool = False
    # language prompt (prompt-conditioned checkpoints, e.g. Nemotron 3.5 ASR Streaming; 0: none): a one-hot of
    # num_prompts concatenated to every encoder frame, then the prompt MLP D + P -> 2D -> ReLU -> D before the joint
    num_prompts: int = 0
    prompt_dictionary: dict = field(default_factory=dict)  # language key -> one-hot index
    default_language: str = ""  # a stream's language when open_stream gets none ("": it must be given)
    # end-of-utterance models: the token ids of <EOU> and <EOB> (-1: not an EOU model)
    eou_id: int = -1
    eob_id: int = -1
    # provenance
    model_class: str = "EncDecRNNTBPEModel"
    source_file: str = ""
    source_sha256: str = ""
    format_version: int = FORMAT_VERSION

    # ---- derived -------------------------------------------------------------------------------------------
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def left_context(self) -> int:
        """Cached frames per layer (the attention window's left part; 70 for Nemotron)."""
        return self.att_context_size[0][0]

    @property
    def lookaheads(self) -> list[int]:
        """Right contexts R (in 80 ms frames) the checkpoint was trained for; the first is the default."""
        return [int(r) for _, r in self.att_context_size]

    @property
    def frame_ms(self) -> int:
        return self.hop_length * SUBSAMPLING_FACTOR * 1000 // self.sample_rate

    def lookahead_from_ms(self, ms: int | None) -> int:
        """Map a user's latency in ms (80, 160, 560, 1120 for Nemotron) to the lookahead R, with a clear error."""
        if ms is None:
            return self.lookaheads[0]
        choices = {(r + 1) * self.frame_ms: r for r in self.lookaheads}
        if ms not in choices:
            raise ValueError(
                f"lookahead {ms} ms is not one this model was trained for; choose one of "
                f"{sorted(choices)} ms"
            )
        return choices[ms]

    @property
    def end_tokens(self) -> tuple[int, ...]:
        """The tokens that end a segment when emitted (an EOU model's <EOU> and <EOB>); never part of a text."""
        return tuple(t for t in (self.eou_id, self.eob_id) if t >= 0)

    def prompt_index(self, language: str | None) -> int:
        """The one-hot index of a stream's language (the default language when None); -1 for a model without a
        prompt. A clear error for an unknown language, listing the valid ones."""
        if not self.num_prompts:
            if language is not None:
                raise ValueError(f"language={language!r}: this model ({self.model_class}) has no language prompt; "
                                 "open the stream without language=")
            return -1
        valid = ", ".join(map(repr, sorted(self.prompt_dictionary)))
        if language is None:
            if not self.default_language:
                raise ValueError(f"this model needs a language per stream: pass language= one of {valid}")
            language = self.default_language
        if language not in self.prompt_dictionary:
            raise ValueError(f"language {language!r} is not in this model's prompt dictionary; choose one of {valid}")
        return int(self.prompt_dictionary[language])

    def first_chunk_mel(self, r: int) -> int:
        """Mel frames of a stream's first chunk: 1 + 8R (NeMo chunk_size[0])."""
        return 1 + SUBSAMPLING_FACTOR * r

    def chunk_mel(self, r: int) -> int:
        """New mel frames of every later chunk: 8(R + 1) (NeMo chunk_size[1] = shift_size[1])."""
        return SUBSAMPLING_FACTOR * (r + 1)

    # ---- io ------------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.json has unknown keys {unknown}; was it written by a newer converter?")
        cfg = cls(**d)
        if cfg.format_version != FORMAT_VERSION:
            raise ValueError(
                f"config.json format_version is {cfg.format_version}, this engine reads {FORMAT_VERSION}; "
                "re-run `nemotron-engine convert`"
            )
        return cfg

    @classmethod
    def load(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --model must be a directory written by `nemotron-engine convert`"
            )
        return cls.from_dict(json.loads(path.read_text()))
