"""The demo model's synthetic corpus: sentences from a small English grammar, spoken by espeak-ng in many voices.

Every choice is drawn from a seeded generator, and espeak-ng and the resampler are deterministic, so a given seed
always yields the same corpus. Splits:
- train: sentences of the training pool, spoken by the *seen* voices (accent x variant), random speed and pitch;
- test_seen: sentences never used in training, by seen voices;
- test_unseen: the same new sentences, by voices whose variant is never used in training.

Long-form data (continuous speech, issue 16), see "Long-form streams" below:
- training streams are built on the fly from the train split's audio (no new synthesis): sentences of one voice
  back to back with pauses, 5-30 s (plan_train_streams, render);
- long-form test sets, from the held-out (test) sentences only, each stream spoken by one speaker (voice, speed,
  pitch) and synthesised here: 60-s streams by seen voices (long_seen) and by unseen voices (long_unseen), one
  10-minute stream (long_10min), and ~20-s candidates for the shipped long example (long_example).

    python -m nemotron_parity.corpus OUT_DIR [--train N] [--test N]
        ->  OUT_DIR/{train,test_seen,test_unseen}.npz, OUT_DIR/long_{seen,unseen,10min,example}.npz
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
from typing import Callable, Sequence

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


def voices() -> tuple[list[str], list[str]]:
    """(seen voices, unseen voices): every accent x seen variant, every accent x unseen variant."""
    return ([voice_name(a, v) for a, v in itertools.product(ACCENTS, SEEN_VARIANTS)],
            [voice_name(a, v) for a, v in itertools.product(ACCENTS, UNSEEN_VARIANTS)])


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
    seen_voices, unseen_voices = voices()

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


# ---------------------------------------------------------------------------------------------------------------
# Long-form streams
# ---------------------------------------------------------------------------------------------------------------
# A stream is sentences back to back, each join a pause of silence: none for ZERO_PAUSE_P of the joins, else drawn
# uniformly in [0, PAUSE_MAX_S] s. (espeak-ng's own leading and trailing silence of each sentence, tens of ms, stays
# in, so a zero pause is still a short gap.) The transcript of a stream is its sentences' texts joined by spaces.

LONG_MIN_S, LONG_MAX_S = 5.0, 30.0  # training streams
PAUSE_MAX_S = 1.5
ZERO_PAUSE_P = 0.2
# long-form test sets: name -> (streams, seconds, seen voices?, padded with silence to exactly `seconds`)
LONG_TESTS = {"long_seen": (5, 60.0, True, True), "long_unseen": (5, 60.0, False, True),
              "long_10min": (1, 600.0, True, True), "long_example": (8, 20.0, True, False)}


def draw_pause(rng: random.Random) -> int:
    """One join's pause in samples: 0 with probability ZERO_PAUSE_P, else uniform in [0, PAUSE_MAX_S] s."""
    if rng.random() < ZERO_PAUSE_P:
        return 0
    return int(round(rng.uniform(0.0, PAUSE_MAX_S) * SAMPLE_RATE))


@dataclass(frozen=True)
class StreamPlan:
    """A training stream: utterances of one split (indices) and the pause before each one after the first."""

    items: tuple[int, ...]
    pauses: tuple[int, ...]  # samples, len(items) - 1

    def samples(self, lengths: Sequence[int]) -> int:
        return int(sum(lengths[i] for i in self.items) + sum(self.pauses))

    def text(self, texts: Sequence[str]) -> str:
        return " ".join(texts[i] for i in self.items)


def plan_train_streams(rng: random.Random, lengths: Sequence[int], voices_: Sequence[str], n: int,
                       min_s: float = LONG_MIN_S, max_s: float = LONG_MAX_S) -> list[StreamPlan]:
    """n training streams from a split's utterances (their lengths in samples and voices): each stream draws a
    target length uniformly in [min_s, max_s] and one voice, and takes that voice's utterances in random order
    (without repeats) with a pause before each, while the total stays within the target (or below min_s; never
    above max_s). A voice with too few utterances to reach min_s is drawn again (ValueError if none can)."""
    by_voice: dict[str, list[int]] = {}
    for i, v in enumerate(voices_):
        by_voice.setdefault(v, []).append(i)
    names = sorted(by_voice)
    lo, hi = int(min_s * SAMPLE_RATE), int(max_s * SAMPLE_RATE)
    out = []
    while len(out) < n:
        target = int(rng.uniform(min_s, max_s) * SAMPLE_RATE)
        for _ in range(50):
            pool = by_voice[rng.choice(names)]
            items, pauses, total = [], [], 0
            for i in rng.sample(pool, len(pool)):
                gap = draw_pause(rng) if items else 0
                new = total + gap + int(lengths[i])
                if new > hi:
                    continue
                if new > target and total >= lo:
                    break
                items.append(i)
                if len(items) > 1:
                    pauses.append(gap)
                total = new
            if total >= lo:
                out.append(StreamPlan(tuple(items), tuple(pauses)))
                break
        else:
            raise ValueError(f"no voice has enough utterances for a {min_s}-s stream")
    return out


def render(audio: Sequence[np.ndarray], p: StreamPlan) -> np.ndarray:
    """The stream's samples: its utterances with zeros for the pauses -> float32 [L]."""
    parts = [audio[p.items[0]]]
    for gap, i in zip(p.pauses, p.items[1:]):
        parts += [np.zeros(gap, np.float32), audio[i]]
    return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass(frozen=True)
class LongTestPlan:
    """A long-form test stream before synthesis: one speaker, a sequence of held-out sentences (more than fit) and
    the pause before each one after the first; assemble() speaks them in order until `seconds` is full."""

    voice: str
    speed: int
    pitch: int
    texts: tuple[str, ...]
    pauses: tuple[int, ...]  # samples, len(texts) - 1
    seconds: float
    pad: bool  # pad with trailing silence to exactly `seconds`


def plan_long_tests(seed: int, test_texts: Sequence[str], sets: dict | None = None) -> dict[str, list[LongTestPlan]]:
    """The long-form test sets' plans (deterministic in seed): every sentence is one of `test_texts` (the held-out
    sentences), in a fresh random order per stream (a new order once all are used). Seen voices for long_seen,
    long_10min and long_example, unseen ones for long_unseen; speed and pitch drawn per stream (one speaker)."""
    rng = random.Random(seed + 16)  # issue 16: a generator of its own, the splits' draws are untouched
    seen, unseen = voices()
    texts = sorted(set(test_texts))
    out = {}
    for name, (n, seconds, seen_voices, pad) in (sets or LONG_TESTS).items():
        out[name] = []
        for _ in range(n):
            voice = rng.choice(seen if seen_voices else unseen)
            speed, pitch = rng.randint(120, 210), rng.randint(25, 75)
            k = int(seconds / 0.5) + 2  # more sentences than fit (the shortest last well over 0.5 s)
            order: list[str] = []
            while len(order) < k:
                order += rng.sample(texts, len(texts))
            order = order[:k]
            out[name].append(LongTestPlan(voice, speed, pitch, tuple(order),
                                          tuple(draw_pause(rng) for _ in range(k - 1)), seconds, pad))
    return out


@dataclass
class LongStream:
    """A long-form test stream: audio, its transcript and every sentence's text and place in it (seconds)."""

    audio: np.ndarray  # float32 [L]
    voice: str
    sentences: list[tuple[str, float, float]]  # (text, start_s, end_s)

    @property
    def text(self) -> str:
        return " ".join(t for t, _, _ in self.sentences)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def assemble(p: LongTestPlan, speak_fn: Callable[[Utterance], np.ndarray] | None = None,
             batch: int = 16) -> LongStream:
    """Speak the plan's sentences in order (`batch` at a time, concurrently) and join them with their pauses while
    the stream stays within p.seconds; then pad it with silence to p.seconds if p.pad. The result depends only on
    the plan (the batching only decides how many are spoken ahead)."""
    speak_fn = speak_fn or speak
    parts: list[np.ndarray] = []
    sentences: list[tuple[str, float, float]] = []
    limit = int(round(p.seconds * SAMPLE_RATE))
    total = 0
    k = 0
    with ThreadPoolExecutor(batch) as pool:
        while k < len(p.texts):
            utts = [Utterance(t, p.voice, p.speed, p.pitch) for t in p.texts[k:k + batch]]
            full = False
            for j, a in enumerate(pool.map(speak_fn, utts)):
                gap = p.pauses[k + j - 1] if k + j else 0
                if total + gap + len(a) > limit:
                    full = True
                    break
                parts += [np.zeros(gap, np.float32), np.asarray(a, np.float32)]
                start = total + gap
                total = start + len(a)
                sentences.append((p.texts[k + j], start / SAMPLE_RATE, total / SAMPLE_RATE))
            if full:
                break
            k += batch
    if p.pad:
        parts.append(np.zeros(limit - total, np.float32))
    # stored as int16 (like the splits): quantised here, so a stream is the same before and after save_long
    audio = np.round(np.clip(np.concatenate(parts), -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768.0
    return LongStream(audio, p.voice, sentences)


def save_long(path: Path, streams: list[LongStream]) -> None:
    lengths = np.array([len(s.audio) for s in streams], dtype=np.int64)
    np.savez(path, pcm=np.round(np.concatenate([s.audio for s in streams]) * 32768).astype(np.int16),
             offsets=np.concatenate([[0], np.cumsum(lengths)]), voices=np.array([s.voice for s in streams]),
             sent_text=np.array([t for s in streams for t, _, _ in s.sentences]),
             sent_start=np.array([a for s in streams for _, a, _ in s.sentences], dtype=np.float64),
             sent_end=np.array([b for s in streams for _, _, b in s.sentences], dtype=np.float64),
             sent_stream=np.array([k for k, s in enumerate(streams) for _ in s.sentences], dtype=np.int64))


def load_long(path: Path) -> list[LongStream]:
    z = np.load(path)
    pcm, off = z["pcm"], z["offsets"]
    out = []
    for k in range(len(off) - 1):
        sel = np.flatnonzero(z["sent_stream"] == k)
        out.append(LongStream(pcm[off[k]:off[k + 1]].astype(np.float32) / 32768.0, str(z["voices"][k]),
                              [(str(z["sent_text"][i]), float(z["sent_start"][i]), float(z["sent_end"][i]))
                               for i in sel]))
    return out


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
    long_counts = {}
    for name, streams in plan_long_tests(seed, [u.text for u in splits["test_seen"]]).items():
        path = out / f"{name}.npz"
        if not path.is_file():
            save_long(path, [assemble(p) for p in streams])
        z = np.load(path)
        long_counts[name] = {"streams": len(streams), "seconds": [round(float(n) / SAMPLE_RATE, 2) for n in
                                                                  np.diff(z["offsets"])],
                             "sentences": int(len(z["sent_text"]))}
    info = {"seed": seed, "splits": counts, "vocabulary_words": len(vocabulary()),
            "accents": ACCENTS, "seen_variants": SEEN_VARIANTS, "unseen_variants": UNSEEN_VARIANTS,
            "speed_wpm": [120, 210], "pitch": [25, 75],
            "longform": {"train_streams_s": [LONG_MIN_S, LONG_MAX_S], "pause_s": [0.0, PAUSE_MAX_S],
                         "zero_pause_fraction": ZERO_PAUSE_P, "test_sets": long_counts}}
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
