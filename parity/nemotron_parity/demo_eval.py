"""Word error rate of the demo model on the held-out synthetic sets, through the engine and through NeMo.

    python -m nemotron_parity.demo_eval WORK_DIR [--nemo] [--limit N]

WORK_DIR holds demo.nemo, its converted engine directory model/ and corpus/. For every lookahead and each test set
(new sentences by seen voices; the same sentences by unseen voices) the engine streams every utterance
(concurrently, in one engine) and reports WER; with --nemo, NeMo's own cache-aware streaming decodes the same audio
and the token sequences are compared one by one. Writes WORK_DIR/wer.json and prints a markdown table.
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


def engine_stream_all(model_dir: Path, audio: list[np.ndarray], lookahead_ms: int) -> list[tuple[str, list[int]]]:
    """Every utterance as its own stream, all open at once in one engine -> (text, tokens) per utterance."""
    from nemotron_engine import Engine

    with Engine(model_dir, max_streams=len(audio)) as eng:
        return [(r.text, r.tokens) for r in eng.transcribe_many(audio, lookahead_ms)]


def evaluate(work: Path, use_nemo: bool, limit: int | None = None, nemo_limit: int | None = None) -> dict:
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path)
    p.add_argument("--nemo", action="store_true", help="also decode with NeMo and compare tokens")
    p.add_argument("--limit", type=int, default=None, help="first N utterances of each set")
    p.add_argument("--nemo-limit", type=int, default=None, help="compare tokens with NeMo on the first N of each set")
    a = p.parse_args(argv)
    print(markdown(evaluate(a.work, a.nemo, a.limit, a.nemo_limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
