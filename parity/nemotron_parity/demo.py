"""Make the demo's inputs: a small random cache-aware NeMo model (every parameter randomised, blank bias
calibrated so the decoder both emits and skips) and a few synthetic speech files.

    python -m nemotron_parity.demo OUT_DIR   ->  OUT_DIR/demo.nemo, OUT_DIR/audio/*.wav

Random weights transcribe nothing meaningful; the demo shows the pipeline and that every token equals NeMo's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import soundfile as sf

from .nemo_harness import build_model, get_variant, save_nemo, train_tokenizer
from .speech import SAMPLE_RATE, SENTENCES, synthesize

VOICES = ["en-us", "en-gb", "en-us+f3"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m nemotron_parity.demo OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    (out / "audio").mkdir(parents=True, exist_ok=True)
    audio = []
    for i, (text, voice) in enumerate(zip(SENTENCES, VOICES)):
        pcm = synthesize(text, voice=voice)
        sf.write(out / "audio" / f"{i}_{voice.replace('+', '_')}.wav", pcm, SAMPLE_RATE, subtype="FLOAT")
        audio.append(pcm)
    nemo = out / "demo.nemo"
    if not nemo.is_file():
        tok = train_tokenizer(out / "tokenizer")
        model = build_model(get_variant("nemotron_like"), tok.parent if tok.is_file() else tok, seed=7,
                            calib_audio=audio)
        save_nemo(model, nemo)
    print(f"wrote {nemo} and {len(audio)} files under {out / 'audio'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
