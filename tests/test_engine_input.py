"""Engine input checks: bad input raises an error naming the problem and the value; other streams go on."""
import numpy as np
import pytest
import torch

import models
from nemotron_engine.engine import Engine


@pytest.fixture(scope="module")
def engine():
    return Engine(models.nemo_model("nemotron_like")[2])


def test_bad_input_is_named_and_harms_no_one(engine):
    audio = models.corpus()[0][1]
    want = engine.transcribe(audio).tokens
    good = engine.open_stream()
    bad = engine.open_stream()
    good.push(audio[:8000])
    with pytest.raises(TypeError, match="int32"):
        bad.push(np.zeros(100, dtype=np.int32))
    with pytest.raises(ValueError, match=r"shape \[N\], got shape \(2, 50\)"):
        bad.push(np.zeros((2, 50), dtype=np.float32))
    with pytest.raises(ValueError, match="22050 Hz"):
        bad.push(np.zeros(100, dtype=np.float32), sample_rate=22050)
    x = np.zeros(100, dtype=np.float32)
    x[37] = np.nan
    with pytest.raises(ValueError, match=r"non-finite sample \(nan\) at index 37"):
        bad.push(x)
    x[37] = np.inf
    with pytest.raises(ValueError, match=r"\(inf\) at index 37"):
        bad.push(torch.from_numpy(x))
    with pytest.raises(TypeError, match="list"):
        bad.push([0.0, 0.1])
    with pytest.raises(ValueError, match="lookahead 100 ms"):
        engine.open_stream(lookahead_ms=100)
    bad.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        bad.push(np.zeros(10, dtype=np.float32))
    engine.close(bad)
    with pytest.raises(RuntimeError, match="closed"):
        bad.push(np.zeros(10, dtype=np.float32))
    good.push(audio[8000:])
    good.finish()
    while not good.done:
        engine.step()
    assert good.result().tokens == want


def test_int16_and_float32_agree(engine):
    audio = models.corpus()[1][1]
    pcm16 = np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)
    assert engine.transcribe(pcm16).tokens == engine.transcribe(pcm16.astype(np.float32) / 32768).tokens


def test_more_streams_than_the_budget():
    out = models.nemo_model("nemotron_like")[2]
    audio = models.corpus()[0][1]
    engine = Engine(out, max_streams=2)
    want = engine.transcribe(audio).tokens
    a = engine.open_stream()
    a.push(audio[:20000])
    b = engine.open_stream()
    with pytest.raises(RuntimeError, match=r"all 2 are in use \(max_streams=2\)"):
        engine.open_stream()
    engine.step()
    engine.close(b)
    c = engine.open_stream()  # the freed slot is reused
    a.push(audio[20000:])
    a.finish()
    while not a.done:
        engine.step()
    assert a.result().tokens == want
    engine.close(c)


def test_memory_report_and_budget():
    out = models.nemo_model("nemotron_like")[2]
    rep = Engine(out, max_streams=3).memory_report()
    assert rep.max_streams == 3 and rep.pool_bytes == 3 * rep.bytes_per_stream
    budget = 10 * rep.bytes_per_stream + 5
    assert Engine(out, memory_budget=budget).memory_report().max_streams == 10
    with pytest.raises(ValueError, match="holds no stream"):
        Engine(out, memory_budget=100)


def test_context_managers_and_drain():
    out = models.nemo_model("nemotron_like")[2]
    audio = models.corpus()[3][1]
    with Engine(out, max_streams=2) as engine:
        want = engine.transcribe(audio, lookahead_ms=560)
        with engine.open_stream(lookahead_ms=560) as s:
            s.push(audio)
            s.finish()
            updates = list(engine.drain())
            assert updates[-1].final and updates[-1].stream is s
            assert [t for u in updates for t in u.tokens] == want.tokens == s.result().tokens
        assert engine.memory_report().max_streams == 2 and not engine.streams
        other = engine.open_stream()
    assert other.closed and not engine.streams


def test_transcribe_many_equals_one_by_one(engine):
    """Several signals batched into the same steps give each its own transcript; the streams are closed after."""
    audio = [a for _, a in models.corpus()[:3]]
    before = set(engine.streams)  # the module's engine may hold streams of earlier tests
    results = engine.transcribe_many(audio, lookahead_ms=160)
    assert set(engine.streams) == before
    assert [r.tokens for r in results] == [engine.transcribe(a, lookahead_ms=160).tokens for a in audio]
    assert all(r.final for r in results) and any(r.tokens for r in results)


def test_transcribe_many_leaves_other_streams_to_their_owner():
    """A second, independent stream open in the same engine is not stepped by transcribe_many: none of its updates
    is lost, and its owner's drain() yields them all, the final one included, with its transcript unchanged."""
    out = models.nemo_model("nemotron_like")[2]
    corpus = [a for _, a in models.corpus()]
    engine = Engine(out, max_streams=4)
    want = engine.transcribe(corpus[0], lookahead_ms=80)
    other = engine.open_stream(lookahead_ms=80)
    other.push(corpus[0])
    other.finish()
    results = engine.transcribe_many(corpus[1:3], lookahead_ms=80)
    assert all(r.final for r in results)
    assert other.result().tokens == [] and not other.done  # not stepped by someone else's call
    updates = list(engine.drain())
    assert updates and all(u.stream is other for u in updates)
    assert updates[-1].final and sum(u.final for u in updates) == 1
    assert [t for u in updates for t in u.tokens] == want.tokens == other.result().tokens and want.tokens
