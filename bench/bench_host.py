"""Host overhead: the engine's own work per stream-step, with a micro model so that the model math is negligible.

    python bench/bench_host.py [--streams 256 1024 4096] [--lookahead-ms 80] [--ticks 10] [--threads T]
                               [--push many each] [--json OUT]

Builds a micro model on the fly (`nemotron_engine.micro_model`: the demo's format, vocabulary and feature frontend,
1 layer x 16, random weights, the blank bias calibrated to about 0.25 tokens per encoder frame), opens N streams,
and per tick pushes `--push-ms` (default: one chunk, the lookahead) of the demo's example audio to every stream and
steps the engine once; after `--warmup` ticks, `--ticks` ticks are measured
(`nemotron_engine.loadtest.host_overhead`). Per stream-step (one stream's chunk decoded in a step), in microseconds
of wall time:
- push: the push calls (a copy into the stream's ring): one `Engine.push_many` per tick (`--push many`, the default)
  or a `Stream.push` per stream (`--push each`);
- step: the engine's own `engine.times.step_s`, of which ops (the calls of the op table, timed by passing the engine
  an explicit timed `Ops` table: products, norms, attention, conv module, greedy decoding, the model math) and
  features (`engine.times.features_s`: the step's batched log-mel computation);
- host = push + step - ops (the engine's own work plus the feature math), host excl. features = host - features.
The process's objects are frozen for the garbage collector first (`engine.freeze_gc()`, as the server and the
loadtest do; `--no-gc-freeze` leaves them). CPU time of the loop's thread and of the whole process per stream-step is printed beside them. Not a timed test:
figures depend on the machine and its load; record the command and the machine with them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from nemotron_engine.engine import freeze_gc
from nemotron_engine.loadtest import host_line, host_overhead, machine_info
from nemotron_engine.micro_model import build_micro_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--lookahead-ms", type=int, default=80)
    p.add_argument("--push-ms", type=float, default=None, help="audio per tick (default: the lookahead, one chunk)")
    p.add_argument("--ticks", type=int, default=10, help="measured ticks per N (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="ticks before measuring (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--backend", default=None, choices=["cpu", "torch"], help="the op table (default: cpu)")
    p.add_argument("--push", nargs="+", default=["many"], choices=["many", "each"],
                   help="how each tick pushes: one Engine.push_many for all streams (many, the default) or a "
                        "Stream.push per stream (each); several: each N runs once per way, side by side")
    p.add_argument("--no-gc-freeze", action="store_true",
                   help="leave the garbage collector as it is (default: engine.freeze_gc() after the model is built, as "
                        "the server does at start-up)")
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"command": "python bench/bench_host.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine_info(), "results": []}
    with tempfile.TemporaryDirectory(prefix="nemotron-micro-") as tmp:
        t = time.perf_counter()
        model = build_micro_model(tmp)
        if not args.no_gc_freeze:
            freeze_gc()
        print(f"micro model built in {time.perf_counter() - t:.1f} s; torch threads {torch.get_num_threads()}",
              flush=True)
        for n, push in ((n, push) for n in args.streams for push in args.push):
            rep = host_overhead(model, n, args.lookahead_ms, ticks=args.ticks, warmup_ticks=args.warmup,
                                push_ms=args.push_ms, backend=args.backend, push=push)
            out["results"].append(rep)
            print(f"push {push:4s} " + host_line(rep) + f"; CPU {rep['cpu_thread_us_per_stream_step']:.1f} us (loop thread), "
                  f"{rep['cpu_process_us_per_stream_step']:.1f} us (process)", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
