"""The CPU backend's prepacked products (nemotron_engine/cpu_ops.py) against F.linear, and the engine on them."""
import pytest
import torch
import torch.nn.functional as F

import models
from nemotron_engine import Engine
from nemotron_engine.cpu_ops import (CONV_LINEARS, CONV_PRODUCTS, JOINT_LINEARS, LAYER_LINEARS, PACKED, decoder_linears, linear,
                                     pack_linears, pack_model, packing_available)
from nemotron_engine.model import Model
from tolerances import assert_close


def test_packing_available():
    """The CPU engine's default path needs oneDNN; the torch builds we support (CPU and CUDA wheels) have it."""
    assert packing_available()


@pytest.mark.parametrize("shape", [(1, 1, 64), (3, 7, 64), (2, 14, 96), (17, 1, 64), (5, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_equals_f_linear(shape, bias):
    g = torch.Generator().manual_seed(sum(shape))
    d_in, d_out = shape[-1], 80
    w = {"w": torch.randn(d_out, d_in, generator=g) * d_in ** -0.5, "b": torch.randn(d_out, generator=g)}
    x = torch.randn(*shape, generator=g)
    ref = F.linear(x, w["w"], w["b"] if bias else None)
    dense_bytes = w["w"].numel() * 4
    assert pack_linears(w, ["w"]) == dense_bytes
    assert "w" not in w and "w" + PACKED in w  # the dense copy is dropped
    out = linear(x, w, "w", "b" if bias else None)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert_close("packed linear", ref, out)


def test_packed_rows_do_not_depend_on_the_batch():
    """Bitwise: a row's product is the same whatever other rows share the call (batch invariance by construction)."""
    g = torch.Generator().manual_seed(0)
    w = {"w": torch.randn(256, 128, generator=g), "b": torch.randn(256, generator=g)}
    pack_linears(w, ["w"])
    x = torch.randn(40, 128, generator=g)
    full = linear(x, w, "w", "b")
    for lo, hi in ((0, 1), (3, 5), (7, 21), (39, 40)):
        assert torch.equal(linear(x[lo:hi], w, "w", "b"), full[lo:hi]), (lo, hi)


def test_pack_skips_what_it_cannot_pack():
    w = {"bf16": torch.randn(8, 8).bfloat16(), "vec": torch.randn(8), "ok": torch.randn(8, 8)}
    assert pack_linears(w, ["bf16", "vec", "ok", "absent"]) == 8 * 8 * 4
    assert set(w) == {"bf16", "vec", "ok" + PACKED}


def test_model_packs_on_cpu_fp32_only():
    out = models.nemo_model("odd_heads")[2]
    dense = Model.load(out)
    packed = Model.load(out)
    assert pack_model(packed) == packed.packed_bytes
    assert dense.packed_bytes == 0 and packed.packed_bytes > 0
    lw = packed.layers[0]
    assert "att.wq" not in lw and "att.wq" + PACKED in lw and "pw1.weight" + PACKED in lw["conv"]
    assert "conv.pw1.weight" not in lw and not any(k.endswith(".att.wq") for k in packed.w)
    # the decoder's per-symbol products too, and no dense copy of any packed weight is left under any name
    assert "lstm.0.w_ih" + PACKED in packed.dec and "out.weight" + PACKED in packed.joint
    products = {f"layers.{i}.{n}" for i in range(dense.cfg.n_layers) for n in LAYER_LINEARS}
    products |= {f"layers.{i}.conv.{n}" for i in range(dense.cfg.n_layers) for n in CONV_LINEARS}
    products |= {"subsample.out.weight"} | {f"joint.{n}" for n in JOINT_LINEARS}
    products |= {f"decoder.{n}" for n in decoder_linears(dense.cfg)}
    assert products <= set(dense.w) and not products & set(packed.w), sorted(products & set(packed.w))
    # the subsampling's conv products, packed as matrices beside their (small) 4-D weights
    convs = {f"subsample.{n}.weight" for n in CONV_PRODUCTS}
    assert all(f"{n}.matrix" + PACKED in packed.sub for n in CONV_PRODUCTS) and convs <= set(packed.w)
    assert packed.packed_bytes == sum(dense.w[k].numel() * 4 for k in products | convs)
    bf16 = Model.load(out, dtype=torch.bfloat16)
    assert pack_model(bf16) == 0 and bf16.packed_bytes == 0


def test_engine_packed_equals_dense():
    """The default CPU engine (backend "cpu": prepacked, channels-last subsampling, attention per stream) against
    the plain reference ops (backend "torch"): the same tokens and timestamps, every step's encoder output within
    the fp32 tolerance (they differ by rounding only)."""
    out = models.nemo_model("odd_heads")[2]
    audio = models.corpus()[1][1]
    results = {}
    for packed in (False, True):
        engine = Engine(out, backend="cpu" if packed else "torch", keep_encoder_outputs=True)
        assert (engine.model.packed_bytes > 0) == packed
        s = engine.open_stream(lookahead_ms=80)
        s.push(audio)
        s.finish()
        while engine.pending():
            engine.step()
        results[packed] = (s.result(), s.encoder_outputs)
    (a, ea), (b, eb) = results[False], results[True]
    assert a.tokens and a.tokens == b.tokens and a.timestamps_ms == b.timestamps_ms
    assert len(ea) == len(eb)
    for i, (x, y) in enumerate(zip(ea, eb)):
        assert_close(f"step {i}", x, y)
    assert Engine(out).model.packed_bytes > 0  # the CPU default
