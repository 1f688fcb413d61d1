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
from .reference.linear import pack_linears, packing_available

# The products prepacked for oneDNN on the CPU: every per-frame product, and the decoder's per-symbol ones.
LAYER_LINEARS = ["ff1.w1", "ff1.w2", "att.wq", "att.wk", "att.wv", "att.wo", "ff2.w1", "ff2.w2"]
CONV_LINEARS = ["pw1.weight", "pw2.weight"]
JOINT_LINEARS = ["enc.weight", "pred.weight", "out.weight"]


def decoder_linears(cfg: ModelConfig) -> list[str]:
    return [f"lstm.{i}.{name}" for i in range(cfg.pred_rnn_layers) for name in ("w_ih", "w_hh")]


def _strip(w: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


class Model:
    """A converted model on one device and dtype: config, weights grouped per module, precomputed tables."""

    def __init__(self, cfg: ModelConfig, tensors: dict, dtype: torch.dtype = torch.float32, device="cpu",
                 cpu_packed: bool = False):
        """cpu_packed: prepack the per-frame linear weights for oneDNN (float32 on the CPU only; see
        reference/linear.py). Their dense copies are then dropped from the weight dicts."""
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
            lw["conv"] = _strip(lw, "conv.")  # the conv module's weights, keyed as conv_module() reads them
        self.dec = _strip(w, "decoder.")
        self.joint = _strip(w, "joint.")
        # Relative positions a streaming step uses: query i in [0, T), key j in [0, C + T), T <= R_max + 1,
        # r = (C + i) - j in [-R_max, C + R_max].
        r_max = max(cfg.lookaheads)
        self.rel_lo = -r_max
        self.pos = [position_projection(lw["att.wpos"], -r_max, cfg.left_context + r_max, cfg.n_heads)
                    for lw in self.layers]
        self.packed_bytes = 0
        if cpu_packed and self.device.type == "cpu" and dtype == torch.float32 and packing_available():
            self._pack()

    def _pack(self) -> None:
        # (the dict the products read, the weights packed there, the other dicts holding the same tensors under a
        # prefix): the dense copies are dropped from all of them, so their memory is freed
        groups = [(self.sub, ["out.weight"], [(self.w, "subsample.")]),
                  (self.joint, JOINT_LINEARS, [(self.w, "joint.")]),
                  (self.dec, decoder_linears(self.cfg), [(self.w, "decoder.")])]
        for i, lw in enumerate(self.layers):
            groups.append((lw, LAYER_LINEARS, [(self.w, f"layers.{i}.")]))
            groups.append((lw["conv"], CONV_LINEARS, [(self.w, f"layers.{i}.conv."), (lw, "conv.")]))
        for d, names, aliases in groups:
            self.packed_bytes += pack_linears(d, names)
            for alias, prefix in aliases:
                for n in names:
                    alias.pop(prefix + n, None)

    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32, device="cpu",
             cpu_packed: bool = False) -> "Model":
        model_dir = Path(model_dir)
        cfg = ModelConfig.load(model_dir)
        path = model_dir / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: re-run `nemotron-engine convert`")
        return cls(cfg, load_file(str(path)), dtype=dtype, device=device, cpu_packed=cpu_packed)
