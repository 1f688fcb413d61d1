"""The engine against live NeMo, on random models whose every parameter and buffer is randomised.

For each model variant (biases on/off, LayerNorm/BatchNorm conv norm, xscaling on/off, tied/untied position biases,
1/2 LSTM layers, an odd head size, a hybrid RNN-T + CTC model), every lookahead and several synthetic voices:
- NeMo's own cache-aware streaming (CacheAwareStreamingAudioBuffer + conformer_stream_step, driven as NeMo's
  example script drives them) gives tokens, timestamps and each step's encoder output;
- the engine streams the same audio, pushed in random-sized pieces, all utterances and lookaheads as concurrent
  streams of one engine;
- tokens and timestamps must be identical and every step's encoder output within 1e-5 relative.
The offline forward (whole utterance, chunked_limited attention) is held to NeMo's offline encoder as well.
"""
import random

import pytest
import torch

import models
import nemotron_parity.nemo_harness as H
from nemotron_engine.config import SAMPLING_FRAMES
from nemotron_engine.engine import Engine
from nemotron_engine.encoder import encoder_offline
from nemotron_engine.features import whole_file_features
from tolerances import assert_close

# every variant with two independent random draws
CASES = [(v.id, seed) for v in H.VARIANTS for seed in (1234, 77)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{v}-{s}" for v, s in CASES])
def variant(request):
    vid, seed = request.param
    model, nemo_path, out = models.nemo_model(vid, seed)
    return f"{vid}-{seed}", model, out


def _nemo_streams(model, cfg):
    """NeMo streaming of every corpus utterance at every lookahead: {(utt, R): StreamResult}."""
    return {(u, r): H.nemo_stream(model, audio, [cfg.left_context, r])
            for u, (_, audio) in enumerate(models.corpus()) for r in cfg.lookaheads}


def test_streaming_parity(variant):
    vid, model, out = variant
    engine = Engine(out, keep_encoder_outputs=True)
    cfg = engine.cfg
    ref = _nemo_streams(model, cfg)
    rng = random.Random(0)
    streams = {}
    feeds = {}
    for (u, r) in ref:
        streams[(u, r)] = engine.open_stream((r + 1) * cfg.frame_ms)
        feeds[(u, r)] = models.corpus()[u][1]
    pos = {k: 0 for k in streams}
    # push random-sized pieces (1 sample .. 0.3 s) to every stream, stepping the engine in between
    while engine.pending():
        for k, s in streams.items():
            if not s.input_done:
                n = rng.choice([1, 17, 160, 1234, 4800])
                s.push(feeds[k][pos[k]: pos[k] + n])
                pos[k] += n
                if pos[k] >= len(feeds[k]):
                    s.finish()
        engine.step()
    emitting = 0
    for (u, r), s in streams.items():
        nemo = ref[(u, r)]
        res = s.result()
        where = f"{vid} utt{u} R={r}"
        assert res.final
        assert len(s.encoder_outputs) == len(nemo.step_encoded), f"{where}: step count"
        for i, (a, b) in enumerate(zip(s.encoder_outputs, nemo.step_encoded)):
            assert_close(f"{where} step {i} encoder output", b, a)
        assert res.tokens == nemo.tokens, f"{where}: tokens differ"
        assert res.timestamps_ms == [t * cfg.frame_ms for t in nemo.timestamps], f"{where}: timestamps differ"
        assert res.text == nemo.text, f"{where}: text differs"
        emitting += len(nemo.tokens) > 0
    # the calibrated model must make this a test of decoding, not of silence (it is calibrated at the default
    # lookahead; other lookaheads see other encoder outputs and may emit less)
    assert emitting >= 0.75 * len(streams), f"only {emitting} of {len(streams)} streams emitted tokens"


def test_offline_parity(variant):
    vid, model, out = variant
    engine = Engine(out)
    cfg = engine.cfg
    for u, (_, audio) in enumerate(models.corpus()[:2]):
        for r in cfg.lookaheads:
            nemo = H.nemo_offline(model, audio, [cfg.left_context, r])
            feats = whole_file_features(cfg, engine.model.frontend, torch.from_numpy(audio))
            assert_close(f"{vid} utt{u} features", nemo.features.T, feats)
            enc, n = encoder_offline(engine.model, engine.ops, feats.unsqueeze(0),
                                     torch.tensor([nemo.feature_length]), r)
            assert_close(f"{vid} utt{u} R={r} offline encoder", nemo.encoded, enc[0, : int(n[0])])


def test_features_any_piece_size(variant):
    """The engine's features, audio pushed in pieces of any size, equal the whole-file features bit for bit."""
    vid, model, out = variant
    engine = Engine(out, keep_encoder_outputs=True)
    audio = torch.from_numpy(models.corpus()[0][1])
    whole = whole_file_features(engine.cfg, engine.model.frontend, audio)
    for sizes in ([1], [159, 161], [7, 1000, 3], [len(audio)]):
        s = engine.open_stream(80)
        pos, i = 0, 0
        while pos < len(audio):
            n = sizes[i % len(sizes)]
            s.push(audio[pos: pos + n])
            pos += n
            i += 1
            if i % 50 == 0:
                engine.step()
        s.finish()
        for _ in engine.drain():
            pass
        fed = torch.cat(s.features)  # every frame the chunks fed (a tail too short for a frame is dropped)
        assert len(whole) - SAMPLING_FRAMES[1] < len(fed) <= len(whole)
        assert torch.equal(fed, whole[: len(fed)]), f"pieces {sizes}"
        engine.close(s)


@pytest.mark.parametrize("vid", ["nemotron_like", "hybrid"])
def test_continuous_batching_parity(vid):
    """Streams arrive at different steps, push random-sized pieces at their own pace, use different lookaheads
    and finish at different times, all in one engine; each equals NeMo's single-stream streaming of its audio.
    Slots freed by finished streams are reused by later ones."""
    model, _, out = models.nemo_model(vid)
    engine = Engine(out, max_streams=5, keep_encoder_outputs=True)
    cfg = engine.cfg
    rng = random.Random(7)
    corpus = models.corpus()
    plan = [(u, rng.choice(cfg.lookaheads), rng.randrange(0, 25)) for u in range(len(corpus)) for _ in range(2)]
    waiting = sorted(range(len(plan)), key=lambda i: plan[i][2])
    live, done, pos = {}, {}, {}
    step = 0
    while waiting or live:
        while waiting and plan[waiting[0]][2] <= step and len(live) < 5:
            i = waiting.pop(0)
            u, r, _ = plan[i]
            live[i] = engine.open_stream((r + 1) * cfg.frame_ms)
            pos[i] = 0
        for i, s in live.items():
            audio = corpus[plan[i][0]][1]
            if not s.input_done and rng.random() < 0.8:  # some streams skip a step: their own pace
                n = rng.choice([80, 700, 2560, 6000])
                s.push(audio[pos[i]: pos[i] + n])
                pos[i] += n
                if pos[i] >= len(audio):
                    s.finish()
        engine.step()
        for i in [i for i, s in live.items() if s.done]:
            done[i] = (live[i].result(), live[i].encoder_outputs)
            engine.close(live.pop(i))
        step += 1
    assert len(done) == len(plan)
    for i, (u, r, _) in enumerate(plan):
        nemo = H.nemo_stream(model, corpus[u][1], [cfg.left_context, r])
        res, enc = done[i]
        assert res.tokens == nemo.tokens, f"stream {i} (utt{u} R={r}) tokens"
        assert res.timestamps_ms == [t * cfg.frame_ms for t in nemo.timestamps]
        assert len(enc) == len(nemo.step_encoded)
        for k, (a, b) in enumerate(zip(enc, nemo.step_encoded)):
            assert_close(f"stream {i} step {k}", b, a)


def test_batch_invariance():
    """A stream's tokens and timestamps do not depend on which other streams share its steps."""
    _, _, out = models.nemo_model("odd_heads")
    engine = Engine(out)
    corpus = models.corpus()
    target = corpus[2][1]
    alone = engine.transcribe(target, lookahead_ms=160)
    for crowd in ([0], [0, 1, 3, 4, 5], [5, 5, 5]):
        others = [engine.open_stream(160) for _ in crowd]
        s = engine.open_stream(160)
        for o, u in zip(others, crowd):
            o.push(corpus[u][1])
            o.finish()
        s.push(target)
        s.finish()
        while engine.pending():
            engine.step()
        assert s.result().tokens == alone.tokens and s.result().timestamps_ms == alone.timestamps_ms, crowd
        for o in others + [s]:
            engine.close(o)
