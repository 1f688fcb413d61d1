"""The demo-model recipe's parts that can be checked quickly: the vectorised RNN-T loss against NeMo's, the corpus
grammar and splits, the long-form streams (training and test sets), the per-minute WER."""
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nemotron_parity import corpus as C
from nemotron_parity.rnnt_loss import rnnt_loss
from tolerances import assert_close


def _nemo_loss(logits, targets, t_len, u_len, blank):
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    # NeMo's pure-torch implementation; reduction None -> one loss per utterance. The labels it reads are blank-
    # indexed at num_classes (blank = the last class).
    loss = RNNTLoss(num_classes=blank, reduction=None, loss_name="pytorch")
    return loss(log_probs=logits.log_softmax(-1), targets=targets, input_lengths=t_len, target_lengths=u_len)


@pytest.mark.parametrize("b,t,u,v,seed", [(1, 1, 1, 3, 0), (2, 5, 3, 6, 1), (3, 9, 4, 5, 2), (4, 12, 6, 9, 3)])
def test_rnnt_loss_matches_nemo(b, t, u, v, seed):
    g = torch.Generator().manual_seed(seed)
    blank = v
    logits = torch.randn(b, t, u + 1, v + 1, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, v, (b, u), generator=g)
    t_len = torch.randint(max(1, t // 2), t + 1, (b,), generator=g)
    t_len[0] = t
    u_len = torch.randint(0, u + 1, (b,), generator=g)
    u_len[0] = u
    ours = rnnt_loss(logits.clone().requires_grad_(True), targets, t_len, u_len, blank)
    ref = _nemo_loss(logits, targets, t_len, u_len, blank).to(ours.dtype)
    # the project's fp32 bound (rnnt_loss computes in float32): measured max 1.1e-7 relative over these cases
    assert_close("rnnt loss", ref.double(), ours.detach().double())


def test_rnnt_loss_gradient_matches_nemo():
    g = torch.Generator().manual_seed(5)
    b, t, u, v = 2, 6, 3, 4
    logits = torch.randn(b, t, u + 1, v + 1, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (b, u), generator=g)
    t_len, u_len = torch.tensor([6, 4]), torch.tensor([3, 2])
    x1 = logits.clone().requires_grad_(True)
    rnnt_loss(x1, targets, t_len, u_len, v).sum().backward()
    x2 = logits.clone().requires_grad_(True)
    _nemo_loss(x2, targets, t_len, u_len, v).sum().backward()
    # measured 5.2e-7 relative (max-norm) against NeMo's gradient
    assert_close("rnnt loss gradient", x2.grad, x1.grad)
    assert torch.isfinite(x1.grad).all()


def test_corpus_splits_hold_out_sentences_and_voices():
    p = C.plan(seed=3, n_train=300, n_test=40)
    train = {u.text for u in p["train"]}
    assert not train & {u.text for u in p["test_seen"]}
    assert [u.text for u in p["test_seen"]] == [u.text for u in p["test_unseen"]]
    variant = lambda v: v.split("+")[1] if "+" in v else ""
    assert {variant(u.voice) for u in p["train"]} <= set(C.SEEN_VARIANTS)
    assert {variant(u.voice) for u in p["test_unseen"]} <= set(C.UNSEEN_VARIANTS)
    assert not set(C.SEEN_VARIANTS) & set(C.UNSEEN_VARIANTS)
    assert C.plan(seed=3, n_train=300, n_test=40) == p  # deterministic
    words = C.vocabulary()
    rng = random.Random(0)
    for _ in range(200):
        assert set(C.sentence(rng).split()) <= words


# ---- long-form data (issue 16) -------------------------------------------------------------------------------------

def _fake_lengths(utts):
    # a deterministic stand-in for the audio lengths (samples): ~2-4 s, growing with the text
    return [int(C.SAMPLE_RATE * (1.0 + 0.06 * len(u.text))) for u in utts]


def test_train_streams_lengths_pauses_voice_and_text():
    p = C.plan(seed=3, n_train=3000, n_test=40)
    train = p["train"]
    lengths, voices, texts = _fake_lengths(train), [u.voice for u in train], [u.text for u in train]
    plans = C.plan_train_streams(random.Random(7), lengths, voices, 300)
    assert plans == C.plan_train_streams(random.Random(7), lengths, voices, 300)  # deterministic
    sr = C.SAMPLE_RATE
    pauses = []
    for q in plans:
        assert C.LONG_MIN_S * sr <= q.samples(lengths) <= C.LONG_MAX_S * sr
        assert len(q.pauses) == len(q.items) - 1 and len(set(q.items)) == len(q.items)
        assert len({voices[i] for i in q.items}) == 1  # one voice per stream
        assert q.text(texts) == " ".join(texts[i] for i in q.items)
        assert all(0 <= g <= C.PAUSE_MAX_S * sr for g in q.pauses)
        pauses += q.pauses
    zero = sum(g == 0 for g in pauses) / len(pauses)
    assert 0.12 < zero < 0.3, zero  # 20 % of the joins without a pause
    assert max(pauses) > 1.2 * sr and len({g for g in pauses if g}) > 100  # uniform over the range
    durations = [q.samples(lengths) / sr for q in plans]
    assert min(durations) < 10 and max(durations) > 20
    assert sum(len(q.items) > 1 for q in plans) == len(plans)
    # render: the utterances in order with zeros for the pauses
    audio = [np.full(n, 0.01 * (i % 50 + 1), np.float32) for i, n in enumerate(lengths)]
    q = max(plans, key=lambda q: len(q.items))
    x = C.render(audio, q)
    assert len(x) == q.samples(lengths)
    at = 0
    for k, i in enumerate(q.items):
        if k:
            assert not x[at: at + q.pauses[k - 1]].any()
            at += q.pauses[k - 1]
        np.testing.assert_array_equal(x[at: at + lengths[i]], audio[i])
        at += lengths[i]


def _fake_speak(u):
    # deterministic noise whose length grows with the text (no espeak-ng): 1-3 s
    g = np.random.default_rng(zlib.crc32(f"{u.voice}|{u.speed}|{u.text}".encode()))
    return (0.3 * g.standard_normal(int(C.SAMPLE_RATE * (0.6 + 0.05 * len(u.text))))).astype(np.float32)


def test_long_test_sets_hold_out_sentences_and_are_deterministic(tmp_path):
    p = C.plan(seed=3, n_train=300, n_test=40)
    test_texts = [u.text for u in p["test_seen"]]
    train = {u.text for u in p["train"]}
    plans = C.plan_long_tests(3, test_texts)
    assert plans == C.plan_long_tests(3, list(reversed(test_texts)))  # deterministic, whatever the order given
    assert set(plans) == {"long_seen", "long_unseen", "long_10min", "long_example"}
    seen, unseen = C.voices()
    for name, streams in plans.items():
        assert len(streams) == C.LONG_TESTS[name][0]
        for s in streams:
            assert set(s.texts) <= set(test_texts) and not set(s.texts) & train  # held-out sentences only
            assert s.voice in (unseen if name == "long_unseen" else seen)
            assert all(0 <= g <= C.PAUSE_MAX_S * C.SAMPLE_RATE for g in s.pauses)
    sets = {name: [C.assemble(s, _fake_speak) for s in streams] for name, streams in plans.items()}
    for name, streams in sets.items():
        seconds, pad = C.LONG_TESTS[name][1], C.LONG_TESTS[name][3]
        for plan_, s in zip(plans[name], streams):
            if pad:
                assert len(s.audio) == int(seconds * C.SAMPLE_RATE)
            else:
                assert 0.75 * seconds < s.seconds <= seconds
            texts = [t for t, _, _ in s.sentences]
            assert tuple(texts) == plan_.texts[: len(texts)]  # the plan's sentences, in order
            assert s.text == " ".join(texts)
            for k, (t, a, b) in enumerate(s.sentences):
                assert 0 <= a < b <= s.seconds
                gap = a - (s.sentences[k - 1][2] if k else 0.0)
                assert abs(gap - (plan_.pauses[k - 1] / C.SAMPLE_RATE if k else 0.0)) < 1e-6
    assert 15 < len(sets["long_seen"][0].sentences) < 60 and len(sets["long_10min"][0].sentences) > 150
    C.save_long(tmp_path / "x.npz", sets["long_seen"])
    back = C.load_long(tmp_path / "x.npz")
    for a, b in zip(sets["long_seen"], back):
        np.testing.assert_array_equal(a.audio, b.audio)
        assert a.sentences == b.sentences and a.voice == b.voice
    again = C.assemble(plans["long_seen"][1], _fake_speak, batch=5)  # the batching does not change the stream
    np.testing.assert_array_equal(again.audio, sets["long_seen"][1].audio)


def test_per_minute_wer_assigns_words_by_time():
    from nemotron_parity.demo_eval import per_minute

    # 3 minutes, a sentence every 10 s (2 s long): the hypothesis drops the last minute and doubles a word in the first
    sents = [(f"w{k} x{k}", 10.0 * k + 1, 10.0 * k + 3) for k in range(18)]
    stream = C.LongStream(np.zeros(180 * C.SAMPLE_RATE, np.float32), "v", sents)
    words = [(w, a + 0.5 + 0.3 * j) for t, a, _ in sents[:12] for j, w in enumerate(t.split())]
    words.insert(1, ("w0", 1.6))
    rows = per_minute(stream, words)
    assert [r["wer"] for r in rows] == [round(100 / 12, 2), 0.0, 100.0]
    assert [r["ref_words"] for r in rows] == [12, 12, 12]


def test_phases_read_back_from_the_model_card():
    from nemotron_parity.train_demo import phases_from_card

    ph = phases_from_card(Path(__file__).parents[1] / "weights" / "demo" / "MODEL_CARD.md")
    assert len(ph) >= 3 and [p["steps"] for p in ph[:3]] == [2306, 2845, 8058]
    assert ph[0]["settings"] == {"lr": 0.002, "warmup": 400} and ph[0]["data"] == "isolated"
