"""The serving core: utterances (finalize, endpointing) against NeMo, bounded queues, incremental text, pushes from
other threads.

Each segment must equal NeMo's own cache-aware streaming of that segment's audio alone (tokens, and timestamps
shifted by the segment's start), whatever the cut points, lookaheads and piece sizes.
"""
import random
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

import models
import nemotron_parity.nemo_harness as H
from nemotron_engine.cli import demo_model_dir
from nemotron_engine.engine import Engine
from nemotron_parity.train_demo import DEMO

DEMO_DIR = demo_model_dir()


def _nemo_segment(model, cfg, audio, r):
    ref = H.nemo_stream(model, audio, [cfg.left_context, r])
    return ref.tokens, [t * cfg.frame_ms for t in ref.timestamps]


@pytest.fixture(scope="module")
def nemotron_like():
    return models.nemo_model("nemotron_like")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The shipped demo model (trained: silence decodes to blanks, so endpointing has pauses to find), its NeMo
    twin, and its example recordings."""
    examples = [sf.read(p, dtype="float32")[0] for p in sorted((DEMO_DIR / "examples").glob("*.wav"))]
    return H.nemo_from_engine(DEMO_DIR, DEMO, tmp_path_factory.mktemp("demo-nemo")), examples


@pytest.mark.parametrize("lookahead_ms", [80, 160, 1120])
def test_finalize_segments_equal_nemo(nemotron_like, lookahead_ms):
    """A stream of three utterances back to back, cut by finalize() at three kinds of point (a chunk boundary, the
    middle of a chunk, one sample before the next frame completes); each segment is NeMo's streaming of its audio."""
    model, _, out = nemotron_like
    engine = Engine(out)
    cfg = engine.cfg
    r = cfg.lookahead_from_ms(lookahead_ms)
    corpus = [a for _, a in models.corpus()]
    parts = [corpus[1][:20000], corpus[2], corpus[0][:12345 + 160 * 8 * (r + 1)]]
    rng = random.Random(lookahead_ms)
    s = engine.open_stream(lookahead_ms)
    segments = []
    for audio in parts:
        pos = 0
        while pos < len(audio):
            n = rng.choice([160, 999, 4000])
            s.push(audio[pos: pos + n])
            pos += n
            segments += [u.segment for u in engine.step() if u.segment is not None]
        s.finalize()
    s.finish()
    segments += [u.segment for u in engine.drain() if u.segment is not None]
    assert len(segments) == 3
    start_ms = 0.0
    for k, (seg, audio) in enumerate(zip(segments, parts)):
        tokens, stamps = _nemo_segment(model, cfg, audio, r)
        assert seg.final and seg.start_ms == start_ms, k
        assert seg.end_ms == start_ms + len(audio) * 1000 / cfg.sample_rate
        assert seg.tokens == tokens, f"segment {k}"
        assert seg.timestamps_ms == [int(start_ms) + t for t in stamps], f"segment {k}"
        assert seg.text == engine.tokenizer.decode(tokens)
        start_ms = seg.end_ms
    assert any(seg.tokens for seg in segments)
    assert s.done and s.result().tokens == segments[-1].tokens


def test_endpointing_segments_equal_nemo(demo):
    """Three sentences with 1 s pauses, as one stream: with endpoint_ms, an utterance closes once a token is followed
    by that much audio without one, and every segment is NeMo's streaming of its audio. Off by default: one
    utterance, NeMo's streaming of the whole."""
    model, examples = demo
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([examples[0], gap, examples[1], gap, examples[2]])
    engine = Engine(DEMO_DIR, endpoint_ms=480)
    cfg = engine.cfg
    for lookahead_ms in (160, 1120):
        r = cfg.lookahead_from_ms(lookahead_ms)
        s = engine.open_stream(lookahead_ms)
        s.push(audio)
        s.finish()
        segments = [u.segment for u in engine.drain() if u.segment is not None]
        assert len(segments) >= 3, [g.text for g in segments]
        for k, seg in enumerate(segments):
            lo, hi = round(seg.start_ms * 16), round(seg.end_ms * 16)
            tokens, stamps = _nemo_segment(model, cfg, audio[lo:hi], r)
            assert seg.tokens == tokens, f"R={r} segment {k} [{seg.start_ms}, {seg.end_ms}) ms"
            assert seg.timestamps_ms == [int(seg.start_ms) + t for t in stamps]
        assert segments[0].start_ms == 0 and segments[-1].end_ms == len(audio) / 16
        assert all(a.end_ms == b.start_ms for a, b in zip(segments, segments[1:]))
        engine.close(s)
    plain = Engine(DEMO_DIR).transcribe(audio, lookahead_ms=160)
    assert plain.tokens == _nemo_segment(model, cfg, audio, 1)[0]


def test_long_stream_stays_bounded(demo):
    """With endpointing, a long stream (a minute of sentences and pauses) hands its closed segments out: its open
    utterance (result(), tokens, text) stays as small as one sentence."""
    _, examples = demo
    gap = np.zeros(12000, np.float32)
    audio = np.concatenate([np.concatenate([examples[i % len(examples)], gap]) for i in range(20)])
    engine = Engine(DEMO_DIR, endpoint_ms=480, max_queued_s=2.0)
    one = max(len(engine.transcribe(e).tokens) for e in examples)
    s = engine.open_stream(1120)
    longest, segments, pos = 0, [], 0
    while pos < len(audio):
        n = min(s.room(), len(audio) - pos, 8000)
        s.push(audio[pos: pos + n])
        pos += n
        segments += [u.segment for u in engine.step() if u.segment is not None]
        longest = max(longest, len(s.tokens), len(s.result().tokens))
    s.finish()
    segments += [u.segment for u in engine.drain() if u.segment is not None]
    assert len([g for g in segments if g.tokens]) >= 20, [g.text for g in segments]  # a pause inside may cut too
    assert longest <= 2 * one  # at most a sentence and a part of the next (a pause the endpoint missed)
    assert all(a.end_ms == b.start_ms for a, b in zip(segments, segments[1:]))


def test_queue_is_bounded():
    out = models.nemo_model("nemotron_like")[2]
    engine = Engine(out, max_queued_s=1.0)
    s = engine.open_stream(80)
    room = s.room()
    assert 16000 <= room < 16000 + 20000
    s.push(np.zeros(room - 10, np.float32))
    with pytest.raises(RuntimeError, match=r"stream 0: .* s of audio already queued .* max_queued_s=1.0; step the engine"):
        s.push(np.zeros(11, np.float32))
    assert s.samples == room - 10  # the refused push left the stream as it was
    s.push(np.zeros(10, np.float32))
    for _ in range(3):
        engine.step()
    # 1 + 8 + 8 frames fed (a first chunk at 80 ms is one frame): the ring keeps from the next frame's window on
    assert s.room() == 17 * 160 - 256 - 1
    with pytest.raises(ValueError, match="max_queued_s must be > 0"):
        Engine(out, max_queued_s=0)
    # the smallest queue still holds a whole chunk's samples, and a signal many times the ring's length (its mirror
    # wrapping at every offset) streams as with the default queue
    tiny = Engine(out, max_queued_s=0.001)
    audio = np.concatenate([a for _, a in models.corpus()[:3]])
    assert tiny.transcribe(audio, 1120).tokens == Engine(out).transcribe(audio, 1120).tokens
    with pytest.raises(ValueError, match="endpoint_ms must be a positive multiple of 80 ms"):
        engine.open_stream(80, endpoint_ms=100)


def test_update_text_is_incremental(nemotron_like):
    """Each update carries only its new text; concatenated, the texts are the decoded tokens (the punctuation-spacing
    rule applied across update boundaries)."""
    _, _, out = nemotron_like
    engine = Engine(out)
    s = engine.open_stream(80)
    s.push(models.corpus()[5][1])
    s.finish()
    texts, tokens = [], []
    for u in engine.drain():
        texts.append(u.text)
        tokens += u.tokens
        assert bool(u.text) <= bool(u.tokens)
    assert tokens and "".join(texts) == engine.tokenizer.decode(tokens) == s.result().text
    tok = engine.tokenizer
    rng = random.Random(3)
    for _ in range(200):
        ids = [rng.randrange(1, tok.vocab_size) for _ in range(rng.randrange(1, 30))]
        cut = sorted(rng.sample(range(len(ids) + 1), min(3, len(ids) + 1)))
        pieces = [ids[a:b] for a, b in zip([0] + cut, cut + [len(ids)])]
        text, seen = "", []
        for p in pieces:
            text += tok.decode_delta(seen[-8:], p)
            seen += p
        assert text == tok.decode(ids), ids


def test_pushes_from_other_threads(nemotron_like):
    """Several threads push their streams' audio in random pieces while this thread steps the engine: every stream's
    tokens equal the sequential run's."""
    _, _, out = nemotron_like
    corpus = [a for _, a in models.corpus()]
    engine = Engine(out, max_queued_s=1.0)
    want = engine.transcribe_many(corpus, lookahead_ms=160)
    streams = [engine.open_stream(160) for _ in corpus]
    errors = []

    def feed(s, audio, seed):
        rng = random.Random(seed)
        pos = 0
        try:
            while pos < len(audio):
                n = min(rng.choice([7, 160, 3000]), s.room(), len(audio) - pos)
                if n:
                    s.push(audio[pos: pos + n])
                    pos += n
                else:  # the queue is full: wait for the stepping thread, as a live source would (no busy loop)
                    time.sleep(0.002)
            s.finish()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=feed, args=(s, a, i)) for i, (s, a) in enumerate(zip(streams, corpus))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) or engine.pending():
        engine.step()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [s.result().tokens for s in streams] == [w.tokens for w in want]


def test_push_many_equals_push(nemotron_like):
    """push_many (one packet per stream per call, every packet of the call the same length) from a feeding thread
    while this thread steps: every stream's tokens equal the sequential run's, with packets that wrap the ring and
    cross its mirror's end (a ring of one chunk's span, max_queued_s tiny), int16 packets among them."""
    _, _, out = nemotron_like
    corpus = [a for _, a in models.corpus()]
    want = Engine(out).transcribe_many(corpus, lookahead_ms=1120)
    engine = Engine(out, max_queued_s=0.001)
    streams = [engine.open_stream(1120) for _ in corpus]
    errors = []

    def feed():
        rng = random.Random(5)
        pos = [0] * len(corpus)
        try:
            while True:
                live = [i for i, a in enumerate(corpus) if pos[i] < len(a)]
                if not live:
                    return
                room = engine.rooms([streams[i] for i in live])
                n = min(rng.choice([1, 160, 1280, 5000]), int(room.min()))
                if n == 0:  # some queue is full: wait for the stepping thread
                    time.sleep(0.002)
                    continue
                go = [i for i in live if len(corpus[i]) - pos[i] >= n]
                packets = np.stack([corpus[i][pos[i]: pos[i] + n] for i in go]) if go else np.zeros((0, n))
                if rng.random() < 0.2:  # int16 samples take the scaled path (these are exact in float32)
                    packets = np.round(packets * 32768).astype(np.int16)
                    for k, i in enumerate(go):
                        corpus_i = corpus[i].copy()
                        corpus_i[pos[i]: pos[i] + n] = packets[k] / np.float32(32768)
                        corpus[i] = corpus_i
                engine.push_many([streams[i] for i in go], packets)
                for i in go:
                    pos[i] += n
                for i in live:
                    if i not in go:  # a tail shorter than this round's packets: alone
                        streams[i].push(corpus[i][pos[i]:])
                        pos[i] = len(corpus[i])
                    if pos[i] == len(corpus[i]) and not streams[i].input_done:
                        streams[i].finish()
        except Exception as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=feed)
    t.start()
    while t.is_alive() or (engine.pending() and not errors):
        engine.step()
    t.join()
    assert not errors, errors
    # int16 packets changed some samples (rounded to 1/32768): the reference is rerun where they did
    want = Engine(out).transcribe_many(corpus, lookahead_ms=1120)
    assert [s.result().tokens for s in streams] == [w.tokens for w in want]


def test_push_many_bad_input_writes_nothing(nemotron_like):
    """Each bad call of push_many raises an error naming the problem (and the stream), and no stream is written."""
    _, _, out = nemotron_like
    engine = Engine(out, max_queued_s=1.0)
    a, b, c = (engine.open_stream(80) for _ in range(3))
    ok = np.zeros((2, 100), np.float32)
    a.push(np.zeros(50, np.float32))

    def unchanged():
        assert (a.samples, b.samples, c.samples) == (50, 0, 0)

    with pytest.raises(ValueError, match=r"array \[B, N\] for B = 3 streams, got shape \(2, 100\)"):
        engine.push_many([a, b, c], ok)
    with pytest.raises(ValueError, match="one length"):
        engine.push_many([a, b], [np.zeros(3, np.float32), np.zeros(4, np.float32)])
    with pytest.raises(TypeError, match="int32"):
        engine.push_many([a, b], np.zeros((2, 100), np.int32))
    x = ok.copy()
    x[1, 37] = np.inf
    with pytest.raises(ValueError, match=rf"stream {b.id}: audio contains a non-finite sample \(inf\) at index 37"):
        engine.push_many([a, b], x)
    with pytest.raises(ValueError, match="given a stream twice"):
        engine.push_many([a, a], ok)
    with pytest.raises(ValueError, match="another engine"):
        engine.push_many([a, Engine(out).open_stream(80)], ok)
    with pytest.raises(RuntimeError, match=rf"stream {a.id}: 0.00 s of audio already queued .* nothing of this"):
        engine.push_many([b, a], np.zeros((2, a.room() + 1), np.float32))  # b has the room, a not
    unchanged()
    c.finish()
    with pytest.raises(RuntimeError, match=rf"stream {c.id}: push\(\) after finish"):
        engine.push_many([a, b, c], np.zeros((3, 10), np.float32))
    engine.close(b)
    with pytest.raises(RuntimeError, match=rf"stream {b.id} is closed"):
        engine.push_many([a, b], ok)
    assert (a.samples, c.samples) == (50, 0)
    engine.push_many([a], torch.ones(1, 10) / 2)  # a torch tensor is taken as push() takes it
    assert a.samples == 60 and list(engine.rooms([a])) == [a.room()]
    engine.push_many([], np.zeros((0, 10), np.float32))  # nothing to do
