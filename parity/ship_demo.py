"""Ship the trained demo model: convert WORK_DIR/demo.nemo into weights/demo and pick its example WAV files.

    python -m nemotron_parity.ship_demo WORK_DIR [--dest weights/demo] [--examples 4]

Examples are held-out sentences (never in training) from the test sets, chosen among those the model transcribes
exactly at every lookahead (so the shipped examples are a check, not an accuracy claim: the WER table is that),
with distinct voices, at least one of them unseen in training. Writes DEST/examples/*.wav (16-bit PCM, 16 kHz)
and DEST/examples/expected.json ({file: text}).
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
    (dest / "examples" / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    return expected


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
