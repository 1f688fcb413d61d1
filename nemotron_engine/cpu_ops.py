"""The CPU backend's ops: the reference ops (nemotron_engine/reference/) re-arranged for a few-core CPU, each
tested against its reference (tests/test_cpu_ops.py) and bit-for-bit batch invariant (tests/test_batch_invariance.py).

- `linear`: products on weights prepacked once at load (`pack_model`) into oneDNN's blocked layout. torch's CPU
  `F.linear` goes to MKL's sgemm, which is slow on the few rows of a streaming step (M = streams x chunk frames; our
  reading, not verified: it packs the whole weight matrix on every call); the prepacked product ran the full-size
  engine 1.4-2.3x faster at 2 to 8 streams on a 2-core AMD EPYC (README, Benchmarks: measured with `nemotron-engine
  bench --no-nemo` with and without prepacking, before the op table existed; `--backend torch` is not that
  comparison, it also drops the other CPU ops). It is also row-invariant (a row's result does not depend on the
  other rows in the call, tests/test_linear.py), which MKL's is not; it differs from F.linear by fp32 rounding
  (about 1e-6 relative).
- `conv_stages_nhwc`: the subsampling's conv stages channels last, for the whole batch at once: the first conv as
  one prepacked product of 3x3 patches, the depthwise convs on oneDNN's channels-last depthwise kernel (one output
  is its 9 taps summed in the kernel's fixed order whatever the batch; tests/test_subsample.py checks it bit for bit
  over batch sizes), the pointwise convs as prepacked products (row-invariant), the masks in place and only where a
  value can change (nowhere in a full chunk). Without prepacked products (a torch without oneDNN packing) it runs
  one stream at a time, since MKL's products are not row-invariant.
- `rel_attention_per_stream`: one product per stream, batched over the heads and read straight from the keys' and
  values' interleaved rows (no transposed copies). MKL rounds a batched product differently with the batch size
  (torch.bmm over B streams differs from the same stream alone at T = 7), and a flipped near tie changes the tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import subsampled_length
from .reference.attention import gather_positions, masked_softmax

PACKED = "#packed"

# The products prepacked for oneDNN: every per-frame product, and the decoder's per-symbol ones.
LAYER_LINEARS = ["ff1.w1", "ff1.w2", "att.wq", "att.wk", "att.wv", "att.wo", "ff2.w1", "ff2.w2"]
CONV_LINEARS = ["pw1.weight", "pw2.weight"]
JOINT_LINEARS = ["enc.weight", "pred.weight", "out.weight"]
PROMPT_LINEARS = ["w1", "w2"]  # the language prompt's MLP, where the model has one


def decoder_linears(cfg) -> list[str]:
    return [f"lstm.{i}.{name}" for i in range(cfg.pred_rnn_layers) for name in ("w_ih", "w_hh")]


# ---- prepacked products ------------------------------------------------------------------------------------------
def linear(x: torch.Tensor, w: dict, weight: str, bias: str | None = None) -> torch.Tensor:
    """`reference.linear.linear` on the prepacked weight w[weight + PACKED] when w holds one."""
    b = w.get(bias) if bias is not None else None
    packed = w.get(weight + PACKED)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    return F.linear(x, w[weight], b)


def packing_available() -> bool:
    """Whether this torch build can prepack fp32 linear weights for oneDNN on the CPU."""
    try:
        probe = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), None)
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8), probe, None, "none", [], "")
        return torch.backends.mkldnn.is_available() and tuple(y.shape) == (2, 8)
    except (AttributeError, RuntimeError):
        return False


def pack_linears(w: dict, names: list[str]) -> int:
    """Replace each 2-D float32 CPU weight w[name] by w[name + PACKED] (oneDNN blocked layout; the dense copy is
    dropped, so the weights' memory does not double) -> bytes packed."""
    done = 0
    for name in names:
        t = w.get(name)
        if t is None or t.dim() != 2 or t.dtype != torch.float32 or t.device.type != "cpu":
            continue
        w[name + PACKED] = torch.ops.mkldnn._reorder_linear_weight(t.contiguous(), None)
        del w[name]
        done += t.numel() * t.element_size()
    return done


# the subsampling's convolutions that are products: conv0 (1 -> C channels over a 3x3 patch) and the pointwise ones
CONV_PRODUCTS = ["conv0", "pw1", "pw2"]


def pack_conv_products(w: dict) -> int:
    """Prepack the subsampling's conv products as matrices, w[name + ".matrix" + PACKED] ([C_out, C_in x kh x kw]),
    beside the 4-D weights (small; the reference form of other dtypes reads those) -> bytes packed."""
    mats = {f"{n}.matrix": w[f"{n}.weight"].flatten(1) for n in CONV_PRODUCTS if f"{n}.weight" in w}
    done = pack_linears(mats, list(mats))
    w.update({k: v for k, v in mats.items() if k.endswith(PACKED)})
    return done


def pack_model(model) -> int:
    """Prepack a float32 CPU model's products in place -> bytes packed (0 for other dtypes and devices, or a torch
    without oneDNN packing). The dense copies are dropped from every dict that held them, so memory does not double."""
    if model.device.type != "cpu" or model.dtype != torch.float32 or not packing_available():
        return 0
    # (the dict the products read, the weights packed there, the other dicts holding the same tensors under a prefix)
    done = pack_conv_products(model.sub)
    groups = [(model.sub, ["out.weight"], [(model.w, "subsample.")]),
              (model.joint, JOINT_LINEARS, [(model.w, "joint.")]),
              (model.dec, decoder_linears(model.cfg), [(model.w, "decoder.")]),
              (model.prompt, PROMPT_LINEARS, [(model.w, "prompt.")])]
    for i, lw in enumerate(model.layers):
        groups.append((lw, LAYER_LINEARS, [(model.w, f"layers.{i}.")]))
        groups.append((lw["conv"], CONV_LINEARS, [(model.w, f"layers.{i}.conv."), (lw, "conv.")]))
    for d, names, aliases in groups:
        done += pack_linears(d, names)
        for alias, prefix in aliases:
            for n in names:
                alias.pop(prefix + n, None)
    model.packed_bytes = done
    return done


# ---- attention ---------------------------------------------------------------------------------------------------
def rel_attention_per_stream(q, k, v, pos, rel_lo, pos_bias_u, pos_bias_v, masked) -> torch.Tensor:
    """`reference.attention.rel_attention` (same arguments and shapes) with one product per stream (module
    docstring): each stream's products batched over the H heads, keys and values read as stored ([B, N, H, dh])."""
    b, t, d = q.shape
    n = k.shape[1]
    h, _, dh = pos.shape
    q = q.view(b, t, h, dh)
    k = k.view(b, n, h, dh).permute(0, 2, 3, 1)  # [B, H, dh, N] (a view)
    v = v.view(b, n, h, dh).transpose(1, 2)  # [B, H, N, dh] (a view)
    qu = (q + pos_bias_u).transpose(1, 2)  # [B, H, T, dh]
    qv = (q + pos_bias_v).transpose(1, 2)
    lo, hi = 1 - t, n - 1  # the relative positions the chunk uses
    table = pos[:, lo - rel_lo: hi - rel_lo + 1].transpose(1, 2)  # [H, dh, n + t - 1] (a view)
    ac = q.new_empty(b, h, t, n)
    rows = q.new_empty(b, h, t, table.shape[2])  # [B, H, T, n + t - 1]
    for s in range(b):
        torch.bmm(qu[s], k[s], out=ac[s])
        torch.bmm(qv[s], table, out=rows[s])
    attn = masked_softmax((ac + gather_positions(rows, n)) / math.sqrt(dh), masked)
    # each stream's heads into a contiguous [H, T, dh] block, merged into [B, T, D] by one copy at the end
    # (not bmm into a strided out= view of [B, T, H, dh], which torch does not write in place)
    out = q.new_empty(b, h, t, dh)
    for s in range(b):
        torch.bmm(attn[s], v[s], out=out[s])
    return out.transpose(1, 2).reshape(b, t, d)


# ---- subsampling, channels last ----------------------------------------------------------------------------------
def _mask_time_(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero the frames t >= length of x [B, T, ...] in place (nothing to do without lengths).

    masked_fill instead of NeMo's multiplication by the 0/1 mask: the same values for finite activations (a
    masked negative value becomes +0 instead of -0, which no later sum can tell apart).
    """
    if lengths is None:
        return x
    pad = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)  # [B, T]
    return x.masked_fill_(pad.view(*pad.shape, *([1] * (x.dim() - 2))), 0.0)


def _depthwise_nhwc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal stride-2 3x3 depthwise conv of x [B, T, F, C] -> [B, T // 2 + 1, F // 2 + 1, C] (a strided view).

    Symmetric padding 2 instead of (2, 1): every kept output reads the same inputs and zeros (the extra right zeros
    only feed an extra last row or column, which is sliced off), and oneDNN runs it without a padded copy.
    """
    b, t, f, c = x.shape
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=2, padding=2, groups=c)  # channels last, [B, C, T', F']
    return y[:, :, : t // 2 + 1, : f // 2 + 1].permute(0, 2, 3, 1)


def _product(x: torch.Tensor, w: dict, name: str) -> torch.Tensor:
    """x [..., C_in x kh x kw] times the conv `name`'s weight as a matrix (prepacked when packed) -> [..., C_out]."""
    packed = w.get(name + ".matrix" + PACKED)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, w.get(name + ".bias"), "none", [], "")
    return F.linear(x, w[name + ".weight"].flatten(1), w.get(name + ".bias"))


def _stages_nhwc(mel: torch.Tensor, lengths: torch.Tensor | None, w: dict) -> torch.Tensor:
    """The three conv stages, mel [B, T, F] -> [B, T3, C * F3] (flatten index c * F3 + f)."""
    b = mel.shape[0]
    n1 = n2 = n3 = None
    if lengths is not None:
        n1 = lengths // 2 + 1
        n2 = n1 // 2 + 1
        n3 = n2 // 2 + 1
        mel = _mask_time_(mel.clone(), lengths)
    # conv0, 1 -> C channels: every output is one 3x3 patch of the padded input times the 9 weights of a channel
    patches = F.pad(mel, (2, 1, 2, 1)).unfold(1, 3, 2).unfold(2, 3, 2)  # [B, T1, F1, 3 (time), 3 (freq)]
    _, t1, f1 = patches.shape[:3]
    x = _product(patches.reshape(b, t1 * f1, 9), w, "conv0").view(b, t1, f1, -1)
    x = _mask_time_(x, n1).relu_()  # NeMo's masks before the ReLU and before dw1 (the second changes nothing)
    x = _depthwise_nhwc(x, w["dw1.weight"], w.get("dw1.bias"))
    x = _product(_mask_time_(x.contiguous(), n2), w, "pw1")
    x = _mask_time_(x, n2).relu_()
    x = _depthwise_nhwc(x, w["dw2.weight"], w.get("dw2.bias"))
    x = _product(_mask_time_(x.contiguous(), n3), w, "pw2")
    x = _mask_time_(x, n3).relu_()  # [B, T3, F3, C]; the final mask of NeMo changes nothing either
    return x.permute(0, 1, 3, 2).reshape(b, x.shape[1], -1)  # [B, T3, C * F3]


def conv_stages_nhwc(mel: torch.Tensor, lengths: torch.Tensor | None, w: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference.subsample.conv_stages` in channels-last layout -> (y [B, T3, C * F3], lengths [B]); the output
    Linear is the step's (prepacked) product. The whole batch at once when the conv products are prepacked
    (`pack_conv_products`), else one stream at a time (module docstring)."""
    b, t = mel.shape[:2]
    if lengths is None:
        lengths_out = torch.full((b,), subsampled_length(t), dtype=torch.int64, device=mel.device)
    else:
        lengths_out = subsampled_length(lengths)
        if bool((lengths >= t).all()):  # a full chunk: no mask can change a value
            lengths = None
    if all(f"{n}.matrix{PACKED}" in w for n in CONV_PRODUCTS):
        return _stages_nhwc(mel, lengths, w), lengths_out
    x = torch.cat([_stages_nhwc(mel[i: i + 1], None if lengths is None else lengths[i: i + 1], w) for i in range(b)])
    return x, lengths_out
