"""A long stream stays flat: step time and memory in its last minute against its first.

    python bench/bench_long_stream.py [--model weights/demo] [--minutes 60] [--lookahead-ms 1120] [--endpoint-ms 640]
                                      [--threads 1] [--json OUT.json]

One stream of the model's example recordings looped with pauses between them (as a long conversation), pushed as
fast as the engine consumes it (push what `room()` allows, then step), with endpointing so that utterances close
and their segments are handed out. Per minute of audio: wall time of the steps (per stream-step), the process's
resident memory at the end of the minute, segments closed, and the open utterance's size. The first and last
minutes are printed side by side; nothing here depends on the wall clock but the timings.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from nemotron_engine import Engine


def rss_mb() -> float:
    """Resident memory now (VmRSS; ru_maxrss is the peak, which could not show a fall)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def close(minute: dict) -> dict:
    minute["rss_mb"] = round(rss_mb(), 1)
    minute["us_per_stream_step"] = round(1e6 * minute.pop("step_s") / max(minute["stream_steps"], 1), 1)
    return minute


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "weights" / "demo"))
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--lookahead-ms", type=int, default=1120)
    p.add_argument("--endpoint-ms", type=int, default=640)
    p.add_argument("--pause-s", type=float, default=0.8, help="silence between the recordings")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    engine = Engine(a.model, endpoint_ms=a.endpoint_ms, max_streams=1)
    sr = engine.cfg.sample_rate
    clips = [sf.read(w, dtype="float32")[0] for w in sorted((Path(a.model) / "examples").glob("*.wav"))]
    pause = np.zeros(int(a.pause_s * sr), np.float32)
    loop = np.concatenate([np.concatenate([c, pause]) for c in clips])
    total = int(a.minutes * 60 * sr)
    s = engine.open_stream(a.lookahead_ms)
    minutes, pushed, minute = [], 0, None
    while not s.done:
        if pushed < total:
            n = min(s.room(), total - pushed)
            at = pushed % len(loop)
            piece = np.concatenate([loop[at:], loop] if at + n > len(loop) else [loop[at:]])[:n]
            s.push(piece)
            pushed += n
            if pushed == total:
                s.finish()
        m = int(engine._utt_start[s.slot] // (60 * sr))  # the minute the open utterance starts in
        if minute is None or m != minute["minute"]:
            if minute is not None:
                minutes.append(close(minute))
            minute = {"minute": m, "step_s": 0.0, "stream_steps": 0, "segments": 0, "open_tokens_max": 0}
        t0, k0 = time.perf_counter(), engine.times.stream_steps
        ups = engine.step()
        minute["step_s"] += time.perf_counter() - t0
        minute["stream_steps"] += engine.times.stream_steps - k0
        minute["segments"] += sum(u.segment is not None for u in ups)
        minute["open_tokens_max"] = max(minute["open_tokens_max"], len(s.tokens))
    minutes.append(close(minute))
    first, last = minutes[0], minutes[-2] if len(minutes) > 2 else minutes[-1]  # the last whole minute
    report = {"model": a.model, "minutes": a.minutes, "lookahead_ms": a.lookahead_ms, "endpoint_ms": a.endpoint_ms,
              "threads": a.threads, "per_minute": minutes, "first": first, "last": last}
    print(f"{'minute':>7s} {'us/stream-step':>15s} {'RSS MB':>8s} {'segments':>9s} {'open tokens max':>16s}")
    for m in (first, last):
        print(f"{m['minute']:7d} {m['us_per_stream_step']:15.1f} {m['rss_mb']:8.1f} {m['segments']:9d} "
              f"{m['open_tokens_max']:16d}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
