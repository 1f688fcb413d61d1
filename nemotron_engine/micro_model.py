"""A micro model: the demo model's format and vocabulary with a model so small that its math is negligible, for
measuring the engine's own (host) work per stream-step (`bench/bench_host.py`, `nemotron-engine loadtest --micro`).

    >>> from nemotron_engine.micro_model import build_micro_model
    >>> d = build_micro_model("micro")      # -> micro/{config.json, model.safetensors, tokenizer.model}
    >>> Engine(d, max_streams=1024)

The directory is what `nemotron-engine convert` writes (config.json + model.safetensors + tokenizer.model): the
demo's config.json shrunk to 1 layer x 16 (2 heads, FF 32), 4 subsampling channels, a 16-wide one-layer
prediction network and joint, no CTC head; the demo's tokenizer (so the vocabulary, 128 pieces + blank, and every
tokenizer path are real); the demo's feature frontend (window and mel filterbank, so the features are real); every
other weight random (seeded), keyed as `nemotron_engine.weights.convert.WEIGHT_MAP` names them. The joint's blank
logit gets a bias so that the greedy decoder emits about `tokens_per_frame` tokens per 80 ms encoder frame on the
demo's example recordings (default 0.25, about 3 tokens a second, as in speech) instead of the maximum on every frame
or nothing: random weights give encoder frames that differ little, so the bias is found by bisection on the engine's
own output (a few dozen fast runs of the examples) rather than fixed.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .config import ModelConfig

MICRO = dict(n_layers=1, d_model=16, n_heads=2, ff_dim=32, subsampling_channels=4, pred_hidden=16,
             pred_rnn_layers=1, joint_hidden=16, has_ctc=False, use_bias=False, xscaling=False,
             conv_norm_type="layer_norm", model_class="EncDecRNNTBPEModel",
             source_file="micro model (random weights, nemotron_engine.micro_model)", source_sha256="")


def _demo_dir() -> Path:
    from nemotron_engine import weights

    return Path(weights.__file__).parent / "demo"


def micro_tensors(cfg: ModelConfig, frontend: dict, seed: int = 0, blank_bias: float = 0.0) -> dict:
    """Random weights for `cfg`, keyed as the engine reads them (fan-in scaled normals, LayerNorms at identity)."""
    g = torch.Generator().manual_seed(seed)
    D, F, C, H, J = cfg.d_model, cfg.ff_dim, cfg.subsampling_channels, cfg.pred_hidden, cfg.joint_hidden
    V1 = cfg.vocab_size + 1
    f3 = cfg.n_mels
    for _ in range(3):  # three stride-2 convolutions with (2 left, 1 right) padding: n // 2 + 1
        f3 = f3 // 2 + 1

    def rnd(*shape, fan_in=None):
        fan = fan_in if fan_in is not None else shape[-1]
        return torch.randn(*shape, generator=g) / fan ** 0.5

    def zeros(*shape):
        return torch.zeros(*shape)

    t = {"frontend.window": frontend["window"].float().clone(), "frontend.fb": frontend["fb"].float().clone()}
    t.update({
        "subsample.conv0.weight": rnd(C, 1, 3, 3, fan_in=9), "subsample.conv0.bias": zeros(C),
        "subsample.dw1.weight": rnd(C, 1, 3, 3, fan_in=9), "subsample.dw1.bias": zeros(C),
        "subsample.pw1.weight": rnd(C, C, 1, 1, fan_in=C), "subsample.pw1.bias": zeros(C),
        "subsample.dw2.weight": rnd(C, 1, 3, 3, fan_in=9), "subsample.dw2.bias": zeros(C),
        "subsample.pw2.weight": rnd(C, C, 1, 1, fan_in=C), "subsample.pw2.bias": zeros(C),
        "subsample.out.weight": rnd(D, C * f3), "subsample.out.bias": zeros(D),
    })
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        for norm in ("ff1_norm", "att_norm", "conv_norm", "ff2_norm", "out_norm"):
            t[p + norm + ".weight"] = torch.ones(D)
            t[p + norm + ".bias"] = zeros(D)
        for ff in ("ff1", "ff2"):
            t[p + ff + ".w1"] = rnd(F, D)
            t[p + ff + ".w2"] = rnd(D, F)
        for name in ("wq", "wk", "wv", "wo", "wpos"):
            t[p + "att." + name] = rnd(D, D)
        t[p + "att.pos_bias_u"] = rnd(cfg.n_heads, cfg.d_head, fan_in=cfg.d_head)
        t[p + "att.pos_bias_v"] = rnd(cfg.n_heads, cfg.d_head, fan_in=cfg.d_head)
        t[p + "conv.pw1.weight"] = rnd(2 * D, D)
        t[p + "conv.dw.weight"] = rnd(D, cfg.conv_kernel_size)
        t[p + "conv.norm.weight"] = torch.ones(D)
        t[p + "conv.norm.bias"] = zeros(D)
        t[p + "conv.pw2.weight"] = rnd(D, D)
    t["decoder.embed"] = rnd(V1, H, fan_in=1) * 0.5
    for layer in range(cfg.pred_rnn_layers):
        t[f"decoder.lstm.{layer}.w_ih"] = rnd(4 * H, H)
        t[f"decoder.lstm.{layer}.w_hh"] = rnd(4 * H, H)
        t[f"decoder.lstm.{layer}.b_ih"] = zeros(4 * H)
        t[f"decoder.lstm.{layer}.b_hh"] = zeros(4 * H)
    t["joint.enc.weight"] = rnd(J, D)
    t["joint.enc.bias"] = zeros(J)
    t["joint.pred.weight"] = rnd(J, H)
    t["joint.pred.bias"] = zeros(J)
    t["joint.out.weight"] = rnd(V1, J)
    out_bias = zeros(V1)
    out_bias[cfg.blank_id] = blank_bias
    t["joint.out.bias"] = out_bias
    return {k: v.contiguous() for k, v in t.items()}


def _emission_rate(engine, pcm, bias: float) -> float:
    """Tokens per encoder frame that `engine` emits on `pcm` (1120 ms lookahead) with the blank bias set to `bias`."""
    cfg = engine.cfg
    engine.model.joint["out.bias"][cfg.blank_id] = bias  # in place: every backend reads this tensor
    n = len(engine.transcribe(pcm, (max(cfg.lookaheads) + 1) * cfg.frame_ms).tokens)
    return n / max(len(pcm) / (cfg.sample_rate * cfg.frame_ms / 1000), 1.0)


def calibrate_blank_bias(model_dir: str | Path, tokens_per_frame: float = 0.25, audio=None, iters: int = 12) -> float:
    """The joint's blank bias for which the model at `model_dir` emits about `tokens_per_frame` tokens per encoder
    frame on `audio` (default: the demo's isolated example recordings), by bisection (the rate falls as the bias grows)."""
    from .engine import Engine

    if audio is None:
        from .cli import demo_examples, read_audio

        # the isolated examples only: the long-form one (20 s of six sentences) would outweigh them, and the rate
        # on each short file would drift from the target
        audio = [read_audio(path, 16000)[0] for path, _ in demo_examples(isolated_only=True)]
    import numpy as np

    pcm = np.concatenate([np.asarray(a, dtype=np.float32) for a in audio])
    engine = Engine(model_dir, backend="torch", max_streams=1)
    lo, hi = -10.0, 10.0  # rate(lo) high, rate(hi) low
    while _emission_rate(engine, pcm, hi) > tokens_per_frame and hi < 1e3:
        hi *= 2
    while _emission_rate(engine, pcm, lo) < tokens_per_frame and lo > -1e3:
        lo *= 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        if _emission_rate(engine, pcm, mid) > tokens_per_frame:
            lo = mid
        else:
            hi = mid
    return hi


def build_micro_model(out_dir: str | Path, seed: int = 0, tokens_per_frame: float | None = 0.25,
                      blank_bias: float | None = None, **overrides) -> Path:
    """Write a micro model directory (see the module docstring) -> its path.

    tokens_per_frame: calibrate the blank bias to this emission rate (see `calibrate_blank_bias`), unless
    `blank_bias` is given. overrides: other config values (e.g. n_layers=2); the demo's vocabulary, features and
    lookaheads are kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    demo = _demo_dir()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = json.loads((demo / "config.json").read_text())
    d.update(MICRO)
    d.update(overrides)
    cfg = ModelConfig.from_dict(d)  # refuses unknown keys and other format versions
    with safe_open(str(demo / "model.safetensors"), framework="pt") as f:
        frontend = {k: f.get_tensor(f"frontend.{k}") for k in ("window", "fb")}
    tensors = micro_tensors(cfg, frontend, seed=seed, blank_bias=0.0 if blank_bias is None else blank_bias)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(cfg.to_json() + "\n")
    shutil.copyfile(demo / "tokenizer.model", out / "tokenizer.model")
    if blank_bias is None and tokens_per_frame is not None:
        tensors["joint.out.bias"][cfg.blank_id] = calibrate_blank_bias(out, tokens_per_frame)
        save_file(tensors, str(out / "model.safetensors"))
    return out
