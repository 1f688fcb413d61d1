"""Ship the trained demo model: convert WORK_DIR/demo.nemo into weights/demo and pick its example WAV files.

    python -m nemotron_parity.ship_demo WORK_DIR [--dest weights/demo] [--examples 4]

Examples are held-out sentences (never in training) from the test sets, chosen among those the model transcribes
exactly at every lookahead (so the shipped examples are a check, not an accuracy claim: the WER table is that),
with distinct voices, at least one of them unseen in training; plus, when the corpus has long_example.npz, one
~20-s recording of several held-out sentences back to back (one seen voice, pauses between them), the first
candidate transcribed exactly at every lookahead (none shipped, with a warning, if no candidate is). Writes
DEST/examples/*.wav (16-bit PCM, 16 kHz) and DEST/examples/expected.json ({file: {text, voice, split}}; the long
one also lists its sentences with their start and end in seconds).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from . import corpus as C
from .demo_eval import engine_stream_all, normalise


def ship(work: Path, dest: Path, n_examples: int = 4) -> dict:
    from nemotron_engine.config import ModelConfig
    from nemotron_engine.weights.convert import convert

    tmp = work / "model"
    convert(work / "demo.nemo", tmp, force=True)
    cfg = ModelConfig.load(tmp)
    chosen = []
    for split, want in (("test_unseen", 1), ("test_seen", n_examples - 1)):
        audio, texts, voices = C.load_split(work / "corpus" / f"{split}.npz")
        short = [i for i in range(len(audio)) if len(audio[i]) < 3.5 * C.SAMPLE_RATE][:60]
        ok = set(short)
        for r in cfg.lookaheads:
            out = engine_stream_all(tmp, [audio[i] for i in short], (r + 1) * cfg.frame_ms)
            ok &= {i for i, (t, _) in zip(short, out) if normalise(t) == normalise(texts[i])}
        used_voices = {c[2] for c in chosen}
        for i in short:
            if len([c for c in chosen if c[0] == split]) >= want:
                break
            if i in ok and voices[i] not in used_voices and texts[i] not in {c[3] for c in chosen}:
                chosen.append((split, audio[i], voices[i], texts[i]))
                used_voices.add(voices[i])
    long_example = pick_long_example(work, cfg, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tmp, dest)
    (dest / "examples").mkdir()
    expected = {}
    for k, (split, pcm, voice, text) in enumerate(chosen):
        name = f"{k}_{voice.replace('+', '_')}.wav"
        # the corpus stores int16 samples (float = int16 / 32768): written back bit-exactly, so the files decode
        # to the very samples the selection ran on
        sf.write(dest / "examples" / name, np.round(pcm * 32768).astype(np.int16), C.SAMPLE_RATE, subtype="PCM_16")
        expected[name] = {"text": text, "voice": voice, "split": split}
    if long_example is not None:
        name = f"{len(chosen)}_long_{long_example.voice.replace('+', '_')}.wav"
        sf.write(dest / "examples" / name, np.round(long_example.audio * 32768).astype(np.int16), C.SAMPLE_RATE,
                 subtype="PCM_16")
        expected[name] = {"text": long_example.text, "voice": long_example.voice, "split": "long_example",
                          "sentences": [[t, round(a, 3), round(b, 3)] for t, a, b in long_example.sentences]}
    (dest / "examples" / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    (dest / "MODEL_CARD.md").write_text(model_card(work, cfg, expected))
    return expected


def pick_long_example(work: Path, cfg, model_dir: Path):
    """The first long_example candidate the engine transcribes exactly at every lookahead (corpus.LongStream), or
    None (no candidates, or none exact: a warning)."""
    path = work / "corpus" / "long_example.npz"
    if not path.is_file():
        return None
    cands = C.load_long(path)
    ok = set(range(len(cands)))
    for r in cfg.lookaheads:
        out = engine_stream_all(model_dir, [c.audio for c in cands], (r + 1) * cfg.frame_ms)
        ok &= {i for i, (t, _) in enumerate(out) if normalise(t) == normalise(cands[i].text)}
    if not ok:
        print(f"ship_demo: warning: none of the {len(cands)} long example candidates is transcribed exactly at every "
              f"lookahead; no long example shipped", file=sys.stderr)
        return None
    return cands[min(ok)]


def model_card(work: Path, cfg, expected: dict) -> str:
    """The model card from the recipe's records (train.json, corpus.json, wer.json)."""
    from .demo_eval import markdown, markdown_long

    tr = json.loads((work / "train.json").read_text())
    phases = tr.get("previous_phases", []) + [tr]
    corpus = tr["corpus"]
    v = tr["variant"]
    wer_path = work / "wer.json"
    wer = json.loads(wer_path.read_text()) if wer_path.is_file() else None
    wer_table = markdown(wer) if wer else "(not measured)"
    phase_lines = "\n".join(
        f"| {i + 1} | {p['steps']} | {p['minutes']} | {p['settings']['lr']:g} | {p['settings']['warmup']} | "
        f"{p['threads']} | {p.get('data', 'isolated')} |" for i, p in enumerate(phases))
    sp = corpus["splits"]
    st = tr["settings"]
    long_phases = [i + 1 for i, p in enumerate(phases) if p.get("data", "isolated") != "isolated"]
    lf = corpus.get("longform")
    long_data = ""
    if lf:
        ts = lf["test_sets"]
        long_data = (
            f" Long-form test sets, from the held-out sentences only, each stream one speaker (voice, speed and "
            f"pitch), pauses between sentences {lf['pause_s'][0]:g}-{lf['pause_s'][1]:g} s (none at "
            f"{lf['zero_pause_fraction'] * 100:g} % of the joins): {ts['long_seen']['streams']} streams of 60 s by seen "
            f"voices, {ts['long_unseen']['streams']} by unseen voices, one 10-minute stream (seen voice, "
            f"{ts['long_10min']['sentences']} sentences).")
    long_training = ""
    if long_phases:
        lp = phases[long_phases[-1] - 1]["settings"]
        init = lp.get("init_engine_model")
        lo, hi = (lf["train_streams_s"] if lf else (5, 30))
        long_training = f"""

**Long-form training** (phase{'s' if len(long_phases) > 1 else ''} {', '.join(map(str, long_phases))}{
            ', continued from the engine-format weights of the phases before (INIT_ENGINE_MODEL)' if init else ''}): the
phases before heard isolated 2-3 s utterances only, and on a continuous stream the model transcribed the first
sentence and then went silent. {lp['longform'] * 100:g} % of the batches are long-form streams of {lo:g}-{hi:g} s,
built on the fly from the training utterances (parity/nemotron_parity/corpus.py, plan_train_streams): sentences of
one voice back to back, pauses of 0-1.5 s between them (none at 20 % of the joins), transcript = their texts joined
by spaces; streams of similar length batched up to {lp['long_batch_s']:g} s of padded audio (streams x longest),
SpecAugment time masks at the isolated batches' density (two per mean utterance length, each at most 5 % of one);
the other batches are the isolated utterances as before."""
    long_table = ""
    if wer and wer.get("long_rows"):
        long_table = f"""

**Long-form accuracy** (WER through the engine's streaming, one utterance from the start to the end of each
stream, no endpointing; (a) the isolated test sets above, (b) the 60-s streams, (c) the 10-minute stream, whole and
per minute: reference sentences by their midpoint, hypothesis words by their first token's timestamp, minutes cut
in the pauses between sentences, parity/nemotron_parity/demo_eval.py; the NeMo column: NeMo's own streaming of a
sample of the 60-s streams, token for token):

{markdown_long(wer)}

Measured by `python -m nemotron_parity.demo_eval WORK --nemo --nemo-limit 25` (the recipe's last step but one;
WORK is the recipe's work directory, with the corpus and the converted model in WORK/model)."""
    return f"""# Demo model: a small cache-aware streaming FastConformer hybrid RNN-T + CTC, trained on synthetic speech

**What it is.** The architecture family of NVIDIA's Nemotron Speech Streaming (cache-aware FastConformer encoder
with dw_striding x8 causal subsampling, 128 mel features without normalisation, chunked_limited attention with left
context 70 and lookaheads {[(r + 1) * cfg.frame_ms for r in cfg.lookaheads]} ms, causal convolutions, RNN-T decoder),
at a toy size: {v['n_layers']} layers x {v['d_model']}, {v['n_heads']} heads, subsampling channels
{v['subsampling_conv_channels']}, one LSTM layer of {v['pred_hidden']}, joint {v['joint_hidden']}, SentencePiece BPE
vocabulary {cfg.vocab_size}; a CTC head (kept in the checkpoint as `ctc.*`, unused by the engine). Trained from
scratch with NeMo 3.0 on a CPU by the recipe `scripts/train_demo.sh` (parity/nemotron_parity/train_demo.py){
    ', then on long-form streams (continuous speech)' if long_phases else ''}.
Stored in the engine's format (config.json, model.safetensors, tokenizer.model);
`nemotron_parity.nemo_harness.nemo_from_engine` rebuilds the NeMo model from it for the parity tests.

**Data.** Synthetic only: espeak-ng sentences from a {corpus['vocabulary_words']}-word grammar
(parity/nemotron_parity/corpus.py, seed {corpus['seed']}), lower case, no punctuation.
Training: {sp['train']['utterances']} utterances
({sp['train']['hours']} h) in {sp['train']['voices']} voices ({len(corpus['accents'])} English accents x
{len(corpus['seen_variants'])} voice variants), speed {corpus['speed_wpm'][0]}-{corpus['speed_wpm'][1]} wpm, pitch
{corpus['pitch'][0]}-{corpus['pitch'][1]}. Test: {sp['test_seen']['utterances']} sentences never seen in training,
spoken by seen voices, and the same sentences by {len(corpus['unseen_variants'])} voice variants never used in
training (unseen voices).{long_data}

**Training.** Hybrid loss 0.5 RNN-T (vectorised, parity/nemotron_parity/rnnt_loss.py, checked against NeMo's) + 0.5
CTC, AdamW
(betas {tr['settings']['betas']}, weight decay {tr['settings']['weight_decay']}), batch {tr['settings']['batch']},
linear warm-up then cosine decay over the phase's time, gradient clip {tr['settings']['clip']}, SpecAugment
({tr['settings']['freq_masks']} x {tr['settings']['freq_width']} mel bins, {tr['settings']['time_masks']} x
{tr['settings']['time_width']:g} of the frames), the four lookaheads sampled per batch by NeMo's encoder. Run on a
shared 2-core CPU (other jobs ran beside it; the first phase with one thread):

| phase | steps | minutes | peak lr | warm-up | threads | data |
|---|---|---|---|---|---|---|
{phase_lines}{long_training}

**Accuracy** (word error rate through the engine's streaming; NeMo's own streaming of the same weights gives the
same tokens):

{wer_table}{long_table}

**What it is not.** Not a speech recogniser for real speech: it has heard only espeak-ng and knows only its
grammar's words: its WER is measured on new sentences of the same grammar (new word sequences; known and unseen
voices), not on open speech. It exists so that the engine's main job prints real words out of the box and so that
checks which need meaningful tokens (bf16 against fp32, kernels against the reference) have them. The example files are held-out sentences chosen among those it transcribes exactly at every lookahead{
    ' (one of them, about 20 s, several held-out sentences back to back)' if any(
        e.get('split') == 'long_example' for e in expected.values()) else ''}: they
are a check, not an accuracy claim.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--dest", type=Path, default=Path("weights/demo"))
    p.add_argument("--examples", type=int, default=4)
    a = p.parse_args(argv)
    print(json.dumps(ship(a.work, a.dest, a.examples), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
