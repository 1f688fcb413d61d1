"""`nemotron-engine serve` (server.py, realtime.py) driven by NVIDIA's unmodified RealtimeClientASR
(nvidia-riva-client 2.27) and by raw WebSocket clients that misbehave, and the WebSocket load client
(ws_loadtest.py). Servers run as subprocesses on loopback ports (torch at 1 thread), one per configuration per
module; transcripts are compared with Engine.transcribe of the same audio at the same lookahead in this process.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")
websockets = pytest.importorskip("websockets")
riva_rt = pytest.importorskip("riva.client.realtime")

from riva.client.argparse_utils import (  # noqa: E402
    add_asr_config_argparse_parameters,
    add_connection_argparse_parameters,
    add_realtime_config_argparse_parameters,
)
from riva.client.asr import AudioChunkFileIterator, get_wav_file_parameters  # noqa: E402

from nemotron_engine import realtime as rt  # noqa: E402
from nemotron_engine.cli import read_audio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "weights" / "demo"
EXAMPLES = sorted((DEMO / "examples").glob("*.wav"))
LA = 1120  # the cheapest lookahead: the tests check the protocol, tests/test_serving.py the engine's lookaheads
SLOTS = 3
IDLE_S = 2.0
MAX_MSG = 65536
API_KEY = "test-key-7f3a"


# ---- servers ---------------------------------------------------------------------------------------------------
class ServerProc:
    """`nemotron-engine serve` in a subprocess on a free loopback port; its stderr is collected."""

    def __init__(self, *extra: str):
        cmd = [sys.executable, "-m", "nemotron_engine.cli", "serve", "--model", str(DEMO), "--host", "127.0.0.1",
               "--port", "0", "--threads", "1", "--max-streams", str(SLOTS), "--lookahead-ms", str(LA),
               "--idle-timeout-s", str(IDLE_S), "--max-message-bytes", str(MAX_MSG), "--max-outgoing-events", "32",
               "--send-buffer-bytes", "16384", "--heartbeat-s", "0", "--max-queued-s", "1", "--shutdown-timeout-s", "20", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip())
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(120) or self.port is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.lines))

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?intent=transcription"

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def health(self) -> dict:
        return json.loads(self.get("/health")[1])

    def metric(self, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.get("/metrics")[1]
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError(name)

    def wait_free(self, n: int = SLOTS, timeout: float = 5.0) -> float:
        """Seconds until n stream slots are free and the engine has no stream open."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            h = self.health()
            if h["stream_slots_free"] == n and self.metric("nemotron_engine_streams_open") == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise AssertionError(f"slots not free after {timeout} s: {self.health()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_log(s: ServerProc) -> None:
    log = "\n".join(s.lines)
    dump = Path("/tmp") / f"nemotron-serve-{s.port}.log"
    dump.write_text(log)
    for bad in ("Traceback", "exception was never retrieved", "Unclosed", "ERROR"):
        assert bad not in log, f"{bad!r} in the server's log ({dump}):\n{log[-3000:]}"


@pytest.fixture(scope="module")
def server():
    s = ServerProc()
    yield s
    s.stop()
    check_log(s)


@pytest.fixture(scope="module")
def auth_server():
    s = ServerProc("--api-key", API_KEY)
    yield s
    s.stop()
    check_log(s)


@pytest.fixture(scope="module")
def engine():
    import torch

    from nemotron_engine.engine import Engine

    torch.set_num_threads(1)
    return Engine(DEMO, max_streams=2)


def run(coro):
    return asyncio.run(coro)


# ---- the unmodified NVIDIA client ------------------------------------------------------------------------------
def riva_args(server: ServerProc, *argv: str) -> argparse.Namespace:
    """The arguments the riva realtime ASR script parses (its parser functions, its defaults)."""
    p = argparse.ArgumentParser()
    p.add_argument("--mic", action="store_true")
    p.add_argument("--sample-rate-hz", type=int, default=16000)
    p.add_argument("--num-channels", type=int, default=1)
    p.add_argument("--prompt", default="")
    add_connection_argparse_parameters(p)
    add_asr_config_argparse_parameters(p, max_alternatives=True, profanity_filter=True, word_time_offsets=True)
    add_realtime_config_argparse_parameters(p)
    return p.parse_args(["--server", f"127.0.0.1:{server.port}", *argv])


async def drive_riva(args, chunks, force_eou_chunks=None):
    """RealtimeClientASR as the riva script runs it (connect; send and receive together; disconnect) -> (client,
    the events it received after connecting). The events are observed by wrapping the socket's recv."""
    client = riva_rt.RealtimeClientASR(args)
    await client.connect()
    events = []
    recv = client.websocket.recv

    async def observed(*a, **k):
        m = await recv(*a, **k)
        events.append(json.loads(m))
        return m

    client.websocket.recv = observed
    try:
        await asyncio.wait_for(asyncio.gather(client.send_audio_chunks(chunks, force_eou_chunks),
                                              client.receive_responses()), 60)
    finally:
        await client.disconnect()
    return client, events


def completed(events) -> list[dict]:
    return [e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"]


def word_groups(engine, tokens, stamps):
    """(start_ms, end_ms) of each word from the token pieces: a '▁' piece starts one."""
    groups = []
    for p, ms in zip(engine.tokenizer.pieces(tokens), stamps):
        if p.startswith("▁") or not groups:
            groups.append([ms, ms])
        groups[-1][1] = ms
    return [(a, b + engine.cfg.frame_ms) for a, b in groups]


def pcm16_chunks(path: Path, frames: int = 1600) -> list[bytes]:
    with wave.open(str(path), "rb") as w:
        data = w.readframes(w.getnframes())
    step = frames * 2
    return [data[i: i + step] for i in range(0, len(data), step)]


def test_riva_client_wav_none_format(server, engine):
    """The riva script's file mode: input_audio_format 'none', the file's bytes in 1600-frame chunks, WAV header
    first; word time offsets on."""
    f = EXAMPLES[3]
    want = engine.transcribe(read_audio(f, 16000)[0], LA)
    wav = get_wav_file_parameters(f)
    args = riva_args(server, "--word-time-offsets", "--sample-rate-hz", str(wav["framerate"]), "--num-channels",
                     str(wav["nchannels"]))
    client, events = run(drive_riva(args, AudioChunkFileIterator(str(f), 1600)))
    assert client.session_config["input_audio_format"] == "none"
    assert client.final_transcript == want.text and want.text
    done = completed(events)
    assert len(done) == 1 and done[0]["is_last_result"] is True
    deltas = [e["delta"] for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas) == want.text
    words = done[0]["words_info"]["words"]
    assert " ".join(w["word"] for w in words) == want.text
    assert [(w["start_time"], w["end_time"]) for w in words] == word_groups(engine, want.tokens, want.timestamps_ms)
    assert all(set(w) >= {"word", "start_time", "end_time", "confidence"} for w in words)
    assert done[0]["usage"]["seconds"] == pytest.approx(want.audio_s, abs=1e-3)


def test_riva_client_pcm16_force_eou(server, engine):
    """pcm16 (the client's microphone format) with force_eou on a middle chunk: two utterances, each equal to
    Engine.transcribe of its own audio, word times in stream time."""
    f = EXAMPLES[0]
    chunks = pcm16_chunks(f)
    k = len(chunks) // 2
    cut = (k + 1) * 1600
    x = read_audio(f, 16000)[0]
    want = [engine.transcribe(x[:cut], LA), engine.transcribe(x[cut:], LA)]
    args = riva_args(server, "--mic", "--word-time-offsets")
    client, events = run(drive_riva(args, chunks, [i == k for i in range(len(chunks))]))
    done = completed(events)
    assert [e["transcript"] for e in done] == [w.text for w in want]
    assert [e["is_last_result"] for e in done] == [False, True]
    assert client.final_transcript == want[1].text
    assert done[0]["item_id"] != done[1]["item_id"]
    assert done[1]["audio_start_ms"] == cut / 16
    offset = cut * 1000 // 16000
    for e, w, off in zip(done, want, (0, offset)):
        stamps = [t + off for t in w.timestamps_ms]
        assert [(a["start_time"], a["end_time"]) for a in e["words_info"]["words"]] == word_groups(engine, w.tokens,
                                                                                                  stamps)
    assert server.metric("nemotron_final_token_latency_seconds_count") >= 2


def test_resampled_stereo_file(server, engine, tmp_path):
    """A 22.05 kHz stereo WAV: channels averaged and resampled by soxr as the CLI reads files; the lookahead chosen
    through the client's --custom-configuration."""
    import soundfile as sf
    import soxr

    x = read_audio(EXAMPLES[1], 16000)[0]
    st = np.stack([x, 0.5 * x], 1)
    y = soxr.resample(st, 16000, 22050, quality="HQ")
    f = tmp_path / "stereo.wav"
    sf.write(str(f), y, 22050, subtype="PCM_16")
    want = engine.transcribe(read_audio(f, 16000)[0], 560)
    args = riva_args(server, "--sample-rate-hz", "22050", "--num-channels", "2", "--custom-configuration",
                     "lookahead_ms:560")
    client, events = run(drive_riva(args, AudioChunkFileIterator(str(f), 1600)))
    assert client.session_config["nemotron"]["lookahead_ms"] == 560
    assert client.final_transcript == want.text and want.text


def test_auth(auth_server, engine):
    """With --api-key: the riva client with the key works (force_eou on its last chunk); a wrong key, a missing
    secret or a reused one gets no session: no stream opened, no engine work."""
    s = auth_server
    f = EXAMPLES[2]
    want = engine.transcribe(read_audio(f, 16000)[0], LA)
    chunks = list(AudioChunkFileIterator(str(f), 1600))
    args = riva_args(s, "--mint-api-key", API_KEY)
    client, events = run(drive_riva(args, chunks, [i == len(chunks) - 1 for i in range(len(chunks))]))
    done = completed(events)
    # force_eou ended the utterance; done ends the stream: with it, when no step came between them, else with an
    # empty last result
    assert [e["transcript"] for e in done if e["transcript"]] == [want.text]
    assert [e["is_last_result"] for e in done] == [False] * (len(done) - 1) + [True]
    assert client.final_transcript in (want.text, "")
    s.wait_free()
    opened, sessions, auth_errors = (s.metric("nemotron_streams_opened_total"), s.metric("nemotron_sessions_total"),
                                     s.metric("nemotron_errors_total", kind="auth"))

    with pytest.raises(Exception, match="HTTP 401"):
        run(riva_rt.RealtimeClientASR(riva_args(s, "--mint-api-key", "wrong")).connect())
    with pytest.raises(Exception, match="HTTP 401"):
        run(riva_rt.RealtimeClientASR(riva_args(s)).connect())

    async def ws_without(subprotocols):
        with pytest.raises(websockets.InvalidStatus) as e:
            await websockets.connect(s.ws_url, subprotocols=subprotocols)
        return e.value.response.status_code

    req = urllib.request.Request(s.http + "/v1/realtime/transcription_sessions", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    secret = json.loads(urllib.request.urlopen(req).read())["client_secret"]["value"]

    async def reuse():
        ws = await websockets.connect(s.ws_url, subprotocols=["realtime", f"realtime-token.{secret}"])
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "conversation.created"
        await ws.close()
        return await ws_without(["realtime", f"realtime-token.{secret}"])  # single use

    assert run(ws_without(None)) == 401
    assert run(ws_without(["realtime", "realtime-token.forged"])) == 401
    assert run(reuse()) == 401
    s.wait_free()
    assert s.metric("nemotron_streams_opened_total") == opened
    assert s.metric("nemotron_sessions_total") == sessions + 1  # the reused secret's first, valid use
    assert s.metric("nemotron_errors_total", kind="auth") == auth_errors + 5


# ---- raw clients -----------------------------------------------------------------------------------------------
async def connect(server: ServerProc, **kw):
    ws = await websockets.connect(server.ws_url, **kw)
    first = json.loads(await ws.recv())
    return ws, first


async def configure(ws, fmt="pcm16", rate=16000, channels=1, **extra):
    await ws.send(json.dumps({"type": "transcription_session.update", "session": {
        "input_audio_format": fmt, "input_audio_params": {"sample_rate_hz": rate, "num_channels": channels},
        **extra}}))
    ev = json.loads(await ws.recv())
    assert ev["type"] == "transcription_session.updated", ev
    return ev["session"]


def append(data: bytes, eou: bool = False) -> str:
    ev = {"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()}
    if eou:
        ev["runtime_config"] = {"force_eou": "true"}
    return json.dumps(ev)


async def next_of(ws, types, timeout=20.0) -> dict:
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if ev["type"] in types:
            return ev


async def stream_file(ws, path: Path, pace_s: float = 0.0, done: bool = True) -> list[str]:
    """Send a file as pcm16 appends (pace_s between them), then done; -> the transcripts of its .completed."""
    for c in pcm16_chunks(path):
        await ws.send(append(c))
        if pace_s:
            await asyncio.sleep(pace_s)
    if not done:
        return []
    await ws.send('{"type":"input_audio_buffer.done"}')
    out = []
    while True:
        ev = await next_of(ws, ("conversation.item.input_audio_transcription.completed",))
        out.append(ev["transcript"])
        if ev["is_last_result"]:
            return out


def test_protocol_errors_keep_the_session_usable(server, engine):
    """Malformed JSON, non-events, unknown types, bad configuration, bad base64, audio in the wrong format, a
    message over the size limit, a binary frame: an error event naming each; the session then transcribes its file;
    an append after done is an error too. A message over 4x the limit is not read: close 1009."""
    server.wait_free()
    f = EXAMPLES[1]
    want = engine.transcribe(read_audio(f, 16000)[0], LA)

    async def go():
        ws, first = await connect(server)
        assert first["type"] == "conversation.created"

        async def error_for(msg) -> dict:
            await ws.send(msg)
            ev = await next_of(ws, ("error", "transcription_session.updated"), 5)
            assert ev["type"] == "error", ev
            return ev["error"]

        e = await error_for("not json {")
        assert e["code"] == "invalid_json" and "JSON" in e["message"]
        e = await error_for("[1, 2]")
        assert e["code"] == "invalid_event" and "'type'" in e["message"]
        e = await error_for('{"type": "response.create", "event_id": "ev1"}')
        assert e["code"] == "unknown_event" and "response.create" in e["message"] and e["event_id"] == "ev1"
        e = await error_for(json.dumps({"type": "transcription_session.update",
                                        "session": {"input_audio_params": {"sample_rate_hz": "fast"}}}))
        assert e["code"] == "invalid_config" and e["param"] == "input_audio_params.sample_rate_hz"
        e = await error_for(json.dumps({"type": "transcription_session.update",
                                        "session": {"input_audio_format": "g711_ulaw"}}))
        assert e["code"] == "audio_format" and "g711_ulaw" in e["message"]
        e = await error_for(json.dumps({"type": "transcription_session.update",
                                        "session": {"nemotron": {"lookahead_ms": 333}}}))
        assert e["code"] == "invalid_config" and "333" in e["message"]
        session = await configure(ws)
        assert session["nemotron"]["lookahead_ms"] == LA
        e = await error_for('{"type": "input_audio_buffer.append", "audio": "%%%not base64"}')
        assert e["code"] == "invalid_audio" and "base64" in e["message"]
        e = await error_for(append(b"\x01\x02\x03"))
        assert e["code"] == "audio_format" and "3 bytes" in e["message"]
        e = await error_for(append(b"\0" * (MAX_MSG // 4 * 3 + 300)))
        assert e["code"] == "message_too_large" and str(MAX_MSG) in e["message"]
        e = await error_for(b"\x00\x01binary")
        assert e["code"] == "invalid_event" and "binary" in e["message"]
        # the session is still usable: its file's transcript is the engine's
        assert await stream_file(ws, f) == [want.text]
        e = await error_for(append(b"\0\0"))
        assert e["code"] == "append_after_done"
        e = await error_for('{"type": "input_audio_buffer.done"}')
        assert e["code"] == "invalid_event" and "already" in e["message"]
        # a frame over 4 x the limit is not read: the connection closes with 1009
        await ws.send(append(b"\0" * (3 * MAX_MSG)))
        with pytest.raises(websockets.ConnectionClosed) as c:
            await next_of(ws, ("never",), 10)
        assert c.value.rcvd is not None and c.value.rcvd.code == 1009

        # 'none' takes a WAV file's bytes: anything else is an error naming it
        ws, _ = await connect(server)
        await configure(ws, fmt="none")
        e = await error_for_ws(ws, append(b"OggS" + b"\0" * 60))
        assert e["code"] == "audio_format" and "RIFF" in e["message"]
        await ws.close()

    async def error_for_ws(ws, msg):
        await ws.send(msg)
        return (await next_of(ws, ("error",), 5))["error"]

    run(go())
    server.wait_free()


def test_capacity(server, engine):
    """More sessions than streams: the extra one gets an error event and close 1013 before any audio is taken;
    once a slot is free a new session is served."""
    server.wait_free()

    async def go():
        held = [(await connect(server)) for _ in range(SLOTS)]
        assert all(first["type"] == "conversation.created" for _, first in held)
        ws, first = await connect(server)
        assert first["type"] == "error" and first["error"]["code"] == "capacity"
        assert str(SLOTS) in first["error"]["message"]
        with pytest.raises(websockets.ConnectionClosed) as c:
            await ws.recv()
        assert c.value.rcvd.code == 1013
        await held[0][0].close()
        await asyncio.sleep(0.3)
        ws, first = await connect(server)
        assert first["type"] == "conversation.created"
        await configure(ws)
        assert await stream_file(ws, EXAMPLES[2]) == [engine.transcribe(read_audio(EXAMPLES[2], 16000)[0], LA).text]
        for w, _ in held[1:]:
            await w.close()
        await ws.close()

    run(go())
    server.wait_free()


def test_vanishing_client_frees_its_slot(server, engine):
    """A client that vanishes mid-stream (TCP reset, no close frame) while another streams: its stream is closed
    and its slot free within a step; the other session's transcript is unaffected."""
    server.wait_free()
    f = EXAMPLES[3]
    want = engine.transcribe(read_audio(f, 16000)[0], LA)
    lost = server.metric("nemotron_errors_total", kind="connection_lost")

    async def good():
        ws, _ = await connect(server)
        await configure(ws)
        out = await stream_file(ws, f, pace_s=0.02)
        await ws.close()
        return out

    async def vanish():
        ws, _ = await connect(server)
        await configure(ws)
        for c in pcm16_chunks(EXAMPLES[0])[:10]:
            await ws.send(append(c))
        await asyncio.sleep(0.3)
        assert server.metric("nemotron_engine_streams_open") >= 1
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        ws.transport.abort()
        t = await asyncio.to_thread(wait_slots, server, SLOTS - 1)
        return t

    async def go():
        return await asyncio.gather(good(), vanish())

    out, t_free = run(go())
    assert out == [want.text]
    assert t_free < 3.0  # within a step (~0.1 s here) plus polling; slack for a loaded machine
    server.wait_free()
    assert server.metric("nemotron_errors_total", kind="connection_lost") == lost + 1


def wait_slots(server, n, timeout=5.0):
    """Seconds until at least n slots are free."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if server.health()["stream_slots_free"] >= n:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} slots free after {timeout} s: {server.health()}")


def test_idle_client_is_closed(server):
    server.wait_free()

    async def go():
        ws, _ = await connect(server)
        t0 = time.monotonic()
        ev = await next_of(ws, ("error",), IDLE_S + 5)
        assert ev["error"]["code"] == "idle_timeout"
        with pytest.raises(websockets.ConnectionClosed) as c:
            await ws.recv()
        assert c.value.rcvd.code == 1000
        return time.monotonic() - t0

    assert IDLE_S - 0.2 < run(go()) < IDLE_S + 3
    server.wait_free()


def test_slow_reader_is_cut_off(server, engine):
    """A client that never reads: its outgoing queue is bounded and it is cut off; the server serves on."""
    server.wait_free()
    cut = server.metric("nemotron_errors_total", kind="slow_reader")

    async def go():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        ws = await websockets.connect(server.ws_url, sock=sock, max_queue=1)
        t0 = time.monotonic()
        commit = '{"type":"input_audio_buffer.commit"}'  # each is answered by an input_audio_buffer.committed
        with pytest.raises((websockets.ConnectionClosed, ConnectionError)):
            while time.monotonic() - t0 < 30:
                for _ in range(200):
                    await ws.send(commit)
                await asyncio.sleep(0.01)
            pytest.fail("the server did not cut off a client that does not read")

    run(go())
    server.wait_free()
    assert server.metric("nemotron_errors_total", kind="slow_reader") == cut + 1

    async def after():
        ws, _ = await connect(server)
        await configure(ws)
        out = await stream_file(ws, EXAMPLES[0])
        await ws.close()
        return out

    assert run(after()) == [engine.transcribe(read_audio(EXAMPLES[0], 16000)[0], LA).text]


def test_health_metrics_and_session_defaults(server):
    server.wait_free()
    status, body = server.get("/health")
    h = json.loads(body)
    assert status == 200 and h["live"] and h["ready"] and h["stream_slots"] == SLOTS
    assert server.get("/health/live")[0] == 200 and server.get("/health/ready")[0] == 200
    status, text = server.get("/metrics")
    assert status == 200
    for name in ("nemotron_sessions_open", "nemotron_stream_slots_free", "nemotron_step_seconds_bucket",
                 "nemotron_chunk_latency_seconds_bucket", "nemotron_final_token_latency_seconds_bucket",
                 "nemotron_late_chunks_total", 'nemotron_errors_total{kind="invalid_json"}'):
        assert name in text, name
    assert server.metric("nemotron_stream_slots_free") == SLOTS
    assert server.metric("nemotron_chunk_latency_seconds_count") > 0
    assert server.metric("nemotron_step_seconds_count") > 0
    req = urllib.request.Request(server.http + "/v1/realtime/transcription_sessions", data=b"{}", method="POST")
    cfg = json.loads(urllib.request.urlopen(req).read())
    assert "client_secret" not in cfg
    assert cfg["input_audio_params"] == {"sample_rate_hz": 16000, "num_channels": 1}
    assert cfg["nemotron"]["lookahead_ms"] == LA and cfg["nemotron"]["lookaheads_ms"] == [80, 160, 560, 1120]


def test_ws_loadtest_cli(server, engine, tmp_path):
    """`nemotron-engine loadtest --url`: concurrent clients in real time, one with force_eou, one vanishing;
    transcripts checked against the in-process engine; JSON written."""
    from nemotron_engine.cli import main

    server.wait_free()
    out = tmp_path / "lt"
    rc = main(["loadtest", "--url", f"ws://127.0.0.1:{server.port}", "--streams", "3", "--lookahead-ms", str(LA),
               "--audio", str(EXAMPLES[0]), "--eou-fraction", "0.34", "--vanish-fraction", "0.34",
               "--model", str(DEMO), "--out", str(out)])
    doc = json.loads((out / "ws_loadtest.json").read_text())
    rep = doc["points"][0]
    assert rep["sessions"] == {"clients": 3, "total": 3, "connected": 3, "held": 2, "rejected": 0, "vanished": 1, "eou": 1,
                               "expected_held": 2}
    assert rep["transcripts"]["checked"] == 2 and rep["transcripts"]["matched"] == 2, rep["transcripts"]
    assert rep["errors"] == {}
    assert rep["latency_ms"]["n"] > 0 and rep["final_latency_ms"]["n"] == 2
    assert {"p50", "p95", "p99"} <= set(rep["latency_ms"]) and "late" in rep
    assert rc == (0 if rep["realtime_ok"] else 1)
    server.wait_free()


def test_ws_loadtest_sessions_churn(server, engine):
    """`--sessions`: 3 clients run 9 sessions back to back, a third of them vanishing (TCP reset) mid-stream: every
    other session is held with the in-process engine's transcript, no error, and the server's watch shows every
    slot free and no engine stream left at the end, with its memory sampled over the run."""
    from nemotron_engine.ws_loadtest import run_ws_load

    server.wait_free()
    rep = run_ws_load(server.ws_url, SLOTS, LA, EXAMPLES[:2], sessions=9, eou_fraction=0.34, vanish_fraction=0.34,
                      check_engine=engine, watch_s=0.5)
    s = rep["sessions"]
    assert (s["clients"], s["total"], s["vanished"], s["held"], s["expected_held"], s["rejected"]) == (
        SLOTS, 9, 3, 6, 6, 0), s
    assert sorted(c["index"] for c in rep["clients"]) == list(range(9))
    assert rep["transcripts"]["checked"] == 6 and rep["transcripts"]["matched"] == 6, rep["transcripts"]
    assert rep["errors"] == {}, rep["errors"]
    srv = rep["server"]
    assert srv["error"] is None and srv["slots"] == SLOTS and srv["slots_free_end"] == SLOTS, srv
    assert srv["engine_streams_end"] == 0 and len(srv["samples"]) >= 3 and srv["rss_mb"]["max"] > 50, srv
    assert not any("leaked" in f for f in rep["failures"]), rep["failures"]
    server.wait_free()


def test_sigterm_finishes_open_streams(auth_server, engine):
    """SIGTERM: stop accepting, finish every open stream, deliver its .completed events, exit 0. (Last: it ends
    the auth server.)"""
    s = auth_server
    s.wait_free()
    x0 = read_audio(EXAMPLES[0], 16000)[0]
    chunks1 = pcm16_chunks(EXAMPLES[1])
    half = len(chunks1) // 2
    x1 = read_audio(EXAMPLES[1], 16000)[0][: half * 1600]
    want = [engine.transcribe(x0, LA).text, engine.transcribe(x1, LA).text]

    async def session(chunks):
        ws = await websockets.connect(s.ws_url, additional_headers={"Authorization": f"Bearer {API_KEY}"})
        assert json.loads(await ws.recv())["type"] == "conversation.created"
        await configure(ws)
        for c in chunks:
            await ws.send(append(c))
        await ws.send('{"type":"input_audio_buffer.commit"}')
        await next_of(ws, ("input_audio_buffer.committed",))  # everything before it has been taken
        return ws

    async def result(ws):
        ev = await next_of(ws, ("conversation.item.input_audio_transcription.completed",), 30)
        with pytest.raises(websockets.ConnectionClosed) as c:
            await next_of(ws, ("never",), 30)
        return ev["transcript"], ev["is_last_result"], c.value.rcvd.code

    async def go():
        a = await session(pcm16_chunks(EXAMPLES[0]))
        b = await session(chunks1[:half])
        s.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(result(a), result(b))

    got = run(go())
    assert got == [(want[0], True, 1001), (want[1], True, 1001)]
    with pytest.raises(OSError):
        urllib.request.urlopen(s.http + "/health", timeout=5)
    assert s.proc.wait(20) == 0
    log = "\n".join(s.lines)
    assert "stopped accepting" in log and "shutdown complete" in log and "exit 0" in log


# ---- the protocol's pure parts ---------------------------------------------------------------------------------
def test_wav_stream_split_anywhere_matches_soundfile():
    """'none' audio: a WAV file's bytes fed in pieces that split the header and the frames anywhere decode to the
    samples soundfile reads (16-bit mono and stereo, float32)."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(0)
    for subtype, ch in (("PCM_16", 1), ("PCM_16", 2), ("FLOAT", 2), ("PCM_24", 1), ("PCM_U8", 1)):
        y = (rng.standard_normal((3001, ch)) * 0.2).clip(-1, 1)
        buf = io.BytesIO()
        sf.write(buf, y, 16000, subtype=subtype, format="WAV")
        data = buf.getvalue()
        ref, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        a = rt.AudioInput("none", 16000, 1, 16000)
        cuts = sorted(rng.integers(1, len(data), 20).tolist())
        parts = [a.feed(data[i:j]) for i, j in zip([0, *cuts], [*cuts, len(data)])]
        got = np.concatenate(parts)
        np.testing.assert_array_equal(got, ref[:, 0] if ch == 1 else ref.mean(axis=1), err_msg=subtype)


def test_session_update_rules():
    st = rt.Settings(lookahead_ms=1120)
    kw = dict(lookaheads_ms=[80, 160, 560, 1120], frame_ms=80, model_name="demo")
    # the client's round trip of the defaults plus its own change: the change wins
    sent = rt.session_dict(st, [80, 160, 560, 1120], 80)
    sent["recognition_config"]["custom_configuration"] = "lookahead_ms:560"
    sent["endpointing_config"] = {"stop_history": 500, "stop_threshold": -1.0}
    new = rt.apply_update(st, sent, streaming=False, **kw)
    assert new.lookahead_ms == 560 and new.endpoint_ms == 560
    with pytest.raises(rt.ProtocolError, match="conflicting lookahead"):
        rt.apply_update(st, {"nemotron": {"lookahead_ms": 80},
                             "recognition_config": {"custom_configuration": "lookahead_ms:160"}}, streaming=False, **kw)
    with pytest.raises(rt.ProtocolError, match="cannot change while"):
        rt.apply_update(st, {"input_audio_params": {"sample_rate_hz": 8000}}, streaming=True, **kw)
    assert rt.apply_update(st, {"recognition_config": {"enable_word_time_offsets": True}}, streaming=True,
                           **kw).word_time_offsets
    with pytest.raises(rt.ProtocolError, match="English"):
        rt.apply_update(st, {"input_audio_transcription": {"language": "de-DE"}}, streaming=False, **kw)
