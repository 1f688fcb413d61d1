"""The demo model's step cost at a few batch sizes: each tick pushes one chunk to each of B streams (`push_many`) and
steps once; best of 3 x 40 ticks after 20 warm-up ticks, one torch thread. The README's 80 ms step costs.

    python bench/bench_step.py [--lookahead-ms 80] [--streams 1 2 8 16]
"""
import argparse
import time

import numpy as np
import torch

from nemotron_engine.cli import demo_model_dir
from nemotron_engine.engine import Engine
from nemotron_engine.loadtest import demo_audio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lookahead-ms", type=int, default=80)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 8, 16])
    a = p.parse_args()
    torch.set_num_threads(1)
    audio = np.concatenate(demo_audio())
    out = []
    for b in a.streams:
        eng = Engine(demo_model_dir(), max_streams=max(a.streams))
        streams = [eng.open_stream(a.lookahead_ms) for _ in range(b)]
        chunk = int(eng.cfg.sample_rate * (eng.cfg.lookahead_from_ms(a.lookahead_ms) + 1) * eng.cfg.frame_ms / 1000)
        pos = 0

        def tick():
            nonlocal pos
            if pos + (b - 1) * 1000 + chunk > audio.size:
                pos = 0
            eng.push_many(streams, np.stack([audio[pos + i * 1000: pos + i * 1000 + chunk] for i in range(b)]))
            pos += chunk
            eng.step()

        for _ in range(20):
            tick()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(40):
                tick()
            best = min(best, (time.perf_counter() - t) / 40 * 1e3)
        out.append(f"B={b} {best:.2f} ms")
    print(" | ".join(out))


if __name__ == "__main__":
    main()
