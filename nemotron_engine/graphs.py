"""The steady-state encoder step over static buffers, one per (lookahead, batch bucket): captured as CUDA graphs at
start-up and replayed every step (`Engine(..., graphs=True)`).

A step of B streams of lookahead r that are past their first chunk (the steady state: every step of a stream but its
first and its tail) runs the encoder (`encoder.encoder_step`) and the joint's input (`encoder.joint_input`) on a batch
padded to the smallest bucket >= B. The bucket's buffers are fixed at start-up: the chunk windows `mel` [Bb, 9 + n,
n_mels] (model dtype) and the slots `slots` [Bb] (the first rows of one buffer per lookahead, the largest bucket's),
and the outputs the graph's last kernels write. The step copies its B
windows and slots into the first B rows and replays the graph; the padding rows point at a scratch slot of the pool
(`StreamCache(scratch_slot=True)`) that no stream ever holds, so their cache writes land nowhere a stream reads. The
greedy decoder then runs on the first B rows, outside the graph (it returns its tokens to the host).

Exactness: the graph replays the very kernels, with the very arguments, that the same padded batch launches eagerly,
so `graphs=True` gives the same bits with and without capture (tests on the GPU: scripts/gpu_check.sh). Against the
engine without graphs (batch B, not padded) the bits are the same wherever a stream's rows do not depend on the batch
size: the CPU backend (row-invariant by construction, tests/test_graphs.py) and the Triton kernels; the products on
cuBLAS may pick another kernel for another M, so on CUDA the tokens are compared (gpu_check.sh).

On the CPU nothing is captured: the same buffers, padding and scratch slot run eagerly (what the CPU tests exercise;
no speed-up, the padding costs up to a third more work). Captured graphs share one memory pool: they replay one at a
time, so the pool holds the intermediates of the largest bucket once, beside every graph's outputs (read before the
next replay: `run` returns views of them).
"""
from __future__ import annotations

import time

import torch

from .encoder import encoder_step, joint_input


def buckets(max_streams: int) -> list[int]:
    """Batch sizes with a graph: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5 x them, so a batch is padded
    by at most a third), the last one max_streams."""
    out, p = [], 1
    while p < max_streams:
        out += [p] if p < 2 else [p, p + p // 2]
        p *= 2
    out = sorted({b for b in out if b < max_streams} | {max_streams})
    return out


class StepGraphs:
    """The graphed steady-state encoder step of one engine (module docstring)."""

    def __init__(self, engine, capture: bool | None = None, sizes: list[int] | None = None,
                 lookaheads: list[int] | None = None):
        cfg, cache, dev = engine.cfg, engine.cache, engine.device
        if cache.scratch is None:
            raise ValueError("StepGraphs needs a pool with a scratch slot (StreamCache(scratch_slot=True))")
        self.engine = engine
        self.capture = dev.type == "cuda" if capture is None else capture
        if self.capture and dev.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the engine runs on {dev}")
        self.sizes = buckets(cache.max_streams) if sizes is None else sorted(sizes)
        self.lookaheads = list(cfg.lookaheads) if lookaheads is None else list(lookaheads)
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self._entries: dict[tuple[int, int], dict] = {}
        # the inputs, one buffer per lookahead of the largest bucket's size; a bucket reads its first rows (a view
        # at the same address), so the buckets cost no more input memory than the largest
        largest = max(self.sizes)
        self._inputs = {r: (torch.zeros(largest, cache.mel.shape[1] + cfg.chunk_mel(r), cfg.n_mels,
                                        dtype=engine.model.dtype, device=dev),
                            torch.full((largest,), cache.scratch, dtype=torch.int64, device=dev))
                        for r in self.lookaheads}
        self.capture_s = 0.0
        self.replays = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for r in self.lookaheads:
                for b in sorted(self.sizes, reverse=True):  # the largest first: the pool's size is set once
                    self._entries[(r, b)] = self._build(r, b)
        if self.capture:
            torch.cuda.synchronize(dev)
        self.capture_s = time.perf_counter() - t0

    def bucket(self, b: int) -> int | None:
        """The smallest bucket holding b streams (None: more streams than any bucket)."""
        for size in self.sizes:
            if size >= b:
                return size
        return None

    def _build(self, r: int, b: int) -> dict:
        eng = self.engine
        cache, dev, model = eng.cache, eng.device, eng.model
        mel, slots = self._inputs[r]
        e = {"mel": mel[:b], "slots": slots[:b],
             "mel_len": torch.full((b,), mel.shape[1], dtype=torch.int64, device=dev)}

        def run():
            out, _ = encoder_step(model, eng.ops, e["mel"], e["mel_len"], cache, e["slots"], r, False)
            return out, joint_input(model, eng.ops, out, cache.prompt[e["slots"]])

        e["run"] = run
        if self.capture:
            # warm-up on a side stream (Triton's compilation, cuBLAS's handles), every row on the scratch slot
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(2):
                    run()
            torch.cuda.current_stream(dev).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                e["out"], e["joint"] = run()
            e["graph"] = g
        return e

    def run(self, r: int, window: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The encoder output and the joint's input [B, T, D] (views of the bucket's output buffers, valid until the
        next step) of B steady-state chunks: window [B, 9 + n, n_mels] (any float dtype; cast as the eager step casts),
        slots [B] int64 on the engine's device. None when no graph covers them (another lookahead, more streams than
        the largest bucket, another chunk length): the caller runs the eager step."""
        b = window.shape[0]
        size = self.bucket(b)
        e = self._entries.get((r, size)) if size is not None else None
        if e is None or window.shape[1:] != e["mel"].shape[1:]:
            return None
        e["mel"][:b].copy_(window)
        e["slots"][:b].copy_(slots)
        e["slots"][b:].fill_(self.engine.cache.scratch)
        if self.capture:
            e["graph"].replay()
            out, joint = e["out"], e["joint"]
        else:
            out, joint = e["run"]()
        self.replays += 1
        return out[:b], joint[:b]

    def report(self) -> dict:
        """What was captured: buckets, lookaheads, graphs, capture time, replays so far."""
        return {"captured": self.capture, "buckets": list(self.sizes), "lookaheads": list(self.lookaheads),
                "graphs": len(self._entries), "capture_s": round(self.capture_s, 3), "replays": self.replays}
