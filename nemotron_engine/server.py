"""`nemotron-engine serve`: the realtime transcription WebSocket server (the protocol of NVIDIA's realtime ASR clients,
realtime.py; docs/server.md).

    nemotron-engine serve --model DIR [--host 127.0.0.1] [--port 9000] [--max-streams 16] [--lookahead-ms MS]
                          [--api-key KEY] [--device cpu] [--dtype float32] [--threads N] ...   (--help)

One engine per process. Threads and what runs where:
- the asyncio thread (aiohttp): HTTP and WebSocket I/O, the protocol, audio decoding and resampling, and the
  per-session calls `Stream.push`, `Stream.finalize` and `Stream.finish`. These three only copy samples or record a
  cut under the engine's lock (engine.py: push "safe to call from another thread than the one stepping the
  engine"; a cut is a counter update under the same lock), so they never wait for a step; calling all three from
  the one thread that decodes a session's audio keeps each cut exactly after the audio that preceded it;
- the stepping thread (`Stepper`): `Engine.open_stream`, `Engine.close` and `Engine.step`, nothing else touches the
  engine. open/close requests are queued to it and run between steps (so a closed stream's slot is free within a
  step); the updates of each step go back to the asyncio loop in one `call_soon_threadsafe` callback, which turns
  them into events in each session's outgoing queue (bounded: a client that does not read is cut off).
torch's intra-op threads default to max(1, cores - 1), leaving a core for the network side.

The protocol (Session) and the server's decisions (RealtimeServer: admission, mint, auth, drain) do not depend on
aiohttp: a Session talks to its WebSocket through a Connection, and serve_ray.py runs the same two classes in each
replica of a Ray Serve application over Starlette's WebSocket.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import realtime as rt

log = logging.getLogger("nemotron_engine.server")

DEFAULT_PORT = 9000
WS_PATH = "/v1/realtime"
SESSIONS_PATH = "/v1/realtime/transcription_sessions"
TOKEN_PREFIX = "realtime-token."
TICKET_PARAM = "nemotron_ticket"  # a Ray replica's redirect to its direct port: the slot held for it (serve_ray.py)
SUBPROTOCOL = "realtime"
MAX_SECRETS = 10_000

# WebSocket close codes (RFC 6455)
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_INTERNAL, CLOSE_TRY_LATER = (
    1000, 1001, 1008, 1009, 1011, 1013)


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: str = "cpu"
    dtype: str = "float32"
    backend: str | None = None
    max_streams: int = 16
    lookahead_ms: int | None = None  # default of a session (None: the model's first, as `transcribe`)
    endpoint_ms: int | None = None  # default endpointing of a session (None: off)
    api_key: str | None = None
    threads: int | None = None  # torch intra-op threads (None: max(1, cores - 1))
    idle_timeout_s: float = 30.0
    max_message_bytes: int = 1 << 20  # over it: an error event; over 4x it the frame is not read (close 1009)
    max_outgoing_events: int = 1024
    max_queued_s: float = 10.0  # the engine's max_queued_s: audio a stream holds ahead of the engine
    heartbeat_s: float = 20.0
    shutdown_timeout_s: float = 30.0
    secret_ttl_s: float = 60.0
    send_buffer_bytes: int = 1 << 18  # SO_SNDBUF of each WebSocket: bounds what a slow reader holds in the kernel
    stats_interval_s: float = 60.0


def default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# ---- metrics -----------------------------------------------------------------------------------------------------
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.16, 0.25, 0.4, 0.56, 0.8, 1.12, 1.6, 2.5, 5.0, 10.0, 30.0)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Prometheus metrics of one server, in a registry of its own (GET /metrics)."""

    def __init__(self, server: "RealtimeServer"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        Gauge("nemotron_sessions_open", "Open WebSocket sessions", registry=r).set_function(
            lambda: len(server.sessions))
        Gauge("nemotron_stream_slots", "Stream slots (--max-streams)", registry=r).set_function(
            lambda: server.opts.max_streams)
        Gauge("nemotron_stream_slots_free", "Stream slots free for a new session", registry=r).set_function(
            lambda: server.opts.max_streams - server.reserved)
        Gauge("nemotron_engine_streams_open", "Streams open in the engine", registry=r).set_function(
            lambda: len(server.engine.streams))
        self.step = Histogram("nemotron_step_seconds", "Engine step time (steps that decoded at least one chunk)",
                              buckets=STEP_BUCKETS, registry=r)
        self.chunk_latency = Histogram(
            "nemotron_chunk_latency_seconds", "From the arrival of the audio a chunk needed to the step that decoded "
            "it", buckets=LATENCY_BUCKETS, registry=r)
        self.final_latency = Histogram(
            "nemotron_final_token_latency_seconds", "From force_eou / input_audio_buffer.done to the step that "
            "returned the utterance's final result", buckets=LATENCY_BUCKETS, registry=r)
        self.late = Counter("nemotron_late_chunks", "Chunks whose latency exceeded their chunk period (lookahead)",
                            registry=r)
        self.chunks = Counter("nemotron_chunks", "Chunks decoded", registry=r)
        self.errors = Counter("nemotron_errors", "Errors by kind", ["kind"], registry=r)
        for k in rt.ERROR_KINDS + ("connection_lost",):
            self.errors.labels(kind=k)
        self.sessions = Counter("nemotron_sessions", "WebSocket sessions accepted", registry=r)
        self.streams = Counter("nemotron_streams_opened", "Engine streams opened", registry=r)
        self.audio = Counter("nemotron_audio_seconds", "Audio received, seconds at the model's rate", registry=r)
        self.utterances = Counter("nemotron_utterances", "Utterances completed", registry=r)

    def error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ---- the stepping thread -----------------------------------------------------------------------------------------
class Stepper(threading.Thread):
    """Steps the engine whenever a stream may have a chunk ready; runs the open/close requests between steps."""

    def __init__(self, server: "RealtimeServer", loop: asyncio.AbstractEventLoop, threads: int):
        super().__init__(name="nemotron-step", daemon=True)
        self.server = server
        self.engine = server.engine
        self.loop = loop
        self.threads = threads
        self.wake = threading.Event()
        self._cmds: collections.deque = collections.deque()
        self._stopping = False
        self.steps = 0  # steps that decoded something
        self.step_s = 0.0

    def call(self, fn) -> asyncio.Future:
        """Run fn() in the stepping thread, between steps -> an asyncio future of its result (from the loop)."""
        cf: concurrent.futures.Future = concurrent.futures.Future()
        self._cmds.append((fn, cf))
        self.wake.set()
        return asyncio.wrap_future(cf, loop=self.loop)

    def post(self, fn) -> None:
        self._cmds.append((fn, None))
        self.wake.set()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    def run(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        eng, metrics = self.engine, self.server.metrics
        perf = time.perf_counter
        while True:
            self.wake.clear()
            while self._cmds:
                fn, cf = self._cmds.popleft()
                if cf is not None and not cf.set_running_or_notify_cancel():
                    continue
                try:
                    r = fn()
                except BaseException as e:  # noqa: BLE001 (handed to the caller)
                    if cf is None:
                        log.exception("stepping thread: request failed")
                    else:
                        cf.set_exception(e)
                else:
                    if cf is not None:
                        cf.set_result(r)
            if self._stopping:
                return
            updates = []
            if eng.streams:
                t0 = perf()
                try:
                    updates = eng.step()
                except Exception as e:  # noqa: BLE001 (a failed step fails its sessions, not the server)
                    log.exception("engine step failed")
                    self.loop.call_soon_threadsafe(self.server.on_step_failure, e)
                    time.sleep(0.05)
                    continue
                t1 = perf()
                if updates:
                    dt = t1 - t0
                    self.steps += 1
                    self.step_s += dt
                    metrics.step.observe(dt)
                    self.loop.call_soon_threadsafe(self.server.deliver, updates, t1)
            if not updates and not self._cmds:
                self.wake.wait(0.5)


# ---- the connection under a session ------------------------------------------------------------------------------
class Connection:
    """What a Session needs of its WebSocket, whichever server accepted it (aiohttp here; Starlette under Ray Serve,
    serve_ray.py). `receive` -> (kind, value): ("text", str), ("binary", bytes), ("too_big", None) for a message over
    the frame limit (the session closes 1009), ("lost", why) for a connection that ended without a close frame,
    ("closed", code) for a client's close; it raises asyncio.TimeoutError after `timeout` s without a message."""

    peer: str = "?"

    async def receive(self, timeout: float) -> tuple[str, object]:
        raise NotImplementedError

    async def send_text(self, data: str) -> None:
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection without a close handshake (a peer that does not read)."""
        raise NotImplementedError


class AiohttpConnection(Connection):
    def __init__(self, ws, request):
        self.ws = ws
        self.transport = request.transport
        self.peer = request.remote

    async def receive(self, timeout: float) -> tuple[str, object]:
        import aiohttp

        msg = await self.ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return "text", msg.data
        if msg.type == aiohttp.WSMsgType.BINARY:
            return "binary", msg.data
        if msg.type == aiohttp.WSMsgType.ERROR:
            exc = msg.data
            if getattr(exc, "code", None) == CLOSE_TOO_BIG:
                return "too_big", None
            return "lost", f"{type(exc).__name__}: {exc}"
        code = self.ws.close_code  # CLOSE, CLOSING, CLOSED
        if code is None or code == 1006:
            return "lost", "no close frame"
        return "closed", code

    async def send_text(self, data: str) -> None:
        await self.ws.send_str(data)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# ---- a session ---------------------------------------------------------------------------------------------------
class Session:
    """One WebSocket client: its settings, audio path, stream and outgoing queue. The same code runs over aiohttp
    (this server) and over Ray Serve's WebSocket ingress (serve_ray.py): only the Connection differs."""

    def __init__(self, server: "RealtimeServer", conn: Connection, auth: str, slot_held: bool = False):
        """slot_held: the server reserved a stream slot for this session before its connection arrived (a Ray
        replica's redirect to its direct port, serve_ray.py); the session takes that slot over."""
        self.server = server
        self.slot_held = slot_held
        self.opts = server.opts
        self.conn = conn
        self.peer = conn.peer
        self.id = rt.new_id("sess")
        self.auth = auth
        self.settings: rt.Settings = server.default_settings
        self.audio: rt.AudioInput | None = None
        self.stream = None
        self.holds_slot = False
        self.input_done = False
        self.final = False  # the last .completed has been queued
        self.ended = False
        self.cut_off = False
        self.pending: collections.deque[np.ndarray] = collections.deque()
        self.received = 0  # samples (model rate) decoded from the client's audio
        self.arrivals: collections.deque = collections.deque()  # (samples received after a message, its time)
        self.cut_requests: collections.deque = collections.deque()  # (cut sample, time of force_eou / done)
        self.room = asyncio.Event()
        self.out: asyncio.Queue = asyncio.Queue()
        self.final_event = asyncio.Event()
        self.item_seq = 0
        self.item_text = ""  # the text sent in the open item's deltas
        self.utterances = 0
        self.errors = 0
        self.sent = 0
        self.end_reason = "?"
        self.recv_task: asyncio.Task | None = None
        self.send_task: asyncio.Task | None = None
        self.shutdown_task: asyncio.Task | None = None
        self.t_open = time.monotonic()

    # ---- outgoing ------------------------------------------------------------------------------------------------
    def send(self, ev: dict) -> None:
        if self.ended or self.cut_off:
            return
        if self.out.qsize() >= self.opts.max_outgoing_events:
            self._cut_off()
            return
        self.out.put_nowait(rt.dumps(ev))

    def send_error(self, kind: str, message: str, param=None, client_event_id=None) -> None:
        self.errors += 1
        self.server.metrics.error(kind)
        log.info("session %s: error %s: %s", self.id, kind, message)
        self.send(rt.error_event(kind, message, param, client_event_id))

    async def _send_loop(self) -> None:
        try:
            while True:
                data = await self.out.get()
                if data is None:
                    return
                await self.conn.send_text(data)
                self.sent += 1
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            return
        except Exception:  # noqa: BLE001 (aiohttp raises ClientConnectionResetError and others on a dead socket)
            return

    def _cut_off(self) -> None:
        """A client that does not read its results: its stream is closed and its connection dropped."""
        if self.cut_off:
            return
        self.cut_off = True
        self.server.metrics.error("slow_reader")
        self.end_reason = f"cut off: over {self.opts.max_outgoing_events} events queued (the client does not read)"
        log.warning("session %s: %s", self.id, self.end_reason)
        self._release_stream()
        if self.recv_task is not None:
            self.recv_task.cancel()
        self.conn.abort()

    async def _close(self, code: int, reason: str, flush_s: float = 5.0) -> None:
        """Send what is queued (up to flush_s), then close with `code`."""
        if self.send_task is not None and not self.send_task.done():
            self.out.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.send_task), flush_s)
        try:
            await asyncio.wait_for(self.conn.close(code, reason), 3.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            self.conn.abort()

    # ---- life --------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        srv = self.server
        self.send_task = asyncio.create_task(self._send_loop())
        if self.slot_held:  # released and taken again below, with nothing awaited between: no other session can win it
            self.slot_held = False
            srv.reserved -= 1
        try:
            if srv.reserved >= self.opts.max_streams or srv.stopping:
                # a draining replica (serve_ray.py) may still be handed a connection by a router that has not yet
                # heard: the client is told to come back, as when every slot is held
                why = "draining" if srv.stopping else f"all {self.opts.max_streams} stream slots are in use"
                self.end_reason = f"rejected: {why}"
                srv.metrics.error("capacity")
                log.warning("session %s from %s rejected: %s", self.id, self.peer, why)
                self.send(rt.error_event("capacity", "the server is draining; reconnect" if srv.stopping else
                                         f"the server is at capacity: all {self.opts.max_streams} streams are in "
                                         "use; retry later"))
                await self._close(CLOSE_TRY_LATER, "server at capacity")
                return
            srv.reserved += 1
            self.holds_slot = True
            srv.sessions.add(self)
            srv.metrics.sessions.inc()
            log.info("session %s opened from %s (%s; %d/%d slots in use)", self.id, self.peer, self.auth,
                     srv.reserved, self.opts.max_streams)
            conv = {"id": rt.new_id("conv"), "object": "realtime.conversation"}
            if srv.replica is not None:  # under Ray Serve: which replica holds the session (clients ignore it)
                conv["replica"] = srv.replica
            self.send(rt.event("conversation.created", conversation=conv))
            self.recv_task = asyncio.create_task(self._receive_loop())
            await asyncio.wait({self.recv_task})
            if self.shutdown_task is not None:
                await asyncio.wait({self.shutdown_task})
        finally:
            self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        accepted = self in self.server.sessions
        self._release_stream()
        if self.send_task is not None:
            self.send_task.cancel()
        self.server.sessions.discard(self)
        audio_s = self.received / self.server.sample_rate
        if accepted:
            log.info("session %s ended (%s): %.2f s of audio, %d utterances, %d errors, %d events sent, %.1f s",
                     self.id, self.end_reason, audio_s, self.utterances, self.errors, self.sent,
                     time.monotonic() - self.t_open)

    def _release_stream(self) -> None:
        """Close the engine stream (in the stepping thread, before its next step) and free the slot."""
        srv = self.server
        s, self.stream = self.stream, None
        if s is not None:
            srv.by_stream.pop(s.id, None)
            srv.stepper.post(lambda: srv.engine.close(s))
        if self.holds_slot:
            self.holds_slot = False
            srv.reserved -= 1
        self.room.set()

    async def _receive_loop(self) -> None:
        opts = self.opts
        try:
            while True:
                try:
                    kind, value = await self.conn.receive(opts.idle_timeout_s)
                except asyncio.TimeoutError:
                    if self.stream is not None and self.input_done and not self.final:
                        continue  # the client waits for its results
                    self.end_reason = f"idle timeout ({opts.idle_timeout_s:g} s without a message)"
                    self.send_error("idle_timeout", f"no message for {opts.idle_timeout_s:g} s: closing the session")
                    await self._close(CLOSE_NORMAL, "idle timeout")
                    return
                t = time.perf_counter()
                if kind == "text":
                    await self._on_text(value, t)
                elif kind == "binary":
                    self.send_error("invalid_event", "binary messages are not part of the protocol: send JSON text "
                                    "events (audio base64-encoded in input_audio_buffer.append)")
                elif kind == "too_big":
                    self.server.metrics.error("message_too_large")
                    self.end_reason = (f"a message over {4 * opts.max_message_bytes} bytes (4 x "
                                       "--max-message-bytes): closed 1009")
                    await self._close(CLOSE_TOO_BIG, "message too big")
                    return
                elif kind == "lost":
                    self.server.metrics.error("connection_lost")
                    self.end_reason = f"connection lost ({value})"
                    return
                else:
                    self.end_reason = f"client closed ({value})"
                    return
        except asyncio.CancelledError:
            if self.end_reason == "?":
                self.end_reason = "cancelled"
        except Exception as e:  # noqa: BLE001 (a bug in one session must not take the server down)
            log.exception("session %s: internal error", self.id)
            self.end_reason = f"internal error ({type(e).__name__}: {e})"
            self.send_error("internal", f"internal server error ({type(e).__name__}); the session is closed")
            await self._close(CLOSE_INTERNAL, "internal error")

    # ---- incoming ----------------------------------------------------------------------------------------------
    async def _on_text(self, data: str, t: float) -> None:
        ev = None
        try:
            if len(data) > self.opts.max_message_bytes:
                raise rt.ProtocolError("message_too_large", f"a message of {len(data)} bytes is over the limit of "
                                       f"{self.opts.max_message_bytes} bytes: send the audio in smaller appends")
            ev = rt.parse_client_event(data)
            kind = ev["type"]
            if kind == "input_audio_buffer.append":
                await self._append(ev, t)
            elif kind == "input_audio_buffer.commit":
                self.send(rt.event("input_audio_buffer.committed", previous_item_id=None, item_id=self._item_id()))
            elif kind == "input_audio_buffer.done":
                await self._done(t)
            elif kind == "transcription_session.update":
                self._update(ev)
            else:
                raise rt.ProtocolError("unknown_event", f"unknown event type {kind!r}; this server takes "
                                       + ", ".join(rt.CLIENT_EVENTS), "type")
        except rt.ProtocolError as e:
            eid = ev.get("event_id") if isinstance(ev, dict) else None
            self.send_error(e.kind, e.message, e.param, eid)

    def _item_id(self) -> str:
        return f"item_{self.id[5:]}_{self.item_seq}"

    def _update(self, ev: dict) -> None:
        srv = self.server
        st = rt.apply_update(self.settings, ev.get("session"), lookaheads_ms=srv.lookaheads_ms,
                             frame_ms=srv.frame_ms, model_name=srv.model_name, streaming=self.audio is not None,
                             languages=srv.languages, default_language=srv.default_language, eou=srv.eou)
        self.settings = st
        self.send(rt.event("transcription_session.updated", session=srv.session_config(st)))

    async def _append(self, ev: dict, t: float) -> None:
        if self.input_done:
            raise rt.ProtocolError("append_after_done", "input_audio_buffer.append after input_audio_buffer.done: "
                                   "this session's input has ended (open a new session for more audio)")
        data = rt.decode_audio_field(ev)
        eou = rt.force_eou_requested(ev)
        if self.stream is None and self.server.languages is not None and not self.settings.language:
            raise rt.ProtocolError("invalid_config", "this model needs a language per stream: set "
                                   "input_audio_transcription.language to one of "
                                   + ", ".join(map(repr, self.server.languages)) + " before the first append",
                                   "input_audio_transcription.language")
        if self.audio is None:
            st = self.settings
            self.audio = rt.AudioInput(st.input_format, st.sample_rate, st.channels, self.server.sample_rate)
        try:
            x = self.audio.feed(data)
        except rt.ProtocolError:
            if self.stream is None and self.received == 0:
                self.audio = None  # nothing taken yet: the session may still change its audio settings
            raise
        if eou:
            tail = self.audio.cut()
            if tail.size:
                x = np.concatenate([x, tail])
        if x.size:
            await self._take(x, t)
        if eou and self.stream is not None:
            self.stream.finalize()
            self.cut_requests.append((self.received, t))

    async def _take(self, x: np.ndarray, t: float) -> None:
        """Queue decoded samples for the stream (opened at the first audio) and push what its ring takes."""
        if self.stream is None:
            await self._open_stream()
        self.received += x.size
        self.server.metrics.audio.inc(x.size / self.server.sample_rate)
        self.arrivals.append((self.received, t))
        self.pending.append(x)
        await self._flush()

    async def _open_stream(self) -> None:
        srv, st = self.server, self.settings
        fut = srv.stepper.call(lambda: srv.engine.open_stream(st.lookahead_ms, endpoint_ms=st.endpoint_ms,
                                                              language=srv.stream_language(st),
                                                              eou_reset=st.eou_reset))
        try:
            s = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the session ends while its stream is being opened: close it once it is
            fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is not None
                                  else srv.stepper.post(lambda: srv.engine.close(f.result())))
            raise
        if self.ended or self.cut_off:
            srv.stepper.post(lambda: srv.engine.close(s))
            raise asyncio.CancelledError
        self.stream = s
        self.chunk_s = st.lookahead_ms / 1000
        srv.by_stream[s.id] = self
        srv.metrics.streams.inc()

    async def _flush(self) -> None:
        """Push the queued samples as the stream's ring makes room (the engine consumes it step by step); while it is
        full, this session reads no further message (TCP flow control holds the client back)."""
        wake = self.server.stepper.wake
        while self.pending:
            s = self.stream
            if s is None:
                return
            room = s.room()
            if room <= 0:
                self.room.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.room.wait(), 0.5)
                continue
            x = self.pending[0]
            if x.size <= room:
                s.push(x)
                self.pending.popleft()
            else:
                s.push(x[:room])
                self.pending[0] = x[room:]
            wake.set()

    async def _done(self, t: float) -> None:
        if self.input_done:
            raise rt.ProtocolError("invalid_event", "input_audio_buffer.done was already received")
        tail = self.audio.cut() if self.audio is not None else np.zeros(0, np.float32)
        if tail.size:
            await self._take(tail, t)
        self.input_done = True
        if self.stream is None:  # no audio at all: an empty result, no engine work
            self._send_completed(None, last=True)
            self._stream_final()
            return
        self.stream.finish()
        self.cut_requests.append((self.received, t))
        self.server.stepper.wake.set()

    # ---- results -----------------------------------------------------------------------------------------------
    def on_update(self, u, t: float) -> None:
        """An engine update of this session's stream (in the loop, t: when its step returned)."""
        if self.ended:
            return
        srv = self.server
        self.room.set()
        if u.segment is None and not u.final:  # a chunk decoded
            srv.metrics.chunks.inc()
            srv.n_chunks += 1
            lat = self._arrival_latency(u.needed_samples, t)
            if lat is not None:
                srv.metrics.chunk_latency.observe(lat)
                if lat > self.chunk_s:
                    srv.metrics.late.inc()
                    srv.n_late += 1
            if u.text or self.settings.chunk_events:
                self._send_delta(u.text, u.needed_samples)
                self.item_text += u.text
            return
        # the segments this update closed, in order (an EOU model's <EOU> closes one mid-chunk, and one chunk may
        # close several): the update's text is each one's new text, then the open segment's; each segment's new text
        # goes out as its item's delta before its .completed, the rest as the next item's delta
        rest = u.text
        for k, seg in enumerate(u.segments):
            n = max(len(seg.text) - len(self.item_text), 0)
            part, rest = rest[:n], rest[n:]
            if part:
                self._send_delta(part, u.needed_samples)
            end = round(seg.end_ms * srv.sample_rate / 1000)
            while self.cut_requests and self.cut_requests[0][0] <= end:
                at, t0 = self.cut_requests.popleft()
                if at == end:
                    srv.metrics.final_latency.observe(t - t0)
            self._send_completed(seg, last=u.final and k == len(u.segments) - 1)
        if rest:
            self._send_delta(rest, u.needed_samples)
            self.item_text += rest
        if u.final and not u.segments:
            while self.cut_requests:
                at, t0 = self.cut_requests.popleft()
                srv.metrics.final_latency.observe(t - t0)
            self._send_completed(None, last=True)
        if u.final:
            self._stream_final()

    def _arrival_latency(self, needed: int, t: float):
        a = self.arrivals
        while len(a) > 1 and a[0][0] < needed:
            a.popleft()
        if a and a[0][0] >= needed:
            return t - a[0][1]
        return None

    def _send_delta(self, text: str, needed: int) -> None:
        self.send(rt.event("conversation.item.input_audio_transcription.delta", item_id=self._item_id(),
                           content_index=0, delta=text,
                           audio_end_ms=needed * 1000 / self.server.sample_rate))

    def _send_completed(self, seg, last: bool) -> None:
        srv = self.server
        if seg is None:
            text, words, start_ms, end_ms = "", [], self.received * 1000 / srv.sample_rate, None
            end_ms = start_ms
        else:
            text, start_ms, end_ms = seg.text, seg.start_ms, seg.end_ms
            words = (rt.words_from_tokens(srv.engine.tokenizer, seg.tokens, seg.timestamps_ms, srv.frame_ms)
                     if self.settings.word_time_offsets else [])
        self.send(rt.event("conversation.item.input_audio_transcription.completed", item_id=self._item_id(),
                           content_index=0, transcript=text, is_last_result=last, words_info={"words": words},
                           usage={"type": "duration", "seconds": round((end_ms - start_ms) / 1000, 6)},
                           audio_start_ms=start_ms, audio_end_ms=end_ms))
        self.item_seq += 1
        self.item_text = ""
        self.utterances += 1
        srv.metrics.utterances.inc()

    def _stream_final(self) -> None:
        self.final = True
        self.final_event.set()
        self._release_stream()

    def fail(self, message: str) -> None:
        self.send_error("internal", message)
        self.end_reason = "engine failure"
        self._release_stream()
        self.final_event.set()
        if self.recv_task is not None:
            self.recv_task.cancel()
        asyncio.get_running_loop().create_task(self._close(CLOSE_INTERNAL, "engine failure"))

    # ---- shutdown ----------------------------------------------------------------------------------------------
    def begin_shutdown(self) -> asyncio.Task:
        if self.shutdown_task is None:
            self.shutdown_task = asyncio.create_task(self._shutdown())
        return self.shutdown_task

    async def _shutdown(self) -> None:
        """SIGTERM: read nothing more; the audio received so far is pushed and the stream finished; its .completed
        events are delivered; then close 1001."""
        if self.recv_task is not None and not self.recv_task.done():
            self.recv_task.cancel()
            await asyncio.wait({self.recv_task})
        self.end_reason = "server shutdown"
        if self.ended:
            return
        if self.stream is not None and not self.input_done:
            tail = self.audio.cut() if self.audio is not None else np.zeros(0, np.float32)
            if tail.size:
                self.received += tail.size
                self.pending.append(tail)
            await self._flush()
            if self.stream is not None:
                self.stream.finish()
                self.input_done = True
                self.cut_requests.append((self.received, time.perf_counter()))
                self.server.stepper.wake.set()
        if self.stream is not None and not self.final:
            await self.final_event.wait()
        await self._close(CLOSE_GOING_AWAY, "server shutting down")


# ---- the server --------------------------------------------------------------------------------------------------
class RealtimeServer:
    def __init__(self, opts: ServeOptions, engine):
        self.opts = opts
        self.engine = engine
        cfg = engine.cfg
        self.sample_rate = cfg.sample_rate
        self.frame_ms = cfg.frame_ms
        self.lookaheads_ms = sorted((r + 1) * cfg.frame_ms for r in cfg.lookaheads)
        la = opts.lookahead_ms if opts.lookahead_ms is not None else (cfg.lookaheads[0] + 1) * cfg.frame_ms
        cfg.lookahead_from_ms(la)  # raises ValueError naming the valid ones
        if opts.endpoint_ms is not None and (opts.endpoint_ms <= 0 or opts.endpoint_ms % cfg.frame_ms):
            raise ValueError(f"--endpoint-ms must be a positive multiple of {cfg.frame_ms} ms, got {opts.endpoint_ms}")
        self.model_name = Path(opts.model).name
        # a prompt model's language keys and default ("": a language must be given); None: a model without a prompt
        self.languages = sorted(cfg.prompt_dictionary) if cfg.num_prompts else None
        self.default_language = cfg.default_language if cfg.num_prompts else ""
        self.eou = bool(cfg.end_tokens)  # an end-of-utterance model: sessions may set nemotron.eou_reset
        self.default_settings = rt.Settings(lookahead_ms=la, endpoint_ms=opts.endpoint_ms, model=self.model_name,
                                            language=self.default_language if cfg.num_prompts else "en-US")
        self.sessions: set[Session] = set()
        self.reserved = 0  # stream slots held by sessions
        self.by_stream: dict[int, Session] = {}
        self.secrets: dict[str, float] = {}
        self.stopping = False
        self.n_chunks = self.n_late = 0  # for the status lines
        self.metrics = Metrics(self)
        self.stepper: Stepper | None = None
        self._listener = None
        self._runner = None
        self.port = None
        self.replica: str | None = None  # the Ray Serve replica's tag (serve_ray.py); None in this server

    def session_config(self, st: rt.Settings) -> dict:
        return rt.session_dict(st, self.lookaheads_ms, self.frame_ms, self.languages)

    def stream_language(self, st: rt.Settings) -> str | None:
        """The language a session's stream opens with: its key for a prompt model, None for other models."""
        return st.language if self.languages is not None else None

    def warm_up(self) -> None:
        """One second of silence through the engine (first-call costs), at the default lookahead and language."""
        st = self.default_settings
        lang = self.stream_language(st) or (self.languages[0] if self.languages else None)
        self.engine.transcribe(np.zeros(self.sample_rate, np.float32), st.lookahead_ms, language=lang)

    # ---- from the stepping thread (in the loop) ---------------------------------------------------------------
    def deliver(self, updates, t: float) -> None:
        for u in updates:
            sess = self.by_stream.get(u.stream.id)
            if sess is not None:
                sess.on_update(u, t)

    def on_step_failure(self, exc: BaseException) -> None:
        self.metrics.error("internal")
        for sess in list(self.by_stream.values()):
            sess.fail(f"the engine failed a step ({type(exc).__name__}: {exc}); this session's stream is closed")

    # ---- HTTP --------------------------------------------------------------------------------------------------
    def _bearer_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.opts.api_key.encode())

    # The protocol's HTTP decisions, free of the web framework (aiohttp below, FastAPI under Ray Serve)
    def mint_session(self, authorization: str | None, body: bytes, peer) -> tuple[int, dict]:
        """POST /v1/realtime/transcription_sessions -> (HTTP status, JSON body)."""
        if self.stopping:
            return 503, {"detail": "the server is shutting down"}
        if self.opts.api_key and not self._bearer_ok(authorization):
            self.metrics.error("auth")
            detail = "missing API key: send Authorization: Bearer <key>" if not authorization else "invalid API key"
            log.warning("POST %s from %s refused: %s", SESSIONS_PATH, peer, detail)
            return 401, {"detail": detail}
        if body.strip():  # the client sends {}: the defaults come back, a session changes them over its WebSocket
            try:
                json.loads(body)
            except ValueError:
                return 400, {"detail": "the request body must be JSON (or empty)"}
        cfg = {"id": rt.new_id("sess"), **self.session_config(self.default_settings)}
        if self.opts.api_key:
            secret = self.issue_secret()
            if secret is None:
                return 429, {"detail": "too many unused client secrets; retry later"}
            cfg["client_secret"] = {"value": secret[0], "expires_at": int(secret[1])}
        return 200, cfg

    def issue_secret(self) -> tuple[str, float] | None:
        """A single-use client secret and its expiry (time.time()), or None when too many are outstanding."""
        now = time.time()
        for k in [k for k, exp in self.secrets.items() if exp <= now]:
            del self.secrets[k]
        if len(self.secrets) >= MAX_SECRETS:
            return None
        token = secrets.token_urlsafe(24)
        self.secrets[token] = now + self.opts.secret_ttl_s
        return token, now + self.opts.secret_ttl_s

    def redeem_secret(self, token: str) -> bool:
        """True once for a secret this server issued that has not expired."""
        exp = self.secrets.pop(token, None)
        return exp is not None and exp > time.time()

    def admit_websocket(self, intent: str, offered: list[str], authorization: str | None,
                        peer) -> tuple[int, dict | None, str]:
        """A WebSocket upgrade request -> (HTTP status, error body or None, how the client authenticated). Status
        200: upgrade; else answer the body with that status, before the upgrade (no session, no engine work)."""
        if self.stopping:
            return 503, {"detail": "the server is shutting down"}, ""
        if intent != "transcription":
            return 400, {"detail": f"intent {intent!r} is not served here: only intent=transcription"}, ""
        if not self.opts.api_key:
            return 200, None, "no auth"
        auth, why = self._ws_auth(offered, authorization)
        if auth is None:
            self.metrics.error("auth")
            log.warning("WebSocket from %s refused: %s", peer, why)
            return 401, {"detail": why}, ""
        return 200, None, auth

    def _ws_auth(self, offered: list[str], authorization: str | None) -> tuple[str | None, str]:
        """-> (how the client authenticated, or None; why not)."""
        for p in offered:
            if p.startswith(TOKEN_PREFIX):
                if self.redeem_secret(p[len(TOKEN_PREFIX):]):
                    return "client secret", ""
                return None, ("the client secret offered as the realtime-token subprotocol is unknown, used or "
                              f"expired: mint a new one with POST {SESSIONS_PATH}")
        if self._bearer_ok(authorization):
            return "API key", ""
        return None, (f"authentication required: offer the client_secret of POST {SESSIONS_PATH} as a "
                      "'realtime-token.<secret>' WebSocket subprotocol (or send Authorization: Bearer <API key>)")

    async def _post_session(self, request):
        from aiohttp import web

        body = b"" if self.stopping else await request.content.read(1 << 16)
        status, out = self.mint_session(request.headers.get("Authorization"), body, request.remote)
        return web.json_response(out, status=status)

    async def _ws(self, request):
        from aiohttp import web

        offered = [p.strip() for h in request.headers.getall("Sec-WebSocket-Protocol", [])
                   for p in h.split(",") if p.strip()]
        await self.before_admit(offered)
        status, body, auth = self.admit_websocket(request.query.get("intent", "transcription"), offered,
                                                  request.headers.get("Authorization"), request.remote)
        if status != 200:
            return web.json_response(body, status=status)
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,) if SUBPROTOCOL in offered else (),
                                   max_msg_size=4 * self.opts.max_message_bytes,
                                   heartbeat=self.opts.heartbeat_s or None, compress=False)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None and self.opts.send_buffer_bytes:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.opts.send_buffer_bytes)
        # a slot held for this client (a Ray replica's redirect) passes to its session here, nothing awaited between;
        # a client refused or gone before this leaves its ticket to expire (serve_ray.TICKET_TTL_S)
        held = self.take_slot_ticket(request.query.get(TICKET_PARAM))
        sess = Session(self, AiohttpConnection(ws, request), auth, slot_held=held)
        await sess.run()
        return ws

    async def before_admit(self, offered: list[str]) -> None:
        """Before a WebSocket's admission (a Ray replica asks its directory whether a client secret was taken)."""

    def take_slot_ticket(self, ticket: str | None) -> bool:
        """True if `ticket` holds a stream slot reserved for this connection (a Ray replica's redirect); the
        caller then owns that slot. This server issues none."""
        return False

    async def _health(self, request):
        from aiohttp import web

        h = self.health()
        return web.json_response(h, status=200 if h["ready"] else 503)

    async def _live(self, request):
        from aiohttp import web

        return web.json_response({"live": True})

    async def _metrics(self, request):
        from aiohttp import web

        body, ctype = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": ctype})

    def health(self) -> dict:
        ready = not self.stopping and self.stepper is not None and self.stepper.is_alive()
        return {"live": True, "ready": ready, "status": "stopping" if self.stopping else ("ok" if ready else "down"),
                "sessions": len(self.sessions), "stream_slots": self.opts.max_streams,
                "stream_slots_free": self.opts.max_streams - self.reserved, "model": self.model_name,
                "lookaheads_ms": self.lookaheads_ms, "default_lookahead_ms": self.default_settings.lookahead_ms,
                "languages": self.languages or []}

    # ---- start / stop ------------------------------------------------------------------------------------------
    async def start(self) -> int:
        self.start_stepper(asyncio.get_running_loop())
        return await self.listen(self.opts.host, self.opts.port)

    async def listen(self, host: str, port: int) -> int:
        """Serve the protocol's HTTP and WebSocket endpoints on host:port (0: any free port) -> the port. A Ray
        replica's direct port (serve_ray.py) is this same listener."""
        from aiohttp import web

        loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=1 << 16)
        app.router.add_post(SESSIONS_PATH, self._post_session)
        app.router.add_get(WS_PATH, self._ws)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health/ready", self._health)
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # our own listening socket (not a TCPSite): at shutdown it stops accepting while open sessions finish
        self._listener = await loop.create_server(self._runner.server, host, port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self.port

    def start_stepper(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the stepping thread; its updates come back to `loop`, the one the sessions run in."""
        self.stepper = Stepper(self, loop, self.opts.threads or default_threads())
        self.stepper.start()

    async def shutdown(self) -> None:
        if self.stopping:
            return
        self._listener.close()
        await self.finish_sessions("shutting down: stopped accepting")
        await self.stop_stepper()
        await self._runner.cleanup()
        log.info("shutdown complete")

    async def finish_sessions(self, why: str) -> None:
        """Take no new session; finish every open stream (its audio so far pushed, its last results delivered), close
        each session with 1001 (going away: reconnect); sessions still open after --shutdown-timeout-s are
        abandoned."""
        self.stopping = True
        open_streams = sum(1 for s in self.sessions if s.stream is not None and not s.final)
        log.info("%s; finalising %d open stream(s) of %d session(s)", why, open_streams, len(self.sessions))
        tasks = [s.begin_shutdown() for s in list(self.sessions)]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.opts.shutdown_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("shutdown: %d session(s) did not finish within %g s", len(pending),
                            self.opts.shutdown_timeout_s)
        # the handlers return once their sessions have ended
        deadline = time.monotonic() + 5
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop_stepper(self) -> None:
        self.stepper.stop()
        await asyncio.to_thread(self.stepper.join, 10)

    async def stats_loop(self) -> None:
        last = (0, 0.0, 0.0, 0.0)
        while True:
            await asyncio.sleep(self.opts.stats_interval_s)
            st = self.stepper
            cur = (st.steps, st.step_s, self.n_chunks, self.n_late)
            d = [a - b for a, b in zip(cur, last)]
            last = cur
            if d[0] or self.sessions:
                log.info("%d session(s), %d/%d slots free; last %g s: %d steps (mean %.1f ms), %d chunks, %d late",
                         len(self.sessions), self.opts.max_streams - self.reserved, self.opts.max_streams,
                         self.opts.stats_interval_s, d[0], 1000 * d[1] / max(d[0], 1), d[2], d[3])


# ---- command line ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeOptions(model="")
    p.add_argument("--model", default=None, help="a converted model directory (default: the shipped demo model)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0: any free port)")
    p.add_argument("--device", default=d.device, help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16"], help="default float32")
    p.add_argument("--backend", default=None, choices=["cpu", "torch", "triton"], help="the op table (see Engine)")
    p.add_argument("--max-streams", type=int, default=d.max_streams,
                   help=f"concurrent sessions = engine stream slots (default {d.max_streams})")
    p.add_argument("--lookahead-ms", type=int, default=None,
                   help="a session's default lookahead (default: the model's first, as `transcribe`); a session "
                        "may choose another (nemotron.lookahead_ms, or custom_configuration lookahead_ms:MS)")
    p.add_argument("--endpoint-ms", type=int, default=None,
                   help="a session's default endpointing: end an utterance after this much audio without a token "
                        "(a multiple of 80 ms; default off)")
    p.add_argument("--api-key", default=None,
                   help="require this key (Authorization: Bearer) to mint sessions; WebSockets then need the minted "
                        "client secret (default: $NEMOTRON_ENGINE_API_KEY, else no auth)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for the engine's steps (default max(1, cores - 1): a core is left "
                        "for the network side)")
    p.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s,
                   help=f"close a session after this long without a message (default {d.idle_timeout_s:g})")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                   help=f"largest client message; a larger one gets an error event, one over 4x this is not read "
                        f"(close 1009) (default {d.max_message_bytes})")
    p.add_argument("--max-outgoing-events", type=int, default=d.max_outgoing_events,
                   help=f"events queued for a client before it is cut off as not reading (default "
                        f"{d.max_outgoing_events})")
    p.add_argument("--max-queued-s", type=float, default=d.max_queued_s,
                   help=f"audio a stream may hold ahead of the engine; a client further ahead is read no further "
                        f"until the engine catches up (default {d.max_queued_s:g})")
    p.add_argument("--heartbeat-s", type=float, default=d.heartbeat_s,
                   help=f"WebSocket ping interval; a client that does not answer is dropped (default "
                        f"{d.heartbeat_s:g}; 0: off)")
    p.add_argument("--shutdown-timeout-s", type=float, default=d.shutdown_timeout_s,
                   help=f"on SIGTERM, how long open streams get to finish (default {d.shutdown_timeout_s:g})")
    p.add_argument("--secret-ttl-s", type=float, default=d.secret_ttl_s,
                   help=f"lifetime of a minted client secret (default {d.secret_ttl_s:g})")
    p.add_argument("--send-buffer-bytes", type=int, default=d.send_buffer_bytes,
                   help=f"kernel send buffer per WebSocket (SO_SNDBUF; default {d.send_buffer_bytes})")
    p.add_argument("--stats-interval-s", type=float, default=d.stats_interval_s,
                   help=f"seconds between status lines on stderr (default {d.stats_interval_s:g})")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    r = p.add_argument_group("Ray Serve (serve_ray.py, docs/ray.md)")
    r.add_argument("--ray", action="store_true",
                   help="serve as a Ray Serve application: --replicas engines behind Ray's proxy on --host:--port")
    r.add_argument("--replicas", type=int, default=1, help="engine replicas (default 1); one GPU each on CUDA")
    r.add_argument("--ray-address", default=None,
                   help="the Ray cluster to join ('auto': the one `ray start` runs here; default: start a local one)")
    r.add_argument("--cpus-per-replica", type=float, default=None,
                   help="Ray CPUs a replica holds (default: --threads, else 1; on CUDA 1 beside its GPU)")
    r.add_argument("--ray-direct", action="store_true",
                   help="each replica also listens on a port of its own, and the endpoint answers a WebSocket "
                        "upgrade with a redirect (307) there, a slot held: the session's audio then bypasses Ray's "
                        "proxy (clients must follow redirects, as NVIDIA's does, and reach the replicas' hosts)")


def missing_dependencies() -> str | None:
    missing = []
    for mod, pkg in (("aiohttp", "aiohttp"), ("prometheus_client", "prometheus-client")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    return " ".join(missing) or None


def cli_run(args) -> int:
    from .cli import _err, demo_model_dir

    missing = missing_dependencies()
    if missing:
        _err(f"serve needs {missing}: pip install 'nemotron-engine[serve]' (or pip install {missing})")
        return 2
    opts = ServeOptions(
        model=args.model or str(demo_model_dir()), host=args.host, port=args.port, device=args.device,
        dtype=args.dtype, backend=args.backend, max_streams=args.max_streams, lookahead_ms=args.lookahead_ms,
        endpoint_ms=args.endpoint_ms, api_key=args.api_key or os.environ.get("NEMOTRON_ENGINE_API_KEY") or None,
        threads=args.threads, idle_timeout_s=args.idle_timeout_s, max_message_bytes=args.max_message_bytes,
        max_outgoing_events=args.max_outgoing_events, max_queued_s=args.max_queued_s, heartbeat_s=args.heartbeat_s,
        shutdown_timeout_s=args.shutdown_timeout_s, secret_ttl_s=args.secret_ttl_s,
        send_buffer_bytes=args.send_buffer_bytes, stats_interval_s=args.stats_interval_s)
    for name in ("max_streams", "max_message_bytes", "max_outgoing_events"):
        if getattr(opts, name) < 1:
            _err(f"--{name.replace('_', '-')} must be at least 1")
            return 2
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level),
                        format="%(asctime)s nemotron-engine serve %(levelname)s: %(message)s")
    if args.ray:
        from . import serve_ray

        if args.replicas < 1 or opts.port == 0:
            _err("--ray needs --replicas of at least 1 and a fixed --port (Ray's proxy does not take port 0)")
            return 2
        return serve_ray.cli_run(opts, args.replicas, args.ray_address, args.cpus_per_replica, args.ray_direct)
    return serve(opts)


def load_engine(opts: ServeOptions):
    import torch

    from .engine import Engine

    threads = opts.threads or default_threads()
    torch.set_num_threads(threads)
    if not (Path(opts.model) / "config.json").is_file():
        raise FileNotFoundError(f"{opts.model}: not a model directory (no config.json); give --model, a directory "
                                "written by `nemotron-engine convert`")
    t0 = time.perf_counter()
    engine = Engine(opts.model, device=opts.device, dtype=getattr(torch, opts.dtype), max_streams=opts.max_streams,
                    backend=opts.backend, max_queued_s=opts.max_queued_s)
    return engine, time.perf_counter() - t0, threads


def serve(opts: ServeOptions) -> int:
    """Load the engine, serve until SIGTERM/SIGINT, finish every open stream, return 0."""
    from .cli import _err

    try:
        engine, load_s, threads = load_engine(opts)
        server = RealtimeServer(opts, engine)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        _err(str(e))
        return 2
    cfg = engine.cfg
    log.info("model %s (%d layers x %d, lookaheads %s ms) loaded in %.2f s on %s, %s, backend %s; %d stream slots; "
             "torch threads %d of %d cores", opts.model, cfg.n_layers, cfg.d_model, server.lookaheads_ms, load_s,
             engine.device, opts.dtype, engine.backend, engine.cache.max_streams, threads, os.cpu_count() or 0)
    t0 = time.perf_counter()
    server.warm_up()
    from .engine import freeze_gc
    freeze_gc()
    log.info("warm-up %.2f s", time.perf_counter() - t0)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda s=sig: (log.info("%s received", signal.Signals(s).name), stop.set()))
        try:
            port = await server.start()
        except OSError as e:
            _err(f"cannot listen on {opts.host}:{opts.port}: {e.strerror or e}")
            return 2
        log.info("listening on http://%s:%d (WebSocket ws://%s:%d%s?intent=transcription; auth %s; default "
                 "lookahead %d ms)", opts.host, port, opts.host, port, WS_PATH,
                 "on" if opts.api_key else "off", server.default_settings.lookahead_ms)
        stats = asyncio.create_task(server.stats_loop())
        await stop.wait()
        stats.cancel()
        await server.shutdown()
        return 0

    rc = asyncio.run(main())
    log.info("exit %d", rc)
    return rc
