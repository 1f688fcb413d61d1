"""Load a converted model directory (config.json, model.safetensors, tokenizer.model) for the engine.

Weights stay a flat mapping of engine keys (see `nemotron_engine.weights.convert.WEIGHT_MAP`), grouped per
module for the reference functions. Tables that never change are computed here once: the per-layer positional
projections P = linear_pos(pe(r)) over every relative position a streaming step can use.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ModelConfig
from .reference.attention import position_projection


def _strip(w: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


class Model:
    """A converted model on one device and dtype: config, weights grouped per module, precomputed tables."""

    def __init__(self, cfg: ModelConfig, tensors: dict, dtype: torch.dtype = torch.float32, device="cpu"):
        self.cfg = cfg
        self.dtype = dtype
        self.device = torch.device(device)
        w = {}
        for k, t in tensors.items():
            # BatchNorm statistics and the feature frontend stay float32; everything else takes the engine dtype.
            # Features are computed on the host, where the PCM arrives.
            keep32 = k.startswith("frontend.") or "running_" in k
            dev = "cpu" if k.startswith("frontend.") else self.device
            w[k] = t.to(device=dev, dtype=torch.float32 if keep32 else dtype)
        self.w = w
        self.frontend = _strip(w, "frontend.")
        self.sub = _strip(w, "subsample.")
        self.layers = [_strip(w, f"layers.{i}.") for i in range(cfg.n_layers)]
        for lw in self.layers:
            lw["conv"] = _strip(lw, "conv.")  # the conv module's weights, keyed as the conv ops read them
        self.dec = _strip(w, "decoder.")
        self.joint = _strip(w, "joint.")
        self.prompt = _strip(w, "prompt.")  # the language prompt's MLP (empty for models without one)
        # Relative positions a streaming step uses: query i in [0, T), key j in [0, C + T), T <= R_max + 1,
        # r = (C + i) - j in [-R_max, C + R_max].
        r_max = max(cfg.lookaheads)
        self.rel_lo = -r_max
        self.pos = [position_projection(lw["att.wpos"], -r_max, cfg.left_context + r_max, cfg.n_heads)
                    for lw in self.layers]
        self.packed_bytes = 0  # bytes of weights a backend prepacked (cpu_ops.pack_model)

    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> "Model":
        model_dir = Path(model_dir)
        cfg = ModelConfig.load(model_dir)
        path = model_dir / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: re-run `nemotron-engine convert`")
        return cls(cfg, load_file(str(path)), dtype=dtype, device=device)
