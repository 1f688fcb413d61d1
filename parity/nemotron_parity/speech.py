"""Deterministic synthetic English speech for the test-suite.

Audio is produced with espeak-ng (22050 Hz, 16-bit) and converted by sox to the 16 kHz mono float32 signal the
ASR model expects. Both programs are deterministic for identical arguments, so a given (text, voice, speed, pitch)
always yields the same samples. `speech_corpus` caches WAV files so repeated test sessions reuse them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

# Short English sentences with different words and some punctuation (commas, full stops, questions, apostrophes).
SENTENCES: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella, and ask her to bring these things.",
    "Is it raining in the city today?",
    "She sells sea shells by the sea shore.",
    "We'll meet at seven o'clock, near the old bridge.",
    "How many apples did you buy?",
    "Turn left at the next corner.",
    "My phone battery is almost empty.",
    "Could you open the window, please?",
    "Green leaves dance in the morning wind.",
    "Bring six spoons of fresh snow peas.",
    "The museum closes early on Sundays.",
]

# espeak-ng voices (language + optional "+variant"); all ship with the espeak-ng data package, no mbrola needed.
VOICES: list[str] = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-us+f3",
    "en-gb-x-rp+f2",
    "en-029",
    "en-us-nyc",
    "en+f4",
]


def _require(tool: str) -> str:
    """Return the absolute path of an executable or raise a clear error if it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"'{tool}' is required to synthesize test speech but was not found on PATH")
    return path


def synthesize(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng and return float32 mono 16 kHz samples in [-1, 1].

    Args:
        text: the sentence to speak.
        voice: an espeak-ng voice name, e.g. "en-us", "en-gb-scotland", "en-us+f3".
        speed: words per minute (espeak-ng -s).
        pitch: 0..99 (espeak-ng -p).

    Returns:
        audio: np.ndarray float32 [L], sample rate 16000.
    """
    espeak = _require("espeak-ng")
    sox = _require("sox")
    with tempfile.TemporaryDirectory(prefix="speech_") as tmp:
        raw = os.path.join(tmp, "raw.wav")
        out = os.path.join(tmp, "out.wav")
        subprocess.run(
            [espeak, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "-w", raw, text],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # -D: no dither (keeps the conversion deterministic); 32-bit float output avoids requantisation.
        subprocess.run(
            [sox, "-D", raw, "-r", str(SAMPLE_RATE), "-c", "1", "-e", "floating-point", "-b", "32", out],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        audio, sr = sf.read(out, dtype="float32", always_2d=False)  # [L]
    assert sr == SAMPLE_RATE, sr
    audio = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return audio


def _fit_duration(text: str, voice: str, min_s: float, max_s: float) -> np.ndarray:
    """Synthesize `text` and adjust the speaking rate (deterministically) until it lasts in [min_s, max_s]."""
    speed = 160
    audio = synthesize(text, voice=voice, speed=speed)
    for _ in range(6):
        dur = len(audio) / SAMPLE_RATE
        if min_s <= dur <= max_s:
            return audio
        target = 0.5 * (min_s + max_s)
        speed = int(np.clip(round(speed * dur / target), 80, 450))
        audio = synthesize(text, voice=voice, speed=speed)
    dur = len(audio) / SAMPLE_RATE
    if dur > max_s:  # last resort: cut (still deterministic)
        audio = audio[: int(max_s * SAMPLE_RATE)]
    elif dur < min_s:  # pad with trailing silence
        audio = np.concatenate([audio, np.zeros(int(min_s * SAMPLE_RATE) - len(audio) + 1, np.float32)])
    return audio


def speech_corpus(cache_dir: Path, n: int = 6, min_s: float = 1.5, max_s: float = 4.0) -> list[tuple[str, np.ndarray]]:
    """Return `n` utterances (text, float32 16 kHz audio [L]) of 1.5-4 s, each with a different voice.

    Files are written as `cache_dir/utt{i:02d}.wav` (+ the text in `utt{i:02d}.txt`) and reused when present.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    corpus: list[tuple[str, np.ndarray]] = []
    for i in range(n):
        text = SENTENCES[i % len(SENTENCES)]
        voice = VOICES[i % len(VOICES)]
        wav = cache_dir / f"utt{i:02d}.wav"
        txt = cache_dir / f"utt{i:02d}.txt"
        tag = f"{voice}\t{text}"
        if wav.exists() and txt.exists() and txt.read_text() == tag:
            audio, sr = sf.read(wav, dtype="float32", always_2d=False)  # [L]
            assert sr == SAMPLE_RATE
        else:
            audio = _fit_duration(text, voice, min_s, max_s)
            sf.write(wav, audio, SAMPLE_RATE, subtype="FLOAT")
            txt.write_text(tag)
        corpus.append((text, np.asarray(audio, dtype=np.float32)))
    return corpus
