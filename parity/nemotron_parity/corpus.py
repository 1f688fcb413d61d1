"""The demo model's synthetic corpus: sentences from a small English grammar, spoken by espeak-ng in many voices.

Every choice is drawn from a seeded generator, and espeak-ng and the resampler are deterministic, so a given seed
always yields the same corpus. Splits:
- train: sentences of the training pool, spoken by the *seen* voices (accent x variant), random speed and pitch;
- test_seen: sentences never used in training, by seen voices;
- test_unseen: the same new sentences, by voices whose variant is never used in training.

    python -m nemotron_parity.corpus OUT_DIR [--train N] [--test N]   ->  OUT_DIR/{train,test_seen,test_unseen}.npz
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc"]
SEEN_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f5", "adam", "Alex", "edward", "john",
                 "max", "paul", "robert", "steph", "Andrea", "Annie", "belinda", "david", "iven", "quincy",
                 "shelby", "travis", "victor"]
UNSEEN_VARIANTS = ["m6", "f4", "linda", "Gene", "aunty", "benjamin"]

NAMES = ["anna", "peter", "maria", "john", "lucy", "david", "sarah", "tom", "emma", "james", "olivia", "henry",
         "grace", "oscar", "lily", "victor"]
ADJ = ["red", "blue", "green", "small", "big", "old", "new", "quiet", "loud", "happy", "tired", "bright", "dark",
       "warm", "cold", "heavy", "light", "fast", "slow", "clean", "busy", "empty", "full", "soft", "strong",
       "young", "early", "late", "open", "closed"]
NOUNS = ["dog", "cat", "house", "car", "tree", "river", "book", "table", "window", "door", "garden", "city",
         "train", "phone", "letter", "box", "bird", "horse", "street", "bridge", "school", "market", "doctor",
         "teacher", "child", "friend", "apple", "bottle", "chair", "ship", "road", "cup", "key", "bag", "room",
         "shop", "farmer", "kitchen", "picture", "song", "boat", "coat", "lamp", "clock", "map", "ticket", "shirt",
         "hill", "field", "cake"]
VERBS_T = ["sees", "likes", "finds", "takes", "moves", "paints", "opens", "closes", "carries", "washes", "buys",
           "sells", "brings", "needs", "wants", "watches", "follows", "cleans", "fixes", "holds"]
VERBS_PAST = ["saw", "liked", "found", "took", "moved", "painted", "opened", "closed", "carried", "washed",
              "bought", "sold", "brought", "needed", "wanted", "watched", "followed", "cleaned", "fixed", "held"]
VERBS_I = ["runs", "sleeps", "waits", "sings", "walks", "works", "laughs", "stops", "falls", "arrives", "leaves",
           "returns"]
PLACES = ["in the garden", "near the river", "at the market", "on the bridge", "behind the house", "in the city",
          "at school", "under the tree", "by the window", "on the road", "in the kitchen", "at the station"]
TIMES = ["today", "tomorrow", "yesterday", "every morning", "at night", "in the evening", "on monday",
         "on friday", "this week", "after lunch", "before dinner", "at noon"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "twenty", "thirty", "forty", "fifty", "hundred"]
QWORDS = ["where", "when", "why", "how"]


def plural(noun: str) -> str:
    return {"child": "children", "box": "boxes", "glass": "glasses"}.get(noun, noun + "s")


def sentence(rng: random.Random) -> str:
    """One sentence of the demo grammar (lower case, no punctuation: the model learns words, not casing)."""
    a, n = lambda: rng.choice(ADJ), lambda: rng.choice(NOUNS)
    forms = [
        lambda: f"the {a()} {n()} {rng.choice(VERBS_T)} the {n()}",
        lambda: f"{rng.choice(NAMES)} {rng.choice(VERBS_PAST)} the {a()} {n()} {rng.choice(TIMES)}",
        lambda: f"the {n()} {rng.choice(VERBS_I)} {rng.choice(PLACES)}",
        lambda: f"{rng.choice(NAMES)} has {rng.choice(NUMBERS)} {a()} {plural(n())}",
        lambda: f"{rng.choice(QWORDS)} did {rng.choice(NAMES)} leave the {n()}",
        lambda: f"{rng.choice(NAMES)} and {rng.choice(NAMES)} {rng.choice(VERBS_PAST)} a {n()} {rng.choice(PLACES)}",
        lambda: f"there are {rng.choice(NUMBERS)} {plural(n())} {rng.choice(PLACES)} {rng.choice(TIMES)}",
        lambda: f"please bring the {a()} {n()} to {rng.choice(NAMES)}",
        lambda: f"the {n()} is {a()} and the {n()} is {a()}",
        lambda: f"{rng.choice(NAMES)} {rng.choice(VERBS_I)} {rng.choice(TIMES)}",
    ]
    return rng.choice(forms)()


def vocabulary() -> set[str]:
    words = set(NAMES + ADJ + NOUNS + VERBS_T + VERBS_PAST + VERBS_I + NUMBERS + QWORDS)
    words |= {plural(w) for w in NOUNS}
    for phrase in PLACES + TIMES:
        words |= set(phrase.split())
    words |= {"the", "a", "has", "did", "leave", "and", "there", "are", "please", "bring", "to", "is"}
    return words


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str  # espeak-ng voice, e.g. "en-gb+m3"
    speed: int  # words per minute
    pitch: int  # 0..99


def voice_name(accent: str, variant: str) -> str:
    return accent if not variant else f"{accent}+{variant}"


def plan(seed: int, n_train: int, n_test: int) -> dict[str, list[Utterance]]:
    """The corpus as a list of utterances per split (no audio yet); test sentences never occur in train."""
    rng = random.Random(seed)
    test_texts: list[str] = []
    seen_texts: set[str] = set()
    while len(test_texts) < n_test:
        s = sentence(rng)
        if s not in seen_texts:
            seen_texts.add(s)
            test_texts.append(s)
    train_texts = []
    while len(train_texts) < n_train:
        s = sentence(rng)
        if s not in seen_texts:  # repeats inside train are allowed, test sentences are not
            train_texts.append(s)
    seen_voices = [voice_name(a, v) for a, v in itertools.product(ACCENTS, SEEN_VARIANTS)]
    unseen_voices = [voice_name(a, v) for a, v in itertools.product(ACCENTS, UNSEEN_VARIANTS)]

    def utt(text: str, voices: list[str]) -> Utterance:
        return Utterance(text, rng.choice(voices), rng.randint(120, 210), rng.randint(25, 75))

    return {
        "train": [utt(t, seen_voices) for t in train_texts],
        "test_seen": [utt(t, seen_voices) for t in test_texts],
        "test_unseen": [utt(t, unseen_voices) for t in test_texts],
    }


def speak(u: Utterance) -> np.ndarray:
    """espeak-ng (22050 Hz int16 on stdout) -> float32 16 kHz mono [L] (soxr, deterministic)."""
    import io

    import soundfile as sf
    import soxr

    raw = subprocess.run(["espeak-ng", "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch), "--stdout", u.text],
                         check=True, capture_output=True).stdout
    x, sr = sf.read(io.BytesIO(raw), dtype="float32", always_2d=False)
    return soxr.resample(x, sr, SAMPLE_RATE).astype(np.float32)


def synthesize_split(utts: list[Utterance], path: Path, workers: int | None = None) -> None:
    """Speak every utterance and store the split as one .npz: audio (int16, concatenated), offsets, texts, voices."""
    workers = workers or max(2, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:  # espeak-ng runs as a subprocess: threads suffice
        audio = list(pool.map(speak, utts, chunksize=16))
    lengths = np.array([len(a) for a in audio], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pcm = np.concatenate(audio)
    np.savez(path, pcm=np.round(np.clip(pcm, -1, 1) * 32767).astype(np.int16), offsets=offsets,
             texts=np.array([u.text for u in utts]), voices=np.array([u.voice for u in utts]),
             speeds=np.array([u.speed for u in utts]), pitches=np.array([u.pitch for u in utts]))


def load_split(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(audio float32 [L] per utterance, texts, voices)."""
    z = np.load(path)
    pcm, off = z["pcm"], z["offsets"]
    audio = [pcm[off[i]:off[i + 1]].astype(np.float32) / 32768.0 for i in range(len(off) - 1)]
    return audio, [str(t) for t in z["texts"]], [str(v) for v in z["voices"]]


def build(out: Path, seed: int = 20261127, n_train: int = 16000, n_test: int = 200) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    splits = plan(seed, n_train, n_test)
    counts = {}
    for name, utts in splits.items():
        path = out / f"{name}.npz"
        if not path.is_file():
            synthesize_split(utts, path)
        z = np.load(path)
        counts[name] = {"utterances": len(utts), "hours": round(len(z["pcm"]) / SAMPLE_RATE / 3600, 3),
                        "voices": len({u.voice for u in utts})}
    info = {"seed": seed, "splits": counts, "vocabulary_words": len(vocabulary()),
            "accents": ACCENTS, "seen_variants": SEEN_VARIANTS, "unseen_variants": UNSEEN_VARIANTS,
            "speed_wpm": [120, 210], "pitch": [25, 75]}
    (out / "corpus.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=16000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--seed", type=int, default=20261127)
    a = p.parse_args(argv)
    print(json.dumps(build(a.out, a.seed, a.train, a.test), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
