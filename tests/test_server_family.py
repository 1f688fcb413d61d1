"""The realtime server and the CLI on the model family (random checkpoints of tests/models.py): a prompt model's
sessions choose their language (`input_audio_transcription.language`), an EOU model's sessions get one
`.completed` per segment an <EOU> closes (and may reset the state there: `nemotron.eou_reset`). Transcripts are
compared with the engine in this process, on the same int16 audio at the same lookahead and language.
"""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import models
from test_server import LA, ServerProc, append, check_log, configure, connect, next_of, run  # noqa: E402

from nemotron_engine import cli  # noqa: E402
from nemotron_engine.engine import Engine  # noqa: E402

SECONDS = 2.5
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


def _pcm16(n=2) -> list[np.ndarray]:
    return [(np.clip(a[: int(SECONDS * 16000)], -1, 1) * 32767).astype(np.int16) for _, a in models.corpus()[:n]]


def _server_of(kind: str):
    """A server of the random checkpoint `kind` (models.nemo_model) -> (server, model dir), stopped after use."""
    _, _, out = models.nemo_model(kind)
    s = ServerProc("--model", str(out))
    yield s, out
    s.stop()
    check_log(s)


@pytest.fixture(scope="module")
def prompt_server():
    yield from _server_of("prompt_rnnt")


@pytest.fixture(scope="module")
def eou_server():
    yield from _server_of("eou")


async def _session(server, x: np.ndarray, **session) -> list[dict]:
    """One session: configure, the audio as pcm16 appends of 1600 samples, done -> every event after the update."""
    ws, first = await connect(server)
    assert first["type"] == "conversation.created"
    await configure(ws, **session)
    data = x.tobytes()
    for i in range(0, len(data), 3200):
        await ws.send(append(data[i: i + 3200]))
    await ws.send('{"type":"input_audio_buffer.done"}')
    events = []
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), 60))
        events.append(ev)
        assert ev["type"] != "error", ev
        if ev["type"] == COMPLETED and ev["is_last_result"]:
            await ws.close()
            return events


def _items(events) -> list[tuple[str, str]]:
    """(the deltas of an item put together, its .completed transcript) per item, in order."""
    out = []
    for e in events:
        if e["type"] == COMPLETED:
            text = "".join(d["delta"] for d in events if d["type"] == DELTA and d["item_id"] == e["item_id"])
            out.append((text, e["transcript"]))
    return out


def test_sessions_choose_their_language(prompt_server):
    """Two concurrent sessions (their streams share the engine's steps) in two languages: each transcript equals
    Engine.transcribe of the same audio in that language; the two languages decode the audio differently."""
    server, out = prompt_server
    engine = Engine(out, max_streams=2)
    x = _pcm16(1)[0]
    langs = ("de-DE", "fr-FR")
    want = [engine.transcribe(x, LA, language=lang).text for lang in langs]
    assert want[0] and want[1] and want[0] != want[1], want

    async def both():
        return await asyncio.gather(*(_session(server, x, input_audio_transcription={"language": lang})
                                      for lang in langs))

    for events, w in zip(run(both()), want):
        assert _items(events) == [(w, w)]
    # omitted (and "auto", a key of this model): the checkpoint's default
    events = run(_session(server, x))
    assert _items(events)[0][1] == engine.transcribe(x, LA).text
    server.wait_free()


def test_language_errors(prompt_server):
    """An unknown language: an error naming it and the valid keys, nothing changed; the language cannot change
    once the audio streams; eou_reset needs an EOU model."""
    server, _ = prompt_server

    async def go():
        ws, _ = await connect(server)

        async def error_for(session) -> dict:
            await ws.send(json.dumps({"type": "transcription_session.update", "session": session}))
            ev = await next_of(ws, ("error", "transcription_session.updated"), 5)
            assert ev["type"] == "error", ev
            return ev["error"]

        e = await error_for({"input_audio_transcription": {"language": "xx-XX"}})
        assert e["code"] == "invalid_config" and e["param"] == "input_audio_transcription.language"
        assert "'xx-XX'" in e["message"] and "'auto', 'de-DE', 'en-US', 'es-ES', 'fr-FR'" in e["message"]
        e = await error_for({"nemotron": {"eou_reset": True}})
        assert e["code"] == "invalid_config" and "end-of-utterance" in e["message"]
        session = await configure(ws, input_audio_transcription={"language": "es-ES"})
        assert session["input_audio_transcription"]["language"] == "es-ES"
        assert session["nemotron"]["languages"] == ["auto", "de-DE", "en-US", "es-ES", "fr-FR"]
        await ws.send(append(b"\0\0" * 1600))
        e = await error_for({"input_audio_transcription": {"language": "de-DE"}})
        assert e["code"] == "invalid_config" and "cannot change while" in e["message"]
        await ws.close()

    run(go())
    server.wait_free()


@pytest.mark.parametrize("eou_reset", [False, True])
def test_eou_segments(eou_server, eou_reset):
    """An EOU model: one .completed per segment, as the engine's segments of the same stream (the <EOU> closes
    each; with eou_reset the state resets there too); each item's deltas put together are its transcript."""
    server, out = eou_server
    engine = Engine(out, max_streams=1)
    x = _pcm16(1)[0]
    s = engine.open_stream(LA, eou_reset=eou_reset)
    s.push(x)
    s.finish()
    segs = [g for u in engine.drain() for g in u.segments]
    assert len(segs) >= 2 and any(g.end_token is not None for g in segs) and any(g.text for g in segs)
    events = run(_session(server, x, nemotron={"eou_reset": eou_reset}))
    assert _items(events) == [(g.text, g.text) for g in segs]
    server.wait_free()


def test_cli_language(tmp_path, capsys):
    """transcribe --language: the engine's transcript in that language; a clear error for an unknown key and for a
    model without a language prompt."""
    import soundfile as sf

    _, _, out = models.nemo_model("prompt_rnnt")
    x = _pcm16(1)[0]
    wav = tmp_path / "a.wav"
    sf.write(str(wav), x, 16000, subtype="PCM_16")
    engine = Engine(out, max_streams=1)
    for lang in ("de-DE", "fr-FR"):
        assert cli.main(["transcribe", "--model", str(out), "--lookahead-ms", "160", "--language", lang,
                         str(wav)]) == 0
        assert capsys.readouterr().out.strip() == engine.transcribe(x, 160, language=lang).text
    assert cli.main(["transcribe", "--model", str(out), "--language", "xx-XX", str(wav)]) == 2
    err = capsys.readouterr().err
    assert "'xx-XX'" in err and "'de-DE'" in err
    assert cli.main(["transcribe", "--language", "de-DE"]) == 2
    assert "has no language prompt" in capsys.readouterr().err
