"""The model family against live NeMo: prompt-conditioned checkpoints (NeMo's EncDecRNNTBPEModelWithPrompt and
EncDecHybridRNNTCTCBPEModelWithPrompt, the architecture of Nemotron 3.5 ASR Streaming) and end-of-utterance models
(EncDecRNNTBPEEOUModel), on small random models with the distinguishing features: left context 56 with five
lookaheads (80 .. 1120 ms), a 1200-piece vocabulary (more classes than Nemotron's 1025), a language prompt of 8 or
7 one-hot positions, and an <EOU> token calibrated to be emitted mid-stream.

- Prompt models: streams of every lookahead and of different languages share one engine's steps; each must equal
  NeMo streaming it alone with its language set (`set_inference_prompt`): tokens and timestamps identical, every
  step's encoder output and the joint's input (after the prompt MLP) within 1e-5. The same audio in two languages
  must decode differently in NeMo, so a language the engine ignored or mixed up would fail.
- EOU models: an emitted <EOU> closes the open segment; the stream's state carries on, so the segments' tokens put
  together equal NeMo's streaming of the whole audio, and no text holds <EOU>/<EOB>. With eou_reset=True each
  segment equals NeMo's streaming of its own audio (the reset of finalize()).
"""
import random

import pytest
import torch

import models
import nemotron_parity.nemo_harness as H
from nemotron_engine.engine import Engine
from tolerances import assert_close

# the first 2.5 s of three voices keep each model's NeMo runs to seconds
SECONDS = 2.5
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _utts(n=3):
    return [audio[: int(SECONDS * 16000)] for _, audio in models.corpus()[:n]]


def _push_all(engine, streams, audio, seed=0):
    """Push each stream's audio in random-sized pieces, stepping between rounds, until every stream is final ->
    the updates of every step."""
    rng = random.Random(seed)
    pos = {k: 0 for k in streams}
    updates = []
    while engine.pending():
        for k, s in streams.items():
            if not s.input_done:
                n = rng.choice([1, 160, 1234, 4800])
                s.push(audio[k][pos[k]: pos[k] + n])
                pos[k] += n
                if pos[k] >= len(audio[k]):
                    s.finish()
        updates += engine.step()
    return updates


@pytest.mark.parametrize("vid", ["prompt_rnnt", "prompt_hybrid"])
def test_prompt_streams_in_one_batch_equal_nemo(vid):
    model, _, out = models.nemo_model(vid)
    engine = Engine(out, keep_encoder_outputs=True)
    cfg = engine.cfg
    assert cfg.left_context == 56 and len(cfg.lookaheads) == 5
    langs = sorted(cfg.prompt_dictionary)
    utts = _utts()
    # every lookahead; per lookahead one utterance in two languages (ten streams, every language, in one batch)
    plan = {}
    for i, r in enumerate(cfg.lookaheads):
        u = i % len(utts)
        plan[(r, u, langs[i % len(langs)])] = None
        plan[(r, u, langs[(i + 1) % len(langs)])] = None
    streams = {k: engine.open_stream((k[0] + 1) * cfg.frame_ms, language=k[2]) for k in plan}
    _push_all(engine, streams, {k: utts[k[1]] for k in plan})
    refs = {}
    for (r, u, lang), s in streams.items():
        ref = refs[(r, u, lang)] = H.nemo_stream(model, utts[u], [cfg.left_context, r], language=lang)
        where = f"{vid} utt{u} R={r} {lang}"
        res = s.result()
        assert res.final and len(s.encoder_outputs) == len(ref.step_encoded), f"{where}: step count"
        for i, (a, b) in enumerate(zip(s.encoder_outputs, ref.step_encoded)):
            assert_close(f"{where} step {i} encoder output", b, a)
        for i, (a, b) in enumerate(zip(s.joint_inputs, ref.step_joint_input)):
            assert_close(f"{where} step {i} joint input (after the prompt)", b, a)
        assert res.tokens == ref.tokens, f"{where}: tokens differ"
        assert res.timestamps_ms == [t * cfg.frame_ms for t in ref.timestamps], f"{where}: timestamps differ"
        assert res.text == ref.text, f"{where}: text differs"
        assert ref.tokens, f"{where}: NeMo emitted nothing; the model must emit for this to test decoding"
    # the language must matter, or a stream given another stream's prompt would pass: per lookahead, the same
    # utterance in two languages
    pairs = [[v for k, v in refs.items() if k[:2] == (r, i % len(utts))] for i, r in enumerate(cfg.lookaheads)]
    differ = sum(a.tokens != b.tokens for a, b in pairs)
    assert differ >= 4, f"only {differ} of 5 same-audio language pairs decode differently in NeMo"


def test_prompt_triton_path_matches_nemo():
    """The Triton path (compiled on CUDA, under Triton's interpreter on the CPU; tests/conftest.py) at left context
    56: two streams of two lookaheads and languages in one batch, 1.2 s each (the interpreter runs every program in
    numpy; R = 1 takes eight steps, the rows before the stream's start masked in the first ones)."""
    model, _, out = models.nemo_model("prompt_rnnt")
    engine = Engine(out, device=DEVICE, backend="triton", keep_encoder_outputs=True)
    cfg = engine.cfg
    audio = _utts(1)[0][:19200]
    streams = {(r, lang): engine.open_stream((r + 1) * cfg.frame_ms, language=lang)
               for r, lang in ((max(cfg.lookaheads), "de-DE"), (1, "fr-FR"))}
    for s in streams.values():
        s.push(audio)
        s.finish()
    for _ in engine.drain():
        pass
    for (r, lang), s in streams.items():
        ref = H.nemo_stream(model, audio, [cfg.left_context, r], language=lang)
        where = f"prompt_rnnt R={r} {lang} (triton)"
        assert len(s.encoder_outputs) == len(ref.step_encoded), f"{where}: step count"
        for i, (a, b) in enumerate(zip(s.joint_inputs, ref.step_joint_input)):
            assert_close(f"{where} step {i} joint input", b, a)
        assert s.result().tokens == ref.tokens and ref.tokens, f"{where}: tokens differ (or none)"
        assert s.result().timestamps_ms == [t * cfg.frame_ms for t in ref.timestamps], f"{where}: timestamps"


def test_language_choice():
    _, _, out = models.nemo_model("prompt_rnnt")
    engine = Engine(out)
    with pytest.raises(ValueError, match=r"language 'xx-XX' is not in this model's prompt dictionary; choose one of "
                                         r"'auto', 'de-DE', 'en-US', 'es-ES', 'fr-FR'"):
        engine.open_stream(language="xx-XX")
    audio = _utts(1)[0]
    # omitted: the checkpoint's default ("auto", NeMo's prompt transcription default)
    assert engine.cfg.default_language == "auto"
    assert engine.transcribe(audio, 160).tokens == engine.transcribe(audio, 160, language="auto").tokens
    assert engine.open_stream().language == "auto"
    _, _, out = models.nemo_model("prompt_hybrid")
    with pytest.raises(ValueError, match=r"needs a language per stream: pass language= one of 'de-DE', 'en-US'"):
        Engine(out).open_stream()
    _, _, out = models.nemo_model("eou")
    with pytest.raises(ValueError, match=r"has no language prompt; open the stream without language="):
        Engine(out).open_stream(language="en-US")


def test_eou_closes_segments_state_carries_on():
    model, _, out = models.nemo_model("eou")
    engine = Engine(out, keep_encoder_outputs=True)
    cfg = engine.cfg
    ends = set(cfg.end_tokens)
    assert ends == {4, 5}
    utts = _utts()
    streams = {(r, u): engine.open_stream((r + 1) * cfg.frame_ms) for r in cfg.lookaheads for u in range(len(utts))}
    updates = _push_all(engine, streams, {k: utts[k[1]] for k in streams}, seed=3)
    mid_stream = 0
    for (r, u), s in streams.items():
        where = f"eou utt{u} R={r}"
        ref = H.nemo_stream(model, utts[u], [cfg.left_context, r])
        segs = [g for x in updates if x.stream is s for g in x.segments]
        assert segs and segs[-1].end_token is None and all(g.final for g in segs)
        assert [t for g in segs for t in g.tokens] == ref.tokens, f"{where}: tokens differ"
        assert [t for g in segs for t in g.timestamps_ms] == [t * cfg.frame_ms for t in ref.timestamps], where
        for a, b in zip(s.encoder_outputs, ref.step_encoded):
            assert_close(where, b, a)
        for k, g in enumerate(segs[:-1]):  # closed by an end token: its last token, nowhere else
            assert g.end_token in ends and g.tokens[-1] == g.end_token and not ends & set(g.tokens[:-1]), where
            assert g.end_ms == g.timestamps_ms[-1] + cfg.frame_ms and segs[k + 1].start_ms == g.end_ms
        assert not ends & set(segs[-1].tokens)
        for g in segs:
            assert "<EOU>" not in g.text and "<EOB>" not in g.text
            assert g.text == engine.tokenizer.decode([t for t in g.tokens if t not in ends]), where
        # <EOU> in the middle: a segment it closed is followed by one with tokens
        mid_stream += any(g.end_token == cfg.eou_id and any(h.tokens for h in segs[k + 1:])
                          for k, g in enumerate(segs[:-1]))
    assert mid_stream >= len(streams) // 2, f"<EOU> mid-stream in only {mid_stream} of {len(streams)} streams"


def test_eou_reset_segments_equal_nemo():
    """eou_reset=True: an emitted <EOU> ends the utterance where the decoded audio ends; each segment is NeMo's
    streaming of that segment's audio alone, from a fresh state."""
    model, _, out = models.nemo_model("eou")
    engine = Engine(out)
    cfg = engine.cfg
    audio = _utts(1)[0]
    for lookahead_ms in (160, 560):
        r = cfg.lookahead_from_ms(lookahead_ms)
        s = engine.open_stream(lookahead_ms, eou_reset=True)
        s.push(audio)
        s.finish()
        segs = [g for u in engine.drain() for g in u.segments]
        assert len(segs) >= 2 and any(g.end_token is not None for g in segs)
        for k, g in enumerate(segs):
            lo, hi = round(g.start_ms * 16), round(g.end_ms * 16)
            ref = H.nemo_stream(model, audio[lo:hi], [cfg.left_context, r])
            assert g.tokens == ref.tokens, f"R={r} segment {k} [{g.start_ms}, {g.end_ms}) ms"
            assert g.timestamps_ms == [int(g.start_ms) + t * cfg.frame_ms for t in ref.timestamps]
            if g.end_token is not None:
                assert g.end_token in g.tokens
        assert segs[0].start_ms == 0 and segs[-1].end_ms == len(audio) / 16
        assert all(a.end_ms == b.start_ms for a, b in zip(segs, segs[1:]))
        engine.close(s)
    with pytest.raises(ValueError, match="eou_reset=True needs an end-of-utterance model"):
        Engine(models.nemo_model("prompt_rnnt")[2]).open_stream(eou_reset=True)
