"""Self-tests of the NeMo reference harness (nemotron_parity.nemo_harness, nemotron_parity.speech).

They use the small TINY variant, so the module runs in well under a minute on a 2-core CPU. They need
nemo_toolkit[asr] (the test extra), espeak-ng and sox (scripts/setup.sh): missing ones fail, never skip.
"""

from __future__ import annotations


import numpy as np
import pytest

import nemotron_parity.nemo_harness as H
from nemotron_parity.speech import SAMPLE_RATE, SENTENCES, VOICES, speech_corpus, synthesize
from tolerances import assert_close

LOOKAHEADS = [13, 6, 1, 0]
SEED = 1234


# ---------------------------------------------------------------------------------------------------------------
# session-scoped fixtures, local to this file
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory):
    """Session-scoped scratch directory for the tokenizer, audio cache and .nemo files."""
    return tmp_path_factory.mktemp("nemo_harness")


@pytest.fixture(scope="session")
def corpus(harness_dir):
    """Six synthetic utterances (text, float32 16 kHz audio)."""
    return speech_corpus(harness_dir / "audio", n=6)


@pytest.fixture(scope="session")
def tokenizer_dir(harness_dir):
    """A trained 96-piece SentencePiece BPE tokenizer directory."""
    return H.train_tokenizer(harness_dir / "tokenizer", vocab_size=96)


@pytest.fixture(scope="session")
def calib_audio(corpus):
    """Audio the model is calibrated on."""
    return [a for _, a in corpus[:4]]


@pytest.fixture(scope="session")
def model(tokenizer_dir, calib_audio):
    """The calibrated TINY model (built once per session)."""
    return H.build_model(H.TINY, tokenizer_dir, seed=SEED, calib_audio=calib_audio)


@pytest.fixture(scope="session")
def utterance(corpus):
    """A ~3 s utterance that is not part of the calibration set."""
    return corpus[4][1]


@pytest.fixture(scope="session")
def streams(model, utterance):
    """NeMo streaming results for every lookahead (computed once)."""
    return {r: H.nemo_stream(model, utterance, [70, r]) for r in LOOKAHEADS}


# ---------------------------------------------------------------------------------------------------------------
# speech
# ---------------------------------------------------------------------------------------------------------------


def test_synthesize_deterministic():
    """Same arguments -> identical float32 16 kHz samples in [-1, 1]."""
    a = synthesize(SENTENCES[0], voice=VOICES[1])
    b = synthesize(SENTENCES[0], voice=VOICES[1])
    assert a.dtype == np.float32 and a.ndim == 1
    assert np.array_equal(a, b)
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.05
    assert 0.5 < len(a) / SAMPLE_RATE < 6.0


def test_corpus(corpus, harness_dir):
    """Corpus utterances are 1.5-4 s, distinct, cached as WAV and reloaded unchanged."""
    assert len(corpus) == 6
    for text, audio in corpus:
        assert 1.5 <= len(audio) / SAMPLE_RATE <= 4.0, text
        assert audio.dtype == np.float32
    assert len({t for t, _ in corpus}) == 6
    again = speech_corpus(harness_dir / "audio", n=6)
    for (t1, a1), (t2, a2) in zip(corpus, again):
        assert t1 == t2 and np.array_equal(a1, a2)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer / model
# ---------------------------------------------------------------------------------------------------------------


def test_tokenizer(tokenizer_dir):
    """The tokenizer has NeMo's BPE-dir layout, 96 pieces, <unk> = 0 and standalone punctuation pieces."""
    import sentencepiece as spm

    for name in ("tokenizer.model", "tokenizer.vocab", "vocab.txt"):
        assert (tokenizer_dir / name).is_file(), name
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    assert sp.get_piece_size() == 96
    assert sp.id_to_piece(0) == "<unk>"
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    assert {",", ".", "?", "\u2581"} <= pieces


def test_model_builds(model):
    """Architecture facts of the built TINY model."""
    import torch

    v = H.TINY
    assert not model.training
    assert model.decoder.blank_idx == 96 and model.joint.num_classes_with_blank == 97
    assert list(model.encoder.att_context_size) == [70, 13]
    sd = model.state_dict()
    assert f"{v.joint_out_key}.weight" in sd
    assert all(t.dtype == torch.float32 for t in sd.values() if t.is_floating_point())
    assert "encoder.layers.0.self_attn.linear_q.bias" not in sd  # use_bias False
    assert "encoder.layers.0.conv.batch_norm.running_var" not in sd  # layer_norm conv
    assert "encoder.layers.0.self_attn.pos_bias_u" in sd  # untie_biases
    assert "decoder.prediction.dec_rnn.lstm.weight_hh_l1" in sd  # 2 LSTM layers


def test_randomise_check(model):
    """Every encoder/decoder/joint tensor differs from its fresh init; preprocessor buffers are untouched."""
    H.randomise_check(model)


def test_build_deterministic(model, tokenizer_dir, calib_audio):
    """Same seed -> bit-identical weights."""
    import torch

    other = H.build_model(H.TINY, tokenizer_dir, seed=SEED, calib_audio=calib_audio)
    a, b = model.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_calibration(model, calib_audio):
    """Offline greedy: 30-70 % of frames emit a first non-blank symbol, with >= 3 distinct tokens."""
    model.encoder.set_default_att_context_size([70, 13])
    st = H.emission_stats(model, calib_audio)
    assert 0.3 <= st.fraction <= 0.7, st
    assert st.distinct_tokens >= 3, st


def test_punctuation_rule(model):
    """NeMo found ',' '.' '?' in the vocabulary and removes one space before them when decoding text."""
    assert {",", ".", "?"} <= set(model.decoding.supported_punctuation)
    spm = model.tokenizer.tokenizer  # the sentencepiece processor
    ids = [spm.piece_to_id(p) for p in ("\u2581", "e", "\u2581", ",")]
    raw = model.decoding.decode_ids_to_str(ids)
    assert " ," in raw
    assert model.decoding.decode_tokens_to_str_with_strip_punctuation(ids) == raw.replace(" ,", ",", 1)


def test_save_load_roundtrip(model, harness_dir, utterance):
    """save_nemo -> restore gives identical weights and identical streaming output."""
    import torch

    path = H.save_nemo(model, harness_dir / "tiny.nemo")
    restored = H.load_nemo(path)
    a, b = model.state_dict(), restored.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    H.randomise_check(restored)  # invariant-only path (no build metadata on a restored model)
    s1 = H.nemo_stream(model, utterance, [70, 6])
    s2 = H.nemo_stream(restored, utterance, [70, 6])
    assert s1.tokens == s2.tokens and s1.timestamps == s2.timestamps and s1.text == s2.text


# ---------------------------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lookahead", LOOKAHEADS)
def test_stream_shapes_and_timestamps(streams, utterance, lookahead):
    """Timestamps are global, non-decreasing and inside the stream; step outputs have the expected length."""
    s = streams[lookahead]
    n_frames = H.expected_stream_frames(len(utterance), lookahead)
    enc = s.encoded  # [T, D]
    assert enc.shape == (n_frames, H.TINY.d_model)
    assert all(e.shape[0] <= lookahead + 1 for e in s.step_encoded)
    assert s.features.shape == (H.TINY.n_mels, len(utterance) // 160 + 1)
    assert len(s.tokens) == len(s.timestamps) > 0
    assert all(0 <= t < n_frames for t in s.timestamps)
    assert all(a <= b for a, b in zip(s.timestamps, s.timestamps[1:]))
    # global (not per-chunk) frame indices: the last tokens come after the first chunk's frames
    assert max(s.timestamps) >= len(s.step_encoded[0])
    # tokens accumulate across steps: each step's token list extends the previous one
    for prev, cur in zip(s.step_tokens, s.step_tokens[1:]):
        assert cur[: len(prev)] == prev
    assert s.step_tokens[-1] == s.tokens
    assert isinstance(s.text, str) and s.text


@pytest.mark.parametrize("lookahead", [13, 6, 1])
def test_stream_matches_offline(model, streams, utterance, lookahead):
    """For R in 13, 6, 1 NeMo streaming equals the offline encoder and greedy tokens (docs/streaming.md#2-chunking)."""
    s = streams[lookahead]
    off = H.nemo_offline(model, utterance, att_context_size=[70, lookahead], stream_length=True)
    n = len(s.encoded)
    assert n <= len(off.encoded)
    assert_close(f"R={lookahead} streamed vs offline encoder", off.encoded[:n], s.encoded)
    np.testing.assert_array_equal(s.features, off.features)
    keep = [i for i, t in enumerate(off.timestamps) if t < n]
    assert s.tokens == [off.tokens[i] for i in keep]
    assert s.timestamps == [off.timestamps[i] for i in keep]


def test_stream_13_vs_forward_length_offline(model, streams, utterance):
    """[70, 13] vs nemo_offline with model.forward's length L // 160 (the last, zeroed STFT frame excluded).

    The streaming buffer counts all L // 160 + 1 frames as valid, so the two agree exactly only up to the last
    attention chunk (R + 1 = 14 encoder frames) of the shorter output: in that chunk every frame attends to the
    final frame(s) that differ, and the stream may have one more encoder frame.
    """
    s = streams[13]
    off = H.nemo_offline(model, utterance, att_context_size=[70, 13])
    enc, _ = off  # OfflineResult unpacks as (encoded [T, D], tokens)
    n = min(len(enc), len(s.encoded))
    last_chunk = ((n - 1) // 14) * 14
    assert_close("R=13 streamed vs forward-length offline", enc[:last_chunk], s.encoded[:last_chunk])
    prefix_stream = [t for t, ts in zip(s.tokens, s.timestamps) if ts < last_chunk]
    prefix_off = [t for t, ts in zip(off.tokens, off.timestamps) if ts < last_chunk]
    assert prefix_stream == prefix_off
    assert off.feature_length == len(utterance) // 160


def test_randomise_check_detects_fresh_init(model, tokenizer_dir):
    """randomise_check fails on an untouched NeMo model (LayerNorm ones, zero biases, zero blank row ...)."""
    fresh = H.instantiate(H.TINY, tokenizer_dir, seed=SEED)
    with pytest.raises(AssertionError):
        H.randomise_check(fresh)
