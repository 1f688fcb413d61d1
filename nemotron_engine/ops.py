"""The op table: the encoder step (encoder.py) and the engine call ops by name; a backend binds each to one
implementation. Adding a backend (or a model variant's op) touches this table, not a copy of the step.

| op | `torch` (the reference) | `cpu` (cpu_ops.py) | `triton` (kernels/, csrc/) |
|---|---|---|---|
| linear | `reference.linear.linear` (F.linear) | prepacked oneDNN product | F.linear (cuBLAS) |
| layer_norm, add_layer_norm | F.layer_norm | F.layer_norm | `kernels/layernorm.py` |
| conv_stages (subsampling) | `reference.subsample.conv_stages` | `conv_stages_nhwc` (fp32) | `kernels/subsample.py` |
| attention (paged) | pool write + window gather + `rel_attention` | ... + `rel_attention_per_stream` | `kernels/attention.py` |
| conv (between the pointwise convs) | `reference.conv_module.glu_conv_norm` | the reference | `kernels/conv_module.py` |
| decode (greedy RNN-T) | `reference.decoder.greedy_decode` | the same on prepacked products | CUDA `_C.rnnt_greedy` |

Signatures (B streams, T chunk frames, D model width; `w` a weight dict of engine keys, `plan` the step's
`encoder.StepPlan`, `cache` the engine's `StreamCache`):
    linear(x, w, weight, bias) -> x @ w[weight]^T + w[bias]
    layer_norm(x, w, name, eps) -> LN(x) with w[name.weight], w[name.bias]
    add_layer_norm(x, y, alpha, w, name, eps) -> (res = x + alpha y, LN(res))
    conv_stages(mel [B, T_in, F], lengths [B], w) -> (y [B, T3, C * F3], lengths [B])
    attention(q, k, v [B, T, D], cache, layer, plan, pos, rel_lo, pos_bias_u, pos_bias_v) -> [B, T, D]; stores k, v
    conv(a [B, T, 2D], cache, layer, plan, w, norm_type, eps) -> [B, T, D]; rewrites cache.conv[layer, plan.slots]
    decode(model, enc [B, T, D], lengths [B], cache, slots [B], offsets [B]) -> (tokens, frames) per stream
    prepare(model): one-time weight preparation at load (the CPU backend prepacks its products)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import cpu_ops
from .reference import decoder as ref_decoder
from .reference.attention import rel_attention
from .reference.conv_module import glu_conv_norm
from .reference.linear import linear as ref_linear
from .reference.subsample import conv_stages as ref_conv_stages

BACKENDS = ("torch", "cpu", "triton")


@dataclass(frozen=True)
class Ops:
    name: str
    linear: Callable
    layer_norm: Callable
    add_layer_norm: Callable
    conv_stages: Callable
    attention: Callable
    conv: Callable
    decode: Callable
    prepare: Callable = lambda model: None


# ---- torch and cpu: the references, over the pool ----------------------------------------------------------------
def _layer_norm(x, w, name, eps):
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)


def _add_layer_norm(x, y, alpha, w, name, eps):
    res = x + alpha * y
    return res, _layer_norm(res, w, name, eps)


def _paged(attend):
    """A dense attention (rel_attention's signature) over the pool: the chunk's k, v are written at their frame
    positions, then the window of the C frames before the chunk and the chunk are read back in one gather."""

    def attention(q, k, v, cache, layer, plan, pos, rel_lo, pos_bias_u, pos_bias_v):
        C = plan.left_context
        # the rows of the window and the chunk, the same in every layer: located once per step
        idx = plan.memo.get("rows")
        if idx is None:
            idx = plan.memo["rows"] = cache.rows(plan.slots, plan.start - C, C + plan.t)  # [B, C + T]
        cache.write_at(layer, idx[:, C:], k, v)
        # [B, C + T, D] each, in the pool's workspace (overwritten by the next layer's gather)
        k_win, v_win = cache.gather_rows(layer, idx, reuse=True)
        return attend(q, k_win, v_win, pos, rel_lo, pos_bias_u, pos_bias_v, plan.masked)

    return attention


def _conv_pooled(a, cache, layer, plan, w, norm_type, eps):
    y, cache.conv[layer, plan.slots] = glu_conv_norm(a, cache.conv[layer, plan.slots], plan.pad, w, norm_type, eps)
    return y


def _decode_gathered(linear):
    """The reference greedy decoder over the streams' decoder state in the pool (gathered, then written back)."""

    def decode(model, enc, lengths, cache, slots, offsets):
        state = ref_decoder.DecoderState(cache.h[:, slots], cache.c[:, slots], cache.label[slots], cache.pred[slots])
        toks, stamps, state = ref_decoder.greedy_decode(model, enc, lengths, state, offsets, linear)
        cache.h[:, slots], cache.c[:, slots], cache.label[slots], cache.pred[slots] = \
            state.h, state.c, state.label, state.pred
        return toks, stamps

    return decode


def _cpu_conv_stages(mel, lengths, w):
    if mel.dtype == torch.float32:
        return cpu_ops.conv_stages_nhwc(mel, lengths, w)
    return ref_conv_stages(mel, lengths, w)  # the channels-last form is tuned (and tested) for fp32 only


TORCH = Ops("torch", ref_linear, _layer_norm, _add_layer_norm, ref_conv_stages, _paged(rel_attention), _conv_pooled,
            _decode_gathered(ref_linear))

CPU = Ops("cpu", cpu_ops.linear, _layer_norm, _add_layer_norm, _cpu_conv_stages,
          _paged(cpu_ops.rel_attention_per_stream), _conv_pooled, _decode_gathered(cpu_ops.linear),
          prepare=cpu_ops.pack_model)


# ---- triton ------------------------------------------------------------------------------------------------------
def triton_ops(device: torch.device, decoder_kernel: str = "blocked") -> Ops:
    """The Triton kernels for the encoder and, on CUDA, the CUDA greedy decoder of the compiled extension.

    On the CPU the kernels run under Triton's interpreter, which Triton enables for kernels imported with
    TRITON_INTERPRET=1 set (the tests do; there the decoder is the reference). decoder_kernel: the CUDA decoder,
    "blocked" (one block per stream, the one the engine runs) or "grid" (every block on every stream; reachable from
    the benchmarks only until it passes its GPU tests).
    """
    if decoder_kernel not in ("blocked", "grid"):
        raise ValueError(f"decoder_kernel must be 'blocked' or 'grid', got {decoder_kernel!r}")
    try:
        from .kernels import _common
        from .kernels.attention import paged_attention
        from .kernels.conv_module import glu_conv_norm as tri_glu_conv_norm
        from .kernels.layernorm import add_layer_norm, layer_norm
        from .kernels.subsample import conv_stages
    except ImportError as e:
        raise ValueError(f"backend='triton' needs the triton package ({e}); pip install triton") from e
    if device.type == "cuda":
        from . import _ext

        if _ext.load_extension() is None:
            raise ValueError(f"backend='triton' on {device} needs the CUDA extension nemotron_engine._C for its greedy "
                             f"decoder, which is not available: {_ext.extension_error()}. Build it with nvcc on PATH: "
                             "pip install -e . (or use backend='torch')")
        from .decode_cuda import greedy_decode_pool

        decode = functools.partial(greedy_decode_pool, kernel=decoder_kernel)
    elif device.type == "cpu":
        if not _common.interpreted():
            raise ValueError("backend='triton' on the CPU runs the kernels under Triton's interpreter: set "
                             "TRITON_INTERPRET=1 before nemotron_engine.kernels is first imported, or use a CUDA device")
        decode = _decode_gathered(ref_linear)
    else:
        raise ValueError(f"backend='triton' runs on CUDA devices (or the CPU under Triton's interpreter), not {device}")

    def attention(q, k, v, cache, layer, plan, pos, rel_lo, pos_bias_u, pos_bias_v):
        return paged_attention(q, k, v, cache.k[layer], cache.v[layer], cache.table, plan.slots, cache.frames,
                               plan.lengths, plan.lookahead, pos, rel_lo, pos_bias_u, pos_bias_v, plan.left_context)

    def conv(a, cache, layer, plan, w, norm_type, eps):
        return tri_glu_conv_norm(a, cache.conv, layer, plan.slots, plan.pad, w, norm_type, eps)

    return Ops(
        "triton", ref_linear,
        lambda x, w, name, eps: layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], eps),
        lambda x, y, alpha, w, name, eps: add_layer_norm(x, y, alpha, w[f"{name}.weight"], w[f"{name}.bias"], eps),
        conv_stages, attention, conv, decode)


def get_ops(backend: str | None, device: torch.device) -> Ops:
    """The op table of a named backend on a device; None picks the device's default (cpu on the CPU, triton on
    CUDA)."""
    if backend is None:
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend == "torch":
        return TORCH
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' runs on the CPU, not on {device}; use backend='triton' or 'torch'")
        return CPU
    if backend == "triton":
        return triton_ops(device)
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
