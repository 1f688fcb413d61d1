"""Train the demo model: a small cache-aware streaming FastConformer hybrid RNN-T + CTC, with NeMo, on the CPU.

    python -m nemotron_parity.train_demo WORK_DIR [--minutes 45 | --steps N] [--resume | --init-engine-model DIR]
                                          [--longform FRAC] [--long-batch-s S]

WORK_DIR/corpus holds the synthetic corpus (built first if missing, see corpus.py). Writes WORK_DIR/tokenizer/,
WORK_DIR/demo.nemo (also every few minutes while training) and WORK_DIR/train.json (settings, data counts, the
loss curve, the steps done and the time taken).

Same family as Nemotron: dw_striding x8 causal subsampling, 128 mels, normalize NA, chunked_limited attention
with the four lookaheads [[70,13],[70,6],[70,1],[70,0]] (NeMo's ConformerEncoder samples one per training
forward when several are configured), causal convolutions, RNN-T decoder + joint; plus a CTC head (hybrid), which
makes a from-scratch model leave the all-blank solution within a few hundred steps. The RNN-T loss is the
vectorised one in rnnt_loss.py: NeMo's loop over time x labels in Python on the CPU.

Long-form phase (issue 16): --init-engine-model DIR starts from an engine-format model (the shipped weights/demo:
nemo_harness.nemo_from_engine rebuilds the same NeMo model, CTC head included, with the directory's tokenizer; the
earlier phases are read from DIR/MODEL_CARD.md's phase table). --longform FRAC makes that fraction of the batches
long-form: training streams of 5-30 s, each several train-split sentences of one voice back to back with pauses
(corpus.plan_train_streams / render: built on the fly from the corpus audio, no new synthesis), target = the
sentences' texts joined by spaces. Long-form batches hold streams of similar length, as many as fit in
--long-batch-s seconds of padded audio (batch size x longest stream). Their SpecAugment time masks keep the
isolated batches' density: masks of at most 5 % of a mean training utterance, two per mean utterance length
(a float width of 5 % of a 30-s stream would blank whole sentences).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import corpus as C
from .nemo_harness import Variant, instantiate, save_nemo, set_greedy_decoding, train_tokenizer
from .rnnt_loss import rnnt_loss

DEMO = Variant(
    id="demo", model="hybrid", n_mels=128, d_model=144, n_heads=4, n_layers=5, subsampling_conv_channels=64,
    conv_kernel_size=9, conv_norm_type="layer_norm", use_bias=False, xscaling=False, untie_biases=True,
    pred_hidden=192, pred_rnn_layers=1, joint_hidden=192, joint_dropout=0.1, max_symbols=10,
)
SETTINGS = dict(batch=16, lr=2e-3, betas=(0.9, 0.98), weight_decay=1e-3, warmup=400, min_lr=1e-5, clip=1.0,
                ctc_weight=0.5, vocab=128, freq_masks=2, freq_width=15, time_masks=2, time_width=0.05, seed=1234,
                longform=0.0, long_batch_s=60.0, long_pool=256)


def batches(lengths: np.ndarray, batch: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of utterances of similar length (sorted within buckets of 50 batches)."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    span = batch * 50
    for i in range(0, len(idx), span):
        group = sorted(idx[i:i + span], key=lambda j: lengths[j])
        out += [group[k:k + batch] for k in range(0, len(group), batch) if len(group[k:k + batch]) == batch]
    rng.shuffle(out)
    return out


def long_batches(plans: list, stream_len: list[int], budget: int, max_batch: int, rng: random.Random) -> list[list]:
    """Long-form streams grouped by length (sorted) into batches whose padded size, streams x longest, stays within
    `budget` samples (a longer stream than that goes alone) and at most max_batch streams; shuffled."""
    order = sorted(range(len(plans)), key=lambda k: stream_len[k])
    out, cur = [], []
    for k in order:
        if cur and ((len(cur) + 1) * stream_len[k] > budget or len(cur) == max_batch):
            out.append(cur)
            cur = []
        cur.append(k)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return [[plans[k] for k in b] for b in out]


def phases_from_card(card: Path) -> list[dict]:
    """The phases of an engine-format model, read back from its MODEL_CARD.md phase table (ship_demo writes it):
    [{steps, minutes, settings: {lr, warmup}, threads, data}] (data: the table's data column, else "isolated")."""
    out = []
    if not card.is_file():
        return out
    lines = card.read_text().splitlines()
    head = next((i for i, l in enumerate(lines) if l.startswith("| phase | steps |")), None)
    if head is None:
        return out
    cols = [c.strip() for c in lines[head].strip("|").split("|")]
    for l in lines[head + 2:]:
        if not l.startswith("|"):
            break
        row = dict(zip(cols, (c.strip() for c in l.strip("|").split("|"))))
        out.append({"steps": int(row["steps"]), "minutes": float(row["minutes"]),
                    "settings": {"lr": float(row["peak lr"]), "warmup": int(row["warm-up"])},
                    "threads": int(row["threads"]), "data": row.get("data", "isolated"), "from_card": str(card)})
    return out


def data_label(s: dict) -> str:
    return f"long-form mix ({s['longform'] * 100:g} % of batches)" if s.get("longform") else "isolated"


def lr_at(step: int, frac: float, s: dict) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to min_lr over the run (frac = progress 0..1)."""
    if step < s["warmup"]:
        return s["lr"] * (step + 1) / s["warmup"]
    return s["min_lr"] + 0.5 * (s["lr"] - s["min_lr"]) * (1 + math.cos(math.pi * min(frac, 1.0)))


def train(work: Path, minutes: float | None, steps: int | None, log_every: int = 25, resume: bool = False,
          overrides: dict | None = None, init_engine_model: Path | None = None) -> dict:
    """Train (or, with resume, continue training WORK/demo.nemo with a fresh warm-up + cosine schedule; with
    init_engine_model, continue from that engine-format model directory likewise)."""
    from nemo.collections.asr.modules import SpectrogramAugmentation

    s = {**SETTINGS, **(overrides or {})}
    if resume and init_engine_model:
        raise ValueError("resume or init_engine_model, not both")
    previous = []
    tok_from = None
    if resume:
        info = json.loads((work / "train.json").read_text())
        tok_from = info["settings"].get("tokenizer_dir")
        if tok_from and not Path(tok_from).is_dir():
            tok_from = None
        previous = info.pop("previous_phases", []) + [info]
    torch.manual_seed(s["seed"])
    rng = random.Random(s["seed"])
    corpus_dir = work / "corpus"
    if not (corpus_dir / "corpus.json").is_file():
        C.build(corpus_dir)
    audio, texts, voices = C.load_split(corpus_dir / "train.npz")
    if init_engine_model:
        from .nemo_harness import nemo_from_engine

        init_engine_model = Path(init_engine_model)
        # the engine directory's own tokenizer (written to WORK/init/tokenizer), not one retrained on the corpus
        model = nemo_from_engine(init_engine_model, DEMO, work / "init")
        tok_dir = work / "init" / "tokenizer"
        previous = phases_from_card(init_engine_model / "MODEL_CARD.md")
        s["init_engine_model"] = str(init_engine_model)
    else:
        # a phase resumed after one that started from an engine model keeps that model's tokenizer
        tok_dir = (Path(tok_from) if tok_from else
                   train_tokenizer(work / "tokenizer", vocab_size=s["vocab"], texts=texts))
        model = instantiate(DEMO, tok_dir, seed=s["seed"])
    if resume:
        from .nemo_harness import load_nemo

        model.load_state_dict(load_nemo(work / "demo.nemo").state_dict())
    s["tokenizer_dir"] = str(tok_dir)
    set_greedy_decoding(model, DEMO.max_symbols)
    tokenizer = model.tokenizer
    targets = [tokenizer.text_to_ids(t) for t in texts]
    blank = model.decoder.blank_idx
    aug = SpectrogramAugmentation(freq_masks=s["freq_masks"], freq_width=s["freq_width"],
                                  time_masks=s["time_masks"], time_width=s["time_width"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s["lr"], betas=s["betas"], weight_decay=s["weight_decay"])
    lengths = np.array([len(a) for a in audio])
    plan: list[list[int]] = []
    # long-form batches: their own generator (the isolated batches' order is the same with or without them)
    lrng = random.Random(s["seed"] + 16)
    long_plan: list[list[C.StreamPlan]] = []
    mean_frames = float(lengths.mean()) / model.cfg.preprocessor.window_stride / C.SAMPLE_RATE  # mel frames
    long_width = max(1, int(round(s["time_width"] * mean_frames)))
    n_long = 0
    t0 = time.time()
    step = 0
    curve = []
    last_save = t0
    model.train()
    while True:
        elapsed = time.time() - t0
        frac = elapsed / (minutes * 60) if minutes else step / steps
        if frac >= 1.0:
            break
        batch_aug = aug
        if s["longform"] and lrng.random() < s["longform"]:
            if not long_plan:
                plans = C.plan_train_streams(lrng, lengths, voices, s["long_pool"])
                long_plan = long_batches(plans, [q.samples(lengths) for q in plans],
                                         int(s["long_batch_s"] * C.SAMPLE_RATE), s["batch"], lrng)
            streams = long_plan.pop()
            pcm = [C.render(audio, q) for q in streams]
            tg = [tokenizer.text_to_ids(q.text(texts)) for q in streams]
            n_long += 1
            # as many time masks per stream as its length holds mean utterances x 2, each at most 5 % of one
            batch_aug = SpectrogramAugmentation(
                freq_masks=s["freq_masks"], freq_width=s["freq_width"], time_width=long_width,
                time_masks=max(s["time_masks"], int(round(s["time_masks"] * max(map(len, pcm)) / lengths.mean()))))
        else:
            if not plan:
                plan = batches(lengths, s["batch"], rng)
            ids = plan.pop()
            pcm, tg = [audio[i] for i in ids], [targets[i] for i in ids]
        n = max(len(a) for a in pcm)
        sig = torch.zeros(len(pcm), n)
        for k, a in enumerate(pcm):
            sig[k, : len(a)] = torch.from_numpy(a)
        sig_len = torch.tensor([len(a) for a in pcm])
        u = max(len(t) for t in tg)
        tgt = torch.full((len(tg), u), blank, dtype=torch.int64)
        for k, t in enumerate(tg):
            tgt[k, : len(t)] = torch.tensor(t)
        tgt_len = torch.tensor([len(t) for t in tg])

        feats, feat_len = model.preprocessor(input_signal=sig, length=sig_len)  # [B, F, T]
        feats = batch_aug(input_spec=feats, length=feat_len)
        enc, enc_len = model.encoder(audio_signal=feats, length=feat_len)  # [B, D, T']
        dec, _, _ = model.decoder(targets=tgt, target_length=tgt_len)  # [B, H, U+1]
        logits = model.joint(encoder_outputs=enc, decoder_outputs=dec)  # [B, T', U+1, V+1]
        l_rnnt = rnnt_loss(logits, tgt, enc_len, tgt_len, blank).mean()
        log_probs = model.ctc_decoder(encoder_output=enc)  # [B, T', V+1] log-probabilities
        l_ctc = F.ctc_loss(log_probs.transpose(0, 1), tgt, enc_len, tgt_len, blank=blank, reduction="sum",
                           zero_infinity=True) / len(tg)
        loss = (1 - s["ctc_weight"]) * l_rnnt + s["ctc_weight"] * l_ctc
        lr = lr_at(step, frac, s)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, s["clip"])
        opt.step()
        step += 1
        if step % log_every == 0:
            row = {"step": step, "min": round((time.time() - t0) / 60, 2), "rnnt": round(float(l_rnnt), 3),
                   "ctc": round(float(l_ctc), 3), "lr": round(lr, 6), "grad_norm": round(float(gnorm), 2)}
            if s["longform"]:
                row["long_batches"] = n_long
            curve.append(row)
            print(json.dumps(row), flush=True)
        if time.time() - last_save > 300:
            _save(model, work, s, step, t0, curve, texts, final=False, previous=previous)
            last_save = time.time()
            model.train()
    return _save(model, work, s, step, t0, curve, texts, final=True, previous=previous)


def _save(model, work: Path, s: dict, step: int, t0: float, curve: list, texts: list[str], final: bool,
          previous: list | None = None) -> dict:
    model.eval()
    save_nemo(model, work / "demo.nemo")
    info = {"variant": asdict(DEMO), "settings": s, "steps": step, "minutes": round((time.time() - t0) / 60, 1),
            "data": data_label(s),
            "train_utterances": len(texts), "threads": torch.get_num_threads(), "final": final,
            "corpus": json.loads((work / "corpus" / "corpus.json").read_text()), "curve": curve,
            "previous_phases": previous or [], "total_steps": step + sum(p["steps"] for p in previous or [])}
    (work / "train.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=None, help="train for this long (cosine schedule over time)")
    g.add_argument("--steps", type=int, default=None, help="train for this many steps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (1 is robust on a shared 2-core machine: OpenMP spin-waits collapse under "
                        "contention)")
    p.add_argument("--resume", action="store_true",
                   help="continue from WORK/demo.nemo with a fresh warm-up and cosine schedule (a second phase)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {SETTINGS['lr']})")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up steps (default {SETTINGS['warmup']})")
    p.add_argument("--init-engine-model", type=Path, default=None, metavar="DIR",
                   help="start from an engine-format model directory (e.g. weights/demo) with a fresh warm-up and "
                        "cosine schedule; its earlier phases are read from DIR/MODEL_CARD.md")
    p.add_argument("--longform", type=float, default=None, metavar="FRAC",
                   help="fraction of the batches made of long-form streams (5-30 s; default 0: isolated only)")
    p.add_argument("--long-batch-s", type=float, default=None, metavar="S",
                   help=f"padded audio seconds per long-form batch (default {SETTINGS['long_batch_s']:g})")
    a = p.parse_args(argv)
    if a.resume and a.init_engine_model:
        p.error("--resume or --init-engine-model, not both")
    if a.threads:
        torch.set_num_threads(a.threads)
    minutes = a.minutes if (a.minutes or a.steps) else 45.0
    overrides = {k: v for k, v in (("lr", a.lr), ("warmup", a.warmup), ("longform", a.longform),
                                   ("long_batch_s", a.long_batch_s)) if v is not None}
    info = train(a.work, minutes, a.steps, resume=a.resume, overrides=overrides,
                 init_engine_model=a.init_engine_model)
    print(f"trained {info['steps']} steps in {info['minutes']} min -> {a.work / 'demo.nemo'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
