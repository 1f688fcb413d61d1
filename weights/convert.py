"""Convert a NeMo `.nemo` checkpoint to the engine's format: OUT_DIR/{config.json, model.safetensors,
tokenizer.model}.

A `.nemo` file is a tar archive (uncompressed, or gzip) holding `model_config.yaml` (the OmegaConf model config,
saved resolved), `model_weights.ckpt` (torch.save of the state_dict) and tokenizer artifacts named
`<uuid>_<name>` that the config refers to as `nemo:<uuid>_<name>` (NeMo SaveRestoreConnector;
docs/streaming.md#10-checkpoint-format).

Only models the engine runs exactly are accepted: cache-aware FastConformer (rel_pos attention, chunked_limited
context, dw_striding x8 causal subsampling, causal conv) with an RNN-T decoder (the RNN-T branch of a hybrid
RNN-T + CTC model too; its CTC head is kept as `ctc.*`). The model family is accepted too:
- prompt-conditioned checkpoints (NeMo's EncDecRNNTBPEModelWithPrompt / EncDecHybridRNNTCTCBPEModelWithPrompt,
  e.g. Nemotron 3.5 ASR Streaming): the prompt MLP `prompt_kernel` (kept as `prompt.*`), `model_defaults.num_prompts`
  and the language dictionary `model_defaults.prompt_dictionary` (language key -> one-hot index); the default
  language is "auto" where the dictionary has it (the default of NeMo's prompt transcription), else none;
- end-of-utterance checkpoints (NeMo's EncDecRNNTBPEEOUModel / EncDecHybridRNNTCTCBPEEOUModel): the ids of the
  tokenizer's `<EOU>` and `<EOB>` pieces, looked up by name.
The left context and the lookaheads are the checkpoint's own (encoder.att_context_size). Anything else is refused
with one line naming the key.
Tensors are copied bit for bit (reshaped at most); nothing is folded, so round trips are exact.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
import yaml

from nemotron_engine.config import ModelConfig

# NeMo key -> engine key; "{}" is the encoder layer index. Optional entries (biases, BatchNorm statistics, the CTC
# head) are converted when present. Conv1d kernels of size 1 become plain matrices.
WEIGHT_MAP = {
    "preprocessor.featurizer.window": "frontend.window",
    "preprocessor.featurizer.fb": "frontend.fb",
    "encoder.pre_encode.conv.0.weight": "subsample.conv0.weight",
    "encoder.pre_encode.conv.0.bias": "subsample.conv0.bias",
    "encoder.pre_encode.conv.2.weight": "subsample.dw1.weight",
    "encoder.pre_encode.conv.2.bias": "subsample.dw1.bias",
    "encoder.pre_encode.conv.3.weight": "subsample.pw1.weight",
    "encoder.pre_encode.conv.3.bias": "subsample.pw1.bias",
    "encoder.pre_encode.conv.5.weight": "subsample.dw2.weight",
    "encoder.pre_encode.conv.5.bias": "subsample.dw2.bias",
    "encoder.pre_encode.conv.6.weight": "subsample.pw2.weight",
    "encoder.pre_encode.conv.6.bias": "subsample.pw2.bias",
    "encoder.pre_encode.out.weight": "subsample.out.weight",
    "encoder.pre_encode.out.bias": "subsample.out.bias",
    "encoder.layers.{}.norm_feed_forward1.weight": "layers.{}.ff1_norm.weight",
    "encoder.layers.{}.norm_feed_forward1.bias": "layers.{}.ff1_norm.bias",
    "encoder.layers.{}.feed_forward1.linear1.weight": "layers.{}.ff1.w1",
    "encoder.layers.{}.feed_forward1.linear1.bias": "layers.{}.ff1.b1",
    "encoder.layers.{}.feed_forward1.linear2.weight": "layers.{}.ff1.w2",
    "encoder.layers.{}.feed_forward1.linear2.bias": "layers.{}.ff1.b2",
    "encoder.layers.{}.norm_self_att.weight": "layers.{}.att_norm.weight",
    "encoder.layers.{}.norm_self_att.bias": "layers.{}.att_norm.bias",
    "encoder.layers.{}.self_attn.linear_q.weight": "layers.{}.att.wq",
    "encoder.layers.{}.self_attn.linear_q.bias": "layers.{}.att.bq",
    "encoder.layers.{}.self_attn.linear_k.weight": "layers.{}.att.wk",
    "encoder.layers.{}.self_attn.linear_k.bias": "layers.{}.att.bk",
    "encoder.layers.{}.self_attn.linear_v.weight": "layers.{}.att.wv",
    "encoder.layers.{}.self_attn.linear_v.bias": "layers.{}.att.bv",
    "encoder.layers.{}.self_attn.linear_out.weight": "layers.{}.att.wo",
    "encoder.layers.{}.self_attn.linear_out.bias": "layers.{}.att.bo",
    "encoder.layers.{}.self_attn.linear_pos.weight": "layers.{}.att.wpos",
    "encoder.layers.{}.self_attn.pos_bias_u": "layers.{}.att.pos_bias_u",
    "encoder.layers.{}.self_attn.pos_bias_v": "layers.{}.att.pos_bias_v",
    "encoder.layers.{}.norm_conv.weight": "layers.{}.conv_norm.weight",
    "encoder.layers.{}.norm_conv.bias": "layers.{}.conv_norm.bias",
    "encoder.layers.{}.conv.pointwise_conv1.weight": "layers.{}.conv.pw1.weight",
    "encoder.layers.{}.conv.pointwise_conv1.bias": "layers.{}.conv.pw1.bias",
    "encoder.layers.{}.conv.depthwise_conv.weight": "layers.{}.conv.dw.weight",
    "encoder.layers.{}.conv.depthwise_conv.bias": "layers.{}.conv.dw.bias",
    "encoder.layers.{}.conv.batch_norm.weight": "layers.{}.conv.norm.weight",
    "encoder.layers.{}.conv.batch_norm.bias": "layers.{}.conv.norm.bias",
    "encoder.layers.{}.conv.batch_norm.running_mean": "layers.{}.conv.norm.running_mean",
    "encoder.layers.{}.conv.batch_norm.running_var": "layers.{}.conv.norm.running_var",
    "encoder.layers.{}.conv.pointwise_conv2.weight": "layers.{}.conv.pw2.weight",
    "encoder.layers.{}.conv.pointwise_conv2.bias": "layers.{}.conv.pw2.bias",
    "encoder.layers.{}.norm_feed_forward2.weight": "layers.{}.ff2_norm.weight",
    "encoder.layers.{}.norm_feed_forward2.bias": "layers.{}.ff2_norm.bias",
    "encoder.layers.{}.feed_forward2.linear1.weight": "layers.{}.ff2.w1",
    "encoder.layers.{}.feed_forward2.linear1.bias": "layers.{}.ff2.b1",
    "encoder.layers.{}.feed_forward2.linear2.weight": "layers.{}.ff2.w2",
    "encoder.layers.{}.feed_forward2.linear2.bias": "layers.{}.ff2.b2",
    "encoder.layers.{}.norm_out.weight": "layers.{}.out_norm.weight",
    "encoder.layers.{}.norm_out.bias": "layers.{}.out_norm.bias",
    "decoder.prediction.embed.weight": "decoder.embed",
    "decoder.prediction.dec_rnn.lstm.weight_ih_l{}": "decoder.lstm.{}.w_ih",
    "decoder.prediction.dec_rnn.lstm.weight_hh_l{}": "decoder.lstm.{}.w_hh",
    "decoder.prediction.dec_rnn.lstm.bias_ih_l{}": "decoder.lstm.{}.b_ih",
    "decoder.prediction.dec_rnn.lstm.bias_hh_l{}": "decoder.lstm.{}.b_hh",
    "joint.enc.weight": "joint.enc.weight",
    "joint.enc.bias": "joint.enc.bias",
    "joint.pred.weight": "joint.pred.weight",
    "joint.pred.bias": "joint.pred.bias",
    "joint.joint_net.{}.weight": "joint.out.weight",  # joint_net.1 without dropout, joint_net.2 with it
    "joint.joint_net.{}.bias": "joint.out.bias",
    "ctc_decoder.decoder_layers.0.weight": "ctc.weight",
    "ctc_decoder.decoder_layers.0.bias": "ctc.bias",
    # the language prompt's MLP (PromptStreamingMixin.prompt_kernel: Linear(D + P, 2D), ReLU, Linear(2D, D))
    "prompt_kernel.0.weight": "prompt.w1",
    "prompt_kernel.0.bias": "prompt.b1",
    "prompt_kernel.2.weight": "prompt.w2",
    "prompt_kernel.2.bias": "prompt.b2",
}
# the end-of-utterance models' pieces (NeMo asr_eou_models: EOU_STRING, EOB_STRING)
EOU_PIECES = ("<EOU>", "<EOB>")
# encoder-level biases shared by every layer when untie_biases is false
SHARED_POS_BIAS = {"encoder.pos_bias_u": "att.pos_bias_u", "encoder.pos_bias_v": "att.pos_bias_v"}
# state_dict entries that carry no weights
IGNORED = re.compile(r"(\.num_batches_tracked$|^encoder\.pos_enc\.pe$|dtype_sentinel)")
# Conv1d weights with kernel size 1 are stored as matrices: [out, in, 1] -> [out, in]; depthwise [D, 1, K] -> [D, K]
SQUEEZE = re.compile(r"(conv\.pw[12]\.weight|conv\.dw\.weight|^ctc\.weight)$")

PROGRESS_MIN_BYTES = 64 << 20


class ConversionError(Exception):
    """A checkpoint the engine cannot run exactly, or a file that is not a readable .nemo archive."""


# ---- reading the archive ----------------------------------------------------------------------------------------
def _progress(label: str, done: int, total: int) -> None:
    """Progress for large checkpoints (the real one is 2.5 GB): a live line on a terminal, else every 10 %."""
    if total < PROGRESS_MIN_BYTES:
        return
    stream = sys.stderr
    if stream.isatty():
        stream.write(f"\r{label}: {done >> 20} / {total >> 20} MiB" + ("\n" if done >= total else ""))
    elif done >= total or (done * 10 // total) != ((done - (16 << 20)) * 10 // total):
        stream.write(f"{label}: {done >> 20} / {total >> 20} MiB\n")
    stream.flush()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
            done += len(block)
            _progress("hashing", done, total)
    return h.hexdigest()


def _open_tar(path: Path) -> tarfile.TarFile:
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    for mode in ("r:", "r:gz"):
        try:
            return tarfile.open(path, mode)
        except (tarfile.TarError, EOFError, OSError):
            continue
    raise ConversionError(f"{path}: not a .nemo archive (neither a tar nor a gzip tar file)")


def _member(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    for m in tar.getmembers():
        if m.isfile() and os.path.basename(m.name) == name:
            return m
    return None


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, dest: Path, label: str) -> None:
    src = tar.extractfile(m)
    done = 0
    with open(dest, "wb") as out:
        while block := src.read(16 << 20):
            out.write(block)
            done += len(block)
            _progress(label, done, m.size)
    if done != m.size:
        raise ConversionError(f"{tar.name}: truncated archive ({label}: {done} of {m.size} bytes)")


def _resolve(cfg, root):
    """Resolve `${a.b}` interpolations (NeMo saves configs resolved; this covers hand-edited ones)."""
    if isinstance(cfg, dict):
        return {k: _resolve(v, root) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_resolve(v, root) for v in cfg]
    if isinstance(cfg, str):
        m = re.fullmatch(r"\$\{([\w.]+)\}", cfg.strip())
        if m:
            node = root
            for part in m.group(1).removeprefix("model.").split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ConversionError(f"model_config.yaml: unresolved interpolation {cfg}")
                node = node[part]
            return _resolve(node, root)
    return cfg


# ---- checking the architecture -----------------------------------------------------------------------------------
def _get(cfg: dict, key: str, default=None):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _require(cond: bool, key: str, value, why: str) -> None:
    if not cond:
        raise ConversionError(f"unsupported model: {key} = {value!r} ({why})")


def _target(cfg: dict, section: str) -> str:
    return str(_get(cfg, f"{section}._target_", "") or "")


def _prompt_config(cfg: dict, sd: dict, d_model: int) -> dict:
    """num_prompts, prompt_dictionary and default_language of a prompt-conditioned checkpoint ({} for others)."""
    if "prompt_kernel.0.weight" not in sd:
        return {}
    md = cfg.get("model_defaults") if isinstance(cfg.get("model_defaults"), dict) else {}
    # NeMo: model_defaults.num_prompts, copied to the top-level num_prompts that prompt_kernel is built from; 128
    p = md.get("num_prompts", cfg.get("num_prompts", 128))
    _require(isinstance(p, int) and p > 0, "model_defaults.num_prompts", p, "a prompt model needs num_prompts > 0")
    w1, w2 = sd["prompt_kernel.0.weight"], sd.get("prompt_kernel.2.weight")
    _require(tuple(w1.shape) == (2 * d_model, d_model + p), "prompt_kernel.0.weight", list(w1.shape),
             f"expected [2 d_model, d_model + num_prompts] = [{2 * d_model}, {d_model + p}]")
    _require(w2 is not None and tuple(w2.shape) == (d_model, 2 * d_model), "prompt_kernel.2.weight",
             None if w2 is None else list(w2.shape), f"expected [d_model, 2 d_model] = [{d_model}, {2 * d_model}]")
    langs = md.get("prompt_dictionary")
    _require(isinstance(langs, dict) and len(langs) > 0, "model_defaults.prompt_dictionary", langs,
             "a prompt model needs its language dictionary")
    bad = {k: v for k, v in langs.items() if not (isinstance(v, int) and 0 <= v < p)}
    _require(not bad, "model_defaults.prompt_dictionary", bad, f"indices must be integers in [0, {p})")
    return {"num_prompts": p, "prompt_dictionary": {str(k): int(v) for k, v in langs.items()},
            "default_language": "auto" if "auto" in langs else ""}


def _eou_config(model_class: str, pieces: list[str] | None, vocab: int) -> dict:
    """eou_id and eob_id of an end-of-utterance checkpoint ({} for others): its tokenizer's <EOU>, <EOB> pieces."""
    if not model_class.endswith("EOUModel"):
        return {}
    ids = {}
    for name, piece in zip(("eou_id", "eob_id"), EOU_PIECES):
        _require(pieces is not None and piece in pieces, "tokenizer", piece,
                 f"an EOU model's tokenizer must hold the piece {piece}")
        ids[name] = pieces.index(piece)
        _require(ids[name] < vocab, "tokenizer", piece, f"id {ids[name]} is outside the joint's {vocab} classes")
    return ids


def build_config(cfg: dict, sd: dict, source: Path, sha256: str, pieces: list[str] | None = None) -> ModelConfig:
    """Check that `cfg`/`sd` describe a model the engine runs exactly and return its ModelConfig. pieces: the
    tokenizer's pieces by id (an EOU model's <EOU> and <EOB> are looked up there)."""
    for section in ("preprocessor", "encoder", "decoder"):
        _require(isinstance(cfg.get(section), dict), section, None, "section missing")
    _require(isinstance(cfg.get("joint"), dict), "joint", None,
             "no RNN-T joint: CTC-only models are not supported")
    pre, enc, dec, joint = cfg["preprocessor"], cfg["encoder"], cfg["decoder"], cfg["joint"]

    # preprocessor: NeMo FilterbankFeatures as the engine computes it
    _require(_target(cfg, "preprocessor").endswith("AudioToMelSpectrogramPreprocessor"),
             "preprocessor._target_", _target(cfg, "preprocessor"), "only AudioToMelSpectrogramPreprocessor")
    normalize = pre.get("normalize", "per_feature")
    _require(normalize in ("NA", None, "None", "none", False), "preprocessor.normalize", normalize,
             "streaming needs features without whole-utterance normalisation")
    _require(pre.get("window", "hann") == "hann", "preprocessor.window", pre.get("window"), "only hann")
    _require(pre.get("log", True) is True, "preprocessor.log", pre.get("log"), "only log-mel features")
    _require(pre.get("log_zero_guard_type", "add") == "add", "preprocessor.log_zero_guard_type",
             pre.get("log_zero_guard_type"), "only 'add'")
    _require(pre.get("frame_splicing", 1) == 1, "preprocessor.frame_splicing", pre.get("frame_splicing"),
             "only 1")
    _require(not pre.get("exact_pad", False), "preprocessor.exact_pad", pre.get("exact_pad"),
             "only center=True STFT")
    guard = pre.get("log_zero_guard_value", 2**-24)
    _require(isinstance(guard, (int, float)), "preprocessor.log_zero_guard_value", guard, "only a number")
    sr = int(pre.get("sample_rate", 16000))
    win = int(float(pre.get("window_size", 0.02)) * sr)
    hop = int(float(pre.get("window_stride", 0.01)) * sr)
    n_fft = pre.get("n_fft") or 2 ** (win - 1).bit_length()
    n_mels = int(pre.get("features", pre.get("nfilt", 64)))
    preemph = pre.get("preemph", 0.97)

    # encoder
    _require(_target(cfg, "encoder").endswith("ConformerEncoder"), "encoder._target_", _target(cfg, "encoder"),
             "only ConformerEncoder")
    _require(enc.get("self_attention_model", "rel_pos") == "rel_pos", "encoder.self_attention_model",
             enc.get("self_attention_model"), "only rel_pos")
    _require(enc.get("att_context_style", "regular") == "chunked_limited", "encoder.att_context_style",
             enc.get("att_context_style"), "only chunked_limited (cache-aware streaming)")
    acs = enc.get("att_context_size")
    if acs and not isinstance(acs[0], (list, tuple)):
        acs = [acs]
    ok = bool(acs) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in acs)
    _require(ok, "encoder.att_context_size", acs, "expected a list of [left, right] pairs")
    acs = [[int(a), int(b)] for a, b in acs]
    left = acs[0][0]
    _require(all(a == left and a > 0 for a, _ in acs), "encoder.att_context_size", acs,
             "every pair must have the same finite left context")
    _require(all(b >= 0 and left % (b + 1) == 0 for _, b in acs), "encoder.att_context_size", acs,
             "chunked_limited needs left % (right + 1) == 0 and right >= 0")
    _require(enc.get("subsampling") == "dw_striding", "encoder.subsampling", enc.get("subsampling"),
             "only dw_striding")
    _require(int(enc.get("subsampling_factor", 4)) == 8, "encoder.subsampling_factor",
             enc.get("subsampling_factor"), "only 8")
    _require(enc.get("causal_downsampling") is True, "encoder.causal_downsampling",
             enc.get("causal_downsampling"), "only causal subsampling streams")
    k = int(enc.get("conv_kernel_size", 31))
    ctx = enc.get("conv_context_size")
    _require(ctx == "causal" or ctx == [k - 1, 0], "encoder.conv_context_size", ctx, "only causal convolution")
    norm = enc.get("conv_norm_type", "batch_norm")
    _require(norm in ("layer_norm", "batch_norm"), "encoder.conv_norm_type", norm,
             "only layer_norm or batch_norm")
    _require(enc.get("reduction") in (None, "None"), "encoder.reduction", enc.get("reduction"),
             "intermediate reduction is not supported")
    _require(int(enc.get("feat_out", -1)) in (-1, 0), "encoder.feat_out", enc.get("feat_out"),
             "an output projection is not supported")
    _require(enc.get("pointwise_activation", "glu_") == "glu_", "encoder.pointwise_activation",
             enc.get("pointwise_activation"), "only GLU")
    for key in ("conv_context_style",):
        _require(enc.get(key, "regular") == "regular", f"encoder.{key}", enc.get(key), "only regular")
    d_model = int(enc["d_model"])
    n_heads = int(enc.get("n_heads", 4))
    _require(d_model % n_heads == 0, "encoder.n_heads", n_heads, f"must divide d_model {d_model}")
    n_layers = int(enc["n_layers"])
    _require(int(enc.get("feat_in", n_mels)) == n_mels, "encoder.feat_in", enc.get("feat_in"),
             f"must equal preprocessor.features {n_mels}")

    # decoder and joint
    _require(_target(cfg, "decoder").endswith("RNNTDecoder"), "decoder._target_", _target(cfg, "decoder"),
             "only RNNTDecoder")
    _require(dec.get("blank_as_pad", True) is True, "decoder.blank_as_pad", dec.get("blank_as_pad"),
             "only blank_as_pad")
    _require(dec.get("normalization_mode") in (None, "None"), "decoder.normalization_mode",
             dec.get("normalization_mode"), "only no normalisation")
    _require(_target(cfg, "joint").endswith("RNNTJoint"), "joint._target_", _target(cfg, "joint"),
             "only RNNTJoint")
    act = str(_get(joint, "jointnet.activation", "relu")).lower()
    _require(act == "relu", "joint.jointnet.activation", act, "only relu")
    _require(int(joint.get("num_extra_outputs", 0) or 0) == 0, "joint.num_extra_outputs",
             joint.get("num_extra_outputs"), "TDT / extra outputs are not supported")
    _require(_get(cfg, "loss.loss_name", "default") != "tdt", "loss.loss_name", "tdt", "TDT is not supported")
    if "joint.joint_net.2.weight" in sd:
        out_idx = 2
    else:
        _require("joint.joint_net.1.weight" in sd, "joint.joint_net", None, "output layer not found")
        out_idx = 1
    vocab = int(sd[f"joint.joint_net.{out_idx}.weight"].shape[0]) - 1
    max_symbols = _get(cfg, "decoding.greedy.max_symbols", None)
    if max_symbols is None:
        max_symbols = _get(cfg, "decoding.greedy.max_symbols_per_step", None)
    # NeMo's streaming script uses 10 when max_symbols is unset or <= 0
    max_symbols = 10 if max_symbols is None or int(max_symbols) <= 0 else int(max_symbols)
    lstm_layers = len([k for k in sd if re.fullmatch(r"decoder\.prediction\.dec_rnn\.lstm\.weight_ih_l\d+", k)])
    _require(lstm_layers >= 1, "decoder.prediction.dec_rnn.lstm", None, "LSTM weights not found")
    _require(not any(k.endswith("_reverse") or "weight_hr" in k for k in sd if k.startswith("decoder.")),
             "decoder.prednet", None, "only a unidirectional LSTM without projection")
    has_bn = "encoder.layers.0.conv.batch_norm.running_mean" in sd
    _require(has_bn == (norm == "batch_norm"), "encoder.conv_norm_type", norm,
             "does not match the checkpoint's conv.batch_norm tensors")
    use_bias = "encoder.layers.0.self_attn.linear_q.bias" in sd
    model_class = str(cfg.get("target", "") or "").rsplit(".", 1)[-1] or (
        "EncDecHybridRNNTCTCBPEModel" if "aux_ctc" in cfg else "EncDecRNNTBPEModel")
    pred_hidden = int(sd["decoder.prediction.dec_rnn.lstm.weight_hh_l0"].shape[1])
    family = {**_prompt_config(cfg, sd, d_model), **_eou_config(model_class, pieces, vocab)}
    return ModelConfig(
        sample_rate=sr, n_fft=int(n_fft), win_length=win, hop_length=hop, n_mels=n_mels,
        preemph=float(preemph) if preemph is not None else 0.0,
        mag_power=float(pre.get("mag_power", 2.0)), log_zero_guard=float(guard),
        pad_value=float(pre.get("pad_value", 0.0)),
        d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        ff_dim=int(sd["encoder.layers.0.feed_forward1.linear1.weight"].shape[0]),
        subsampling_channels=int(sd["encoder.pre_encode.conv.0.weight"].shape[0]),
        conv_kernel_size=k, conv_norm_type=norm, xscaling=bool(enc.get("xscaling", True)),
        use_bias=use_bias, att_context_size=acs,
        vocab_size=vocab, blank_id=vocab, pred_hidden=pred_hidden, pred_rnn_layers=lstm_layers,
        joint_hidden=int(sd["joint.enc.weight"].shape[0]), max_symbols=max_symbols,
        has_ctc="ctc_decoder.decoder_layers.0.weight" in sd,
        model_class=model_class, source_file=source.name, source_sha256=sha256, **family,
    )


def map_weights(sd: dict, cfg: ModelConfig) -> dict:
    """NeMo state_dict -> engine tensors (bit-identical values, contiguous)."""
    patterns = []
    for src, dst in WEIGHT_MAP.items():
        rx = re.compile("^" + re.escape(src).replace(r"\{\}", r"(\d+)") + "$")
        patterns.append((rx, dst))
    out = {}
    unused = []
    for key, t in sd.items():
        if IGNORED.search(key):
            continue
        if key in SHARED_POS_BIAS:
            for i in range(cfg.n_layers):
                out.setdefault(f"layers.{i}.{SHARED_POS_BIAS[key]}", t)
            continue
        for rx, dst in patterns:
            m = rx.match(key)
            if m:
                name = dst.format(*m.groups()) if "{}" in dst else dst
                out[name] = t
                break
        else:
            unused.append(key)
    if unused:
        raise ConversionError(f"unsupported model: state_dict has tensors the engine does not know: {unused[:5]}")
    seen = set()
    for name in list(out):
        t = out[name].detach().to("cpu")
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()  # tied tensors (shared position biases) are stored once per engine key
        seen.add(t.untyped_storage().data_ptr())
        if SQUEEZE.search(name):
            t = t.reshape(t.shape[0], -1)
        if name == "frontend.fb":
            t = t.reshape(t.shape[-2], t.shape[-1])
        out[name] = t.contiguous()
    required = ["frontend.window", "frontend.fb", "subsample.out.weight", "decoder.embed", "joint.out.weight"]
    required += [f"layers.{i}.att.pos_bias_u" for i in range(cfg.n_layers)]
    if cfg.num_prompts:
        required += ["prompt.w1", "prompt.b1", "prompt.w2", "prompt.b2"]
    missing = [k for k in required if k not in out]
    if missing:
        raise ConversionError(f"checkpoint is missing tensors: {missing[:5]}")
    return out


def convert(src: str | Path, out_dir: str | Path, force: bool = False) -> ModelConfig:
    """Convert SRC.nemo into OUT_DIR. Writes into a temporary directory first: OUT_DIR is complete or absent."""
    from safetensors.torch import save_file

    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ConversionError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    sha = _sha256(src) if src.is_file() else ""
    tar = _open_tar(src)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with tar:
            try:
                m_cfg = _member(tar, "model_config.yaml")
                m_ckpt = _member(tar, "model_weights.ckpt")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ConversionError(f"{src}: corrupt .nemo archive ({e})") from None
            if m_cfg is None or m_ckpt is None:
                raise ConversionError(f"{src}: not a .nemo checkpoint (model_config.yaml or model_weights.ckpt "
                                      "missing)")
            try:
                raw = yaml.safe_load(tar.extractfile(m_cfg).read())
            except (tarfile.TarError, EOFError) as e:
                raise ConversionError(f"{src}: corrupt .nemo archive ({e})") from None
            except yaml.YAMLError as e:
                raise ConversionError(f"{src}: model_config.yaml is not valid YAML ({e})".splitlines()[0]) \
                    from None
            cfg = _resolve(raw, raw)
            tok_ref = str(_get(cfg, "tokenizer.model_path", "") or "")
            tok_name = tok_ref.removeprefix("nemo:").split("/")[-1]
            m_tok = _member(tar, tok_name) if tok_name else None
            if m_tok is None:
                raise ConversionError(f"unsupported model: tokenizer.model_path = {tok_ref!r} (no SentencePiece "
                                      "model in the archive)")
            ckpt = tmp / "model_weights.ckpt"
            try:
                _extract(tar, m_ckpt, ckpt, "model_weights.ckpt")
                _extract(tar, m_tok, tmp / "tokenizer.model", "tokenizer.model")
            except (tarfile.TarError, EOFError) as e:
                raise ConversionError(f"{src}: corrupt .nemo archive ({e})") from None
        try:
            sd = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several types for a damaged pickle/zip
            raise ConversionError(f"{src}: model_weights.ckpt cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tmp / "tokenizer.model"))
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        mcfg = build_config(cfg, sd, src, sha, pieces)
        tensors = map_weights(sd, mcfg)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"source_sha256": sha})
        del sd, tensors
        ckpt.unlink()
        (tmp / "config.json").write_text(mcfg.to_json() + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        return mcfg
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
