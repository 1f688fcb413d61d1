"""Word error rate of the demo model on the held-out synthetic sets, through the engine and through NeMo.

    python -m nemotron_parity.demo_eval WORK_DIR [--nemo] [--limit N] [--nemo-limit N] [--long-limit N]
                                         [--long-nemo N] [--max-long-s S] [--no-long]

WORK_DIR holds demo.nemo, its converted engine directory model/ and corpus/. For every lookahead and each test set
(new sentences by seen voices; the same sentences by unseen voices) the engine streams every utterance
(concurrently, in one engine) and reports WER; with --nemo, NeMo's own cache-aware streaming decodes the same audio
and the token sequences are compared one by one. Writes WORK_DIR/wer.json and prints markdown tables.

Long-form (issue 16; the corpus' long_*.npz, when present): at every lookahead the engine streams each 60-s stream
of long_seen and long_unseen (all at once, each one stream, no endpointing: one utterance from start to end, as
NeMo streams it) and the 10-minute stream long_10min, and reports their WER (reference: the sentences' texts
joined by spaces). The 10-minute stream's WER per minute: every reference sentence belongs to the minute that
holds its midpoint; the minutes are cut between sentences (in the middle of the pause between the last sentence
of a minute and the first of the next), and each hypothesis word goes to the minute that holds its first token's
timestamp (the encoder frame that emitted it, Result.timestamps_ms); WER per minute = edit distance of the
minute's hypothesis words to its reference words over its reference words. A word emitted on the wrong side of a
cut (late emission across a short pause) counts as an error in both minutes; the whole-stream WER is the plain
alignment. With --nemo, NeMo's streaming decodes a sample (--long-nemo, default the first 60-s stream of seen
voices) at every lookahead and its tokens are compared with the engine's.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import corpus as C


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(r.split()) for r in refs))


def normalise(text: str) -> str:
    return " ".join("".join(ch for ch in text.lower() if ch.isalnum() or ch in " '").split())


def engine_stream_all(model_dir: Path, audio: list[np.ndarray], lookahead_ms: int, results: bool = False) -> list:
    """Every utterance as its own stream, all open at once in one engine -> (text, tokens) per utterance (or, with
    results, the engine's Result: text, tokens, timestamps_ms)."""
    from nemotron_engine import Engine

    with Engine(model_dir, max_streams=len(audio)) as eng:
        out = eng.transcribe_many(audio, lookahead_ms)
    return out if results else [(r.text, r.tokens) for r in out]


def word_times(tokenizer, tokens: list[int], stamps_ms: list[int]) -> list[tuple[str, float]]:
    """The hypothesis' words with the time (s) of each word's first token ("▁" starts a word), normalised."""
    groups: list[tuple[list[int], int]] = []
    for tok, ms, piece in zip(tokens, stamps_ms, tokenizer.pieces(tokens)):
        if piece.startswith("\u2581") or not groups:
            groups.append(([], ms))
        groups[-1][0].append(tok)
    out = []
    for ids, ms in groups:
        for w in normalise(tokenizer.decode(ids)).split():
            out.append((w, ms / 1000))
    return out


def per_minute(stream, words: list[tuple[str, float]], minute_s: float = 60.0) -> list[dict]:
    """WER per minute of a long stream (see the module docstring): stream is a corpus.LongStream, words its
    hypothesis as word_times gives -> [{minute, ref_words, hyp_words, errors, wer}]."""
    import bisect
    import math

    n = max(1, math.ceil(stream.seconds / minute_s - 1e-9))
    sents = stream.sentences
    bins = [min(int((a + b) / 2 // minute_s), n - 1) for _, a, b in sents]
    cuts = []
    for m in range(1, n):
        before = [b for (_, _, b), k in zip(sents, bins) if k < m]
        after = [a for (_, a, _), k in zip(sents, bins) if k >= m]
        cuts.append((max(before) + min(after)) / 2 if before and after else m * minute_s)
    ref = [[] for _ in range(n)]
    for (t, _, _), k in zip(sents, bins):
        ref[k] += normalise(t).split()
    hyp = [[] for _ in range(n)]
    for w, t in words:
        hyp[bisect.bisect_right(cuts, t)].append(w)
    rows = []
    for m in range(n):
        e = edit_distance(ref[m], hyp[m])
        rows.append({"minute": m + 1, "ref_words": len(ref[m]), "hyp_words": len(hyp[m]), "errors": e,
                     "wer": round(100 * e / max(1, len(ref[m])), 2)})
    return rows


def truncate(stream, seconds: float | None):
    """The stream's first `seconds` (for quick runs), cut before the first sentence that does not fit."""
    from .corpus import LongStream

    if seconds is None or seconds >= stream.seconds:
        return stream
    keep = [x for x in stream.sentences if x[2] <= seconds]
    cut = min([seconds] + [a for _, a, b in stream.sentences if b > seconds])
    return LongStream(stream.audio[: int(cut * C.SAMPLE_RATE)], stream.voice, keep)


def evaluate_long(work: Path, cfg, use_nemo: bool, long_limit: int | None = None, long_nemo: int = 1,
                  max_long_s: float | None = None) -> tuple[list[dict], list[dict]]:
    """The long-form measurements (module docstring) -> (rows per set and lookahead, rows of the 10-min stream)."""
    from nemotron_engine.tokenizer import Tokenizer

    tokenizer = Tokenizer(work / "model" / "tokenizer.model")
    sets = {}
    for name in ("long_seen", "long_unseen", "long_10min"):
        path = work / "corpus" / f"{name}.npz"
        if path.is_file():
            streams = [truncate(x, max_long_s) for x in C.load_long(path)]
            sets[name] = streams[:long_limit] if long_limit and name != "long_10min" else streams
    rows, tenmin = [], []
    model = None
    for r in cfg.lookaheads:
        ms = (r + 1) * cfg.frame_ms
        for name, streams in sets.items():
            t0 = time.time()
            out = engine_stream_all(work / "model", [x.audio for x in streams], ms, results=True)
            refs = [normalise(x.text) for x in streams]
            hyps = [normalise(res.text) for res in out]
            row = {"set": name, "lookahead_ms": ms, "streams": len(streams),
                   "seconds": round(sum(x.seconds for x in streams), 1),
                   "wer_engine": round(100 * wer(refs, hyps), 2), "engine_s": round(time.time() - t0, 1)}
            if name == "long_10min":
                pm = per_minute(streams[0], word_times(tokenizer, out[0].tokens, out[0].timestamps_ms))
                row.update(per_minute=pm, first_minute_wer=pm[0]["wer"], last_minute_wer=pm[-1]["wer"])
                tenmin.append(row)
            if use_nemo and name == "long_seen" and long_nemo:
                from .nemo_harness import load_nemo, nemo_stream

                model = model or load_nemo(work / "demo.nemo")
                t0 = time.time()
                k = min(long_nemo, len(streams))
                nemo_tokens = [nemo_stream(model, x.audio, (cfg.left_context, r)).tokens for x in streams[:k]]
                mism = sum(list(e.tokens) != list(n) for e, n in zip(out, nemo_tokens))
                row.update(nemo_s=round(time.time() - t0, 1), nemo_compared=k, token_mismatches=mism)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_minute"}), flush=True)
    return rows, tenmin


def evaluate(work: Path, use_nemo: bool, limit: int | None = None, nemo_limit: int | None = None,
             long: bool = True, long_limit: int | None = None, long_nemo: int = 1,
             max_long_s: float | None = None) -> dict:
    from nemotron_engine.config import ModelConfig

    cfg = ModelConfig.load(work / "model")
    rows = []
    for split in ("test_seen", "test_unseen"):
        audio, texts, _ = C.load_split(work / "corpus" / f"{split}.npz")
        if limit:
            audio, texts = audio[:limit], texts[:limit]
        refs = [normalise(t) for t in texts]
        for r in cfg.lookaheads:
            ms = (r + 1) * cfg.frame_ms
            t0 = time.time()
            out = engine_stream_all(work / "model", audio, ms)
            row = {"split": split, "lookahead_ms": ms, "utterances": len(audio),
                   "wer_engine": round(100 * wer(refs, [normalise(t) for t, _ in out]), 2),
                   "engine_s": round(time.time() - t0, 1)}
            if use_nemo:
                from .nemo_harness import load_nemo, nemo_stream

                model = load_nemo(work / "demo.nemo")
                t0 = time.time()
                k = len(audio) if nemo_limit is None else min(nemo_limit, len(audio))
                nemo_tokens = [nemo_stream(model, a, (cfg.left_context, r)).tokens for a in audio[:k]]
                mism = sum(list(e[1]) != list(n) for e, n in zip(out, nemo_tokens))
                row.update(nemo_s=round(time.time() - t0, 1), nemo_compared=k, token_mismatches=mism)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows}
    if long:
        result["long_rows"], _ = evaluate_long(work, cfg, use_nemo, long_limit, long_nemo, max_long_s)
        result["long_settings"] = {"long_limit": long_limit, "long_nemo": long_nemo if use_nemo else 0,
                                   "max_long_s": max_long_s}
    (work / "wer.json").write_text(json.dumps(result, indent=1))
    return result


def markdown(result: dict) -> str:
    lines = ["| lookahead | WER seen voices | WER unseen voices | engine = NeMo, tokens |", "|---|---|---|---|"]
    by = {}
    for r in result["rows"]:
        by.setdefault(r["lookahead_ms"], {})[r["split"]] = r
    for ms in sorted(by, reverse=True):
        s, u = by[ms].get("test_seen", {}), by[ms].get("test_unseen", {})
        agree = "n/a"
        if "token_mismatches" in s:
            n = s["nemo_compared"] + u.get("nemo_compared", 0)
            agree = f"{n - s['token_mismatches'] - u.get('token_mismatches', 0)}/{n} utterances identical"
        lines.append(f"| {ms} ms | {s.get('wer_engine', float('nan')):.1f} % | {u.get('wer_engine', float('nan')):.1f} % "
                     f"| {agree} |")
    return "\n".join(lines)


def markdown_long(result: dict) -> str:
    """The long-form table: WER at every lookahead on the isolated sets, the 60-s streams and the 10-minute stream
    (whole, first minute, last minute), and the engine = NeMo token check on the long-form sample."""
    if not result.get("long_rows"):
        return "(long-form not measured)"
    iso, by = {}, {}
    for r in result["rows"]:
        iso.setdefault(r["lookahead_ms"], {})[r["split"]] = r["wer_engine"]
    for r in result["long_rows"]:
        by.setdefault(r["lookahead_ms"], {})[r["set"]] = r
    f = lambda x: "n/a" if x is None else f"{x:.1f} %"
    lines = ["| lookahead | isolated, seen voices | isolated, unseen voices | 60-s streams, seen voices | "
             "60-s streams, unseen voices | 10-min stream | its first minute | its last minute | "
             "engine = NeMo, tokens (long-form sample) |", "|---|---|---|---|---|---|---|---|---|"]
    for ms in sorted(by, reverse=True):
        b, i = by[ms], iso.get(ms, {})
        s, u, t = b.get("long_seen", {}), b.get("long_unseen", {}), b.get("long_10min", {})
        agree = "n/a"
        if "token_mismatches" in s:
            agree = f"{s['nemo_compared'] - s['token_mismatches']}/{s['nemo_compared']} streams of 60 s identical"
        lines.append(f"| {ms} ms | {f(i.get('test_seen'))} | {f(i.get('test_unseen'))} | {f(s.get('wer_engine'))} | "
                     f"{f(u.get('wer_engine'))} | {f(t.get('wer_engine'))} | {f(t.get('first_minute_wer'))} | "
                     f"{f(t.get('last_minute_wer'))} | {agree} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--nemo", action="store_true", help="also decode with NeMo and compare tokens")
    p.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    p.add_argument("--nemo-limit", type=int, default=None, help="compare tokens with NeMo on the first N of each set")
    p.add_argument("--no-long", action="store_true", help="skip the long-form sets")
    p.add_argument("--long-limit", type=int, default=None, help="first N streams of each 60-s set")
    p.add_argument("--long-nemo", type=int, default=1,
                   help="with --nemo: 60-s streams of seen voices NeMo decodes at every lookahead (default 1)")
    p.add_argument("--max-long-s", type=float, default=None,
                   help="only the first S seconds of every long-form stream (quick runs)")
    a = p.parse_args(argv)
    result = evaluate(a.work, a.nemo, a.limit, a.nemo_limit, not a.no_long, a.long_limit, a.long_nemo, a.max_long_s)
    print(markdown(result))
    if not a.no_long:
        print()
        print(markdown_long(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
