"""NeMo reference harness: tiny random cache-aware FastConformer RNN-T models and NeMo-driven streaming.

The engine under test must reproduce NeMo 3.0.0. This module builds small randomly initialised models with the
same architecture family as nvidia/nemotron-speech-streaming-en-0.6b (see shared/SPEC.md), calibrates them so the
greedy decoder emits tokens on roughly half of the encoder frames, saves them as .nemo files, and runs NeMo itself
(offline and in cache-aware streaming, driven the way NeMo's
examples/asr/asr_cache_aware_streaming/speech_to_text_cache_aware_streaming_infer.py drives it) to produce the
reference outputs.

Nothing here re-implements NeMo: every reference number comes from NeMo's own modules.
"""

from __future__ import annotations

import logging as _pylogging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from .speech import SENTENCES

# Tight numerics on both sides; NeMo's streaming script defaults to "high" (TF32 on Ampere+), irrelevant on CPU.
torch.set_float32_matmul_precision("highest")

SAMPLE_RATE = 16000
HOP = 160  # window_stride 0.01 s at 16 kHz

_NEMO_QUIET = False


def _quiet_nemo() -> None:
    """Lower NeMo's logger to ERROR (it prints full configs on every decoding-strategy change)."""
    global _NEMO_QUIET
    if _NEMO_QUIET:
        return
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(_pylogging.ERROR)
    _NEMO_QUIET = True


# ----------------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One small cache-aware FastConformer RNN-T configuration.

    Attributes mirror the NeMo config keys they set (encoder.*, decoder.prednet.*, joint.jointnet.*).
    `model` is "rnnt" (EncDecRNNTBPEModel), "hybrid" (EncDecHybridRNNTCTCBPEModel), "prompt"
    (EncDecRNNTBPEModelWithPrompt), "prompt_hybrid" (EncDecHybridRNNTCTCBPEModelWithPrompt) or "eou"
    (EncDecRNNTBPEEOUModel). `vocab_size`: SentencePiece pieces (the harness's 96-piece tokenizer unless set);
    `prompts`: the prompt dictionary ((language, index), ...) of a prompt model, `num_prompts` its one-hot width,
    the first language the default (NeMo's transcribe default "auto"); an "eou" model's tokenizer holds `<EOU>` and
    `<EOB>` pieces.
    """

    id: str
    model: str = "rnnt"
    n_mels: int = 128
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    subsampling_conv_channels: int = 16
    ff_expansion_factor: int = 4
    conv_kernel_size: int = 9
    conv_norm_type: str = "layer_norm"
    use_bias: bool = False
    xscaling: bool = False
    untie_biases: bool = True
    att_context_size: tuple = ((70, 13), (70, 6), (70, 1), (70, 0))
    pred_hidden: int = 32
    pred_rnn_layers: int = 2
    joint_hidden: int = 32
    joint_dropout: float = 0.1
    max_symbols: int = 10
    vocab_size: int = 96
    prompts: tuple = ()
    num_prompts: int = 0

    @property
    def is_prompt(self) -> bool:
        return self.model in ("prompt", "prompt_hybrid")

    @property
    def is_hybrid(self) -> bool:
        return self.model in ("hybrid", "prompt_hybrid")

    @property
    def d_head(self) -> int:
        """Per-head width d_model // n_heads."""
        return self.d_model // self.n_heads

    @property
    def joint_out_key(self) -> str:
        """State-dict prefix of the joint's output Linear: joint_net.2 with dropout > 0, else joint_net.1."""
        return "joint.joint_net.2" if self.joint_dropout > 0 else "joint.joint_net.1"


VARIANTS: list[Variant] = [
    # Closest to nemotron: 128 mels, no biases, layer-norm conv, no xscaling, untied pos biases, 2-layer LSTM,
    # joint dropout > 0 (joint_net.2).
    Variant(id="nemotron_like", d_model=64, n_heads=4, n_layers=2),
    # Everything flipped: 80 mels, biases, batch-norm conv, xscaling, tied pos biases, 1-layer LSTM, kernel 5,
    # joint dropout 0 (joint_net.1).
    Variant(
        id="bias_bn_xscale",
        n_mels=80,
        d_model=48,
        n_heads=4,
        n_layers=2,
        subsampling_conv_channels=24,
        conv_kernel_size=5,
        conv_norm_type="batch_norm",
        use_bias=True,
        xscaling=True,
        untie_biases=False,
        pred_hidden=40,
        pred_rnn_layers=1,
        joint_hidden=24,
        joint_dropout=0.0,
    ),
    # Odd head size (60 / 4 = 15), 3 layers, biases, no xscaling.
    Variant(
        id="odd_heads",
        d_model=60,
        n_heads=4,
        n_layers=3,
        subsampling_conv_channels=20,
        use_bias=True,
        pred_hidden=48,
        pred_rnn_layers=2,
        joint_hidden=40,
    ),
    # Hybrid RNNT/CTC model (decoded with its RNN-T branch): 3 heads (72 / 3 = 24), batch-norm conv, xscaling,
    # tied pos biases, 1-layer LSTM.
    Variant(
        id="hybrid",
        model="hybrid",
        d_model=72,
        n_heads=3,
        n_layers=2,
        subsampling_conv_channels=16,
        conv_norm_type="batch_norm",
        use_bias=False,
        xscaling=True,
        untie_biases=False,
        pred_hidden=32,
        pred_rnn_layers=1,
        joint_hidden=32,
        joint_dropout=0.1,
    ),
]

VARIANT_IDS: list[str] = [v.id for v in VARIANTS]
VARIANTS_BY_ID: dict[str, Variant] = {v.id: v for v in VARIANTS}

# The model family (not in the parity matrix above; tests/test_parity_family.py): the distinguishing features of
# Nemotron 3.5 ASR Streaming (left context 56 with five lookaheads 80 .. 1120 ms, a language prompt, a vocabulary
# larger than Nemotron's 1024 pieces) and of the end-of-utterance models, at test size.
FAMILY_PROMPTS = (("auto", 0), ("en-US", 1), ("de-DE", 2), ("fr-FR", 3), ("es-ES", 6))
FAMILY_CONTEXTS = ((56, 13), (56, 6), (56, 3), (56, 1), (56, 0))
FAMILY_VARIANTS: list[Variant] = [
    Variant(id="prompt_rnnt", model="prompt", d_model=48, n_heads=4, n_layers=2, subsampling_conv_channels=8,
            att_context_size=FAMILY_CONTEXTS, pred_hidden=24, joint_hidden=24, vocab_size=1200,
            prompts=FAMILY_PROMPTS, num_prompts=8),
    Variant(id="prompt_hybrid", model="prompt_hybrid", d_model=40, n_heads=2, n_layers=2, subsampling_conv_channels=8,
            conv_norm_type="batch_norm", use_bias=True, xscaling=True, untie_biases=False,
            att_context_size=FAMILY_CONTEXTS, pred_hidden=24, pred_rnn_layers=1, joint_hidden=24,
            prompts=FAMILY_PROMPTS[1:], num_prompts=7),
    Variant(id="eou", model="eou", d_model=48, n_heads=4, n_layers=2, subsampling_conv_channels=8,
            pred_hidden=24, joint_hidden=24),
]
FAMILY_BY_ID: dict[str, Variant] = {v.id: v for v in FAMILY_VARIANTS}
EOU_PIECES = ("<EOU>", "<EOB>")

# A very small variant for quick self-tests of the harness (not part of the parity matrix).
TINY = Variant(id="tiny", d_model=32, n_heads=2, n_layers=2, subsampling_conv_channels=8, pred_hidden=24,
               joint_hidden=24)


def get_variant(variant_id: str) -> Variant:
    """Look up a variant by id (VARIANTS plus "tiny")."""
    if variant_id == TINY.id:
        return TINY
    if variant_id in FAMILY_BY_ID:
        return FAMILY_BY_ID[variant_id]
    return VARIANTS_BY_ID[variant_id]


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------

# Extra text so BPE has more material than the 12 test sentences; spaced punctuation (" , ") makes the tokenizer
# produce a bare "▁" piece, so decoded random token strings can contain "word ," which NeMo's punctuation rule
# ("remove one whitespace before a punctuation mark present in the vocabulary") rewrites to "word,".
EXTRA_TEXTS: list[str] = [
    "Hello there , how are you today ?",
    "It is a fine morning . Birds sing , dogs bark .",
    "Numbers like one , two and three are easy .",
    "What time does the train leave ? At noon .",
    "Water flows down the river, past the mill.",
    "Yes, no, maybe. Who knows? Not me.",
]


def _varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def _put_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _fields(b: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The fields of a serialised protobuf message -> (number, wire type, raw bytes of the whole field)."""
    i = 0
    while i < len(b):
        start = i
        key, i = _varint(b, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _varint(b, i)
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {start}")
        yield key >> 3, wire, b[start:i]


def _payload(field_bytes: bytes) -> bytes:
    _, i = _varint(field_bytes, 0)
    n, i = _varint(field_bytes, i)
    return field_bytes[i: i + n]


def _len_field(number: int, payload: bytes) -> bytes:
    return _put_varint(number << 3 | 2) + _put_varint(len(payload)) + payload


def strip_trainer_paths(model_file: Path) -> Path:
    """Rewrite a SentencePiece model's trainer spec so that it names its training text and model prefix by their
    file names only (SentencePiece records the paths it was trained with, here a temporary work directory, in the
    model file). Nothing the tokenizer computes reads them. Edits the serialised ModelProto in place (field 2,
    trainer_spec; its fields 1, input, and 2, model_prefix), leaving every other byte as it was -> model_file.
    Not through sentencepiece_model_pb2: its generated code needs a newer protobuf runtime than the one Ray Serve's
    pin allows, so the few bytes are edited on the wire."""
    model_file = Path(model_file)
    out = bytearray()
    for number, wire, raw in _fields(model_file.read_bytes()):
        if number == 2 and wire == 2:
            spec = bytearray()
            for n, w, r in _fields(_payload(raw)):
                if n in (1, 2) and w == 2:
                    r = _len_field(n, Path(_payload(r).decode()).name.encode())
                spec += r
            raw = _len_field(2, bytes(spec))
        out += raw
    model_file.write_bytes(bytes(out))
    return model_file


def train_tokenizer(out_dir: Path, vocab_size: int = 96, texts: Optional[Sequence[str]] = None,
                    extra_symbols: Sequence[str] = ()) -> Path:
    """Train a SentencePiece BPE tokenizer usable as a NeMo `tokenizer: {dir: out_dir, type: bpe}`.

    Writes out_dir/tokenizer.model, out_dir/tokenizer.vocab and out_dir/vocab.txt (NeMo registers vocab.txt as
    the `tokenizer.vocab_path` artifact and fails if it is missing). "," "." "?" are user-defined symbols, so they
    are always standalone pieces (and NeMo's extract_punctuation_from_vocab finds them: it collects punctuation
    characters from pieces that do not start with "▁" and are not <special>). Follows NeMo's tokenizer-script
    conventions: <unk> = 0, no bos/eos, character_coverage 1.0. Deterministic. Returns out_dir.
    `extra_symbols` are more user-defined pieces (the EOU models' "<EOU>", "<EOB>"); above 128 pieces the
    default text is completed with the benchmark's pseudo-English (`bench.synthetic_text`).
    """
    import sentencepiece as spm

    if texts is None and vocab_size > 128:
        from .bench import synthetic_text

        texts = list(SENTENCES) + EXTRA_TEXTS + synthetic_text(n_sentences=4000)
    if texts is None and not 64 <= vocab_size <= 128:
        raise ValueError("vocab_size should be in 64..128 for the tiny test models")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = list(texts) if texts is not None else list(SENTENCES) + EXTRA_TEXTS
    text_file = out_dir / "train_text.txt"
    text_file.write_text("\n".join(corpus) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(text_file),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        user_defined_symbols=[",", ".", "?", *extra_symbols],
        num_threads=1,
        minloglevel=2,
    )
    strip_trainer_paths(out_dir / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    if sp.get_piece_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {sp.get_piece_size()} pieces, wanted {vocab_size}")
    # vocab.txt in the WordPiece-like style NeMo's tokenizer script writes (only needs to exist for BPE models).
    lines = []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_unknown(i) or sp.is_control(i) or piece in extra_symbols:
            continue
        lines.append(piece[1:] if piece.startswith("\u2581") else f"##{piece}")
    (out_dir / "vocab.txt").write_text("\n".join(lines) + "\n")
    return out_dir


# ----------------------------------------------------------------------------------------------------------------
# Model config / construction
# ----------------------------------------------------------------------------------------------------------------


def model_config(variant: Variant, tokenizer_dir: Path) -> dict:
    """The NeMo model config (plain dict) for `variant`.

    NeMo facts: EncDecRNNTModel.__init__ needs sections preprocessor / encoder / decoder / joint / decoding,
    `model_defaults.enc_hidden` and `.pred_hidden` (copied into joint.jointnet.encoder_hidden / pred_hidden),
    and the BPE model needs `tokenizer` (labels, decoder.vocab_size and joint.num_classes are filled from it).
    train_ds / validation_ds / test_ds / optim / loss / spec_augment may be absent or None (checked: the models
    instantiate without them; ModelPT only sets up data loaders and optimizers when they are given; the RNNT loss
    defaults to warprnnt_numba, which needs numba). The hybrid model additionally requires an `aux_ctc` section
    (ConvASRDecoder; num_classes -1 and feat_in None are placeholders NeMo fills from vocabulary / encoder).
    """
    v = variant
    cfg: dict = {
        "sample_rate": SAMPLE_RATE,
        "log_prediction": False,
        "compute_eval_loss": False,
        "model_defaults": {"enc_hidden": v.d_model, "pred_hidden": v.pred_hidden, "joint_hidden": v.joint_hidden},
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "optim": None,
        "spec_augment": None,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": SAMPLE_RATE,
            "normalize": "NA",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": v.n_mels,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-5,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": v.n_mels,
            "feat_out": -1,
            "n_layers": v.n_layers,
            "d_model": v.d_model,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": v.subsampling_conv_channels,
            "causal_downsampling": True,
            "ff_expansion_factor": v.ff_expansion_factor,
            "self_attention_model": "rel_pos",
            "n_heads": v.n_heads,
            "att_context_size": [list(p) for p in v.att_context_size],
            "att_context_style": "chunked_limited",
            "xscaling": v.xscaling,
            "untie_biases": v.untie_biases,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": v.conv_kernel_size,
            "conv_norm_type": v.conv_norm_type,
            "conv_context_size": "causal",
            "use_bias": v.use_bias,
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            # torch.nn.LSTM warns about inter-layer dropout with a single layer; inactive in eval anyway.
            "prednet": {"pred_hidden": v.pred_hidden, "pred_rnn_layers": v.pred_rnn_layers, "t_max": None,
                        "dropout": 0.2 if v.pred_rnn_layers > 1 else 0.0},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "fused_batch_size": -1,
            "jointnet": {"joint_hidden": v.joint_hidden, "activation": "relu", "dropout": v.joint_dropout},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": v.max_symbols}},
        "loss": {"loss_name": "default"},
    }
    if v.is_prompt:
        # NeMo's prompt models read these from model_defaults; initialize_prompt_feature builds prompt_kernel
        cfg["model_defaults"].update({"num_prompts": v.num_prompts, "prompt_dictionary": dict(v.prompts),
                                      "initialize_prompt_feature": True})
    if v.is_hybrid:
        cfg["aux_ctc"] = {
            "ctc_loss_weight": 0.3,
            "use_cer": False,
            "ctc_reduction": "mean_batch",
            "decoder": {
                "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                "feat_in": None,
                "num_classes": -1,
                "vocabulary": [],
            },
            "decoding": {"strategy": "greedy"},
        }
    return cfg


def _model_class(variant: Variant):
    """NeMo model class for the variant."""
    from nemo.collections.asr.models import EncDecHybridRNNTCTCBPEModel, EncDecRNNTBPEModel

    if variant.model == "prompt":
        from nemo.collections.asr.models.rnnt_bpe_models_prompt import EncDecRNNTBPEModelWithPrompt

        return EncDecRNNTBPEModelWithPrompt
    if variant.model == "prompt_hybrid":
        from nemo.collections.asr.models.hybrid_rnnt_ctc_bpe_models_prompt import (
            EncDecHybridRNNTCTCBPEModelWithPrompt,
        )

        return EncDecHybridRNNTCTCBPEModelWithPrompt
    if variant.model == "eou":
        from nemo.collections.asr.models.asr_eou_models import EncDecRNNTBPEEOUModel

        return EncDecRNNTBPEEOUModel
    return EncDecHybridRNNTCTCBPEModel if variant.model == "hybrid" else EncDecRNNTBPEModel


def instantiate(variant: Variant, tokenizer_dir: Path, seed: int):
    """Instantiate the NeMo model with NeMo's own init (torch RNG seeded with `seed`), eval mode, CPU, float32."""
    from omegaconf import OmegaConf

    _quiet_nemo()
    cfg = OmegaConf.create(model_config(variant, tokenizer_dir))
    torch.manual_seed(seed)
    model = _model_class(variant)(cfg=cfg)
    model = model.to(device="cpu", dtype=torch.float32)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------
# Randomisation
# ----------------------------------------------------------------------------------------------------------------

RANDOMISED_SUBMODULES = ("encoder", "decoder", "joint", "ctc_decoder", "prompt_kernel")


def _randn(shape, g: torch.Generator) -> torch.Tensor:
    """Standard normal float32 tensor from generator g."""
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _randomise_tree(root: torch.nn.Module, g: torch.Generator) -> None:
    """Overwrite every parameter and persistent buffer under `root` with random values of a sensible scale.

    - LayerNorm / BatchNorm: weight 1 + 0.2 N, bias 0.1 N; BatchNorm running_mean 0.2 N, running_var U(0.5, 1.5),
      num_batches_tracked a random positive count (unused in eval, but not its fresh value 0).
    - pos_bias_u / pos_bias_v (per layer, or on the encoder when untie_biases=False): 0.5 N.
    - Embedding: N(0, 1) for every row, including the padding (blank) row: NeMo's label-looping greedy looks up
      the blank row for the start-of-sequence step, so it must not be left at zero.
    - LSTM: weights N / sqrt(hidden), biases 0.1 N.
    - Other weights with >= 2 dims (Linear, Conv1d, Conv2d): N / sqrt(fan_in), fan_in = in_channels/groups x kernel.
    - Other biases: 0.1 N.
    Non-persistent buffers (the sinusoidal pos_enc.pe table) are deterministic functions of the config and left.
    """
    with torch.no_grad():
        for mod in root.modules():
            is_norm = isinstance(mod, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm))
            for name, p in mod.named_parameters(recurse=False):
                if name in ("pos_bias_u", "pos_bias_v"):
                    new = 0.5 * _randn(p.shape, g)
                elif is_norm:
                    new = (1.0 + 0.2 * _randn(p.shape, g)) if name == "weight" else 0.1 * _randn(p.shape, g)
                elif isinstance(mod, torch.nn.Embedding):
                    new = _randn(p.shape, g)
                elif isinstance(mod, torch.nn.LSTM):
                    if name.startswith("weight"):
                        new = _randn(p.shape, g) / float(np.sqrt(mod.hidden_size))
                    else:
                        new = 0.1 * _randn(p.shape, g)
                elif p.dim() >= 2:
                    fan_in = p[0].numel()  # [out, in/groups, *kernel] -> in/groups * prod(kernel)
                    new = _randn(p.shape, g) / float(np.sqrt(fan_in))
                elif name == "bias":
                    new = 0.1 * _randn(p.shape, g)
                else:
                    raise RuntimeError(f"don't know how to randomise {type(mod).__name__}.{name} {tuple(p.shape)}")
                p.copy_(new)
            for name, b in mod.named_buffers(recurse=False):
                if name in mod._non_persistent_buffers_set:
                    continue
                if name == "running_mean":
                    b.copy_(0.2 * _randn(b.shape, g))
                elif name == "running_var":
                    b.copy_(0.5 + torch.rand(b.shape, generator=g))
                elif name == "num_batches_tracked":
                    b.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
                else:
                    raise RuntimeError(f"don't know how to randomise buffer {type(mod).__name__}.{name}")


def _joint_out_linear(model) -> torch.nn.Linear:
    """The joint's final Linear (joint_net[-1]) producing V+1 logits; index V is blank."""
    lin = model.joint.joint_net[-1]
    assert isinstance(lin, torch.nn.Linear)
    return lin


@dataclass
class EmissionStats:
    """Greedy-emission statistics of a model on some audio (offline decoding)."""

    frames: int  # total encoder frames
    emitting_frames: int  # frames where the first symbol is non-blank (= frames carrying >= 1 token)
    tokens: int  # total tokens emitted
    distinct_tokens: int  # number of distinct token ids
    capped_frames: int = 0  # frames that hit the max_symbols cap

    @property
    def fraction(self) -> float:
        """emitting_frames / frames."""
        return self.emitting_frames / max(self.frames, 1)

    @property
    def tokens_per_emitting_frame(self) -> float:
        """Mean number of symbols on the frames that emit."""
        return self.tokens / max(self.emitting_frames, 1)


def _greedy_from_encoded(model, encoded: torch.Tensor, enc_len: torch.Tensor):
    """NeMo greedy decode of encoder output [B, D, T] with lengths [B]; returns list[Hypothesis]."""
    with torch.inference_mode():
        return model.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=encoded, encoded_lengths=enc_len, return_hypotheses=True
        )


def _batch_encoded(encoded_list: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad [(enc [1, D, T_i], len [1]), ...] into one batch: (enc [B, D, T_max], lengths [B])."""
    t_max = max(int(e.shape[-1]) for e, _ in encoded_list)
    enc = torch.cat([torch.nn.functional.pad(e, (0, t_max - e.shape[-1])) for e, _ in encoded_list], dim=0)
    lens = torch.cat([ln.reshape(1).to(torch.int64) for _, ln in encoded_list])
    return enc, lens


def emission_stats_from_encoded(model, encoded_list: list[tuple[torch.Tensor, torch.Tensor]],
                                max_symbols: int = 10) -> EmissionStats:
    """Emission statistics of NeMo's greedy decoder on precomputed encoder outputs [(enc [1,D,T], len [1]), ...].

    All items are decoded in one padded batch by NeMo's batched greedy decoder (the label-looping loop then runs
    max-over-items steps instead of their sum, which keeps calibration fast).
    """
    enc, lens = _batch_encoded(encoded_list)  # [B, D, T_max], [B]
    hyps = _greedy_from_encoded(model, enc, lens)
    frames = emitting = ntok = capped = 0
    seen: set[int] = set()
    for hyp, ln in zip(hyps, lens.tolist()):
        toks = _as_int_list(hyp.y_sequence)
        ts = _as_int_list(hyp.timestamp)
        frames += int(ln)
        counts = np.bincount(np.asarray(ts, dtype=np.int64), minlength=1) if ts else np.zeros(1, np.int64)
        emitting += int((counts > 0).sum())
        capped += int((counts >= max_symbols).sum())
        ntok += len(toks)
        seen.update(toks)
    return EmissionStats(frames=frames, emitting_frames=emitting, tokens=ntok, distinct_tokens=len(seen),
                         capped_frames=capped)


def _encode_all(model, audios: Sequence[np.ndarray],
                contexts: Optional[Sequence[Sequence[int]]] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Offline joint inputs [(enc [1, D, T], len [1]), ...] (the encoder outputs, through the language prompt where
    one is set) for every audio and every att_context_size in `contexts` (default: only the model's current
    default). The default context is restored afterwards."""
    default = list(model.encoder.att_context_size)
    out = []
    try:
        for ctx in contexts if contexts is not None else [default]:
            model.encoder.set_default_att_context_size(list(ctx))
            for a in audios:
                r = nemo_offline(model, a)
                out.append((torch.from_numpy(r.joint_input.T.copy())[None], torch.tensor([r.encoded.shape[0]])))
    finally:
        model.encoder.set_default_att_context_size(default)
    return out


def emission_stats(model, audios: Sequence[np.ndarray]) -> EmissionStats:
    """Offline greedy emission statistics of `model` on raw audios (model's default att_context_size)."""
    greedy = model.cfg.decoding.get("greedy", {}) or {}
    max_symbols = greedy.get("max_symbols", None) or greedy.get("max_symbols_per_step", None) or 10
    return emission_stats_from_encoded(model, _encode_all(model, audios), int(max_symbols))


def _decoder_outputs(model) -> torch.Tensor:
    """Prediction-network outputs g for typical decoder states: the start state (SOS) and the state after each
    single token. Returns [V + 1, P] (P = pred_hidden)."""
    dec = model.decoder
    vocab = dec.vocab_size
    with torch.inference_mode():
        g0, state = dec.predict(None, state=None, add_sos=False, batch_size=1)  # [1, 1, P]
        y1 = torch.arange(vocab, dtype=torch.long)[:, None]  # [V, 1]
        st = [s.expand(-1, vocab, -1).contiguous() for s in state]  # [L, V, P] each
        g1, _ = dec.predict(y1, state=st, add_sos=False, batch_size=vocab)  # [V, 1, P]
    return torch.cat([g0, g1], dim=0)[:, 0].clone()  # [V + 1, P]


ENC_GAINS = (4.0, 2.0, 8.0)


def calibrate(model, calib_audio: Sequence[np.ndarray], max_symbols: int = 10, target: float = 0.5,
              tol: float = 0.04, gains: Sequence[float] = ENC_GAINS, iters: int = 30) -> EmissionStats:
    """Make greedy decoding emit tokens that follow the input on ~`target` of the encoder frames.

    1. Centre the output layer: subtract the mean row (over the V+1 classes) from joint_net[-1].weight, so no
       class wins everywhere through a common direction.
    2. Scale the joint's encoder projection up, centred: random encoder frames share a large common component
       (every layer ends in a LayerNorm with random gain/bias), which would make every frame pick the same
       token. joint.enc's bias absorbs -enc(mean frame) (mean over the calibration frames, the original random
       bias is kept on top) and its weight is scaled so the frame-to-frame spread of enc(f) is `gain` times the
       spread of joint.pred(g) over decoder states: the encoder term dominates, tokens follow the input.
    3. Bisect the blank logit's bias (output bias at index V = blank) until the fraction of encoder frames whose
       first greedy symbol is non-blank is within `tol` of `target` (offline greedy decoding by NeMo itself).
    Frames of all the encoder's att_context_size entries are pooled (the lookahead changes the encoder output),
    so every streaming mode stays in range, not just the default one.
    Gains are tried in order until >= 3 distinct tokens are emitted with 0.3-0.7 emitting frames.

    Note: an emitting frame of a random transducer tends to keep emitting (the next symbol sees the same frame,
    and the decoder state barely changes the winner), so many emitting frames run into max_symbols; the rest end
    with blank after a few symbols. Both paths of the greedy loop are therefore exercised.
    Returns the final statistics.
    """
    joint = model.joint
    lin = _joint_out_linear(model)
    blank = lin.out_features - 1
    contexts = [list(c) for c in model.encoder.att_context_size_all]
    enc_list = _encode_all(model, calib_audio, contexts)  # the encoder does not depend on the joint
    frames = torch.cat([e[0, :, : int(n)].T for e, n in enc_list], dim=0)  # [N, D]
    mean_frame = frames.mean(dim=0)  # [D]
    with torch.no_grad():
        lin.weight.sub_(lin.weight.mean(dim=0, keepdim=True))  # [V+1, J] - [1, J]
        p_spread = float(joint.pred(_decoder_outputs(model)).std())  # [V+1, J] -> scalar
        w0 = joint.enc.weight.detach().clone()  # [J, D]
        b0 = joint.enc.bias.detach().clone()  # [J]
        e_spread = float(((frames - mean_frame) @ w0.T).std())  # [N, J] -> scalar

    def set_gain(gain: float) -> float:
        """Apply step 2 for `gain`; return the spread of the token logits (sets the bisection range)."""
        with torch.no_grad():
            w = w0 * (gain * p_spread / max(e_spread, 1e-6))
            joint.enc.weight.copy_(w)
            joint.enc.bias.copy_(b0 - w @ mean_frame)
            h = torch.relu(joint.enc(frames))  # [N, J]
            return float((h @ lin.weight[:blank].T).std())

    def stats_at(bias: float) -> EmissionStats:
        """Emission statistics with the blank bias set to `bias`."""
        with torch.no_grad():
            lin.bias[blank] = bias
        return emission_stats_from_encoded(model, enc_list, max_symbols)

    g0 = _decoder_outputs(model)[:1]  # [1, P] start state
    st = None
    for gain in gains:
        spread = set_gain(gain)
        with torch.no_grad():
            # Blank bias at which half of the frames would emit from the start state: a close first guess.
            h = torch.relu(joint.enc(frames) + joint.pred(g0))  # [N, J]
            logits = lin(h)  # [N, V+1]
            margin = logits[:, :blank].max(dim=1).values - (logits[:, blank] - lin.bias[blank])  # [N]
            guess = float(margin.median())
        lo, hi = guess - 2.0 * spread - 1.0, guess + 2.0 * spread + 1.0
        while stats_at(lo).fraction < target and lo > guess - 200.0 * spread - 100.0:  # widen if needed
            lo -= 4.0 * spread + 4.0
        while stats_at(hi).fraction > target and hi < guess + 200.0 * spread + 100.0:
            hi += 4.0 * spread + 4.0
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            st = stats_at(mid)
            if abs(st.fraction - target) <= tol:
                break
            if st.fraction > target:
                lo = mid
            else:
                hi = mid
        if 0.3 <= st.fraction <= 0.7 and st.distinct_tokens >= 3:
            break
    return st


def calibrate_eou(model, calib_audio: Sequence[np.ndarray], share: float = 0.05, iters: int = 20) -> float:
    """Make an EOU model emit `<EOU>` for about `share` of its tokens (offline greedy decoding by NeMo, frames of
    every att_context_size pooled): bisect the output bias of the `<EOU>` class. A random model would otherwise emit
    it about as rarely as any other of its pieces, and the tests need it mid-stream. Returns the share reached."""
    lin = _joint_out_linear(model)
    eou = int(model.tokenizer.token_to_id(EOU_PIECES[0]))
    contexts = [list(c) for c in model.encoder.att_context_size_all]
    enc, lens = _batch_encoded(_encode_all(model, calib_audio, contexts))

    def share_at(bias: float) -> float:
        with torch.no_grad():
            lin.bias[eou] = bias
        toks = [t for h in _greedy_from_encoded(model, enc, lens) for t in _as_int_list(h.y_sequence)]
        return sum(t == eou for t in toks) / max(len(toks), 1)

    base = float(lin.bias[eou])
    spread = float(lin.bias.std()) + float(lin.weight.norm(dim=1).mean())
    lo, hi = base, base + 4.0 * spread
    while share_at(hi) < share and hi < base + 400.0 * spread:
        hi += 4.0 * spread
    got = 0.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        got = share_at(mid)
        if abs(got - share) <= 0.3 * share:
            break
        lo, hi = (mid, hi) if got < share else (lo, mid)
    return got


def build_model(variant: Variant, tokenizer_dir: Path, seed: int, calib_audio: Sequence[np.ndarray]):
    """Build a calibrated random model for `variant` (eval mode, float32, CPU). Deterministic given `seed`.

    Instantiates NeMo's model (torch RNG seeded with `seed`, so the fresh init is reproducible for
    `randomise_check`), randomises every parameter / persistent buffer of encoder, decoder, joint (and the hybrid's
    ctc_decoder) from a generator seeded with `seed`, leaves the preprocessor buffers (featurizer.window /
    featurizer.fb) untouched -- NeMo's streaming buffer builds a fresh preprocessor from the config, so they must
    stay the config's -- and calibrates the joint (see `calibrate`). Raises if calibration cannot reach 30-70 %
    emitting frames with >= 3 distinct tokens.
    """
    model = instantiate(variant, tokenizer_dir, seed)
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    for name in RANDOMISED_SUBMODULES:
        sub = getattr(model, name, None)
        if sub is not None:
            _randomise_tree(sub, g)
    set_greedy_decoding(model, variant.max_symbols)
    model.encoder.set_default_att_context_size(list(variant.att_context_size[0]))
    if variant.is_prompt:  # calibrated on what the joint sees in the default language
        model.set_inference_prompt(variant.prompts[0][0])
    stats = calibrate(model, calib_audio, max_symbols=variant.max_symbols)
    if not (0.3 <= stats.fraction <= 0.7) or stats.distinct_tokens < 3:
        raise RuntimeError(f"calibration failed for {variant.id} seed {seed}: {stats}")
    if variant.model == "eou":
        eou_share = calibrate_eou(model, calib_audio)
        if not 0.02 <= eou_share <= 0.15:
            raise RuntimeError(f"EOU calibration failed for {variant.id} seed {seed}: <EOU> share {eou_share:.3f}")
    model._harness_meta = {"variant": variant, "seed": int(seed), "tokenizer_dir": str(tokenizer_dir),
                           "calibration": stats}
    model.eval()
    return model


def save_nemo(model, path: Path) -> Path:
    """Write the model as a .nemo archive (NeMo's ModelPT.save_to). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(path))
    return path


def load_nemo(path: Path):
    """Restore a .nemo written by save_nemo (CPU, eval)."""
    from nemo.collections.asr.models import ASRModel

    _quiet_nemo()
    model = ASRModel.restore_from(str(path), map_location="cpu")
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------------------------
# Randomisation check
# ----------------------------------------------------------------------------------------------------------------


def randomise_check(model) -> None:
    """Assert every encoder/decoder/joint parameter and persistent buffer differs from its fresh-init value.

    Always checked (also for a model restored from .nemo): no tensor of encoder / decoder / joint (/ ctc_decoder)
    is constant -- NeMo's fresh init leaves LayerNorm/BatchNorm weights at ones, biases and BatchNorm running_mean
    at zeros, running_var at ones, num_batches_tracked at 0, pos_bias_u/v at zeros and the embedding's blank
    (padding) row at zeros -- and the embedding's blank row is non-zero; the preprocessor buffers equal those of
    a preprocessor freshly built from the config (what CacheAwareStreamingAudioBuffer uses).
    For a model from build_model (which records variant/seed) the fresh model is re-instantiated with the same
    torch seed, so NeMo's own init is reproduced exactly, and every tensor must differ from it in >= 95 % of its
    entries.
    """
    sd = model.state_dict()
    prefixes = tuple(f"{m}." for m in RANDOMISED_SUBMODULES)
    keys = [k for k in sd if k.startswith(prefixes)]
    assert keys, "no encoder/decoder/joint tensors found"
    for key in keys:
        val = sd[key]
        if val.numel() == 1:
            assert float(val.reshape(())) != 0.0, f"{key} is still 0"
        else:
            flat = val.reshape(-1)
            assert not torch.all(flat == flat[0]), f"{key} is constant ({float(flat[0])}), i.e. not randomised"
    emb = model.decoder.prediction.embed
    pad = emb.padding_idx if emb.padding_idx is not None else emb.num_embeddings - 1
    assert emb.weight[pad].abs().max() > 0, "embedding blank/padding row is zero"

    fresh_pre = model.from_config_dict(model.cfg.preprocessor)
    for name, buf in fresh_pre.state_dict().items():
        assert torch.equal(sd[f"preprocessor.{name}"], buf), f"preprocessor buffer {name} was modified"

    meta = getattr(model, "_harness_meta", None)
    if meta is None:
        return
    fresh = instantiate(meta["variant"], Path(meta["tokenizer_dir"]), meta["seed"])
    fsd = fresh.state_dict()
    assert sd.keys() == fsd.keys(), set(sd.keys()) ^ set(fsd.keys())
    for key in keys:
        val, ref = sd[key], fsd[key]
        assert not torch.equal(val, ref), f"{key} still has its fresh-init value"
        if val.is_floating_point() and val.numel() > 1:
            same = (val == ref).float().mean().item()
            assert same < 0.05, f"{key}: {same:.0%} of entries unchanged from fresh init"


# ----------------------------------------------------------------------------------------------------------------
# Decoding / offline
# ----------------------------------------------------------------------------------------------------------------


def _as_int_list(x) -> list[int]:
    """Tensor / list / None -> list[int]."""
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [int(v) for v in x.reshape(-1).tolist()]
    return [int(v) for v in x]


def set_greedy_decoding(model, max_symbols: Optional[int] = None) -> None:
    """Set greedy_batch decoding the way NeMo's cache-aware streaming script does.

    The script passes `RNNTDecodingConfig(fused_batch_size=-1)` (strategy greedy_batch, label-looping greedy) to
    `change_decoding_strategy`; for hybrid models it also passes decoder_type (None -> the RNN-T branch, which sets
    `cur_decoder = "rnnt"`). max_symbols defaults to the model config's decoding.greedy.max_symbols (else 10).
    (The script itself uses the dataclass default max_symbols_per_step = 10, the same for all our variants.)
    """
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTDecodingConfig
    from omegaconf import OmegaConf

    if max_symbols is None:
        greedy = model.cfg.decoding.get("greedy", None) or {}
        max_symbols = greedy.get("max_symbols", None) or greedy.get("max_symbols_per_step", None) or 10
    dcfg = OmegaConf.structured(RNNTDecodingConfig(fused_batch_size=-1))
    dcfg.strategy = "greedy_batch"
    # The decoder reads greedy.max_symbols, falling back to greedy.max_symbols_per_step (the dataclass field).
    dcfg.greedy.max_symbols_per_step = int(max_symbols)
    if hasattr(model, "cur_decoder"):
        model.change_decoding_strategy(dcfg, decoder_type="rnnt", verbose=False)
    else:
        model.change_decoding_strategy(dcfg, verbose=False)


def subsampled_length(n_mel: int, times: int = 3) -> int:
    """Encoder frames from n_mel feature frames: causal dw_striding x8 applies n -> n // 2 + 1 three times
    (CausalConv2D pads 2 + 1, kernel 3, stride 2); 0 stays 0."""
    n = int(n_mel)
    for _ in range(times):
        n = n // 2 + 1 if n > 0 else 0
    return n


def expected_stream_frames(num_samples: int, lookahead: int) -> int:
    """Encoder frames NeMo's CacheAwareStreamingAudioBuffer streaming produces for `num_samples` of audio.

    NeMo facts used: the buffer holds T = L // 160 + 1 feature frames (center=True STFT of the whole file); it
    feeds a first chunk of 1 + 8R frames, then chunks of 8(R+1) new frames (plus 9 cached ones, whose 2 extra
    encoder frames are dropped), and silently stops when a later chunk has fewer than 8 new frames (the
    subsampler's sampling_frames). The streamed output equals the causal encoder run over the processed frames,
    i.e. f(f(f(T_processed))) with f(n) = n // 2 + 1 (checked against NeMo for many lengths and R = 13/6/1/0).
    """
    t_mel = num_samples // HOP + 1
    rest = t_mel - (1 + 8 * lookahead)
    tail = rest % (8 * (lookahead + 1)) if rest > 0 else 0
    processed = t_mel - (tail if 0 < tail < 8 else 0)
    return subsampled_length(processed)


@dataclass
class OfflineResult:
    """Offline NeMo reference. Iterating yields (encoded, tokens) so `enc, toks = nemo_offline(...)` works."""

    encoded: np.ndarray  # [T, D] float32 encoder output (valid frames only)
    tokens: list[int]  # greedy tokens, blank excluded
    timestamps: list[int]  # encoder frame per token
    text: str
    features: np.ndarray  # [n_mels, T_mel] float32 preprocessor output (T_mel = L // 160 + 1)
    feature_length: int  # length passed to the encoder (L // 160, or T_mel with stream_length=True)
    att_context_size: list[int]
    joint_input: Optional[np.ndarray] = None  # [T, D] what the joint sees: `encoded` through the prompt, if set

    def __iter__(self) -> Iterator:
        """Unpack as (encoded [T, D], tokens)."""
        return iter((self.encoded, self.tokens))


def _preprocess(model, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """model.preprocessor on one utterance: returns feats [1, n_mels, L//160 + 1], length [1] = L//160."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]  # [1, L]
    ln = torch.tensor([x.shape[1]], dtype=torch.int64)
    with torch.inference_mode():
        feats, flen = model.preprocessor(input_signal=x, length=ln)
    return feats, flen


def nemo_offline(model, audio: np.ndarray, att_context_size: Optional[Sequence[int]] = None,
                 stream_length: bool = False) -> OfflineResult:
    """Offline NeMo reference: preprocessor -> encoder -> greedy, as EncDecRNNTModel.forward + decoding do.

    The model's preprocessor runs in eval mode (no dither; pad_to 0 from the config) and, like model.forward,
    the encoder gets length L // 160 (the last STFT frame, zeroed by the preprocessor, is outside the length).
    With `stream_length=True` the encoder instead gets all L // 160 + 1 frames, which is what
    CacheAwareStreamingAudioBuffer treats as valid (it uses processed_signal.size(-1) as the stream length);
    NeMo streaming is bit-comparable to that. Uses the model's current default att_context_size unless
    `att_context_size` is given (then it is set as the new default, as nemo_stream does).
    """
    if att_context_size is not None:
        model.encoder.set_default_att_context_size(list(att_context_size))
    model.eval()
    feats, flen = _preprocess(model, audio)  # [1, F, T_mel], [1]
    if stream_length:
        flen = torch.tensor([feats.shape[-1]], dtype=torch.int64)
    with torch.inference_mode():
        encoded, enc_len = model.encoder(audio_signal=feats, length=flen)  # [1, D, T], [1]
        # a prompt model's language prompt, as conformer_stream_step applies it (a no-op unless one is set)
        joint_input = model._apply_prompt_to_encoded(encoded)  # [1, D, T]
        hyp = _greedy_from_encoded(model, joint_input, enc_len)[0]
    n = int(enc_len[0])
    return OfflineResult(
        joint_input=joint_input[0, :, :n].T.contiguous().numpy().astype(np.float32),
        encoded=encoded[0, :, :n].T.contiguous().numpy().astype(np.float32),
        tokens=_as_int_list(hyp.y_sequence),
        timestamps=_as_int_list(hyp.timestamp),
        text=hyp.text if hyp.text is not None else "",
        features=feats[0].numpy().astype(np.float32),
        feature_length=int(flen[0]),
        att_context_size=list(model.encoder.att_context_size),
    )


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    """NeMo cache-aware streaming reference for one utterance."""

    tokens: list[int]  # blank excluded
    timestamps: list[int]  # global encoder-frame index per token
    text: str
    step_encoded: list[np.ndarray]  # per step: encoder output [T_step, D] float32 (valid frames)
    features: np.ndarray  # [n_mels, T_mel] the whole-file features held by the streaming buffer
    step_tokens: list[list[int]] = field(default_factory=list)  # cumulative tokens after each step
    chunk_frames: list[int] = field(default_factory=list)  # mel frames fed per step (incl. pre-encode cache)
    att_context_size: list[int] = field(default_factory=list)
    step_joint_input: list[np.ndarray] = field(default_factory=list)  # per step: after the prompt [T_step, D]
    language: Optional[str] = None

    @property
    def encoded(self) -> np.ndarray:
        """All steps' encoder outputs concatenated: [sum T_step, D]."""
        return np.concatenate(self.step_encoded, axis=0) if self.step_encoded else np.zeros((0, 0), np.float32)


def nemo_stream(model, audio: np.ndarray, att_context_size: Sequence[int],
                language: Optional[str] = None) -> StreamResult:
    """Run NeMo cache-aware streaming on one utterance exactly as NeMo's streaming example script does.

    Follows examples/asr/asr_cache_aware_streaming/speech_to_text_cache_aware_streaming_infer.py (single audio
    file, batch 1, pad_and_drop_preencoded False, online_normalization False since normalize is "NA"):
      encoder.set_default_att_context_size(...); change_decoding_strategy(greedy_batch); model.eval();
      buf = CacheAwareStreamingAudioBuffer(model, online_normalization=False, pad_and_drop_preencoded=False)
      -- it builds a fresh preprocessor from model._cfg.preprocessor with dither 0 and pad_to 0 --
      buf.append_audio(audio) (what append_audio_file does after reading the file);
      caches = encoder.get_initial_cache_state(batch_size=1);
      for each (chunk, chunk_lengths) of the buffer iterator: model.conformer_stream_step(..., keep_all_outputs=
      buf.is_buffer_empty(), previous_hypotheses=previous step's best_hyp, previous_pred_out=previous step's
      greedy predictions, drop_extra_pre_encoded=0 on step 0 else encoder.streaming_cfg.drop_extra_pre_encoded,
      return_transcription=True).
    The per-step encoder output is captured by temporarily wrapping the encoder instance's
    cache_aware_stream_step (the very call conformer_stream_step makes), so tokens come from NeMo's own path.
    NeMo leaves the new att_context_size as the model's default afterwards; so does this function.
    `language`: a prompt model's language, set with NeMo's `set_inference_prompt` before streaming (it stays set
    afterwards, as in NeMo); the joint's input per step (after `_apply_prompt_to_encoded`, the hook
    conformer_stream_step calls) is captured as well.
    """
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    _quiet_nemo()
    model.encoder.set_default_att_context_size(list(att_context_size))
    set_greedy_decoding(model)
    if language is not None:
        model.set_inference_prompt(language)
    model.eval()

    buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
    # append_audio -> preprocess_audio: torch.from_numpy(audio) (must be float32), length = len(audio).
    buf.append_audio(np.ascontiguousarray(audio, dtype=np.float32), stream_id=-1)
    features = buf.buffer[0].detach().cpu().numpy().astype(np.float32)  # [F, T_mel]

    captured: list[np.ndarray] = []
    captured_joint: list[np.ndarray] = []
    original = model.encoder.cache_aware_stream_step  # bound method
    original_prompt = model._apply_prompt_to_encoded  # bound method

    def capturing_prompt(encoded):
        """Call NeMo's prompt hook unchanged and record what the joint gets (the valid frames of the step)."""
        out = original_prompt(encoded)
        captured_joint.append(out[0, :, : captured[-1].shape[0]].detach().T.contiguous().cpu().numpy()
                              .astype(np.float32))
        return out

    def capturing_step(*args, **kwargs):
        """Call NeMo's cache_aware_stream_step unchanged and record the valid encoder frames."""
        out = original(*args, **kwargs)
        encoded, enc_len = out[0], out[1]  # [B, D, T], [B]
        n = int(enc_len[0]) if enc_len is not None else encoded.shape[-1]
        captured.append(encoded[0, :, :n].detach().T.contiguous().cpu().numpy().astype(np.float32))
        return out

    cache_last_channel, cache_last_time, cache_last_channel_len = model.encoder.get_initial_cache_state(
        batch_size=1, dtype=torch.float32
    )
    previous_hypotheses = None
    pred_out_stream = None
    step_tokens: list[list[int]] = []
    chunk_frames: list[int] = []
    object.__setattr__(model.encoder, "cache_aware_stream_step", capturing_step)
    object.__setattr__(model, "_apply_prompt_to_encoded", capturing_prompt)
    try:
        for step_num, (chunk_audio, chunk_lengths) in enumerate(iter(buf)):
            drop = 0 if step_num == 0 else model.encoder.streaming_cfg.drop_extra_pre_encoded
            chunk_frames.append(int(chunk_audio.shape[-1]))
            with torch.inference_mode():
                (
                    pred_out_stream,
                    _transcribed,
                    cache_last_channel,
                    cache_last_time,
                    cache_last_channel_len,
                    previous_hypotheses,
                ) = model.conformer_stream_step(
                    processed_signal=chunk_audio.to(torch.float32),
                    processed_signal_length=chunk_lengths,
                    cache_last_channel=cache_last_channel,
                    cache_last_time=cache_last_time,
                    cache_last_channel_len=cache_last_channel_len,
                    keep_all_outputs=buf.is_buffer_empty(),
                    previous_hypotheses=previous_hypotheses,
                    previous_pred_out=pred_out_stream,
                    drop_extra_pre_encoded=drop,
                    return_transcription=True,
                )
            step_tokens.append(_as_int_list(previous_hypotheses[0].y_sequence))
    finally:
        del model.encoder.cache_aware_stream_step  # remove the instance attribute, restoring the class method
        del model._apply_prompt_to_encoded

    if previous_hypotheses is None:  # audio too short for a single chunk
        return StreamResult([], [], "", captured, features, step_tokens, chunk_frames, list(att_context_size),
                            captured_joint, language)
    hyp = previous_hypotheses[0]
    blank = model.decoding.blank_id
    toks = _as_int_list(hyp.y_sequence)
    ts = _as_int_list(hyp.timestamp)
    keep = [i for i, t in enumerate(toks) if t != blank]
    return StreamResult(
        tokens=[toks[i] for i in keep],
        timestamps=[ts[i] for i in keep] if len(ts) == len(toks) else ts,
        text=hyp.text if hyp.text is not None else "",
        step_encoded=captured,
        features=features,
        step_tokens=step_tokens,
        chunk_frames=chunk_frames,
        att_context_size=list(att_context_size),
        step_joint_input=captured_joint,
        language=language,
    )


# ----------------------------------------------------------------------------------------------------------------
# Engine directory -> NeMo model (the inverse of the converter, for shipped engine weights)
# ----------------------------------------------------------------------------------------------------------------


def nemo_from_engine(model_dir: Path, variant: Variant, work_dir: Path):
    """A NeMo model (eval, CPU, fp32) holding an engine directory's weights: NeMo instantiates `variant` with the
    directory's tokenizer, and every state_dict tensor is taken from the engine's model.safetensors through the
    converter's WEIGHT_MAP (reshaped back to NeMo's shapes). load_state_dict is strict: a tensor the mapping misses
    fails. Lets the shipped demo model, which is stored in the engine's format only, be checked against NeMo."""
    import re

    from safetensors.torch import load_file

    from nemotron_engine.weights.convert import SHARED_POS_BIAS, WEIGHT_MAP

    model_dir, work_dir = Path(model_dir), Path(work_dir)
    tok_dir = work_dir / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    import shutil

    import sentencepiece as spm

    shutil.copy(model_dir / "tokenizer.model", tok_dir / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    lines = [p[1:] if p.startswith("\u2581") else f"##{p}" for p in map(sp.id_to_piece, range(sp.get_piece_size()))
             if not (p.startswith("<") and p.endswith(">"))]
    (tok_dir / "vocab.txt").write_text("\n".join(lines) + "\n")
    model = instantiate(variant, tok_dir, seed=0)
    eng = load_file(str(model_dir / "model.safetensors"))
    patterns = [(re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$"), dst) for src, dst in
                WEIGHT_MAP.items()]
    sd = {}
    for key, t in model.state_dict().items():
        if key.endswith("num_batches_tracked") or key == "encoder.pos_enc.pe":
            sd[key] = t
            continue
        if key in SHARED_POS_BIAS:
            sd[key] = eng[f"layers.0.{SHARED_POS_BIAS[key]}"].reshape(t.shape)
            continue
        for rx, dst in patterns:
            m = rx.match(key)
            if m:
                sd[key] = eng[dst.format(*m.groups()) if "{}" in dst else dst].reshape(t.shape).to(t.dtype)
                break
        else:
            raise KeyError(f"no engine tensor for NeMo's {key}")
    model.load_state_dict(sd, strict=True)
    set_greedy_decoding(model, variant.max_symbols)
    model.eval()
    return model
