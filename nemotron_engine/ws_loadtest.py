"""`nemotron-engine loadtest --url ws://HOST:PORT`: N concurrent WebSocket clients against a running `nemotron-engine
serve`, in one asyncio process (run it in another process than the server's).

    >>> from nemotron_engine.ws_loadtest import run_ws_load
    >>> rep = run_ws_load("ws://127.0.0.1:9000", n_clients=8, lookahead_ms=560, audio=["a.wav"], check_model="DIR")
    >>> rep["latency_ms"]["p95"], rep["sessions"]["held"], rep["transcripts"]["matched"]

Each client speaks the realtime protocol as NVIDIA's RealtimeClientASR does (POST /v1/realtime/transcription_sessions
when an API key is given, then the WebSocket with the minted secret as a `realtime-token.` subprotocol;
transcription_session.update; input_audio_buffer.append + commit; input_audio_buffer.done) and streams one file
(the given recordings in turn) as pcm16 in real time: packet k (`push_ms` of audio) is sent at its scheduled time
start_i + (k + 1) push_ms, the moment its last sample exists. Starts are staggered: client i starts i * stagger_ms
after the first (default: one chunk period spread over the N clients, as the in-process loadtest does).
Kinds of client, chosen by a seeded permutation: `eou_fraction` of them send force_eou on their last packet before
input_audio_buffer.done; `vanish_fraction` of them vanish at a random packet (TCP reset, no close frame); the others
end with done.

Measures (the session asks for `nemotron.chunk_events`, so that every decoded chunk returns a delta event carrying
`audio_end_ms`, the stream audio the chunk needed):
- chunk latency: the time a delta arrived minus the scheduled time of the packet holding its audio_end_ms (so time
  the client or the network spent counts, as for the in-process loadtest's "from arrival" latency); late chunks:
  latency over the chunk period (the lookahead);
- final-token latency: from sending the event that ends the audio (the force_eou append, or done) to the
  .completed event of that utterance;
- errors by kind (the error events' codes, and connect_failed / closed_early / timeout / rejected), sessions
  held (clients that got their last result), rejected (capacity), vanished;
- transcripts: each client's .completed transcripts joined by a space against Engine.transcribe (in this process,
  after the run) of the samples the client sent, decoded as the server decodes them (realtime.AudioInput).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import realtime as rt

DEFAULT_PUSH_MS = 80


@dataclass
class Clip:
    """One recording as the client sends it: int16 frames [n, channels] at `rate`."""

    name: str
    pcm: np.ndarray
    rate: int

    @property
    def channels(self) -> int:
        return self.pcm.shape[1]

    @property
    def seconds(self) -> float:
        return self.pcm.shape[0] / self.rate


def load_clip(path) -> Clip:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="int16", always_2d=True)
    return Clip(str(path), np.ascontiguousarray(x), int(sr))


def looped(clips: list[Clip], seconds: float) -> Clip:
    """The clips back to back, repeated until at least `seconds` long (one long-form session); they must share a
    rate and a channel count."""
    if len({(c.rate, c.channels) for c in clips}) != 1:
        raise ValueError("--loop-s needs recordings of one sample rate and channel count, got "
                         + ", ".join(f"{c.name}: {c.rate} Hz x {c.channels}" for c in clips))
    one = np.concatenate([c.pcm for c in clips])
    reps = max(1, math.ceil(seconds * clips[0].rate / one.shape[0]))
    return Clip(f"{len(clips)} recording(s) looped to {reps * one.shape[0] / clips[0].rate:.1f} s",
                np.ascontiguousarray(np.tile(one, (reps, 1))), clips[0].rate)


def decoded(clip: Clip, target_rate: int, cut_at: int | None = None) -> list[np.ndarray]:
    """The samples the server decodes from the clip (one array per utterance when cut after frame cut_at)."""
    pieces = [clip.pcm] if cut_at is None else [clip.pcm[:cut_at], clip.pcm[cut_at:]]
    out = []
    for p in pieces:
        a = rt.AudioInput("pcm16", clip.rate, clip.channels, target_rate)
        x = a.feed(p.tobytes())
        out.append(np.concatenate([x, a.cut()]))
    return out


@dataclass
class ClientResult:
    index: int
    kind: str  # "done", "eou", "vanish"
    clip: str
    start_s: float = 0.0
    packets_sent: int = 0
    frames_sent: int = 0
    connected: bool = False
    rejected: bool = False
    held: bool = False  # got its last result
    vanished: bool = False
    latencies_ms: list = field(default_factory=list)
    due_s: list = field(default_factory=list)
    final_ms: float | None = None
    transcripts: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # (kind, message)


def _session_url(ws_url: str) -> str:
    u = urllib.parse.urlsplit(ws_url)
    scheme = "https" if u.scheme == "wss" else "http"
    return urllib.parse.urlunsplit((scheme, u.netloc, "/v1/realtime/transcription_sessions", "", ""))


def _ws_endpoint(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    path = u.path if u.path not in ("", "/") else "/v1/realtime"
    query = u.query or "intent=transcription"
    return urllib.parse.urlunsplit((u.scheme, u.netloc, path, query, ""))


def mint_secret(ws_url: str, api_key: str, timeout: float = 10.0) -> str | None:
    """POST /v1/realtime/transcription_sessions with the API key -> the client secret (None without one)."""
    req = urllib.request.Request(_session_url(ws_url), data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data = json.loads(r.read())
    cs = data.get("client_secret")
    return cs.get("value") if isinstance(cs, dict) else None


async def _client(i: int, kind: str, clip: Clip, url: str, lookahead_ms: int, t0: float, start_s: float,
                  push_ms: float, api_key: str | None, vanish_at: int, timeout_s: float) -> ClientResult:
    import websockets

    res = ClientResult(i, kind, clip.name, start_s)
    clock = time.perf_counter
    await asyncio.sleep(max(0.0, t0 + start_s - clock()))
    ps = max(1, int(round(push_ms * clip.rate / 1000)))
    push_s = ps / clip.rate
    n_packets = -(-clip.pcm.shape[0] // ps)
    try:
        subprotocols = None
        if api_key:
            secret = await asyncio.to_thread(mint_secret, url, api_key)
            subprotocols = ["realtime", f"realtime-token.{secret}"]
        ws = await websockets.connect(_ws_endpoint(url), subprotocols=subprotocols, open_timeout=timeout_s,
                                      ping_interval=None, max_size=None, close_timeout=2)
    except Exception as e:  # noqa: BLE001 (counted: the run goes on)
        res.errors.append(("connect_failed", f"{type(e).__name__}: {e}"))
        return res
    res.connected = True
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if first.get("type") == "error":
            res.rejected = True
            err = first.get("error", {})
            res.errors.append((err.get("code", "error"), err.get("message", "")))
            return res
        await ws.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16",
            "input_audio_params": {"sample_rate_hz": clip.rate, "num_channels": clip.channels},
            "nemotron": {"lookahead_ms": lookahead_ms, "chunk_events": True}}}))
        while True:
            ev = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            if ev.get("type") == "transcription_session.updated":
                break
            if ev.get("type") == "error":
                res.errors.append((ev["error"].get("code", "error"), ev["error"].get("message", "")))
                return res
        start = clock()
        end_sent = {"t": None}  # when the event that ends the audio was sent

        async def receive():
            while True:
                try:
                    raw = await ws.recv()
                except websockets.ConnectionClosed:
                    if not res.held and not res.vanished:
                        res.errors.append(("closed_early", "the connection closed before the last result"))
                    return
                t = clock()
                ev = json.loads(raw)
                typ = ev.get("type")
                if typ == "conversation.item.input_audio_transcription.delta":
                    ms = ev.get("audio_end_ms")
                    if ms is not None:
                        k = max(int(math.ceil(ms / 1000 / push_s - 1e-9)) - 1, 0)  # the packet holding that audio
                        if k < res.packets_sent:
                            due = start + (k + 1) * push_s
                            res.latencies_ms.append((t - due) * 1000)
                            res.due_s.append(due - t0)
                elif typ == "conversation.item.input_audio_transcription.completed":
                    res.transcripts.append(ev.get("transcript", ""))
                    if res.final_ms is None and end_sent["t"] is not None:
                        res.final_ms = (t - end_sent["t"]) * 1000
                    if ev.get("is_last_result"):
                        res.held = True
                        return
                elif typ == "error":
                    err = ev.get("error", {})
                    res.errors.append((err.get("code", "error"), err.get("message", "")))

        rx = asyncio.create_task(receive())
        try:
            for k in range(n_packets):
                await asyncio.sleep(max(0.0, start + (k + 1) * push_s - clock()))
                if kind == "vanish" and k == vanish_at:
                    sock = ws.transport.get_extra_info("socket")
                    if sock is not None:  # a reset, not a close: SO_LINGER 0
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    ws.transport.abort()
                    res.vanished = True
                    rx.cancel()
                    return res
                frames = clip.pcm[k * ps: (k + 1) * ps]
                msg = {"type": "input_audio_buffer.append", "audio": base64.b64encode(frames.tobytes()).decode()}
                last = k == n_packets - 1
                if last and kind == "eou":
                    msg["runtime_config"] = {"force_eou": "true"}
                    end_sent["t"] = clock()
                await ws.send(json.dumps(msg))
                await ws.send('{"type":"input_audio_buffer.commit"}')
                res.packets_sent = k + 1
                res.frames_sent += frames.shape[0]
            if end_sent["t"] is None:
                end_sent["t"] = clock()
            await ws.send('{"type":"input_audio_buffer.done"}')
            try:
                await asyncio.wait_for(asyncio.shield(rx), timeout_s)
            except asyncio.TimeoutError:
                res.errors.append(("timeout", f"no last result within {timeout_s:g} s of done"))
        finally:
            if not rx.done():
                rx.cancel()
        return res
    except Exception as e:  # noqa: BLE001
        if not res.vanished:
            res.errors.append(("closed_early" if "ConnectionClosed" in type(e).__name__ else "client_error",
                               f"{type(e).__name__}: {e}"))
        return res
    finally:
        if not res.vanished:
            try:
                await asyncio.wait_for(ws.close(), 3)
            except Exception:  # noqa: BLE001
                ws.transport.abort()


def _kinds(n: int, eou_fraction: float, vanish_fraction: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    nv = int(round(n * vanish_fraction))
    ne = int(round(n * eou_fraction))
    kinds = ["done"] * n
    for j, i in enumerate(order):
        if j < nv:
            kinds[i] = "vanish"
        elif j < nv + ne:
            kinds[i] = "eou"
    return kinds


async def run_clients(url: str, n_clients: int, lookahead_ms: int, clips: list[Clip], *, push_ms: float,
                      stagger_ms: float | None, eou_fraction: float, vanish_fraction: float, api_key: str | None,
                      seed: int, timeout_s: float, sessions: int | None = None,
                      watch_s: float | None = None) -> tuple[list[ClientResult], float, float, dict | None]:
    """n_clients concurrent clients; with `sessions`, each runs sessions back to back until that many have run in
    all (session j streams clips[j % len]); else one session each. watch_s: sample the server's /metrics that
    often meanwhile (`watch_server`)."""
    if stagger_ms is None:
        stagger_ms = lookahead_ms / n_clients
    total = sessions if sessions is not None else n_clients
    kinds = _kinds(total, eou_fraction, vanish_fraction, seed)
    rng = np.random.default_rng(seed + 1)
    vanish_at = []
    for j in range(total):
        clip = clips[j % len(clips)]
        n_packets = -(-clip.pcm.shape[0] // max(1, int(round(push_ms * clip.rate / 1000))))
        vanish_at.append(int(rng.integers(max(1, n_packets // 4), max(2, (3 * n_packets) // 4))))
    t0 = time.perf_counter() + 0.05
    todo = iter(range(total))  # shared by the workers (one thread: each takes the next session when free)

    async def worker(i: int) -> list[ClientResult]:
        out, start_s = [], i * stagger_ms / 1000
        for j in todo:
            out.append(await _client(j, kinds[j], clips[j % len(clips)], url, lookahead_ms, t0, start_s, push_ms,
                                     api_key, vanish_at[j], timeout_s))
            start_s = time.perf_counter() - t0
        return out

    done = asyncio.Event()
    watch = asyncio.create_task(watch_server(url, watch_s, done)) if watch_s else None
    per_worker = await asyncio.gather(*(worker(i) for i in range(n_clients)))
    t1 = time.perf_counter()
    done.set()
    server = await watch if watch is not None else None
    results = sorted((r for rs in per_worker for r in rs), key=lambda r: r.index)
    return results, t0, t1, server


def _http_url(ws_url: str, path: str) -> str:
    u = urllib.parse.urlsplit(ws_url)
    return urllib.parse.urlunsplit(("https" if u.scheme == "wss" else "http", u.netloc, path, "", ""))


def _get(url: str, timeout: float = 5.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:  # /health answers 503 while not ready, with the same body
        return e.read()


def _scrape(text: str) -> dict[str, float]:
    """The samples of a Prometheus text page that watch_server reads, each summed over its labels: the Ray Serve
    endpoint (serve_ray.py) answers one series per replica (label `replica`), whose sum is the deployment's (its
    memory: all replicas' together)."""
    want = ("process_resident_memory_bytes", "nemotron_sessions_open", "nemotron_stream_slots_free",
            "nemotron_engine_streams_open")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name = head.split("{", 1)[0]
        if name in want:
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def watch_server(url: str, every_s: float, done: asyncio.Event, settle_s: float = 10.0) -> dict:
    """Sample the server's /metrics every `every_s` until `done`, then wait up to settle_s for every stream slot to be
    free (/health) -> {"samples": [[t_s, rss_mb, sessions_open, slots_free]], "rss_mb": {first, mid, last, max},
    "slots", "slots_free_end", "engine_streams_end", "error"}. A server without /metrics: error set, no samples."""
    t0 = time.perf_counter()
    samples, err = [], None
    while True:
        try:
            m = _scrape((await asyncio.to_thread(_get, _http_url(url, "/metrics"))).decode())
            samples.append([round(time.perf_counter() - t0, 2),
                            round(m.get("process_resident_memory_bytes", float("nan")) / 2**20, 1),
                            int(m.get("nemotron_sessions_open", -1)), int(m.get("nemotron_stream_slots_free", -1))])
        except Exception as e:  # noqa: BLE001 (reported; the load goes on)
            err = f"GET /metrics: {type(e).__name__}: {e}"
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), every_s)
        if done.is_set():
            break
    await done.wait()
    out = {"samples": samples, "error": err, "slots": None, "slots_free_end": None, "engine_streams_end": None}
    deadline = time.perf_counter() + settle_s
    while err is None:
        try:
            h = json.loads(await asyncio.to_thread(_get, _http_url(url, "/health")))
            m = _scrape((await asyncio.to_thread(_get, _http_url(url, "/metrics"))).decode())
        except Exception as e:  # noqa: BLE001
            out["error"] = f"GET /health: {type(e).__name__}: {e}"
            break
        out.update(slots=h.get("stream_slots"), slots_free_end=h.get("stream_slots_free"),
                   engine_streams_end=int(m.get("nemotron_engine_streams_open", -1)))
        if (out["slots_free_end"] == out["slots"] and out["engine_streams_end"] == 0) or time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.1)
    rss = [s[1] for s in samples if s[1] == s[1]]
    out["rss_mb"] = ({"first": rss[0], "mid": rss[len(rss) // 2], "last": rss[-1], "max": max(rss)} if rss else None)
    return out


def run_ws_load(url: str, n_clients: int, lookahead_ms: int, audio=None, *, push_ms: float = DEFAULT_PUSH_MS,
                stagger_ms: float | None = None, eou_fraction: float = 0.25, vanish_fraction: float = 0.1,
                api_key: str | None = None, check_model=None, check_engine=None, seed: int = 0,
                timeout_s: float = 30.0, sessions: int | None = None, watch_s: float | None = 2.0) -> dict:
    """N clients against the server at `url` -> the report (JSON-ready). audio: recording paths or Clips (default:
    the demo model's examples). sessions: N clients run that many sessions in all, back to back (default: one
    each). check_engine (an Engine) or check_model (a model directory): check every held session's transcripts
    against Engine.transcribe, after the run; neither: no check. watch_s: sample the server's memory, open
    sessions and free slots from its /metrics that often, and check at the end that every slot is free again
    (report["server"]; None: not watched)."""
    from .loadtest import _drift, _stats, realtime_failures

    if n_clients < 1:
        raise ValueError(f"n_clients must be at least 1, got {n_clients}")
    if sessions is not None and sessions < 1:
        raise ValueError(f"sessions must be at least 1, got {sessions}")
    if audio is None:
        from .cli import demo_model_dir

        audio = sorted((demo_model_dir() / "examples").glob("*.wav"))
    clips = [a if isinstance(a, Clip) else load_clip(a) for a in audio]
    if not clips:
        raise ValueError("run_ws_load needs at least one recording")
    results, t0, t1, server = asyncio.run(run_clients(
        url, n_clients, lookahead_ms, clips, push_ms=push_ms, stagger_ms=stagger_ms, eou_fraction=eou_fraction,
        vanish_fraction=vanish_fraction, api_key=api_key, seed=seed, timeout_s=timeout_s, sessions=sessions,
        watch_s=watch_s))
    lat = np.array([x for r in results for x in r.latencies_ms], np.float64)
    due = np.array([x for r in results for x in r.due_s], np.float64)
    fin = np.array([r.final_ms for r in results if r.final_ms is not None], np.float64)
    errors: dict[str, int] = {}
    for r in results:
        for k, _ in r.errors:
            errors[k] = errors.get(k, 0) + 1
    late = int((lat > lookahead_ms).sum())
    rep = {
        "url": url, "n_streams": n_clients, "lookahead_ms": int(lookahead_ms), "chunk_ms": int(lookahead_ms),
        "push_ms": float(push_ms), "stagger_ms": float(stagger_ms if stagger_ms is not None
                                                        else lookahead_ms / n_clients),
        "wall_s": t1 - t0, "audio_s_sent": float(sum(r.frames_sent / clips[r.index % len(clips)].rate
                                                     for r in results)),
        "chunks": int(lat.size), "latency_ms": _stats(lat), "late": late,
        "late_fraction": late / lat.size if lat.size else 0.0, **_drift(due, lat),
        "final_latency_ms": _stats(fin), "errors": errors,
        "sessions": {"clients": n_clients, "total": len(results), "connected": sum(r.connected for r in results),
                     "held": sum(r.held for r in results), "rejected": sum(r.rejected for r in results),
                     "vanished": sum(r.vanished for r in results),
                     "eou": sum(r.kind == "eou" for r in results),
                     "expected_held": sum(r.kind != "vanish" for r in results)},
        "clients": [{"index": r.index, "kind": r.kind, "clip": r.clip, "held": r.held, "rejected": r.rejected,
                     "vanished": r.vanished, "packets_sent": r.packets_sent, "transcripts": r.transcripts,
                     "final_ms": r.final_ms, "errors": [f"{k}: {m}" for k, m in r.errors]} for r in results],
    }
    engine = check_engine
    if engine is None and check_model is not None:
        from .engine import Engine

        engine = Engine(check_model, max_streams=2)
    checked = matched = 0
    mismatches = []
    if engine is not None:
        cache: dict = {}
        for r in results:
            if not r.held or r.kind == "vanish":
                continue
            clip = clips[r.index % len(clips)]
            if (clip.name, lookahead_ms) not in cache:
                x = decoded(clip, engine.cfg.sample_rate)[0]
                cache[(clip.name, lookahead_ms)] = engine.transcribe(x, lookahead_ms).text
            want = cache[(clip.name, lookahead_ms)]
            got = " ".join(t for t in r.transcripts if t)
            checked += 1
            if got == want:
                matched += 1
            else:
                mismatches.append({"client": r.index, "clip": clip.name, "expected": want, "got": got})
    rep["transcripts"] = {"checked": checked, "matched": matched, "mismatches": mismatches}
    rep["server"] = server
    fails = realtime_failures(rep, lookahead_ms)
    unexpected = {k: v for k, v in errors.items()}
    if unexpected:
        fails.append("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(unexpected.items())))
    if rep["sessions"]["held"] < rep["sessions"]["expected_held"]:
        fails.append(f"{rep['sessions']['expected_held'] - rep['sessions']['held']} session(s) not held to the end")
    if mismatches:
        fails.append(f"{len(mismatches)} transcript(s) differ from the in-process engine's")
    if server is not None and server["error"] is None and (server["slots_free_end"] != server["slots"]
                                                           or server["engine_streams_end"] != 0):
        fails.append(f"slots leaked: {server['slots_free_end']} of {server['slots']} free and "
                     f"{server['engine_streams_end']} engine stream(s) open after the run")
    rep["realtime_ok"] = not fails
    rep["failures"] = fails
    return rep


def summary_line(rep: dict) -> str:
    lat, fin, s = rep["latency_ms"], rep["final_latency_ms"], rep["sessions"]
    head = (f"latency p50 {lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f} ms, late {rep['late']}/"
            f"{rep['chunks']}" if lat.get("n") else "no chunk latency measured")
    if fin.get("n"):
        head += f", final p50 {fin['p50']:.1f} p95 {fin['p95']:.1f} ms"
    tr = rep["transcripts"]
    check = f", transcripts {tr['matched']}/{tr['checked']} match" if tr["checked"] else ""
    srv = rep.get("server") or {}
    if srv.get("rss_mb"):
        r = srv["rss_mb"]
        check += (f"; server RSS {r['first']:.0f} -> {r['mid']:.0f} -> {r['last']:.0f} MB, slots free at the end "
                  f"{srv['slots_free_end']}/{srv['slots']}")
    total = f" ({s['total']} sessions)" if s["total"] != s["clients"] else ""
    return (f"{rep['url']} lookahead {rep['lookahead_ms']} ms, N={rep['n_streams']}{total}: {head}; held "
            f"{s['held']}/{s['expected_held']}, rejected {s['rejected']}, vanished {s['vanished']}{check}: "
            + ("OK" if rep["realtime_ok"] else "not OK (" + "; ".join(rep["failures"]) + ")"))


def add_arguments(p) -> None:
    """Options of `loadtest --url` beside the in-process loadtest's (--streams, --lookahead-ms, --push-ms, --audio,
    --out, --model are shared)."""
    p.add_argument("--url", default=None,
                   help="load a running `nemotron-engine serve` over WebSockets (ws://HOST:PORT) instead of an "
                        "in-process engine: N clients (--streams) stream --audio in real time")
    p.add_argument("--api-key", default=None, help="--url: the server's API key (mints a client secret per session)")
    p.add_argument("--eou-fraction", type=float, default=None,
                   help="--url: fraction of clients that end with force_eou (default 0.25)")
    p.add_argument("--vanish-fraction", type=float, default=None,
                   help="--url: fraction of clients that vanish mid-stream, TCP reset (default 0.1)")
    p.add_argument("--stagger-ms", type=float, default=None,
                   help="--url: start of client i = i x this (default: the chunk period / N)")
    p.add_argument("--no-check", action="store_true",
                   help="--url: do not check transcripts against the in-process engine (which loads --model)")
    p.add_argument("--timeout-s", type=float, default=None, help="--url: per-client wait limits (default 30)")
    p.add_argument("--sessions", type=int, default=None,
                   help="--url: the N clients run this many sessions in all, each client one after another (default: "
                        "one each); with --vanish-fraction, the churn test (slots, memory)")
    p.add_argument("--loop-s", type=float, default=None,
                   help="--url: each session streams the recordings back to back, looped to at least this many "
                        "seconds (one long stream per client, as the in-process loadtest's --run-s)")
    p.add_argument("--seed", type=int, default=None,
                   help="--url: seed of the client kinds and vanishing points (default 0)")
    # (defaults are None here and resolved in cli_run: the in-process loadtest records its options as given)


def cli_run(args) -> int:
    import os

    from .cli import _err, demo_model_dir
    from .loadtest import _command_line, bisect_capacity, machine_info, plot

    try:
        import websockets  # noqa: F401
    except ImportError:
        _err("loadtest --url needs websockets: pip install 'nemotron-engine[serve]'")
        return 2
    for name, default in (("eou_fraction", 0.25), ("vanish_fraction", 0.1), ("timeout_s", 30.0), ("seed", 0)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if not args.streams and not args.capacity:
        _err("loadtest --url: give --streams N [N ...] (concurrent clients) and/or --capacity")
        return 2
    if not args.url.startswith(("ws://", "wss://")):
        _err(f"loadtest --url: {args.url!r} is not a ws:// or wss:// URL")
        return 2
    model = None if args.no_check else (Path(args.model) if args.model else demo_model_dir())
    if model is not None and not (model / "config.json").is_file():
        _err(f"{model}: not a model directory (no config.json); give --model (the server's) or --no-check")
        return 2
    audio = args.audio or sorted((demo_model_dir() / "examples").glob("*.wav"))
    try:
        clips = [load_clip(a) for a in audio]
    except Exception as e:  # noqa: BLE001 (soundfile's errors)
        _err(f"cannot read audio: {e}")
        return 2
    engine = None
    if model is not None:
        import torch

        from .engine import Engine

        if args.threads:
            torch.set_num_threads(args.threads)
        engine = Engine(model, max_streams=2)
    if args.loop_s:
        try:
            clips = [looped(clips, args.loop_s)]
        except ValueError as e:
            _err(str(e))
            return 2
    if args.sessions is not None and args.sessions < 1:
        _err(f"loadtest --url: --sessions must be at least 1, got {args.sessions}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"command": _command_line(args), "machine": machine_info(),
           "settings": {"url": args.url, "push_ms": args.push_ms, "eou_fraction": args.eou_fraction,
                        "vanish_fraction": args.vanish_fraction, "stagger_ms": args.stagger_ms,
                        "sessions": args.sessions, "loop_s": args.loop_s,
                        "audio": [c.name for c in clips], "checked_with": str(model) if model else None},
           "points": [], "capacity": {}}
    path = out / "ws_loadtest.json"

    def save():
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)

    def run(n: int, la: int) -> dict:
        rep = run_ws_load(args.url, n, la, clips, push_ms=args.push_ms, stagger_ms=args.stagger_ms,
                          eou_fraction=args.eou_fraction, vanish_fraction=args.vanish_fraction,
                          api_key=args.api_key or os.environ.get("NEMOTRON_ENGINE_API_KEY"), check_engine=engine,
                          seed=args.seed, timeout_s=args.timeout_s, sessions=args.sessions)
        doc["points"].append(rep)
        print(summary_line(rep), flush=True)
        save()
        return rep

    status = 0
    for la in args.lookahead_ms:
        for n in args.streams or []:
            if not run(n, la)["realtime_ok"]:
                status = 1
        if args.capacity:
            cap = bisect_capacity(lambda n: run(n, la), args.n_min, args.n_max, args.rel_tol)
            doc["capacity"][str(la)] = {k: v for k, v in cap.items() if k != "points"}
            print(f"lookahead {la} ms: capacity {cap['capacity']}{'+' if cap['at_least'] else ''} sessions "
                  f"(bracket {cap['bracket']})", flush=True)
            save()
    caps = {int(k): (v["capacity"], v["at_least"]) for k, v in doc["capacity"].items()}
    note = plot(doc["points"], out / "ws_loadtest.png", caps)
    doc["plot"] = "ws_loadtest.png" if note is None else note
    save()
    print(f"wrote {path}" + ("" if note else f" and {out / 'ws_loadtest.png'}"), file=sys.stderr)
    return status
