"""The demo-model recipe's parts that can be checked quickly: the vectorised RNN-T loss against NeMo's, the corpus
grammar and splits."""
import random

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
