"""The graphed step's code path on the CPU (graphs.py; nothing is captured here, the padded static step runs eagerly):
a stream's encoder outputs and tokens are the same bits with graphs=True as without, whatever bucket its steps fall
in, and the padding rows touch no stream's state. Capture and replay themselves run on a GPU (scripts/gpu_check.sh)."""
import numpy as np
import pytest
import torch

import models
from nemotron_engine.engine import Engine
from nemotron_engine.graphs import StepGraphs, buckets


def test_buckets_pad_by_at_most_a_third():
    assert buckets(1) == [1]
    assert buckets(5) == [1, 2, 3, 4, 5]
    assert buckets(64)[-1] == 64 and buckets(100)[-1] == 100
    for m in (1, 7, 64, 100, 2048):
        bs = buckets(m)
        assert bs == sorted(set(bs)) and bs[0] == 1 and bs[-1] == m
        for b in range(1, m + 1):
            padded = next(x for x in bs if x >= b)
            assert padded <= max(b + b // 2, b + 1), (m, b, padded)


def _run(engine, audios, lookaheads, packets_ms=None):
    """Every audio its own stream (lookaheads cycled), pushed whole or in packets between steps -> (tokens, encoder
    outputs) per stream."""
    streams = [engine.open_stream(lookaheads[i % len(lookaheads)]) for i in range(len(audios))]
    if packets_ms is None:
        for s, a in zip(streams, audios):
            s.push(a)
            s.finish()
        while engine.pending():
            engine.step()
    else:
        n = 16 * packets_ms
        # stagger: stream i starts i packets late, so the steps hold changing sets of streams (changing buckets)
        at = [-i * n for i in range(len(audios))]
        while engine.pending():
            for i, (s, a) in enumerate(zip(streams, audios)):
                if s.input_done:
                    continue
                if at[i] >= 0:
                    s.push(a[at[i]: at[i] + n])
                at[i] += n
                if at[i] >= len(a):
                    s.finish()
            engine.step()
    out = [(s.result().tokens, [e.clone() for e in s.encoder_outputs]) for s in streams]
    for s in streams:
        engine.close(s)
    return out


@pytest.mark.parametrize("packets_ms", [None, 80])
def test_graphed_step_equals_eager_step_bit_for_bit(packets_ms):
    _, _, out = models.nemo_model("nemotron_like")
    audios = [a for _, a in models.corpus()][:5]
    lookaheads = [80, 560, 1120]
    eager = _run(Engine(out, max_streams=7, keep_encoder_outputs=True), audios, lookaheads, packets_ms)
    engine = Engine(out, max_streams=7, keep_encoder_outputs=True, graphs=True)
    rep = engine.graph_report()
    assert rep["captured"] is False and rep["buckets"] == [1, 2, 3, 4, 6, 7]
    assert rep["graphs"] == len(rep["buckets"]) * len(engine.cfg.lookaheads)
    graphed = _run(engine, audios, lookaheads, packets_ms)
    assert engine.graph_report()["replays"] > 0
    for i, ((tok_e, enc_e), (tok_g, enc_g)) in enumerate(zip(eager, graphed)):
        assert tok_g == tok_e, f"stream {i}"
        assert len(enc_g) == len(enc_e)
        for k, (a, b) in enumerate(zip(enc_e, enc_g)):
            assert torch.equal(a, b), f"stream {i}, step {k}: max diff {(a - b).abs().max().item():.3g}"


def test_padding_rows_write_only_the_scratch_slot():
    _, _, out = models.nemo_model("nemotron_like")
    engine = Engine(out, max_streams=8, graphs=True)
    cache = engine.cache
    assert cache.scratch == 8 and cache.free_slots == 8
    assert set(cache.pages_of(cache.scratch)).isdisjoint(range(cache.n_pages))
    idle = engine.open_stream(80)  # open but never stepped: its state must stay as open_stream left it
    state = lambda: [t[:, idle.slot].clone() for t in (cache.conv, cache.h, cache.c)] + \
        [cache.k[:, cache.pages_of(idle.slot)].clone(), cache.frames[idle.slot].clone()]  # noqa: E731
    before = state()
    a = [a for _, a in models.corpus()][0]
    # five streams of different lengths: steps of 5 (padded to 6), then 4, 3 (no padding), 2, 1
    live = [engine.open_stream(80) for _ in range(5)]
    for j, s in enumerate(live):
        s.push(a[: len(a) * (j + 1) // 5])
        s.finish()
    while any(not s.done for s in live):
        engine.step(streams=live)
    for x, y in zip(before, state()):
        assert torch.equal(x, y)
    assert int(cache.frames[cache.scratch]) > 0  # the padding did run, on the scratch slot
    assert engine.memory_report().max_streams == 8


def test_capture_needs_cuda():
    _, _, out = models.nemo_model("nemotron_like")
    engine = Engine(out, max_streams=2, graphs=True)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        StepGraphs(engine, capture=True)
    plain = Engine(out, max_streams=2)
    with pytest.raises(ValueError, match="scratch slot"):
        StepGraphs(plain)
    assert plain.graph_report() is None
    assert np.all(plain.cache.frames.numpy() == 0)
