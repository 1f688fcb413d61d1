"""Today's loadtest against an engine from before the serving core (issue 15), for side-by-side capacity runs.

The serving-core issue asks for real-time capacity "on the code before this issue and after it, side by side". The
loadtest arrived with the serving core and reads what only the serving core has: `Engine.push_many`, `rooms`,
`max_queued_s` and `times`. This script runs this checkout's `nemotron_engine/loadtest.py` unchanged against an old
checkout's engine (run from that checkout's root, its package first on the path), with those members added:

- push_many(streams, pcm) pushes each row with the old `Stream.push` (which ran the mel frontend per stream);
- rooms(streams) reports unbounded room (the old engine queues without bound: nothing is ever refused);
- times counts the steps, the streams stepped (the old step's updates) and the time inside step(); the features
  time is 0, since the old engine computed its features in push (counted in the loadtest's push time);
- freeze_gc, as the loadtest calls it.

    git worktree add --detach /tmp/before 281646a
    cd /tmp/before && python <this checkout>/bench/loadtest_legacy.py --lookahead-ms 80 --streams 2 --run-s 60 \
        --threads 1 --out OUT

Every loadtest argument is accepted (`--micro` and `--url` are not: the old engine predates them).
"""
from __future__ import annotations

import gc
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LOADTEST = HERE.parent / "nemotron_engine" / "loadtest.py"


def patch_old_engine():
    sys.path.insert(0, str(Path.cwd()))
    import nemotron_engine
    import nemotron_engine.engine as eng

    if Path(nemotron_engine.__file__).resolve().parent == LOADTEST.parent:
        raise SystemExit("run this from the root of the OLD checkout (its nemotron_engine first on the path), "
                         f"not from this one: {nemotron_engine.__file__}")
    if hasattr(eng.Engine, "push_many"):
        raise SystemExit("this engine already has push_many: run today's `nemotron-engine loadtest` directly")

    from dataclasses import dataclass

    @dataclass
    class StepTimes:
        steps: int = 0
        stream_steps: int = 0
        step_s: float = 0.0
        features_s: float = 0.0  # the old engine computes features in push

        def reset(self):
            self.steps = self.stream_steps = 0
            self.step_s = self.features_s = 0.0

    def freeze_gc():
        gc.collect()
        gc.freeze()

    E = eng.Engine
    old_init, old_step, old_group = E.__init__, E.step, E._run_group

    def __init__(self, *a, **k):
        old_init(self, *a, **k)
        self.times = StepTimes()
        self.max_queued_s = float("inf")

    def step(self, streams=None):
        t0 = time.perf_counter()
        updates = old_step(self, streams)
        self.times.steps += 1
        self.times.step_s += time.perf_counter() - t0
        return updates

    def _run_group(self, r, first, items):
        self.times.stream_steps += len(items)
        return old_group(self, r, first, items)

    def push_many(self, streams, pcm):
        for s, row in zip(streams, np.asarray(pcm)):
            s.push(row)

    def rooms(self, streams):
        return np.full(len(streams), np.iinfo(np.int64).max // 2, dtype=np.int64)

    E.__init__, E.step, E._run_group, E.push_many, E.rooms = __init__, step, _run_group, push_many, rooms
    eng.freeze_gc = freeze_gc
    eng.StepTimes = StepTimes
    eng.Stream.room = lambda self: np.iinfo(np.int64).max // 2
    return nemotron_engine


def main() -> int:
    pkg = patch_old_engine()
    # today's loadtest as a module of the old package, so that its relative imports find the patched engine
    spec = importlib.util.spec_from_file_location(f"{pkg.__name__}.loadtest_now", LOADTEST)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mod.add_arguments(p)
    args = p.parse_args()
    if getattr(args, "micro", False) or getattr(args, "url", None):
        p.error("--micro and --url need today's engine")
    return mod.cli_run(args)


if __name__ == "__main__":
    sys.exit(main())
