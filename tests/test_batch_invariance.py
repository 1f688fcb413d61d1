"""Batch invariance, bit for bit, on the CPU backend: a stream's numbers do not depend on which streams share its
steps.

The token-level check in test_parity.py can miss a break: tokens only change when a near tie flips, and the small
parity models rarely have one. These tests compare the floats themselves. The attention is checked at Nemotron's
head shape (8 x 128, a 70-frame cache), where MKL picks different kernels for different row counts; the engine is
checked end to end (every step's encoder output) with the target stream alone, in a batch of 3 and in one of 17.
"""
import pytest
import torch

import models
from nemotron_engine.engine import Engine
from nemotron_engine.cpu_ops import rel_attention_per_stream
from nemotron_engine.reference.attention import rel_attention
from tolerances import assert_close


def _attention_inputs(b: int, t: int, h: int, dh: int, cached: int, p_masked: float):
    """rel_attention's arguments: random q [B, T, D], k and v [B, cached + T, D], a position table covering a
    14-frame lookahead, random position biases and a random mask."""
    d, n = h * dh, cached + t
    rel_lo = -(cached + 14)
    pos = torch.randn(h, 2 * (cached + 14) + 1, dh)
    q, k, v = torch.randn(b, t, d), torch.randn(b, n, d), torch.randn(b, n, d)
    u, w = torch.randn(h, dh), torch.randn(h, dh)
    return q, k, v, pos, rel_lo, u, w, torch.rand(b, t, n) < p_masked


@pytest.mark.parametrize("t", [1, 2, 7, 14])
@pytest.mark.parametrize("b", [3, 17])
def test_rel_attention_rows_do_not_depend_on_the_batch(b, t):
    torch.manual_seed(100 * b + t)
    q, k, v, pos, rel_lo, u, w, masked = _attention_inputs(b, t, h=8, dh=128, cached=70, p_masked=0.2)
    batch = rel_attention_per_stream(q, k, v, pos, rel_lo, u, w, masked)
    for i in range(b):
        s = slice(i, i + 1)
        alone = rel_attention_per_stream(q[s], k[s], v[s], pos, rel_lo, u, w, masked[s])
        assert torch.equal(batch[s], alone), f"stream {i} of {b} (T={t})"


def _stream(engine: Engine, audio, lookahead_ms: int):
    s = engine.open_stream(lookahead_ms)
    s.push(audio)
    s.finish()
    return s


@pytest.mark.parametrize("lookahead_ms", [80, 560])
def test_engine_encoder_outputs_do_not_depend_on_the_batch(lookahead_ms):
    _, _, out = models.nemo_model("nemotron_like")
    engine = Engine(out, keep_encoder_outputs=True)
    corpus = [a for _, a in models.corpus()]
    target = corpus[2]
    s = _stream(engine, target, lookahead_ms)
    while engine.pending():
        engine.step()
    alone = (s.result().tokens, [e.clone() for e in s.encoder_outputs])
    engine.close(s)
    for crowd in (2, 16):
        # the others start with the target, each on another utterance (different lengths and cache fills)
        others = [_stream(engine, corpus[(3 + j) % len(corpus)], lookahead_ms) for j in range(crowd)]
        s = _stream(engine, target, lookahead_ms)
        while engine.pending():
            engine.step()
        assert s.result().tokens == alone[0]
        assert len(s.encoder_outputs) == len(alone[1])
        for k, (a, e) in enumerate(zip(alone[1], s.encoder_outputs)):
            assert torch.equal(a, e), f"batch of {crowd + 1}, step {k}: max diff {(a - e).abs().max().item():.3g}"
        for o in others + [s]:
            engine.close(o)


@pytest.mark.parametrize("b,t", [(1, 1), (3, 7), (5, 14)])
def test_rel_attention_batched_form_equals_per_stream(b, t):
    """The reference (one product over all streams and heads) computes the same attention as the CPU backend's."""
    torch.manual_seed(b + t)
    q, k, v, pos, rel_lo, u, w, masked = _attention_inputs(b, t, h=4, dh=32, cached=20, p_masked=0.3)
    masked[0, 0] = True  # a query that sees no key outputs zeros in both forms
    one = rel_attention_per_stream(q, k, v, pos, rel_lo, u, w, masked)
    many = rel_attention(q, k, v, pos, rel_lo, u, w, masked)
    assert_close("rel_attention batched", one, many)
    assert torch.equal(one[0, 0], torch.zeros(4 * 32)) and torch.equal(many[0, 0], torch.zeros(4 * 32))
