"""`nemotron-engine serve --ray` (serve_ray.py): the realtime server as a Ray Serve application, on a local Ray
cluster that this module starts (2 CPUs, two replicas of the demo model, one torch thread each) and stops.

Sessions spread over the replicas with every transcript equal to Engine.transcribe; a new session goes where slots
are free and, with every slot held, gets the single server's capacity error and close 1013; NVIDIA's unmodified
RealtimeClientASR works through the Ray endpoint; a replica killed mid-stream loses only its own sessions; a
scale-down drains a replica without losing a session; /health and /metrics answer per replica and in total.

Every test of the cluster runs twice: with the sessions' messages through Ray's proxy, and with --ray-direct (the
endpoint redirects each WebSocket to its replica's own port, a slot held for it).

Marked `ray` (pytest -m ray, or -m "not ray" to leave it out): it starts a Ray cluster, about a minute here.
"""
import asyncio
import base64
import contextlib
import dataclasses
import json
import socket
import threading
import time
import urllib.request
import wave
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
websockets = pytest.importorskip("websockets")
riva_rt = pytest.importorskip("riva.client.realtime")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from nemotron_engine import serve_ray  # noqa: E402
from nemotron_engine import server as srv  # noqa: E402
from nemotron_engine.cli import read_audio  # noqa: E402
from test_server import engine, run  # noqa: E402,F401  (the in-process engine fixture, shared)

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "weights" / "demo"
EXAMPLES = sorted((DEMO / "examples").glob("*.wav"))
LA = 1120
SLOTS = 3  # per replica
REPLICAS = 2
API_KEY = "ray-test-key"  # auth on: minted secrets must work on whichever replica takes the WebSocket
COMPLETED = "conversation.item.input_audio_transcription.completed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayApp:
    def __init__(self, port: int, opts: srv.ServeOptions, direct: bool):
        self.port = port
        self.opts = opts
        self.direct = direct  # --ray-direct

    def wait_slot_seen(self) -> None:
        """After a session ends: until the router can know the slot is free (under --ray-direct, the replica's next
        routing report; through the proxy, at once)."""
        time.sleep(serve_ray.ROUTING_STATS_PERIOD_S + 1.5 if self.direct else 0.5)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?intent=transcription"

    def get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def metric(self, name: str, **labels) -> dict[str, float]:
        """-> {replica: value} of one sample of every replica."""
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for fam in text_string_to_metric_families(self.get("/metrics")[1]):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    out[s.labels["replica"]] = s.value
        return out

    def deploy(self, replicas: int) -> None:
        # a fixed version: a change of num_replicas alone scales (the drain test) rather than redeploying
        serve.run(serve_ray.build(self.opts, replicas, cpus_per_replica=1, graceful_shutdown_timeout_s=30,
                                  version="test", direct=self.direct), name=serve_ray.APP_NAME, route_prefix="/")

    def wait_ready(self, replicas: int, timeout: float = 90.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            h = self.health()
            if h.get("replicas_ready") == replicas and h.get("replicas") == replicas and \
                    h["stream_slots_free"] == replicas * SLOTS:
                return
            time.sleep(0.25)
        raise AssertionError(f"not {replicas} ready replicas with all slots free after {timeout} s: {self.health()}")

    def wait_routed(self, replicas: int, timeout: float = 30.0) -> None:
        """Until the proxy routes to `replicas` replicas: a replica reports to the directory (wait_ready) a moment
        before the proxy's router hears of it, and until then every session would go to the others."""
        async def spread() -> int:
            held = []
            try:
                for _ in range(replicas):
                    c = Client(self, EXAMPLES[0])
                    await c.open()
                    held.append(c)
                return len({c.replica for c in held})
            finally:
                for c in held:
                    await c.ws.close()

        t0 = time.monotonic()
        while asyncio.run(spread()) < replicas:
            assert time.monotonic() - t0 < timeout, f"the proxy does not route to {replicas} replicas"
            time.sleep(0.5)
        self.wait_ready(replicas)


@pytest.fixture(scope="module", params=["proxy", "direct"])
def app(request):
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        opts = srv.ServeOptions(model=str(DEMO), max_streams=SLOTS, lookahead_ms=LA, threads=1, heartbeat_s=0,
                                idle_timeout_s=10, max_queued_s=1, shutdown_timeout_s=15, api_key=API_KEY)
        a = RayApp(port, opts, direct=request.param == "direct")
        a.deploy(REPLICAS)
        a.wait_ready(REPLICAS)
        a.wait_routed(REPLICAS)
        yield a
    finally:
        serve.shutdown()
        ray.shutdown()


def pcm16(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def append(data: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})


class Client:
    """A raw protocol client: connect (-> the replica holding it), pcm16 appends, done, results."""

    def __init__(self, app: RayApp, path: Path):
        self.app, self.path = app, path
        self.data = pcm16(path)
        self.sent = 0  # bytes of audio sent

    async def open(self) -> dict:
        self.ws = await websockets.connect(self.app.ws_url, additional_headers={"Authorization": f"Bearer {API_KEY}"})
        self.port = self.ws.remote_address[1]  # the proxy's port, or under --ray-direct the replica's own
        first = json.loads(await self.ws.recv())
        if first["type"] == "conversation.created":
            self.replica = first["conversation"]["replica"]
            await self.ws.send(json.dumps({"type": "transcription_session.update",
                                           "session": {"input_audio_format": "pcm16"}}))
            assert (await self.next(("transcription_session.updated",)))["type"]
        return first

    async def next(self, types, timeout: float = 30.0) -> dict:
        while True:
            ev = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if ev["type"] in types:
                return ev

    async def send_audio(self, upto: int, pace_s: float = 0.0) -> None:
        """Send the recording up to byte `upto` in 100 ms appends; then commit, whose acknowledgement says the server
        has read every append before it."""
        upto = min(upto, len(self.data)) // 2 * 2
        while self.sent < upto:
            n = min(3200, upto - self.sent)
            await self.ws.send(append(self.data[self.sent: self.sent + n]))
            self.sent += n
            if pace_s:
                await asyncio.sleep(pace_s)
        await self.ws.send('{"type": "input_audio_buffer.commit"}')
        await self.next(("input_audio_buffer.committed",))

    async def finish(self) -> list[dict]:
        await self.ws.send('{"type": "input_audio_buffer.done"}')
        return await self.results()

    async def results(self) -> list[dict]:
        out = []
        while not out or not out[-1]["is_last_result"]:
            out.append(await self.next((COMPLETED,)))
        return out

    def want(self, engine, upto: int | None = None) -> str:
        x = read_audio(self.path, 16000)[0]
        n = len(x) if upto is None else upto // 2
        return engine.transcribe(x[:n], LA).text


def test_sessions_spread_over_replicas_with_exact_transcripts(app, engine):
    """2 x SLOTS sessions at once: both replicas serve, every transcript equals Engine.transcribe; /metrics carries
    each replica's counters and /health the totals."""
    time.sleep(serve_ray.REPORT_INTERVAL_S + 0.5)  # the fixture's own routing sessions reported before counting
    before = app.metric("nemotron_sessions_total")

    async def one(path):
        c = Client(app, path)
        await c.open()
        await c.send_audio(len(c.data), pace_s=0.005)
        res = await c.finish()
        await c.ws.close()
        return c, res

    async def go():
        return await asyncio.gather(*[one(EXAMPLES[i % len(EXAMPLES)]) for i in range(REPLICAS * SLOTS)])

    out = run(go())
    for c, res in out:
        assert [r["transcript"] for r in res] == [c.want(engine)]
    assert len({c.replica for c, _ in out}) == REPLICAS
    # under --ray-direct every session's messages went to its replica's own port (one per replica), else the proxy's
    ports = {c.replica: c.port for c, _ in out}
    assert len({c.port for c, _ in out}) == (REPLICAS if app.direct else 1)
    assert all(c.port == ports[c.replica] for c, _ in out) and (app.port in ports.values()) != app.direct
    time.sleep(serve_ray.REPORT_INTERVAL_S + 0.5)  # each replica's next report
    after = app.metric("nemotron_sessions_total")
    assert set(after) == {c.replica for c, _ in out}
    assert sum(after.values()) - sum(before.values()) == REPLICAS * SLOTS
    h = app.health()
    assert h["replicas"] == REPLICAS and h["stream_slots"] == REPLICAS * SLOTS and h["ready"]
    assert set(h["per_replica"]) == set(after)
    assert all(r["stream_slots"] == SLOTS for r in h["per_replica"].values())


def test_riva_client_through_ray(app, engine):
    """NVIDIA's RealtimeClientASR, unmodified, in the riva script's file mode (the WAV file's bytes, word times),
    minting its client secret with the API key; a minted secret opens one session on whichever replica, once."""
    from riva.client.asr import AudioChunkFileIterator, get_wav_file_parameters
    from test_server import drive_riva, riva_args

    f = EXAMPLES[3]
    want = engine.transcribe(read_audio(f, 16000)[0], LA)
    wav = get_wav_file_parameters(f)
    args = riva_args(app, "--word-time-offsets", "--sample-rate-hz", str(wav["framerate"]), "--num-channels",
                     str(wav["nchannels"]), "--mint-api-key", API_KEY)
    client, events = run(drive_riva(args, AudioChunkFileIterator(str(f), 1600)))
    assert client.final_transcript == want.text and want.text
    done = [e for e in events if e["type"] == COMPLETED]
    assert len(done) == 1 and done[0]["is_last_result"]
    assert " ".join(w["word"] for w in done[0]["words_info"]["words"]) == want.text

    def mint() -> str:
        req = urllib.request.Request(f"http://127.0.0.1:{app.port}{srv.SESSIONS_PATH}", data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
        return json.loads(urllib.request.urlopen(req).read())["client_secret"]["value"]

    async def use(secret):
        ws = await websockets.connect(app.ws_url, subprotocols=["realtime", f"realtime-token.{secret}"])
        first = json.loads(await ws.recv())
        await ws.close()
        return ws.subprotocol, first["conversation"]["replica"]

    async def go():
        # minted by the first replica (none busy), taken by the second (the first holds a session)
        secret = mint()
        held = Client(app, EXAMPLES[0])
        await held.open()
        sub, rep = await use(secret)
        assert sub == "realtime" and rep != held.replica
        await held.ws.close()
        for _ in range(REPLICAS):  # refused on every replica, before the upgrade: the directory remembers it
            with pytest.raises(websockets.InvalidStatus) as e:
                await use(secret)
            assert e.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus) as e:
            await websockets.connect(app.ws_url)
        assert e.value.response.status_code == 401
        return {rep, held.replica}

    assert len(run(go())) == REPLICAS


def test_admission_fills_free_replicas_then_refuses(app, engine):
    """Sessions opened one after another fill the replicas evenly (each goes where slots are free); with every slot
    held the next one gets the capacity error event and close 1013, as from the single server; a freed slot serves
    again."""
    app.wait_ready(REPLICAS)

    async def go():
        held = []
        for _ in range(REPLICAS * SLOTS):
            c = Client(app, EXAMPLES[0])
            assert (await c.open())["type"] == "conversation.created"
            held.append(c)
        per = {}
        for c in held:
            per[c.replica] = per.get(c.replica, 0) + 1
        assert sorted(per.values()) == [SLOTS] * REPLICAS, per
        extra = Client(app, EXAMPLES[0])
        first = await extra.open()
        assert first["type"] == "error" and first["error"]["code"] == "capacity"
        with pytest.raises(websockets.ConnectionClosed) as e:
            await extra.ws.recv()
        assert e.value.rcvd.code == srv.CLOSE_TRY_LATER
        await held.pop().ws.close()
        await asyncio.to_thread(app.wait_slot_seen)
        c = Client(app, EXAMPLES[1])
        assert (await c.open())["type"] == "conversation.created"
        await c.send_audio(len(c.data))
        assert [r["transcript"] for r in await c.finish()] == [c.want(engine)]
        for c2 in held + [c]:
            await c2.ws.close()

    run(go())


def test_ws_loadtest_through_ray(app, engine):
    """`nemotron-engine loadtest --url` against the Ray endpoint: 3 clients run 8 sessions back to back (minting
    secrets), a quarter vanishing mid-stream: every other one held with the in-process engine's transcript, no
    error, and the summed /metrics and /health show every slot of both replicas free at the end. (3 clients, not
    4: a vanished session holds its slot until the server has seen the connection go, so 4 clients could briefly
    need 6 slots, all of both replicas', and a stale slot count then refuses one: seen once in CI with --ray-direct.)"""
    from nemotron_engine.ws_loadtest import run_ws_load

    app.wait_ready(REPLICAS)
    rep = run_ws_load(app.ws_url, 3, LA, EXAMPLES[:2], sessions=8, eou_fraction=0.25, vanish_fraction=0.25,
                      api_key=API_KEY, check_engine=engine, watch_s=0.5)
    s = rep["sessions"]
    assert (s["total"], s["vanished"], s["held"], s["rejected"]) == (8, 2, 6, 0), s
    assert rep["transcripts"]["checked"] == 6 and rep["transcripts"]["matched"] == 6, rep["transcripts"]
    assert rep["errors"] == {}, rep["errors"]
    srv_ = rep["server"]
    assert srv_["error"] is None and srv_["slots"] == srv_["slots_free_end"] == REPLICAS * SLOTS, srv_
    assert srv_["engine_streams_end"] == 0, srv_
    assert not any("leaked" in f for f in rep["failures"]), rep["failures"]


async def half_sent(app: RayApp, n: int) -> list[Client]:
    """n sessions opened one after another (the first n examples), each with half its recording sent."""
    clients = [Client(app, EXAMPLES[i]) for i in range(n)]
    for c in clients:
        await c.open()
        await c.send_audio(len(c.data) // 2)
    return clients


def replica_actor(tag: str):
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith("SERVE_REPLICA::") and a["name"].endswith("#" + tag):
            return ray.get_actor(a["name"], namespace=a["namespace"])
    raise KeyError(tag)


def test_killed_replica_loses_only_its_sessions(app, engine):
    """A replica killed mid-stream: its sessions' connections end; the other replica's sessions finish with exact
    transcripts; a new session is served at once; Serve brings the replica count back."""
    app.wait_routed(REPLICAS)

    async def go():
        clients = await half_sent(app, 4)
        victim = clients[0].replica
        ray.kill(replica_actor(victim), no_restart=True)
        lost = [c for c in clients if c.replica == victim]
        kept = [c for c in clients if c.replica != victim]
        assert lost and kept
        for c in lost:
            with pytest.raises((websockets.ConnectionClosed, asyncio.TimeoutError, OSError)):
                await c.send_audio(len(c.data))
                await c.finish()
        for c in kept:
            await c.send_audio(len(c.data))
            assert [r["transcript"] for r in await c.finish()] == [c.want(engine)]
            await c.ws.close()
        fresh = Client(app, EXAMPLES[3])
        assert (await fresh.open())["type"] == "conversation.created"
        assert fresh.replica != victim
        await fresh.send_audio(len(fresh.data))
        assert [r["transcript"] for r in await fresh.finish()] == [fresh.want(engine)]
        await fresh.ws.close()
        return victim

    victim = run(go())
    t0 = time.monotonic()  # the directory forgets a replica that stopped reporting
    while victim in app.health()["per_replica"]:
        assert time.monotonic() - t0 < serve_ray.REPORT_MAX_AGE_S + 5
        time.sleep(0.25)
    app.wait_ready(REPLICAS)
    assert victim not in app.health()["per_replica"]


def test_scale_down_drains_without_losing_a_session(app, engine):
    """Scaling 2 -> 1 replica while sessions stream on both: the drained replica's sessions get their final result
    (the audio sent so far, exact; is_last_result) and close 1001 (reconnect); the kept replica's sessions finish
    normally; none is lost."""
    app.wait_routed(REPLICAS)

    async def go():
        clients = await half_sent(app, 4)
        assert len({c.replica for c in clients}) == REPLICAS
        deploy = threading.Thread(target=app.deploy, args=(1,), daemon=True)
        deploy.start()
        # the drained replica's sessions end on their own; the kept ones stay open
        ends = {c: asyncio.create_task(c.results()) for c in clients}
        t0 = time.monotonic()
        while not any(t.done() for t in ends.values()) and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        drained = [c for c, t in ends.items() if t.done()]
        kept = [c for c in clients if c not in drained]
        assert drained and kept and len({c.replica for c in drained}) == 1
        assert {c.replica for c in kept}.isdisjoint({c.replica for c in drained})
        for c in drained:
            res = ends[c].result()
            assert res[-1]["is_last_result"] and [r["transcript"] for r in res] == [c.want(engine, c.sent)]
            with pytest.raises(websockets.ConnectionClosed) as e:
                await c.ws.recv()
            assert e.value.rcvd.code == srv.CLOSE_GOING_AWAY
        for c in kept:
            ends[c].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ends[c]
            await c.send_audio(len(c.data))
            assert [r["transcript"] for r in await c.finish()] == [c.want(engine)]
            await c.ws.close()
        await asyncio.to_thread(deploy.join, 60)

    run(go())
    app.wait_ready(1)


def test_client_secrets_any_replica_can_check(engine):
    """With --api-key, a secret minted by one replica is taken by another (an HMAC over its expiry and nonce, no
    shared state), once; a forged, altered or expired one is refused. No cluster needed."""
    opts = srv.ServeOptions(model=str(DEMO), api_key="k-1", secret_ttl_s=60)
    a, b = serve_ray.RayRealtimeServer(opts, engine), serve_ray.RayRealtimeServer(opts, engine)
    status, cfg = a.mint_session("Bearer k-1", b"{}", "peer")
    assert status == 200
    token = cfg["client_secret"]["value"]
    assert b.secret_valid(token) and b.redeem_secret(token)
    assert not b.redeem_secret(token)  # single use on a replica
    a.first_use[token] = False  # the directory: another replica took it
    assert not a.redeem_secret(token)
    exp, nonce, mac = token.split(".")
    assert not b.redeem_secret(f"{int(exp) + 1000}.{nonce}.{mac}")
    other = serve_ray.RayRealtimeServer(dataclasses.replace(opts, api_key="k-2"), engine)
    assert not b.redeem_secret(other.issue_secret()[0])
    stale = serve_ray.RayRealtimeServer(dataclasses.replace(opts, secret_ttl_s=-1), engine)
    assert not b.redeem_secret(stale.issue_secret()[0])
    assert b.admit_websocket("transcription", ["realtime", "realtime-token.x.y.z"], None, "peer")[0] == 401


def test_redirect_tickets_hold_and_free_slots(engine):
    """--ray-direct: a redirect holds a stream slot under a ticket; its connection at the direct port takes it
    (once); with every slot held (tickets included) no ticket is issued, nor while draining; a ticket unclaimed after
    TICKET_TTL_S frees its slot. Credentials are checked without taking a client secret. No cluster needed."""
    opts = srv.ServeOptions(model=str(DEMO), max_streams=2, api_key="k-1")
    s = serve_ray.RayRealtimeServer(opts, engine)
    a, b = s.issue_slot_ticket(), s.issue_slot_ticket()
    assert a and b and s.reserved == 2 and s.issue_slot_ticket() is None
    assert s.take_slot_ticket(a) and not s.take_slot_ticket(a) and not s.take_slot_ticket("forged")
    assert not s.take_slot_ticket(None) and s.reserved == 2  # a's slot is now its session's to release
    s.reserved -= 1  # that session ends
    assert s.tickets[b] > time.monotonic() + serve_ray.TICKET_TTL_S - 5
    s.tickets[b] = time.monotonic() - 0.01  # b was never claimed: its TICKET_TTL_S ran out
    s.sweep_tickets()
    assert s.reserved == 0 and not s.tickets
    s.stopping = True
    assert s.issue_slot_ticket() is None
    token = s.issue_secret()[0]
    assert s.auth_plausible(["realtime", f"realtime-token.{token}"], None)
    assert s.redeem_secret(token)  # not taken by the check
    assert not s.auth_plausible(["realtime", "realtime-token.x.y.z"], None) and not s.auth_plausible([], None)
    assert s.auth_plausible([], "Bearer k-1") and not s.auth_plausible([], "Bearer k-2")


def test_build_app_from_config_args():
    """The `serve run` config's args: ServeOptions fields plus replicas and cpus_per_replica; unknown ones are named.
    On CPU a replica holds cpus_per_replica cores and as many torch threads; on CUDA one GPU."""
    app = serve_ray.build_app({"model": str(DEMO), "max_streams": 5, "replicas": 3, "cpus_per_replica": 2})
    dep = app._bound_deployment
    assert dep.num_replicas == 3 and dep.max_ongoing_requests == 5 + serve_ray.SPARE
    assert dep.ray_actor_options["num_cpus"] == 2
    assert serve_ray.build_app({"model": str(DEMO), "direct": True})._bound_deployment.init_args[2] is True
    assert serve_ray.replica_options(srv.ServeOptions(model="weights/demo"), 2).threads == 2
    assert Path(serve_ray.replica_options(srv.ServeOptions(model="weights/demo")).model).is_absolute()
    gpu = serve_ray.build(srv.ServeOptions(model=str(DEMO), device="cuda"), 2)
    assert gpu._bound_deployment.ray_actor_options == {"num_gpus": 1, "num_cpus": 1}
    with pytest.raises(ValueError, match="unknown argument.*max_stream"):
        serve_ray.build_app({"max_stream": 5})
    with pytest.raises(ValueError, match="pass --device cuda"):
        serve_ray.build(srv.ServeOptions(model=str(DEMO), device="cuda:1"))


def test_cli_refuses_port_zero(capsys):
    """`serve --ray` needs a fixed port (Ray's proxy takes no port 0): said before any Ray start."""
    from nemotron_engine.cli import main

    assert main(["serve", "--ray", "--port", "0", "--model", str(DEMO)]) == 2
    assert "fixed --port" in capsys.readouterr().err
