"""Real-time load test: N live streams fed from a wall-clock schedule while one loop steps the engine; chunk latency,
late chunks, lag drift, final-token latency, host CPU per stream-step, and the real-time capacity (the largest N that
passes `realtime_ok`). Also the host-overhead measurement (`host_overhead`) that `bench/bench_host.py` runs on a
micro model. In process, no NeMo, no network.

    >>> from nemotron_engine.loadtest import run_load, capacity, realtime_ok
    >>> rep = run_load("weights/demo", n_streams=8, lookahead_ms=80, duration_s=30)
    >>> rep["latency_ms"]["p95"], rep["late_fraction"], realtime_ok(rep)
    >>> capacity("weights/demo", 80, n_lo=1, n_hi=64, min_run_s=60)["capacity"]

The schedule (`run_load`). Stream i (of N) arrives at t0 + i * P / N, P the chunk period (= the lookahead: 80, 160,
560 or 1120 ms), so arrivals are spread uniformly over the first period. From then on it delivers a packet of
`push_ms` of audio every `push_ms`, as a live source does: packet k (samples [k p, (k+1) p)) arrives at
arrival_i + (k + 1) push_ms, the moment its last sample exists. The audio is the given recordings concatenated and
looped; stream i starts i / N of the way into the loop. One loop in the calling thread alternates "push every
packet that is due" and `engine.step()`, as a server's stepping loop would. It starts a step at most once per batch
window (`batch_wait` x the chunk period, 0.25 by default), so that the chunks that became ready meanwhile share one
batched step instead of each paying a step's fixed cost alone (streams arrive spread over the period); inside the
window, and when a step returned nothing (no chunk was ready), it sleeps until the next packet is due or the window
ends. The window adds at most that much to a chunk's latency; `--batch-wait 0` steps as soon as any chunk is ready. After `duration_s` no more packets are delivered; the loop steps until no chunk is ready, then
(with `final_latency`) calls `finish()` on every stream and steps until each has turned final, and closes them.

Chunk latency. Every update the engine returns decodes one chunk and says, in `needed_samples`, how many samples of
its stream had to have arrived for that chunk. Latency = the wall time at which `step()` returned the update minus
the time the packet holding sample `needed_samples - 1` arrived (its scheduled arrival: the moment a live source
delivered it, so time the loop spent busy before pushing it counts, as it would for a client). The latency from the
moment the loop actually pushed that packet is reported beside it (`latency_from_push_ms`), and the difference
(`push_delay_ms`). A chunk is late when its latency exceeds the chunk period.

Lag drift: the slope of a least-squares line through (arrival time, latency) of every chunk, in ms per minute, and
the median latency of the chunks that arrived in the last 10 % of the run minus that of the first 10 %
(`lag_growth_ms`).

Final-token latency: the time from a stream's `finish()` (called for every stream at once at the end of the run) to
the step that returns its final update.

Host CPU: `cpu_thread_us_per_stream_step` is `time.thread_time()` of the loop's thread (pushes, steps and whatever
math runs in that thread) over the run divided by the stream-steps (chunks decoded); `cpu_process_us_per_stream_step`
is `time.process_time()` (every thread of the process: torch's intra-op workers too). Wall time spent in `push` and
in `step` (the engine's own `engine.times.step_s`) is reported per stream-step, with the part of `step` spent in the
batched feature computation (`engine.times.features_s`) and, when the op table is timed (`time_ops`, the default on
the CPU: an explicit `Ops` table passed as `Engine(..., backend=...)`), the part spent inside the backend's ops (the
model math: products, norms, attention, conv, greedy decoding), so that host work = push + step - ops - features.

Overload. A stream accepts at most `room()` samples (the engine's `max_queued_s` of audio queued ahead of it). When
a packet is due and its stream has less room than the packet, the engine has fallen that far behind: the push is
refused (`refused_pushes` counts each refusal), the packet waits for the next step and is tried again (the source
holds it, so its latency still counts from its scheduled arrival), and the run is not real time.
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import os
import platform
import sys
import time
from array import array
from pathlib import Path

import numpy as np
import torch

from .engine import Engine, freeze_gc
from .ops import Ops, get_ops

DEFAULT_PUSH_MS = 80
BATCH_WAIT = 0.0  # default of run_load's batch window, a fraction of the chunk period (0: step as soon as a chunk is ready)
LATE_FRACTION_MAX = 0.001  # realtime_ok: at most 0.1 % of chunks late
LAG_GROWTH_MAX = 0.5  # realtime_ok: the lag may grow by less than half a chunk period over the run


# ---- timing the math -------------------------------------------------------------------------------------------
class Timer:
    """Accumulates the wall time spent inside wrapped callables; a call made while another wrapped call of the same
    timer is running is counted by the outer one only. sync: called before each stop (torch.cuda.synchronize on a GPU:
    exact but it serialises the step)."""

    def __init__(self, sync=None):
        self.sync = sync
        self.total = 0.0
        self.per_name: dict[str, float] = {}
        self.calls = 0
        self._depth = 0

    def reset(self) -> None:
        self.total, self.per_name, self.calls = 0.0, {}, 0

    def wrap(self, name: str, fn):
        perf = time.perf_counter

        def timed(*args, **kwargs):
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = perf()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.sync is not None:
                    self.sync()
                dt = perf() - t
                self._depth -= 1
                self.total += dt
                self.per_name[name] = self.per_name.get(name, 0.0) + dt
                self.calls += 1

        timed.__wrapped__ = fn
        return timed


def timed_ops(ops: Ops, timer: Timer) -> Ops:
    """The same op table with every op (not `prepare`) timed by `timer`: pass it as `Engine(..., backend=...)`."""
    wrapped = {f.name: timer.wrap(f.name, getattr(ops, f.name)) for f in dataclasses.fields(ops)
               if f.name not in ("name", "prepare") and callable(getattr(ops, f.name))}
    return dataclasses.replace(ops, **wrapped)


# ---- set-up ----------------------------------------------------------------------------------------------------
def _dtype(dtype) -> torch.dtype:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def make_engine(model_dir, max_streams: int, device="cpu", dtype="float32", backend=None,
                time_ops: bool | None = None, graphs: bool | list[int] = False) -> tuple[Engine, Timer | None]:
    """An engine for the load test -> (engine, the op timer or None). time_ops (default: on the CPU only) wraps the
    backend's op table in a Timer (on CUDA that synchronises after every op); pass the timer on to `run_load`,
    `capacity` and `host_overhead` as `op_timer=`. graphs: `Engine(graphs=...)` (CUDA graphs of the steady step; the
    ops are then not timed on CUDA: a replay runs no Python)."""
    dev = torch.device(device)
    if time_ops is None:
        time_ops = dev.type == "cpu"
    if graphs and dev.type == "cuda":
        time_ops = False
    timer = None
    if time_ops:
        timer = Timer(sync=torch.cuda.synchronize if dev.type == "cuda" else None)
        ops = backend if isinstance(backend, Ops) else get_ops(backend, dev)
        backend = timed_ops(ops, timer)
    engine = Engine(model_dir, device=device, dtype=_dtype(dtype), max_streams=max_streams, backend=backend,
                    graphs=graphs)
    return engine, timer


def demo_audio() -> list[np.ndarray]:
    """The demo model's example recordings (16 kHz float32)."""
    from .cli import demo_model_dir

    return load_audio(sorted((demo_model_dir() / "examples").glob("*.wav")))


def load_audio(paths, sample_rate: int = 16000) -> list[np.ndarray]:
    from .cli import read_audio

    return [read_audio(p, sample_rate)[0] for p in paths]


def _loop_buffer(audio, min_len: int) -> np.ndarray:
    if audio is None:
        audio = demo_audio()
    pieces = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audio]
    loop = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if loop.size == 0:
        raise ValueError("run_load needs some audio: every recording given is empty")
    if loop.size < min_len:
        loop = np.tile(loop, -(-min_len // loop.size))
    return np.ascontiguousarray(loop)


def _packets(ext: np.ndarray, ps: int) -> np.ndarray:
    """A read-only view [len(ext) - ps + 1, ps] of the looped audio: row p is the packet starting at sample p, so
    that the packets of many streams are one gather (packets[at])."""
    return np.lib.stride_tricks.sliding_window_view(ext, ps)


def _stats(x_ms) -> dict:
    x = np.asarray(x_ms, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    p = np.percentile(x, [50, 95, 99])
    return {"n": int(x.size), "mean": float(x.mean()), "min": float(x.min()), "p50": float(p[0]),
            "p95": float(p[1]), "p99": float(p[2]), "max": float(x.max())}


# ---- the load run ----------------------------------------------------------------------------------------------
def run_load(engine_or_model_dir, n_streams: int, lookahead_ms: int, duration_s: float, audio=None, *,
             push_ms: float = DEFAULT_PUSH_MS, device="cpu", dtype="float32", backend=None,
             time_ops: bool | None = None, op_timer: Timer | None = None, final_latency: bool = True,
             warmup: bool = True, drain_limit_s: float | None = None, abort_latency_ms: float | None = None,
             batch_wait: float = BATCH_WAIT) -> dict:
    """N live streams for `duration_s` of wall time (see the module docstring for the schedule and every figure)
    -> the report (a dict of plain numbers, JSON-ready; `realtime_ok` and `failures` included).

    engine_or_model_dir: an Engine with no open stream (reused; op_timer: the Timer of its op table, as `make_engine`
    returns it, for the ops split) or a model directory (an engine is built with max_streams = n_streams, the op table
    timed per `time_ops`). The engine's `times` are reset at the start of the measured window.
    audio: float32 16 kHz recordings, looped (default: the demo model's examples). push_ms: packet length.
    warmup: transcribe 2 s once first (first-call costs out of the figures). drain_limit_s: after the run, how long
    the loop may go on returning chunks that were already due (default max(2 s, 2 periods, 25 % of the run));
    past it the run counts as not real time (`backlog_unfinished`). abort_latency_ms: stop early once a chunk is
    this late (default max(10 s, 20 periods)): the run is then not real time (`aborted`).
    batch_wait: the loop starts a step at most once per batch_wait x the chunk period (`batch_window_s`), so that
    the chunks that became ready meanwhile share it (0: step as soon as any chunk is ready).
    """
    if n_streams < 1:
        raise ValueError(f"n_streams must be at least 1, got {n_streams}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if not 0 <= batch_wait < 1:
        raise ValueError(f"batch_wait must be in [0, 1) (a fraction of the chunk period), got {batch_wait}")
    if isinstance(engine_or_model_dir, (str, Path)):
        engine, op_timer = make_engine(engine_or_model_dir, n_streams, device, dtype, backend, time_ops)
    else:
        engine = engine_or_model_dir
    if engine.streams:
        raise ValueError(f"run_load needs an engine with no open stream; this one has {len(engine.streams)}")
    cfg = engine.cfg
    sr = cfg.sample_rate
    r = cfg.lookahead_from_ms(lookahead_ms)
    chunk_ms = (r + 1) * cfg.frame_ms
    chunk_s = chunk_ms / 1000
    ps = max(int(round(push_ms * sr / 1000)), 1)  # samples per packet
    push_s = ps / sr
    if push_s > engine.max_queued_s:
        raise ValueError(f"push_ms={push_ms} is more audio than a stream may queue (the engine's max_queued_s="
                         f"{engine.max_queued_s}); use a shorter packet or an Engine with a larger max_queued_s")
    loop = _loop_buffer(audio, ps)
    L = loop.size
    ext = np.concatenate([loop, loop[:ps]])  # any packet is one slice
    packets = _packets(ext, ps)  # packets[p]: the packet starting at loop sample p (a view)
    if drain_limit_s is None:
        drain_limit_s = max(2.0, 2 * chunk_s, 0.25 * duration_s)
    if abort_latency_ms is None:
        abort_latency_ms = max(10_000.0, 20 * chunk_ms)
    timer = op_timer
    if warmup:
        engine.transcribe(loop[: min(L, 2 * sr)], lookahead_ms)

    n = n_streams
    streams = [engine.open_stream(lookahead_ms) for _ in range(n)]
    index = {id(s): i for i, s in enumerate(streams)}
    offsets = [(i * L) // n for i in range(n)]
    arrival = [i * chunk_s / n for i in range(n)]  # relative to t0
    n_packets = int(duration_s / push_s) + 2
    pushed_at = np.full((n, n_packets), np.nan)  # when the loop pushed packet k of stream i (relative to t0)
    sent = [0] * n
    heap = [(arrival[i] + push_s, i) for i in range(n)]  # (due time of the stream's next packet, stream)
    heapq.heapify(heap)

    ret_t, lat, lat_push, due_t, delays = array("d"), array("d"), array("d"), array("d"), array("d")
    decoded = [0] * n  # samples of each stream its decoded chunks needed
    counts = {"idle_steps": 0, "updates": 0, "refused_pushes": 0}
    times = {"push": 0.0, "idle": 0.0}
    state = {"aborted": False, "backlog_unfinished": False}
    abort_s = abort_latency_ms / 1000
    clock = time.perf_counter

    def record(updates, t_ret: float) -> None:
        for u in updates:
            i = index.get(id(u.stream))
            if i is None:
                continue
            need = u.needed_samples
            k = (need - 1) // ps  # the packet holding the chunk's last needed sample
            due = arrival[i] + (k + 1) * push_s
            ret_t.append(t_ret)
            due_t.append(due)
            lat.append(t_ret - due)
            lat_push.append(t_ret - pushed_at[i, k] if k < n_packets else math.nan)
            decoded[i] = max(decoded[i], need)
            if t_ret - due > abort_s:
                state["aborted"] = True
        counts["updates"] += len(updates)

    if timer is not None:
        timer.reset()
    try:
        engine.times.reset()
        cpu_thread0, cpu_proc0 = time.thread_time(), time.process_time()
        t0 = clock()
        window = batch_wait * chunk_s
        next_step = 0.0  # the earliest the next step may start (relative to t0)
        while True:
            t_a = clock()
            now = t_a - t0
            if now >= duration_s or state["aborted"]:
                break
            held = []  # packets refused for want of room: tried again after the next step
            while heap and heap[0][0] <= now:  # one push_many per round of due packets (a stream has one in the heap)
                due_now = []
                while heap and heap[0][0] <= now:
                    due_now.append(heapq.heappop(heap))
                room = engine.rooms([streams[i] for _, i in due_now])
                go = []
                for (due, i), ok in zip(due_now, (room >= ps).tolist()):
                    if ok:
                        go.append((due, i))
                    else:  # more than max_queued_s queued ahead of the engine: overloaded
                        counts["refused_pushes"] += 1
                        held.append((due, i))
                if not go:
                    continue
                at = [(offsets[i] + sent[i] * ps) % L for _, i in go]
                engine.push_many([streams[i] for _, i in go], packets[at])
                t_p = clock() - t0
                for due, i in go:  # a stream behind by several packets gets the next one in the next round
                    k = sent[i]
                    pushed_at[i, k] = t_p
                    delays.append(t_p - due)
                    sent[i] = k + 1
                    if due + push_s <= duration_s:
                        heapq.heappush(heap, (due + push_s, i))
            for h in held:
                heapq.heappush(heap, h)
            t_b = clock()
            times["push"] += t_b - t_a
            if t_b - t0 < next_step:  # inside the batch window: sleep to the next packet or the window's end
                wake = min(heap[0][0] if heap else duration_s, next_step, duration_s)
                pause = wake - (clock() - t0)
                if pause > 0:
                    time.sleep(pause)
                    times["idle"] += pause
                continue
            updates = engine.step()
            t_c = clock()
            if updates:
                record(updates, t_c - t0)
                next_step = (t_b - t0) + window
            else:
                counts["idle_steps"] += 1
                wake = min(heap[0][0] if heap else duration_s, duration_s)
                pause = wake - (clock() - t0)
                if pause > 0:
                    time.sleep(pause)
                    times["idle"] += pause
        # no more audio: return the chunks already due
        t_stop = clock()
        while not state["aborted"]:
            updates = engine.step()
            t_c = clock()
            if not updates:
                break
            record(updates, t_c - t0)
            if t_c - t_stop > drain_limit_s:
                state["backlog_unfinished"] = True
                break
        wall = clock() - t0
        cpu_thread = time.thread_time() - cpu_thread0
        cpu_proc = time.process_time() - cpu_proc0
        step_times = dataclasses.replace(engine.times)  # the measured window's, before the final-latency steps
        ops_s = timer.total if timer is not None else None
        ops_by = dict(timer.per_name) if timer is not None else {}

        # final-token latency: every stream finishes now
        final = array("d")
        final_missing = 0
        if final_latency and not state["aborted"] and not state["backlog_unfinished"]:
            fin_at = [0.0] * n
            for i, s in enumerate(streams):
                s.finish()
                fin_at[i] = clock()
            left = set(range(n))
            deadline = clock() + max(10.0, 10 * chunk_s)
            while left and clock() < deadline:
                updates = engine.step()
                t_c = clock()
                for u in updates:
                    i = index.get(id(u.stream))
                    if i in left and u.final:
                        final.append(t_c - fin_at[i])
                        left.discard(i)
            final_missing = len(left)
    finally:
        for s in streams:
            engine.close(s)

    ss = max(step_times.stream_steps, 1)
    lat_ms = np.frombuffer(lat, dtype=np.float64) * 1000 if len(lat) else np.zeros(0)
    due_a = np.frombuffer(due_t, dtype=np.float64) if len(due_t) else np.zeros(0)
    lat_push_ms = np.frombuffer(lat_push, dtype=np.float64) * 1000 if len(lat_push) else np.zeros(0)
    lat_push_ms = lat_push_ms[np.isfinite(lat_push_ms)]
    late = int((lat_ms > chunk_ms).sum())
    rep = {
        "n_streams": n, "lookahead_ms": int(lookahead_ms), "chunk_ms": chunk_ms, "push_ms": push_s * 1000,
        "batch_wait": batch_wait, "batch_window_ms": batch_wait * chunk_ms,
        "duration_s": float(duration_s), "wall_s": wall,
        "steps": step_times.steps, "idle_steps": counts["idle_steps"], "stream_steps": step_times.stream_steps,
        "updates": counts["updates"], "refused_pushes": counts["refused_pushes"],
        "chunks": int(lat_ms.size), "packets": int(sum(sent)),
        "audio_s_pushed": sum(sent) * push_s, "audio_s_decoded": sum(decoded) / sr,
        "latency_ms": _stats(lat_ms),
        "latency_from_push_ms": _stats(lat_push_ms),
        "push_delay_ms": _stats(np.frombuffer(delays, dtype=np.float64) * 1000 if len(delays) else []),
        "late": late, "late_fraction": late / lat_ms.size if lat_ms.size else 0.0,
        **_drift(due_a, lat_ms),
        "final_latency_ms": _stats(np.frombuffer(final, dtype=np.float64) * 1000 if len(final) else []),
        "final_missing": final_missing,
        "busy_fraction": (times["push"] + step_times.step_s) / wall if wall > 0 else 0.0,
        "push_us_per_stream_step": times["push"] / ss * 1e6,
        "step_us_per_stream_step": step_times.step_s / ss * 1e6,
        "cpu_thread_us_per_stream_step": cpu_thread / ss * 1e6,
        "cpu_process_us_per_stream_step": cpu_proc / ss * 1e6,
        "cpu_clock": "thread: time.thread_time() of the loop's thread; process: time.process_time() (all threads)",
        "threads": torch.get_num_threads(),
        "aborted": state["aborted"], "abort_latency_ms": abort_latency_ms,
        "backlog_unfinished": state["backlog_unfinished"],
    }
    rep.update(_host_split(times["push"], step_times.step_s, ops_s, ops_by, step_times.features_s, ss))
    fails = realtime_failures(rep, chunk_ms)
    rep["realtime_ok"] = not fails
    rep["failures"] = fails
    return rep


def _drift(due_s: np.ndarray, lat_ms: np.ndarray) -> dict:
    out = {"drift_ms_per_min": None, "lag_first10_ms": None, "lag_last10_ms": None, "lag_growth_ms": None}
    if lat_ms.size < 2:
        return out
    t = due_s - due_s.min()
    span = float(t.max())
    if span > 0:
        out["drift_ms_per_min"] = float(np.polyfit(t / 60.0, lat_ms, 1)[0])
        first, last = lat_ms[t <= 0.1 * span], lat_ms[t >= 0.9 * span]
        if first.size and last.size:
            out["lag_first10_ms"] = float(np.median(first))
            out["lag_last10_ms"] = float(np.median(last))
            out["lag_growth_ms"] = out["lag_last10_ms"] - out["lag_first10_ms"]
    return out


def _host_split(push_s, step_s, ops_s, ops_by, feat_s, ss) -> dict:
    """Per stream-step (us): features (engine.times.features_s) and, with an op timer, ops, host = push + step - ops
    and host excluding the feature math."""
    out = {"features_us_per_stream_step": feat_s / ss * 1e6}
    if ops_s is not None:
        out["ops_us_per_stream_step"] = ops_s / ss * 1e6
        out["ops_breakdown_us"] = {k: v / ss * 1e6 for k, v in sorted(ops_by.items())}
        out["host_us_per_stream_step"] = (push_s + step_s - ops_s) / ss * 1e6
        out["host_excl_features_us_per_stream_step"] = (push_s + step_s - ops_s - feat_s) / ss * 1e6
    return out


def realtime_failures(report: dict, chunk_ms: float | None = None) -> list[str]:
    """Why a run is not real time (empty: it is). See `realtime_ok`."""
    chunk_ms = report["chunk_ms"] if chunk_ms is None else chunk_ms
    f = []
    if report.get("aborted"):
        f.append(f"aborted: a chunk was over the abort latency ({report.get('abort_latency_ms', 0):.0f} ms)")
    if report.get("backlog_unfinished"):
        f.append("chunks still due after the run's drain limit")
    if report.get("refused_pushes"):
        f.append(f"{report['refused_pushes']} pushes refused: a stream had max_queued_s of audio queued ahead of the "
                 "engine (room() under one packet), the engine fell that far behind")
    if not report.get("chunks"):
        f.append("no chunk was decoded")
        return f
    if report["late_fraction"] > LATE_FRACTION_MAX:
        f.append(f"{report['late_fraction']:.2%} of chunks late (over {chunk_ms} ms; at most "
                 f"{LATE_FRACTION_MAX:.1%} allowed)")
    p95 = report["latency_ms"]["p95"]
    if p95 > chunk_ms:
        f.append(f"p95 latency {p95:.1f} ms over the chunk period {chunk_ms} ms")
    growth = report.get("lag_growth_ms")
    if growth is not None and growth >= LAG_GROWTH_MAX * chunk_ms:
        f.append(f"lag grew by {growth:.1f} ms (last 10 % vs first 10 % of the run; under "
                 f"{LAG_GROWTH_MAX * chunk_ms:.0f} ms allowed)")
    return f


def realtime_ok(report: dict, chunk_ms: float | None = None) -> bool:
    """The real-time rule: a run holds its N streams in real time when
    - at most 0.1 % of its chunks are late (latency over the chunk period `chunk_ms`, default the report's),
    - its p95 chunk latency is at most the chunk period,
    - its lag does not grow: the median latency of the chunks that arrived in the last 10 % of the run minus that of
      the first 10 % is under half a chunk period (`lag_growth_ms` < 0.5 chunk_ms; not judged when a run has too
      few chunks to measure it),
    - and it ran to the end (not aborted, no backlog left after the drain limit, no push refused for want of room,
      at least one chunk decoded).
    The capacity is meaningful for runs of at least 60 s (the issue's rule; `capacity(min_run_s=60)`)."""
    return not realtime_failures(report, chunk_ms)


# ---- capacity ----------------------------------------------------------------------------------------------------
def capacity(model_dir_or_engine, lookahead_ms: int, audio=None, *, n_lo: int = 1, n_hi: int = 64,
             min_run_s: float = 60.0, rel_tol: float = 0.05, on_point=None, device="cpu", dtype="float32",
             backend=None, time_ops: bool | None = None, **run_kwargs) -> dict:
    """The largest N in [n_lo, n_hi] whose run of `min_run_s` passes `realtime_ok` (`bisect_capacity` over
    `run_load`) -> {"capacity", "bracket", "at_least" (n_hi passed), "points": every run's report}. capacity 0 means
    n_lo already failed. One engine (max streams n_hi) serves every run; given an engine, pass its op timer as
    op_timer= (run_kwargs go to run_load). on_point(report) is called after each run."""
    if isinstance(model_dir_or_engine, (str, Path)):
        engine, timer = make_engine(model_dir_or_engine, n_hi, device, dtype, backend, time_ops)
        run_kwargs.setdefault("op_timer", timer)
    else:
        engine = model_dir_or_engine
    out = bisect_capacity(lambda n: run_load(engine, n, lookahead_ms, min_run_s, audio, **run_kwargs), n_lo, n_hi,
                          rel_tol, on_point)
    return {"lookahead_ms": int(lookahead_ms), "n_lo": n_lo, "n_hi": n_hi, "min_run_s": float(min_run_s), **out}


def bisect_capacity(run, n_lo: int, n_hi: int, rel_tol: float = 0.05, on_point=None) -> dict:
    """The largest N in [n_lo, n_hi] for which run(N) -> report has report["realtime_ok"], by bisection (geometric
    while the bracket spans more than 4x) until the bracket is within max(1, rel_tol * N) -> {"capacity",
    "bracket", "at_least", "points"} (see `capacity`). on_point(report) is called after each run."""
    if not 1 <= n_lo <= n_hi:
        raise ValueError(f"need 1 <= n_lo <= n_hi, got n_lo={n_lo}, n_hi={n_hi}")
    points = []

    def passes(n: int) -> bool:
        rep = run(n)
        points.append(rep)
        if on_point is not None:
            on_point(rep)
        return rep["realtime_ok"]

    if not passes(n_lo):
        return {"capacity": 0, "bracket": [0, n_lo], "at_least": False, "points": points}
    if n_hi == n_lo or passes(n_hi):
        return {"capacity": n_hi, "bracket": [n_hi, None], "at_least": True, "points": points}
    lo, hi = n_lo, n_hi
    while hi - lo > max(1, int(rel_tol * lo)):
        mid = int(round(math.sqrt(lo * hi))) if hi > 4 * lo else (lo + hi) // 2
        mid = min(max(mid, lo + 1), hi - 1)
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return {"capacity": lo, "bracket": [lo, hi], "at_least": False, "points": points}


# ---- host overhead ---------------------------------------------------------------------------------------------
def host_overhead(model_dir_or_engine, n_streams: int, lookahead_ms: int = 80, *, ticks: int = 10,
                  warmup_ticks: int = 3, push_ms: float | None = None, audio=None, device="cpu", dtype="float32",
                  backend=None, op_timer: Timer | None = None, push: str = "many") -> dict:
    """The engine's own cost per stream-step, not in real time: N streams, each tick pushes `push_ms` of audio
    (default: one chunk period, the lookahead) to every stream and steps once; the last `ticks` ticks (after
    `warmup_ticks`) are measured -> per stream-step (us): push (the push calls), step (`engine.times.step_s`), ops
    (inside step: the op table's calls, i.e. the model math), features (`engine.times.features_s`: the batched
    feature computation), host = push + step - ops, host_excl_features = host - features. Run it on a micro model
    (`micro_model.build_micro_model`) so that the math is negligible. Given an engine, pass the op timer that
    `make_engine(..., time_ops=True)` returned as op_timer. A push that finds less room than a packet (push_ms over
    the chunk period lets the queues grow by a packet per tick) is skipped and counted in `refused_pushes`.
    push: "many" (one `Engine.push_many` per tick for every stream, as a serving loop batches its packets; the gather
    of the packets from the looped audio is counted in push) or "each" (a `Stream.push` per stream)."""
    if push not in ("many", "each"):
        raise ValueError(f"push must be 'many' or 'each', got {push!r}")
    if isinstance(model_dir_or_engine, (str, Path)):
        engine, op_timer = make_engine(model_dir_or_engine, n_streams, device, dtype, backend, True)
    else:
        engine = model_dir_or_engine
    if op_timer is None:
        raise ValueError("host_overhead needs the op table timed: pass a model directory, or an engine built by "
                         "make_engine(..., time_ops=True) with the timer it returned as op_timer=")
    cfg = engine.cfg
    if push_ms is None:
        push_ms = (cfg.lookahead_from_ms(lookahead_ms) + 1) * cfg.frame_ms
    ps = max(int(round(push_ms * cfg.sample_rate / 1000)), 1)
    loop = _loop_buffer(audio, ps)
    L = loop.size
    ext = np.concatenate([loop, loop[:ps]])
    streams = [engine.open_stream(lookahead_ms) for _ in range(n_streams)]
    offsets = [(i * L) // n_streams for i in range(n_streams)]
    offsets_np = np.array(offsets, np.int64)
    packets = _packets(ext, ps)
    push_s = 0.0
    refused = 0
    clock = time.perf_counter
    try:
        for tick in range(warmup_ticks + ticks):
            if tick == warmup_ticks:
                op_timer.reset()
                engine.times.reset()
                push_s, refused = 0.0, 0
                cpu_thread0, cpu_proc0, wall0 = time.thread_time(), time.process_time(), clock()
            a = clock()
            if push == "each":
                for i, s in enumerate(streams):
                    if s.room() < ps:
                        refused += 1
                        continue
                    p = (offsets[i] + tick * ps) % L
                    s.push(ext[p: p + ps])
            else:  # one push_many per tick (the gather of the packets from the looped audio counted in it)
                ok = engine.rooms(streams) >= ps
                refused += int(ok.size - ok.sum())
                go = np.flatnonzero(ok)
                at = (offsets_np[go] + tick * ps) % L
                engine.push_many([streams[i] for i in go.tolist()], packets[at])
            push_s += clock() - a
            engine.step()
        wall = clock() - wall0
        cpu_thread, cpu_proc = time.thread_time() - cpu_thread0, time.process_time() - cpu_proc0
        times = dataclasses.replace(engine.times)
    finally:
        for s in streams:
            engine.close(s)
    n = max(times.stream_steps, 1)
    rep = {"n_streams": n_streams, "lookahead_ms": int(lookahead_ms), "push_ms": ps / cfg.sample_rate * 1000,
           "ticks": ticks, "push": push, "steps": times.steps, "stream_steps": times.stream_steps, "refused_pushes": refused,
           "wall_s": wall, "push_us_per_stream_step": push_s / n * 1e6,
           "step_us_per_stream_step": times.step_s / n * 1e6,
           "cpu_thread_us_per_stream_step": cpu_thread / n * 1e6,
           "cpu_process_us_per_stream_step": cpu_proc / n * 1e6, "threads": torch.get_num_threads()}
    rep.update(_host_split(push_s, times.step_s, op_timer.total, op_timer.per_name, times.features_s, n))
    return rep


# ---- output ------------------------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor() or None, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def plot(points: list[dict], path, capacities: dict | None = None) -> str | None:
    """Latency p50/p95/p99 against N, one panel per lookahead, with the chunk period (and the capacity when known:
    capacities[lookahead_ms] = N or (N, at_least)) -> None when written, else why not (no matplotlib, no point)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    by_la: dict[int, list[dict]] = {}
    for p in points:
        if p.get("chunks"):
            by_la.setdefault(p["lookahead_ms"], []).append(p)
    if not by_la:
        return "no point with a decoded chunk: no plot"
    las = sorted(by_la)
    fig, axes = plt.subplots(1, len(las), figsize=(5.5 * len(las), 4.2), squeeze=False)
    for ax, la in zip(axes[0], las):
        pts = sorted(by_la[la], key=lambda p: p["n_streams"])
        ns = [p["n_streams"] for p in pts]
        for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
            ax.plot(ns, [p["latency_ms"][q] for p in pts], style, label=q, markersize=4)
        bad = [p for p in pts if not p["realtime_ok"]]
        if bad:
            ax.plot([p["n_streams"] for p in bad], [p["latency_ms"]["p95"] for p in bad], "x", color="red",
                    markersize=9, label="not real time")
        ax.axhline(pts[0]["chunk_ms"], color="gray", linestyle="--", label=f"chunk period {pts[0]['chunk_ms']} ms")
        cap = (capacities or {}).get(la)  # N, or (N, at_least)
        n_cap, at_least = cap if isinstance(cap, tuple) else (cap, False)
        if n_cap:
            ax.axvline(n_cap, color="green", linestyle=":", label=f"capacity {n_cap}{'+' if at_least else ''}")
        ax.set_yscale("log")
        if max(ns) > 8 * min(ns):
            ax.set_xscale("log")
        ax.set_xlabel("streams (N)")
        ax.set_ylabel("chunk latency (ms)")
        ax.set_title(f"lookahead {la} ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def summary_line(rep: dict) -> str:
    lat = rep["latency_ms"]
    if not lat.get("n"):
        head = "no chunk decoded"
    else:
        head = (f"latency p50 {lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f} ms, "
                f"late {rep['late']}/{rep['chunks']} ({rep['late_fraction']:.2%})")
        if rep.get("lag_growth_ms") is not None:
            head += f", lag growth {rep['lag_growth_ms']:+.1f} ms"
    fin = rep["final_latency_ms"]
    if fin.get("n"):
        head += f", final p50 {fin['p50']:.1f} ms"
    host = rep.get("host_us_per_stream_step")
    cpu = f", host {host:.0f} us" if host is not None else ""
    return (f"lookahead {rep['lookahead_ms']} ms, N={rep['n_streams']}: {head}; "
            f"{rep['cpu_thread_us_per_stream_step']:.0f} us thread CPU/stream-step{cpu}, busy "
            f"{rep['busy_fraction']:.0%}: "
            + ("REAL TIME" if rep["realtime_ok"] else "not real time (" + "; ".join(rep["failures"]) + ")"))


# ---- command line ----------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a converted model directory (default: the shipped demo model)")
    p.add_argument("--micro", action="store_true",
                   help="use a micro model built on the fly (the demo's format and vocabulary, 1 layer x 16): the "
                        "engine's host work with negligible math; also runs the host-overhead measurement")
    p.add_argument("--lookahead-ms", type=int, nargs="+", default=[80, 1120], help="lookaheads (default 80 1120)")
    p.add_argument("--streams", type=int, nargs="+", default=None, help="run these numbers of streams")
    p.add_argument("--capacity", action="store_true",
                   help="find the largest N held in real time by bisection in [--n-min, --n-max]")
    p.add_argument("--n-min", type=int, default=1, help="capacity search: smallest N (default 1)")
    p.add_argument("--n-max", type=int, default=64, help="capacity search: largest N (default 64)")
    p.add_argument("--rel-tol", type=float, default=0.05,
                   help="capacity search: stop when the bracket is within this fraction of N (default 0.05)")
    p.add_argument("--run-s", type=float, default=60.0,
                   help="seconds per run (default 60, the capacity rule's minimum)")
    p.add_argument("--push-ms", type=float, default=DEFAULT_PUSH_MS,
                   help=f"audio packet length: each stream delivers one every push-ms (default {DEFAULT_PUSH_MS})")
    p.add_argument("--batch-wait", type=float, default=BATCH_WAIT,
                   help=f"the loop steps at most once per this fraction of the chunk period, so that chunks ready "
                        f"meanwhile share a step (default {BATCH_WAIT}; 0: step as soon as any chunk is ready)")
    p.add_argument("--audio", nargs="*", default=None, help="recordings to loop (default: the demo's examples)")
    p.add_argument("--out", default="loadtest-out", help="output directory: loadtest.json, loadtest.png")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="default float32")
    p.add_argument("--backend", default=None, choices=["cpu", "torch", "triton"], help="the op table (see Engine)")
    p.add_argument("--graphs", action="store_true",
                   help="CUDA graphs of the steady-state step for the lookaheads given (Engine(graphs=...)), "
                        "captured before the runs")
    p.add_argument("--no-op-timing", action="store_true",
                   help="do not time the op table (it is timed on the CPU by default; on CUDA timing synchronises)")
    p.add_argument("--host-streams", type=int, nargs="*", default=None,
                   help="host-overhead measurement at these N (default: 256 1024 4096 with --micro, none otherwise)")
    p.add_argument("--host-ticks", type=int, default=10, help="host-overhead measurement: ticks measured (default 10)")


def _command_line(args) -> str:
    parts = ["nemotron-engine", "loadtest"]
    for k, v in vars(args).items():
        if k in ("func", "cmd") or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif isinstance(v, (list, tuple)):
            parts += [flag, *map(str, v)]
        else:
            parts += [flag, str(v)]
    return " ".join(parts)


def cli_run(args) -> int:
    """`nemotron-engine loadtest` (cli.py parses the options with `add_arguments`)."""
    import tempfile

    from .cli import _err, demo_model_dir

    if not args.streams and not args.capacity and not (args.micro or args.host_streams):
        _err("loadtest: give --streams N [N ...] and/or --capacity")
        return 2
    if args.micro and args.model:
        _err("loadtest: give --model or --micro, not both")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if args.micro:
        tmp = tempfile.TemporaryDirectory(prefix="nemotron-micro-")
        model = build_micro(tmp.name)
        model_label = "micro (nemotron_engine.micro_model)"
    else:
        model = Path(args.model) if args.model else demo_model_dir()
        model_label = args.model or "demo (weights/demo)"
    try:
        if not (Path(model) / "config.json").is_file():
            _err(f"{model}: not a model directory (no config.json)")
            return 2
        audio = load_audio(args.audio) if args.audio else demo_audio()
        audio_label = list(args.audio) if args.audio else "demo examples (weights/demo/examples/*.wav)"
        doc = {"command": _command_line(args), "machine": machine_info(),
               "settings": {"model": model_label, "device": args.device, "dtype": args.dtype,
                            "backend": args.backend, "threads": torch.get_num_threads(), "push_ms": args.push_ms,
                            "batch_wait": args.batch_wait,
                            "run_s": args.run_s, "audio": audio_label,
                            "audio_s": float(sum(len(a) for a in audio) / 16000)},
               "rule": realtime_ok.__doc__.strip(), "points": [], "capacity": {}, "host_overhead": []}
        json_path = out / "loadtest.json"

        def save():
            tmp_path = json_path.with_suffix(".json.tmp")
            tmp_path.write_text(json.dumps(doc, indent=1))
            os.replace(tmp_path, json_path)

        def on_point(rep):
            doc["points"].append(rep)
            print(summary_line(rep), flush=True)
            save()

        n_max = max([*(args.streams or []), args.n_max if args.capacity else 1])
        try:
            engine, op_timer = make_engine(model, n_max, args.device, args.dtype, args.backend,
                                           False if args.no_op_timing else None,
                                           graphs=list(args.lookahead_ms) if args.graphs else False)
            doc["settings"]["graphs"] = engine.graph_report()
            for la in args.lookahead_ms:
                engine.cfg.lookahead_from_ms(la)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            _err(str(e))
            return 2
        freeze_gc()  # as the server does once it is up
        save()
        for la in args.lookahead_ms:
            for n in args.streams or []:
                on_point(run_load(engine, n, la, args.run_s, audio, push_ms=args.push_ms, op_timer=op_timer,
                                  batch_wait=args.batch_wait))
            if args.capacity:
                cap = capacity(engine, la, audio, n_lo=args.n_min, n_hi=args.n_max, min_run_s=args.run_s,
                               rel_tol=args.rel_tol, on_point=on_point, push_ms=args.push_ms, op_timer=op_timer,
                               batch_wait=args.batch_wait)
                doc["capacity"][str(la)] = {k: v for k, v in cap.items() if k != "points"}
                print(f"lookahead {la} ms: capacity {cap['capacity']}{'+' if cap['at_least'] else ''} streams "
                      f"(bracket {cap['bracket']}, {args.run_s:g} s runs)", flush=True)
                save()
        host_ns = args.host_streams if args.host_streams is not None else ([256, 1024, 4096] if args.micro else [])
        if host_ns:
            del engine
            for la in args.lookahead_ms[:1]:
                for n in host_ns:
                    rep = host_overhead(model, n, la, ticks=args.host_ticks, device=args.device, dtype=args.dtype,
                                        backend=args.backend)
                    doc["host_overhead"].append(rep)
                    print(host_line(rep), flush=True)
                    save()
        caps = {int(k): (v["capacity"], v["at_least"]) for k, v in doc["capacity"].items()}
        note = plot(doc["points"], out / "loadtest.png", caps)
        doc["plot"] = "loadtest.png" if note is None else note
        if note:
            print(f"nemotron-engine: note: {note}", file=sys.stderr)
        save()
        print(f"wrote {json_path}" + ("" if note else f" and {out / 'loadtest.png'}"))
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def host_line(rep: dict) -> str:
    nan = float("nan")
    s = (f"host overhead, N={rep['n_streams']}, lookahead {rep['lookahead_ms']} ms: per stream-step push "
         f"{rep['push_us_per_stream_step']:.1f} us, step {rep['step_us_per_stream_step']:.1f} us (ops "
         f"{rep.get('ops_us_per_stream_step', nan):.1f}), host {rep.get('host_us_per_stream_step', nan):.1f} us")
    s += (f" of which feature math {rep['features_us_per_stream_step']:.1f} us (host excluding it "
          f"{rep.get('host_excl_features_us_per_stream_step', nan):.1f} us)")
    if rep.get("refused_pushes"):
        s += f"; {rep['refused_pushes']} pushes refused (queue full: push_ms over the chunk period?)"
    return s


def build_micro(out_dir) -> Path:
    from .micro_model import build_micro_model

    return build_micro_model(out_dir)
