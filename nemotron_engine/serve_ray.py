"""`nemotron-engine serve --ray`: the realtime WebSocket server as a Ray Serve application (docs/ray.md).

    nemotron-engine serve --ray --replicas N [--ray-address auto] [--model DIR] [--max-streams 16] [--port 9000] ...
    serve run nemotron_engine/serve_ray.yaml            # the same application from a Ray Serve config file

One replica = one Engine, its stepping thread and at most `max_streams` sessions; on GPU each replica holds one GPU
(`num_gpus=1`), on CPU `--threads` cores (`num_cpus`). Ray Serve's proxy (one per node) accepts the HTTP and
WebSocket connections and hands each to one replica for the connection's whole life: a session's stream state
never moves. Inside a replica the protocol is server.py's own: the same `Session` (audio path, events, errors,
backpressure, idle timeout, slow-reader cut-off) and the same `RealtimeServer` (stepping thread, admission, mint,
auth, drain), here over Starlette's WebSocket (FastAPI under `@serve.ingress`) instead of aiohttp's.

Admission. A WebSocket is one ongoing request of its replica for as long as it is open, so `max_ongoing_requests`
counts a replica's sessions plus its short HTTP requests (mint, /health, /metrics). It is `max_streams + SPARE`:
the spare requests let a replica that holds `max_streams` sessions still answer HTTP and still accept a session
only to refuse it as the single server does (a `capacity` error event, then close 1013). `FreeSlotsRouter` (the
deployment's request router) sends each new connection to the replica with the fewest ongoing requests, i.e. the
most free stream slots, so a session meets a full replica only when every replica is full.

Drain. Ray Serve stops routing to a replica it scales down, redeploys or deletes, waits for its ongoing requests
to end (up to `graceful_shutdown_timeout_s`, then kills it) and only then calls the destructor. A WebSocket ends
when its client leaves, so the replica must act when the drain begins: `_drain_flag` finds Ray's own flag for it,
and the replica then does what the single server does on SIGTERM (`RealtimeServer.finish_sessions`): it reads no
more from its sessions, finishes their streams with the audio received so far, delivers their last results
(`is_last_result: true`) and closes each with 1001 (going away: reconnect, and the proxy routes the new session to
another replica). A connection handed to it meanwhile is refused like a full replica's (capacity, 1013).

Failure. A replica that dies takes its own sessions' connections with it (the proxy closes them); the other
replicas' sessions never touch it. Ray Serve's controller starts a replacement, and the routers drop the dead
replica at once. `check_health` fails a replica whose stepping thread has gone, so Serve replaces it too.

Metrics. Each replica keeps server.py's Prometheus registry. Every second it reports that registry (each sample
labelled `replica`) and its /health to `ReplicaDirectory`, a small deployment of one replica; `GET /metrics` through
the proxy answers every live replica's samples (aggregate with `sum without (replica) (...)`), `GET /health` the
totals and each replica's health, `GET /health/replica` the health of whichever replica answers. Ray's own
metrics (`ray_serve_*`, tagged by replica) are exported by Ray's metrics agent as usual.
"""
import asyncio
import base64
import bisect
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from . import server as srv

log = logging.getLogger("nemotron_engine.serve_ray")

APP_NAME = "nemotron"
DEPLOYMENT = "NemotronASR"
SPARE = 4  # ongoing requests a replica takes beyond its stream slots: HTTP requests and refusals (capacity, 1013)
REPORT_INTERVAL_S = 1.0  # how often a replica reports its metrics and health to the directory
REPORT_MAX_AGE_S = 3.0  # a replica that has not reported for this long is gone (killed, or stopped)
DRAIN_POLL_S = 0.1
TICKET_TTL_S = 10.0  # how long a redirect (--ray-direct) holds its slot for the client to arrive at the direct port
CONTROL_LOOP_INTERVAL_S = 0.5  # Serve's control loop, on a local cluster `serve --ray` starts (Ray's default 0.1)
ROUTING_STATS_PERIOD_S = 1.0  # how often Ray Serve asks each replica for its slots in use (FreeSlotsRouter)
REDIRECT_MEMORY_S = 30.0  # how long a router remembers a redirect it answered (a replica reports within seconds)


def ray_missing() -> str | None:
    for mod in ("ray.serve", "fastapi"):
        try:
            __import__(mod)
        except ImportError:
            return 'pip install "ray[serve]"'
    return None


# ---- the connection ----------------------------------------------------------------------------------------------
class StarletteConnection(srv.Connection):
    """A Session's WebSocket under Ray Serve: Starlette's, whose messages travel between the proxy and this replica.

    The proxy (uvicorn) takes whole messages, so the frame limit of the single server (4 x --max-message-bytes,
    close 1009) is checked here, on the message. There is no socket to abort in a replica: a peer that does not
    read is closed with 1008 instead (the proxy drops it if that does not get through)."""

    def __init__(self, ws, max_frame_bytes: int):
        self.ws = ws
        self.max_frame_bytes = max_frame_bytes
        c = ws.client
        self.peer = f"{c.host}:{c.port}" if c is not None else "?"
        self._abort_task: asyncio.Task | None = None

    async def receive(self, timeout: float) -> tuple[str, object]:
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg["type"] == "websocket.receive":
            text = msg.get("text")
            if text is not None:
                return ("too_big", None) if len(text) > self.max_frame_bytes else ("text", text)
            return "binary", msg.get("bytes") or b""
        code = msg.get("code", 1005)  # websocket.disconnect
        if code == 1006:
            return "lost", "no close frame"
        return "closed", code

    async def send_text(self, data: str) -> None:
        await self.ws.send_text(data)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, reason=reason[:120])

    def abort(self) -> None:
        async def close():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(code=srv.CLOSE_POLICY, reason="not reading"), 3.0)

        if self._abort_task is None:
            self._abort_task = asyncio.get_running_loop().create_task(close())


# ---- client secrets any replica can check ------------------------------------------------------------------------
class RayRealtimeServer(srv.RealtimeServer):
    """server.py's RealtimeServer with client secrets that any replica can check: the riva client mints its secret
    with a POST that the proxy may hand to one replica and opens its WebSocket on another. A secret is
    `EXPIRY.NONCE.MAC` with MAC = HMAC-SHA256(api key, "EXPIRY.NONCE"): a replica verifies it without asking the
    one that issued it. Single use: each replica refuses a secret it has already taken, and before a replica takes
    one it asks ReplicaDirectory whether another replica took it (`first_use`, filled by the WebSocket handler);
    if the directory cannot answer (it is restarting), the replica's own record is all that holds."""

    def __init__(self, opts: srv.ServeOptions, engine):
        super().__init__(opts, engine)
        self.taken: dict[str, float] = {}  # nonce -> expiry of the secrets this replica took
        self.first_use: dict[str, bool] = {}  # secret -> the directory's answer, for the next redeem_secret
        self.directory = None  # the ReplicaDirectory's handle (None: this replica's own record only)
        self.tickets: dict[str, float] = {}  # redirect ticket -> deadline (time.monotonic()); each holds a slot

    async def before_admit(self, offered: list[str]) -> None:
        """Ask the directory whether another replica took the client secret offered (for redeem_secret)."""
        if not self.opts.api_key or self.directory is None:
            return
        for p in offered:
            if p.startswith(srv.TOKEN_PREFIX):
                token = p[len(srv.TOKEN_PREFIX):]
                exp = self.secret_valid(token)
                if exp is not None:
                    with contextlib.suppress(Exception):
                        self.first_use[token] = await asyncio.wait_for(self.directory.redeem.remote(token, exp), 5.0)
                return

    def auth_plausible(self, offered: list[str], authorization: str | None) -> bool:
        """Whether a WebSocket upgrade carries the API key or an authentic, unexpired client secret, without taking
        the secret (the replica's direct port takes it): a redirect is not handed to a client without credentials."""
        if not self.opts.api_key:
            return True
        for p in offered:
            if p.startswith(srv.TOKEN_PREFIX):
                return self.secret_valid(p[len(srv.TOKEN_PREFIX):]) is not None
        return self._bearer_ok(authorization)

    # ---- --ray-direct: a slot held for a redirected client -----------------------------------------------------
    def issue_slot_ticket(self) -> str | None:
        """Reserve a stream slot for a client redirected to this replica's direct port -> the ticket that its
        connection there presents; None when the replica is draining or every slot is held. Unclaimed, the slot is
        freed after TICKET_TTL_S."""
        self.sweep_tickets()
        if self.stopping or self.reserved >= self.opts.max_streams:
            return None
        t = secrets.token_urlsafe(12)
        self.tickets[t] = time.monotonic() + TICKET_TTL_S
        self.reserved += 1
        return t

    def take_slot_ticket(self, ticket: str | None) -> bool:
        return ticket is not None and self.tickets.pop(ticket, None) is not None

    def drop_slot_ticket(self, ticket: str | None) -> None:
        """Free the slot held under `ticket` (not claimed, not to be)."""
        if self.tickets.pop(ticket, None) is not None:
            self.reserved -= 1

    def sweep_tickets(self) -> None:
        now = time.monotonic()
        for t in [t for t, deadline in self.tickets.items() if deadline <= now]:
            self.drop_slot_ticket(t)

    def _mac(self, msg: str) -> str:
        d = hmac.new(self.opts.api_key.encode(), msg.encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(d).decode()

    def issue_secret(self) -> tuple[str, float]:
        exp = int(time.time() + self.opts.secret_ttl_s)
        msg = f"{exp}.{secrets.token_urlsafe(12)}"
        return f"{msg}.{self._mac(msg)}", exp

    def secret_valid(self, token: str) -> float | None:
        """-> the expiry of a well-formed, authentic, unexpired secret, else None (single use not checked)."""
        parts = token.split(".")
        if len(parts) != 3 or not hmac.compare_digest(parts[2], self._mac(f"{parts[0]}.{parts[1]}")):
            return None
        try:
            exp = float(parts[0])
        except ValueError:
            return None
        return exp if exp > time.time() else None

    def redeem_secret(self, token: str) -> bool:
        exp = self.secret_valid(token)
        first = self.first_use.pop(token, True)
        if exp is None:
            return False
        now = time.time()
        for k in [k for k, e in self.taken.items() if e <= now]:
            del self.taken[k]
        nonce = token.split(".")[1]
        if nonce in self.taken or not first:
            return False
        self.taken[nonce] = exp
        return True


# ---- finding the start of a drain --------------------------------------------------------------------------------
def _drain_flag():
    """-> a function that returns True once Ray Serve has begun to stop this replica, or None if it cannot be found.

    Ray Serve (2.60) has no public hook for the start of a replica's drain (see the module docstring). The replica
    object that runs our class sets `_shutting_down` when it starts to stop; the callback it puts in the replica
    context (`serve.get_replica_context()._handle_registration_callback`) is a closure over that object, which is
    how it is reached here. tests/test_serve_ray.py drains a replica with sessions open, so a Ray release that
    moves the flag fails that test rather than cutting sessions unnoticed; without the flag a drained replica's
    sessions run until Ray's graceful_shutdown_timeout_s and are then cut (a warning says so at start)."""
    from ray import serve

    cb = getattr(serve.get_replica_context(), "_handle_registration_callback", None)
    for cell in getattr(cb, "__closure__", None) or ():
        try:
            obj = cell.cell_contents
        except ValueError:
            continue
        if isinstance(getattr(obj, "_shutting_down", None), bool):
            return lambda: bool(obj._shutting_down)
    return None


def _labelled(families, **labels) -> list:
    """Prometheus metric families with `labels` added to every sample (picklable: sent to the directory)."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample

    out = []
    for fam in families:
        m = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        m.samples = [Sample(s.name, {**s.labels, **labels}, s.value, s.timestamp, s.exemplar) for s in fam.samples]
        out.append(m)
    return out


def render_families(families) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    class _Fixed:
        def collect(self):
            return families

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed())
    return generate_latest(reg), CONTENT_TYPE_LATEST


def merge_families(per_replica: list[list]) -> list:
    """One family per metric name, holding the samples of every replica (each labelled with its replica)."""
    merged: dict[str, Any] = {}
    for fams in per_replica:
        for f in fams:
            if f.name in merged:
                merged[f.name].samples.extend(f.samples)
            else:
                merged[f.name] = f
    return list(merged.values())


def aggregate_health(reports: dict[str, dict]) -> dict:
    """The deployment's /health from the replicas' own: totals, and each replica's."""
    hs = list(reports.values())
    ready = [h for h in hs if h.get("ready")]
    first = hs[0] if hs else {}
    return {"live": True, "ready": bool(ready), "status": "ok" if ready else "down", "replicas": len(hs),
            "replicas_ready": len(ready), "sessions": sum(h["sessions"] for h in hs),
            "stream_slots": sum(h["stream_slots"] for h in ready),
            "stream_slots_free": sum(h["stream_slots_free"] for h in ready), "model": first.get("model"),
            "lookaheads_ms": first.get("lookaheads_ms"), "default_lookahead_ms": first.get("default_lookahead_ms"),
            "languages": first.get("languages", []), "per_replica": reports}


# ---- the Ray Serve application -----------------------------------------------------------------------------------
def _is_websocket(pending_request) -> bool:
    """Whether a request Ray's proxy routes is a WebSocket upgrade. Ray 2.60 hands the router the request's ASGI
    scope pickled (a StreamingHTTPRequest, the first argument), and its metadata says only HTTP; a WebSocket's scope
    has "type": "websocket", pickled as that short unicode string. Not unpickled here: the request carries actor
    handles. (tests/test_serve_ray.py fails on a Ray release that changes this: sessions would no longer spread.)"""
    args = getattr(pending_request, "args", None)
    return bool(args) and isinstance(args[0], bytes) and b"\x8c\twebsocket" in args[0][:4096]


def _deployments():
    """The deployment classes, defined on first use so that importing this module does not need Ray."""
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import JSONResponse, Response
    from ray import serve
    from ray.serve.request_router import FIFOMixin, RequestRouter

    class FreeSlotsRouter(FIFOMixin, RequestRouter):
        """Sends each new connection to the replica with the fewest ongoing requests (sessions plus in-flight HTTP
        requests): the most free stream slots.

        Ray's own choice among candidates trusts its cached queue lengths, which lag behind a burst of connections:
        several routed at once would all see the same counts and pile onto one replica, past its slots, while
        another has room. So this router keeps its own count of what it sent to each replica and has not seen
        complete, adds the choices it made that are not yet sent, and offers the replicas in that order, one
        rank each (Ray tries the next rank if a replica refuses). Per proxy: with proxies on several nodes, each
        counts its own traffic and takes the larger of its count and the replica's reported queue length.

        Under --ray-direct a session is an ongoing request only while its redirect is answered; the slot it holds
        then shows in the slots in use that the replica reports every ROUTING_STATS_PERIOD_S (with the time of the
        report). Until a report newer than the redirect arrives, the router counts the redirect itself (and every
        WebSocket it routed to a replica that has not reported yet: a new replica, whose mode it cannot know)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._sent: dict = {}  # replica id -> requests sent there and not completed
            self._chosen: list = []  # (replica id, time) chosen, not yet sent
            self._ws: set = set()  # internal ids of WebSocket upgrades routed, not completed
            # replica id -> time.time() of the WebSocket upgrades completed there (redirects), ascending
            self._redirected: dict = {}

        def _load(self, replica) -> int:
            rid = replica.replica_id
            cached = self.replica_queue_len_cache.get(rid) or 0
            # the slots in use that the replica last reported (a redirected session, --ray-direct, is no ongoing
            # request of Ray's once its redirect is answered)
            stats = getattr(replica, "routing_stats", None) or {}
            used = stats.get("slots_used", 0)
            chosen = sum(1 for r, _ in self._chosen if r == rid)
            if stats.get("direct", True):  # (or no report yet: a new replica)
                # its last report, the redirects answered since, and those in flight (their slots may not be held yet)
                times = self._redirected.get(rid, [])
                since = len(times) - bisect.bisect_right(times, stats.get("at", 0.0))
                return used + since + self._sent.get(rid, 0) + chosen
            return max(self._sent.get(rid, 0), cached, used) + chosen

        async def choose_replicas(self, candidate_replicas, pending_request=None):
            if not candidate_replicas:
                return []
            now = time.monotonic()
            self._chosen = [(r, t) for r, t in self._chosen if now - t < 2.0]
            if pending_request is not None and _is_websocket(pending_request):
                self._ws.add(pending_request.metadata.internal_request_id)
            ranked = sorted(candidate_replicas, key=self._load)
            self._chosen.append((ranked[0].replica_id, now))
            return [[r] for r in ranked]

        def on_send_request(self, replica_id):
            super().on_send_request(replica_id)
            self._sent[replica_id] = self._sent.get(replica_id, 0) + 1
            for i, (r, _) in enumerate(self._chosen):
                if r == replica_id:
                    del self._chosen[i]
                    break
            else:
                if self._chosen:
                    del self._chosen[0]

        def on_request_completed(self, replica_id, internal_request_id):
            if internal_request_id in self._ws:
                self._ws.discard(internal_request_id)
                now = time.time()
                times = self._redirected.setdefault(replica_id, [])
                del times[:bisect.bisect_left(times, now - REDIRECT_MEMORY_S)]  # older than any report still to come
                times.append(now)
            n = self._sent.get(replica_id, 0) - 1
            if n > 0:
                self._sent[replica_id] = n
            else:
                self._sent.pop(replica_id, None)

    @serve.deployment(name="ReplicaDirectory", num_replicas=1, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=1000, logging_config={"enable_access_log": False})
    class ReplicaDirectory:
        """The last metrics and health each engine replica reported; a replica silent for REPORT_MAX_AGE_S is
        dropped (killed or stopped). Holds nothing that a restart cannot rebuild within a second."""

        def __init__(self):
            self.reports: dict[str, tuple[float, dict, list]] = {}
            self.secrets_taken: dict[str, float] = {}  # client secrets taken by some replica -> their expiry

        def report(self, replica: str, health: dict, families: list) -> None:
            self.reports[replica] = (time.monotonic(), health, families)

        def forget(self, replica: str) -> None:
            self.reports.pop(replica, None)

        def redeem(self, token: str, expiry: float) -> bool:
            """True the first time a client secret is offered to any replica."""
            now = time.time()
            for k in [k for k, e in self.secrets_taken.items() if e <= now]:
                del self.secrets_taken[k]
            if token in self.secrets_taken:
                return False
            self.secrets_taken[token] = expiry
            return True

        def collect(self) -> dict[str, tuple[dict, list]]:
            now = time.monotonic()
            for k in [k for k, (t, _, _) in self.reports.items() if now - t > REPORT_MAX_AGE_S]:
                del self.reports[k]
            return {k: (h, f) for k, (_, h, f) in self.reports.items()}

    app = FastAPI(title="nemotron-engine realtime ASR", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(name=DEPLOYMENT)
    @serve.ingress(app)
    class NemotronASR:
        """One replica: one Engine, its stepping thread, at most max_streams sessions (server.py's code)."""

        async def __init__(self, opts: dict, directory=None, direct: bool = False):
            self.opts = srv.ServeOptions(**opts)
            pkg_log = logging.getLogger("nemotron_engine")
            if not pkg_log.handlers:  # the replica's stderr: Ray's log files, and the driver's console
                h = logging.StreamHandler(sys.stderr)
                h.setFormatter(logging.Formatter("%(asctime)s nemotron-engine replica %(levelname)s: %(message)s"))
                pkg_log.addHandler(h)
                pkg_log.setLevel(logging.INFO)
                pkg_log.propagate = False
            engine, load_s, threads = await asyncio.to_thread(srv.load_engine, self.opts)
            self.server = RayRealtimeServer(self.opts, engine)
            self.server.replica = serve.get_replica_context().replica_tag
            self.server.directory = self.directory = directory
            await asyncio.to_thread(self.server.warm_up)
            from .engine import freeze_gc
            freeze_gc()
            self.server.start_stepper(asyncio.get_running_loop())
            self.direct_url = None  # --ray-direct: ws://host:port of this replica's own listener
            if direct:
                host = self.opts.host
                port = await self.server.listen(host, 0)
                if host in ("", "0.0.0.0", "::"):
                    import ray

                    host = ray.util.get_node_ip_address()
                self.direct_url = f"ws://{host}:{port}"
            self.draining = _drain_flag()
            if self.draining is None:
                log.warning("replica %s: cannot see when Ray Serve starts to drain it; its sessions will be cut at "
                            "graceful_shutdown_timeout_s on scale-down", self.server.replica)
            self._tasks = [asyncio.get_running_loop().create_task(self._watch())]
            log.info("replica %s: model %s loaded in %.2f s on %s; %d stream slots; torch threads %d%s",
                     self.server.replica, self.opts.model, load_s, engine.device, engine.cache.max_streams, threads,
                     f"; direct port {self.direct_url}" if self.direct_url else "")

        # ---- background: drain and reports --------------------------------------------------------------------
        async def _watch(self) -> None:
            next_report = 0.0
            while True:
                self.server.sweep_tickets()
                if self.draining is not None and self.draining() and not self.server.stopping:
                    await self.server.finish_sessions(f"replica {self.server.replica} draining")
                    with contextlib.suppress(Exception):
                        await self._report()
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + REPORT_INTERVAL_S
                    with contextlib.suppress(Exception):
                        await self._report()
                await asyncio.sleep(DRAIN_POLL_S)

        def _snapshot(self) -> tuple[dict, list]:
            s = self.server
            h = s.health()
            h["replica"] = s.replica
            h["pid"] = os.getpid()
            if self.direct_url:
                h["direct_url"] = self.direct_url
            return h, _labelled(s.metrics.registry.collect(), replica=s.replica)

        async def _report(self) -> None:
            if self.directory is not None:
                await self.directory.report.remote(self.server.replica, *self._snapshot())

        async def _collect(self) -> dict[str, tuple[dict, list]]:
            mine = self._snapshot()
            if self.directory is None:
                return {self.server.replica: mine}
            try:
                await self.directory.report.remote(self.server.replica, *mine)
                return await asyncio.wait_for(self.directory.collect.remote(), 5.0)
            except Exception:  # noqa: BLE001 (the directory restarting: answer for this replica alone)
                return {self.server.replica: mine}

        async def record_routing_stats(self) -> dict:
            """For FreeSlotsRouter (every ROUTING_STATS_PERIOD_S): the stream slots in use, redirects' included."""
            return {"slots_used": self.server.reserved, "slots": self.server.opts.max_streams,
                    "direct": self.direct_url is not None, "at": time.time()}

        def check_health(self) -> None:
            st = self.server.stepper
            if st is None or not st.is_alive():
                raise RuntimeError("the engine's stepping thread has stopped")

        async def __del__(self):
            """Ray Serve's graceful shutdown awaits this after the replica's ongoing requests end. Sessions on the
            direct port (--ray-direct) are none of those: they are finished here (final results, close 1001)."""
            s = getattr(self, "server", None)
            if s is None:
                return
            if s.sessions and not s.stopping:
                await s.finish_sessions(f"replica {s.replica} stopping")
            deadline = time.monotonic() + s.opts.shutdown_timeout_s
            while s.sessions and time.monotonic() < deadline:  # a drain that _watch began
                await asyncio.sleep(0.05)
            if s.stepper is not None:
                s.stepper.stop()

        # ---- HTTP and WebSocket -------------------------------------------------------------------------------
        @app.post(srv.SESSIONS_PATH)
        async def mint(self, request: Request):
            body = (await request.body())[: 1 << 16]
            status, out = self.server.mint_session(request.headers.get("authorization"), body, request.client)
            return JSONResponse(out, status_code=status)

        @app.websocket(srv.WS_PATH)
        async def realtime(self, websocket: WebSocket):
            offered = [p.strip() for h in websocket.headers.getlist("sec-websocket-protocol")
                       for p in h.split(",") if p.strip()]
            server = self.server
            if self.direct_url and not server.stopping and await self._redirect(websocket, offered):
                return
            await server.before_admit(offered)
            if server.stopping:  # a router that has not yet heard of the drain: refused as a full replica
                status, body, auth = 200, None, "draining"
            else:
                status, body, auth = server.admit_websocket(websocket.query_params.get("intent", "transcription"),
                                                            offered, websocket.headers.get("authorization"),
                                                            websocket.client)
            if status != 200:
                try:
                    await websocket.send_denial_response(JSONResponse(body, status_code=status))
                except RuntimeError:  # no denial-response extension: the handshake is refused (HTTP 403)
                    await websocket.close(code=srv.CLOSE_POLICY, reason=body["detail"][:120])
                return
            await websocket.accept(subprotocol=srv.SUBPROTOCOL if srv.SUBPROTOCOL in offered else None)
            conn = StarletteConnection(websocket, 4 * self.opts.max_message_bytes)
            await srv.Session(server, conn, auth).run()

        async def _redirect(self, websocket: WebSocket, offered: list[str]) -> bool:
            """--ray-direct: answer the upgrade with 307 to this replica's own port, a slot held for the client
            (its ticket in the URL) -> True. False (served here, through the proxy, as without --ray-direct): the
            request is refused anyway (credentials, intent: the same error as without), every slot is held (the
            capacity error; but first, a peer that the directory says has room gets the client, no slot held
            there), or the proxy cannot send a redirect."""
            server = self.server
            if websocket.query_params.get("intent", "transcription") != "transcription" or \
                    not server.auth_plausible(offered, websocket.headers.get("authorization")):
                return False
            query = [(k, v) for k, v in websocket.query_params.multi_items() if k != srv.TICKET_PARAM]
            ticket = server.issue_slot_ticket()
            if ticket is not None:
                location = f"{self.direct_url}{srv.WS_PATH}?{urlencode(query + [(srv.TICKET_PARAM, ticket)])}"
            else:  # full: a router's count was off (another proxy's sessions, a report in flight); a peer with room?
                peer = await self._peer_with_room()
                if peer is None:
                    return False
                location = f"{peer}{srv.WS_PATH}?{urlencode(query)}"  # no slot held there: admitted as it arrives
            try:
                await websocket.send_denial_response(Response(status_code=307, headers={"Location": location}))
            except RuntimeError:  # no denial-response extension in this proxy: serve the session here
                server.drop_slot_ticket(ticket)
                return False
            return True

        async def _peer_with_room(self) -> str | None:
            """The direct URL of the replica with the most free slots in the directory's last reports (at most a
            second old), other than this one; None if none has a free slot (or the directory does not answer)."""
            if self.directory is None:
                return None
            try:
                reports = await asyncio.wait_for(self.directory.collect.remote(), 2.0)
            except Exception:  # noqa: BLE001 (the directory restarting: no peer known)
                return None
            best = max(((h.get("stream_slots_free", 0), h.get("direct_url")) for tag, (h, _) in reports.items()
                        if tag != self.server.replica and h.get("ready") and h.get("direct_url")), default=None)
            return best[1] if best is not None and best[0] > 0 else None

        @app.get("/health")
        @app.get("/health/ready")
        async def health(self):
            h = aggregate_health({k: v[0] for k, v in (await self._collect()).items()})
            return JSONResponse(h, status_code=200 if h["ready"] else 503)

        @app.get("/health/replica")
        async def health_replica(self):
            h = self._snapshot()[0]
            return JSONResponse(h, status_code=200 if h["ready"] else 503)

        @app.get("/health/live")
        async def live(self):
            return JSONResponse({"live": True})

        @app.get("/metrics")
        async def metrics(self):
            body, ctype = render_families(merge_families([f for _, f in (await self._collect()).values()]))
            return Response(content=body, media_type=ctype)

    return NemotronASR, ReplicaDirectory, FreeSlotsRouter


_DEPLOYMENTS = None


def deployments():
    global _DEPLOYMENTS
    if _DEPLOYMENTS is None:
        _DEPLOYMENTS = _deployments()
    return _DEPLOYMENTS


def __getattr__(name: str):
    # Ray Serve imports a request router by its module path: nemotron_engine.serve_ray:FreeSlotsRouter
    if name == "FreeSlotsRouter":
        return deployments()[2]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def placement(opts: srv.ServeOptions, cpus_per_replica: float | None = None) -> dict:
    """ray_actor_options of one replica: a GPU (and a core for its host side) on CUDA, else its torch threads."""
    if opts.device.startswith("cuda"):
        return {"num_gpus": 1, "num_cpus": cpus_per_replica or 1}
    return {"num_cpus": cpus_per_replica or opts.threads or 1}


def replica_options(opts: srv.ServeOptions, cpus_per_replica: float | None = None) -> srv.ServeOptions:
    """The options each replica runs with: its torch threads = its CPUs on CPU (1 on CUDA), the model's absolute
    path (a replica's working directory is Ray's, not ours)."""
    if opts.device.startswith("cuda") and opts.device != "cuda":
        raise ValueError(f"--device {opts.device}: under Ray each replica gets its own GPU as 'cuda'; pass --device "
                         "cuda")
    if opts.threads is None:
        opts = dataclasses.replace(opts, threads=1 if opts.device.startswith("cuda") else
                                   max(1, int(cpus_per_replica or 1)))
    return dataclasses.replace(opts, model=str(Path(opts.model).resolve()))


def build(opts: srv.ServeOptions, replicas: int = 1, cpus_per_replica: float | None = None,
          graceful_shutdown_timeout_s: float | None = None, version: str | None = None, direct: bool = False):
    """The application: `replicas` NemotronASR replicas and the ReplicaDirectory, ready for serve.run. `version`:
    Ray Serve's deployment version; with the same version a later serve.run that changes only the replica count
    scales (draining the replicas it removes) instead of replacing every replica. `direct` (--ray-direct): each
    replica listens on a port of its own too (on opts.host), and a WebSocket upgrade at the endpoint is answered
    with a redirect there, its slot held, so that the session's messages bypass Ray's proxy."""
    from ray.serve.config import RequestRouterConfig

    NemotronASR, ReplicaDirectory, _ = deployments()
    opts = replica_options(opts, cpus_per_replica)
    if version is not None:
        # Ray 2.60 keeps a deployment's version out of the public options (a config file deployed with `serve
        # deploy` gets the same in-place scaling from Serve itself); serve.run from Python reaches it this way
        NemotronASR = NemotronASR.options(version=version, _internal=True)
        ReplicaDirectory = ReplicaDirectory.options(version=version, _internal=True)
    dep = NemotronASR.options(
        num_replicas=replicas, ray_actor_options=placement(opts, cpus_per_replica),
        max_ongoing_requests=opts.max_streams + SPARE, max_queued_requests=-1,
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=graceful_shutdown_timeout_s or opts.shutdown_timeout_s + 10,
        health_check_period_s=5.0,
        request_router_config=RequestRouterConfig(request_router_class=f"{__name__}:FreeSlotsRouter",
                                                  request_routing_stats_period_s=ROUTING_STATS_PERIOD_S))
    return dep.bind(dataclasses.asdict(opts), ReplicaDirectory.bind(), direct)


def build_app(args: dict):
    """`serve run` / config-file entry point (`import_path: nemotron_engine.serve_ray:build_app`): `args` are
    ServeOptions fields (model, max_streams, device, threads, lookahead_ms, api_key, ...) plus `replicas` and
    `cpus_per_replica` and `direct` (--ray-direct); a `deployments:` section of the config file may override num_replicas, ray_actor_options
    and the rest."""
    from .cli import demo_model_dir

    args = dict(args or {})
    replicas = int(args.pop("replicas", 1))
    cpus = args.pop("cpus_per_replica", None)
    direct = bool(args.pop("direct", False))
    args.setdefault("model", str(demo_model_dir()))
    known = {f.name for f in dataclasses.fields(srv.ServeOptions)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {__name__}:build_app; known: replicas, "
                         f"cpus_per_replica, direct, {', '.join(sorted(known))}")
    return build(srv.ServeOptions(**args), replicas, cpus, direct=direct)


# ---- command line ------------------------------------------------------------------------------------------------
def cli_run(opts: srv.ServeOptions, replicas: int, address: str | None, cpus_per_replica: float | None,
            direct: bool = False) -> int:
    """`nemotron-engine serve --ray`: join (or start) a Ray cluster, deploy, serve until SIGTERM/SIGINT, then delete
    the application (each replica drains: open streams are finished, their sessions closed 1001)."""
    from .cli import _err

    missing = ray_missing()
    if missing:
        _err(f"serve --ray needs Ray Serve: {missing}")
        return 2
    import ray
    from ray import serve

    if not (Path(opts.model) / "config.json").is_file():
        _err(f"{opts.model}: not a model directory (no config.json); give --model, a directory written by "
             "`nemotron-engine convert`")
        return 2
    if address is None:
        # the local cluster started here: Serve's controller checks its deployments every 0.1 s by default, the
        # largest of Ray's fixed costs on a small node (bench/ray_idle_cpu.sh); every 0.5 s is plenty for replicas
        # whose health checks run every 10 s. A cluster started by `ray start` keeps its own setting.
        os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", str(CONTROL_LOOP_INTERVAL_S))
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(opts.threads or 1)}} if address is None else None)
    serve.start(proxy_location="EveryNode", http_options={"host": opts.host, "port": opts.port})
    t0 = time.perf_counter()
    try:
        serve.run(build(opts, replicas, cpus_per_replica, direct=direct), name=APP_NAME, route_prefix="/")
    except Exception as e:  # noqa: BLE001 (a deployment that fails to start: say why, exit 2)
        _err(f"the Ray Serve application did not start: {e}")
        ray.shutdown()
        return 2
    log.info("%d replica(s) of %s ready in %.1f s; listening on http://%s:%d (WebSocket ws://%s:%d%s?intent="
             "transcription; auth %s%s)", replicas, opts.model, time.perf_counter() - t0, opts.host, opts.port,
             opts.host, opts.port, srv.WS_PATH, "on" if opts.api_key else "off",
             "; sessions redirected to each replica's own port" if direct else "")
    stop = {"sig": None}

    def on_signal(sig, _frame):
        stop["sig"] = sig

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while stop["sig"] is None:
        time.sleep(0.2)
    log.info("%s received: deleting the application (replicas drain: open streams finished, sessions closed 1001)",
             signal.Signals(stop["sig"]).name)
    serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()
    log.info("exit 0")
    return 0
