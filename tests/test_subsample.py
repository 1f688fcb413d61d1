"""The CPU backend's channels-last subsampling (`cpu_ops.conv_stages_nhwc`, what the engine runs in fp32 on the
CPU, with the output product prepacked) against the reference (`reference.subsample`, module by module in NeMo's
order of operations), on fresh random weights and inputs.

fp32 within RTOL (they differ by the order of the sums only); masking with padded lengths; streams split into
several blocks; a stream's output bit for bit the same alone and in a batch.
"""
import pytest
import torch

from nemotron_engine import cpu_ops
from nemotron_engine.ops import CPU, TORCH
from nemotron_engine.reference import subsample as S
from tolerances import assert_close


def subsample_nhwc(mel, lengths, w):
    """The CPU backend's subsampling: channels-last conv stages, then the output product."""
    y, n = cpu_ops.conv_stages_nhwc(mel, lengths, w)
    return cpu_ops.linear(y, w, "out.weight", "out.bias"), n


def weights(c: int, n_mels: int, d: int, bias: bool) -> dict:
    f3 = n_mels
    for _ in range(3):
        f3 = f3 // 2 + 1
    w = {
        "conv0.weight": torch.randn(c, 1, 3, 3) * 0.3,
        "dw1.weight": torch.randn(c, 1, 3, 3) * 0.3,
        "pw1.weight": torch.randn(c, c, 1, 1) * c ** -0.5,
        "dw2.weight": torch.randn(c, 1, 3, 3) * 0.3,
        "pw2.weight": torch.randn(c, c, 1, 1) * c ** -0.5,
        "out.weight": torch.randn(d, c * f3) * (c * f3) ** -0.5,
    }
    for name in ("conv0", "dw1", "pw1", "dw2", "pw2", "out"):
        w[f"{name}.bias"] = torch.randn(w[f"{name}.weight"].shape[0]) * 0.2 if bias else \
            torch.zeros(w[f"{name}.weight"].shape[0])
    return w


@pytest.mark.parametrize("b,t,n_mels,c", [(1, 1, 128, 256), (3, 17, 128, 256), (5, 65, 80, 32), (17, 24, 20, 8)])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_nhwc_equals_nchw(b, t, n_mels, c, padded, bias):
    torch.manual_seed(b * 1000 + t)
    w = weights(c, n_mels, 48, bias)
    mel = torch.randn(b, t, n_mels)
    lengths = None
    if padded:  # stream 0 padded to half its frames, the others random
        lengths = torch.randint(0, t + 1, (b,))
        lengths[0] = t // 2
    ref, n_ref = S.subsample(mel, lengths, w)
    packed = dict(w)
    assert cpu_ops.pack_conv_products(packed) > 0  # the whole batch in one pass (the engine's form)
    for ww in (w, packed):
        out, n = subsample_nhwc(mel, lengths, ww)
        assert torch.equal(n, n_ref)
        assert_close("subsample_nhwc", ref, out)


def test_batch_invariance():
    """Each stream alone gives its rows of the batch bit for bit, with the products prepacked as the engine runs them
    (the whole batch in one pass: row-invariant products, oneDNN's depthwise kernel), at every batch size up to 40
    and in batches of 300, with and without padded streams, for the CPU backend's shapes (micro model, demo model,
    full size). Unpacked (one stream at a time) it holds trivially; it is checked too."""
    for c, n_mels, t in ((4, 128, 9), (64, 128, 25), (256, 128, 9), (16, 40, 33)):
        torch.manual_seed(c + t)
        w = weights(c, n_mels, 32, True)
        dense = dict(w)
        assert cpu_ops.pack_linears(w, ["out.weight"]) > 0 and cpu_ops.pack_conv_products(w) > 0
        for b in list(range(1, 41)) + [300]:
            if c == 256 and b not in (1, 2, 7, 40, 300):  # the full-size shape: a few sizes (time)
                continue
            mel = torch.randn(b, t, n_mels)
            lengths = torch.full((b,), t) if b % 3 else torch.randint(t // 2, t + 1, (b,))
            for form, ww in ((b == 7, dense), (True, w)):
                if not form:
                    continue
                batch, _ = cpu_ops.conv_stages_nhwc(mel, lengths, ww)
                alone = torch.cat([cpu_ops.conv_stages_nhwc(mel[i: i + 1], lengths[i: i + 1], ww)[0]
                                   for i in range(b)])
                assert torch.equal(batch, alone), (c, t, b)


def test_dispatch():
    """The CPU backend runs the channels-last form in fp32 and the reference in other dtypes; the torch backend
    always runs the reference."""
    w = weights(8, 20, 16, True)
    mel = torch.randn(2, 9, 20)
    assert torch.equal(CPU.conv_stages(mel, None, w)[0], cpu_ops.conv_stages_nhwc(mel, None, w)[0])
    assert torch.equal(TORCH.conv_stages(mel, None, w)[0], S.conv_stages(mel, None, w)[0])
    w64 = {k: v.double() for k, v in w.items()}
    assert torch.equal(CPU.conv_stages(mel.double(), None, w64)[0], S.conv_stages(mel.double(), None, w64)[0])
