"""The realtime transcription protocol that NVIDIA's realtime ASR clients speak (`RealtimeClientASR` in
nvidia-riva-client 2.27, riva/client/realtime.py): session configuration, event shapes, audio decoding, words.
Pure functions and small classes with no network and no engine: `server.py` serves them, `ws_loadtest.py` and the
tests speak them. docs/server.md describes the protocol as served here.

The session configuration is kept as `Settings` (what the server acts on) and shown to clients in the Riva shape
(`session_dict`): `input_audio_format`, `input_audio_transcription`, `input_audio_params`, `recognition_config`,
`endpointing_config`, `speaker_diarization`, `word_boosting`, and our own `nemotron` object (lookahead, endpointing
in ms, per-chunk events, a prompt model's languages, an EOU model's reset). Clients send the configuration they
were given back with their changes (`transcription_session.update`); `apply_update` validates it as a whole and
returns the new settings or raises `ProtocolError` naming the field.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import struct
import unicodedata
import uuid
from dataclasses import dataclass

import numpy as np

INPUT_FORMATS = ("pcm16", "none")  # none: a file's bytes as they are (a WAV file, header first)
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8
CLIENT_EVENTS = ("transcription_session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.done")
# the protocol's error codes; server metrics count errors by these kinds
ERROR_KINDS = ("invalid_json", "invalid_event", "unknown_event", "invalid_config", "invalid_audio", "audio_format",
               "message_too_large", "append_after_done", "capacity", "auth", "idle_timeout", "slow_reader",
               "shutting_down", "internal")


class ProtocolError(Exception):
    """A client error: `kind` (one of ERROR_KINDS) and a message that names the problem; `param` the field."""

    def __init__(self, kind: str, message: str, param: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# ---- session configuration ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What a session acts on. lookahead_ms / endpoint_ms (None: off) are fixed once its stream is open, as are the
    audio format, rate and channels."""

    lookahead_ms: int
    endpoint_ms: int | None = None
    input_format: str = "pcm16"
    sample_rate: int = 16000
    channels: int = 1
    language: str = "en-US"
    model: str = ""
    prompt: str = ""
    word_time_offsets: bool = False
    chunk_events: bool = False
    # accepted and echoed; the model's output does not depend on them (docs/server.md)
    automatic_punctuation: bool = False
    profanity_filter: bool = False
    verbatim_transcripts: bool = True
    custom_configuration: str = ""
    eou_reset: bool = False  # an end-of-utterance model's <EOU> also resets the stream's state (open_stream's option)

    # fields that select the audio path or the stream's decoding: not changed while a stream is open (and, for a
    # model with a language prompt, the language)
    FIXED_WHILE_STREAMING = ("input_format", "sample_rate", "channels", "lookahead_ms", "endpoint_ms", "eou_reset")


def session_dict(st: Settings, lookaheads_ms: list[int], frame_ms: int, languages: list[str] | None = None) -> dict:
    """The session configuration in the Riva realtime shape (POST /v1/realtime/transcription_sessions and
    transcription_session.updated). languages: a prompt model's language keys (None: a model without a prompt)."""
    return {
        "object": "realtime.transcription_session",
        "modalities": ["text"],
        "input_audio_format": st.input_format,
        "input_audio_transcription": {"language": st.language, "model": st.model, "prompt": st.prompt},
        "input_audio_params": {"sample_rate_hz": st.sample_rate, "num_channels": st.channels},
        "recognition_config": {
            "max_alternatives": 1,
            "enable_automatic_punctuation": st.automatic_punctuation,
            "enable_word_time_offsets": st.word_time_offsets,
            "enable_profanity_filter": st.profanity_filter,
            "enable_verbatim_transcripts": st.verbatim_transcripts,
            "custom_configuration": st.custom_configuration,
        },
        "endpointing_config": {"stop_history": st.endpoint_ms or 0},
        "speaker_diarization": {"enable_speaker_diarization": False, "max_speaker_count": 0},
        "word_boosting": {"enable_word_boosting": False, "word_boosting_list": []},
        "nemotron": {"lookahead_ms": st.lookahead_ms, "lookaheads_ms": list(lookaheads_ms),
                     "endpoint_ms": st.endpoint_ms, "frame_ms": frame_ms, "chunk_events": st.chunk_events,
                     "languages": list(languages or []), "eou_reset": st.eou_reset},
    }


def _int(v, param: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ProtocolError("invalid_config", f"{param} must be an integer, got {v!r}", param)
    v = int(v)
    if not lo <= v <= hi:
        raise ProtocolError("invalid_config", f"{param} must be in [{lo}, {hi}], got {v}", param)
    return v


def _bool(v, param: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    raise ProtocolError("invalid_config", f"{param} must be a boolean, got {v!r}", param)


def _section(session: dict, name: str) -> dict:
    v = session.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ProtocolError("invalid_config", f"session.{name} must be an object, got {type(v).__name__}", name)
    return v


def parse_custom_configuration(v) -> dict[str, str]:
    """Riva's custom_configuration: "key:value,key:value" (the client's --custom-configuration) or an object."""
    if v is None or v == "":
        return {}
    if isinstance(v, dict):
        return {str(k): str(x) for k, x in v.items()}
    if not isinstance(v, str):
        raise ProtocolError("invalid_config", "recognition_config.custom_configuration must be a string "
                            f"\"key:value,...\", got {type(v).__name__}", "recognition_config.custom_configuration")
    out = {}
    for pair in v.replace(" ", "").split(","):
        if not pair:
            continue
        kv = pair.split(":")
        if len(kv) != 2 or not kv[0]:
            raise ProtocolError("invalid_config", f"recognition_config.custom_configuration: {pair!r} is not a "
                                "key:value pair", "recognition_config.custom_configuration")
        out[kv[0]] = kv[1]
    return out


def _pick(current, candidates: list[tuple[str, object]], what: str):
    """The new value among candidates (param, value) that differ from `current`: clients send back the whole
    configuration they were given, so a field equal to the current value is not a change; two different changes
    conflict."""
    changed = {}
    for param, v in candidates:
        if v is not _ABSENT and v != current:
            changed.setdefault(v, param)
    if len(changed) > 1:
        detail = ", ".join(f"{p}={v!r}" for v, p in changed.items())
        raise ProtocolError("invalid_config", f"conflicting {what} settings: {detail}", next(iter(changed.values())))
    return next(iter(changed)) if changed else current


_ABSENT = object()


def resolve_language(lang, languages: list[str], default_language: str) -> str:
    """A prompt model's language as a session asks for it -> a key of its prompt dictionary. Empty, None or "auto"
    (where "auto" is not itself a key) is the checkpoint's default language; anything else must be a key."""
    param = "input_audio_transcription.language"
    valid = ", ".join(map(repr, languages))
    if lang is None or lang == "" or (lang == "auto" and "auto" not in languages):
        if not default_language:
            raise ProtocolError("invalid_config", f"input_audio_transcription.language {lang!r}: this model has no "
                                f"default language; choose one of {valid}", param)
        return default_language
    if not isinstance(lang, str) or lang not in languages:
        raise ProtocolError("invalid_config", f"input_audio_transcription.language {lang!r} is not in this model's "
                            f"prompt dictionary; choose one of {valid} (or 'auto' for the model's default)", param)
    return lang


def apply_update(st: Settings, session, *, lookaheads_ms: list[int], frame_ms: int, model_name: str,
                 streaming: bool, languages: list[str] | None = None, default_language: str = "",
                 eou: bool = False) -> Settings:
    """The settings after a transcription_session.update carrying `session` (validated as a whole: on a
    ProtocolError nothing changes). Unknown fields are ignored (clients round-trip the POST response, whose id,
    object and client_secret come back). streaming: the session's stream is open (its audio path and decoding are
    fixed). languages / default_language: a prompt model's language keys and its default (None: a model without a
    prompt, which transcribes English); eou: the model has an <EOU> token (nemotron.eou_reset may be set)."""
    if not isinstance(session, dict):
        raise ProtocolError("invalid_event", "transcription_session.update needs a 'session' object", "session")
    new = {}
    if "input_audio_format" in session:
        fmt = session["input_audio_format"]
        if fmt not in INPUT_FORMATS:
            raise ProtocolError("audio_format", f"unsupported input_audio_format {fmt!r}: supported are 'pcm16' (raw "
                                "16-bit little-endian samples at input_audio_params.sample_rate_hz) and 'none' (a WAV "
                                "file's bytes, header first)", "input_audio_format")
        new["input_format"] = fmt
    params = _section(session, "input_audio_params")
    if "sample_rate_hz" in params:
        new["sample_rate"] = _int(params["sample_rate_hz"], "input_audio_params.sample_rate_hz", MIN_RATE, MAX_RATE)
    if "num_channels" in params:
        new["channels"] = _int(params["num_channels"], "input_audio_params.num_channels", 1, MAX_CHANNELS)
    tr = _section(session, "input_audio_transcription")
    if "language" in tr and languages is not None:
        if tr["language"] != st.language:  # the round trip of the current value is no change
            new["language"] = resolve_language(tr["language"], languages, default_language)
    elif "language" in tr:
        lang = tr["language"]
        if lang is None or lang == "":
            lang = "en-US"
        if not isinstance(lang, str) or not lang.lower().startswith("en"):
            raise ProtocolError("invalid_config", f"input_audio_transcription.language {lang!r} is not supported: "
                                "this model transcribes English (en-US)", "input_audio_transcription.language")
        new["language"] = lang
    if "model" in tr:
        m = tr["model"]
        if m not in (None, "", model_name):
            raise ProtocolError("invalid_config", f"input_audio_transcription.model {m!r} is not served here; this "
                                f"server serves {model_name!r}", "input_audio_transcription.model")
        new["model"] = model_name
    if "prompt" in tr:
        if tr["prompt"] not in (None, "") and not isinstance(tr["prompt"], str):
            raise ProtocolError("invalid_config", "input_audio_transcription.prompt must be a string",
                                "input_audio_transcription.prompt")
        new["prompt"] = tr["prompt"] or ""
    rc = _section(session, "recognition_config")
    for key, field in (("enable_word_time_offsets", "word_time_offsets"),
                       ("enable_automatic_punctuation", "automatic_punctuation"),
                       ("enable_profanity_filter", "profanity_filter"),
                       ("enable_verbatim_transcripts", "verbatim_transcripts")):
        if key in rc and rc[key] is not None:
            new[field] = _bool(rc[key], f"recognition_config.{key}")
    if "max_alternatives" in rc and rc["max_alternatives"] is not None:
        _int(rc["max_alternatives"], "recognition_config.max_alternatives", 0, 1 << 30)  # one is returned
    custom = parse_custom_configuration(rc.get("custom_configuration"))
    if "custom_configuration" in rc:
        raw = rc["custom_configuration"]
        new["custom_configuration"] = (",".join(f"{k}:{v}" for k, v in raw.items()) if isinstance(raw, dict)
                                       else (raw or ""))
    ours = _section(session, "nemotron")
    ep_cfg = _section(session, "endpointing_config")

    def as_int(v, param, lo, hi):
        try:
            v = int(v) if isinstance(v, str) else v
        except ValueError:
            raise ProtocolError("invalid_config", f"{param} must be an integer, got {v!r}", param) from None
        return _int(v, param, lo, hi)

    la_candidates = []
    if ours.get("lookahead_ms") is not None:
        la_candidates.append(("nemotron.lookahead_ms", as_int(ours["lookahead_ms"], "nemotron.lookahead_ms", 1, 1 << 20)))
    if "lookahead_ms" in custom:
        la_candidates.append(("recognition_config.custom_configuration lookahead_ms",
                              as_int(custom["lookahead_ms"], "custom_configuration lookahead_ms", 1, 1 << 20)))
    la = _pick(st.lookahead_ms, la_candidates, "lookahead")
    if la not in lookaheads_ms:
        param = next((p for p, v in la_candidates if v == la), "nemotron.lookahead_ms")
        raise ProtocolError("invalid_config", f"lookahead {la} ms is not one of this model's lookaheads "
                            f"{lookaheads_ms} ms", param)
    new["lookahead_ms"] = la

    def endpoint(v, param):
        v = as_int(v, param, -1, 600_000)
        if v <= 0:
            return None
        return int(math.ceil(v / frame_ms) * frame_ms)  # the engine endpoints on whole encoder frames

    ep_candidates = []
    if "endpoint_ms" in ours:
        ep_candidates.append(("nemotron.endpoint_ms",
                              None if ours["endpoint_ms"] is None else endpoint(ours["endpoint_ms"],
                                                                                "nemotron.endpoint_ms")))
    if "endpoint_ms" in custom:
        ep_candidates.append(("custom_configuration endpoint_ms", endpoint(custom["endpoint_ms"],
                                                                           "custom_configuration endpoint_ms")))
    if ep_cfg.get("stop_history") is not None:
        sh = as_int(ep_cfg["stop_history"], "endpointing_config.stop_history", -1, 600_000)
        if sh >= 0:  # -1: the Riva client's "not set"
            ep_candidates.append(("endpointing_config.stop_history", endpoint(sh, "endpointing_config.stop_history")))
    for k, v in ep_cfg.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ProtocolError("invalid_config", f"endpointing_config.{k} must be a number, got {v!r}",
                                f"endpointing_config.{k}")
    new["endpoint_ms"] = _pick(st.endpoint_ms, ep_candidates, "endpointing")
    if "chunk_events" in ours and ours["chunk_events"] is not None:
        new["chunk_events"] = _bool(ours["chunk_events"], "nemotron.chunk_events")
    reset_candidates = []
    if ours.get("eou_reset") is not None:
        reset_candidates.append(("nemotron.eou_reset", _bool(ours["eou_reset"], "nemotron.eou_reset")))
    if "eou_reset" in custom:
        reset_candidates.append(("custom_configuration eou_reset", _bool(custom["eou_reset"],
                                                                         "custom_configuration eou_reset")))
    new["eou_reset"] = _pick(st.eou_reset, reset_candidates, "eou_reset")
    if new["eou_reset"] and not eou:
        param = next((p for p, v in reset_candidates if v), "nemotron.eou_reset")
        raise ProtocolError("invalid_config", "eou_reset needs an end-of-utterance model; this model has no <EOU> "
                            "token", param)
    out = dataclasses.replace(st, **new)
    if streaming:
        fixed = Settings.FIXED_WHILE_STREAMING + (("language",) if languages is not None else ())
        for f in fixed:
            if getattr(out, f) != getattr(st, f):
                raise ProtocolError("invalid_config", f"{f} cannot change while the session's audio is streaming "
                                    f"({getattr(st, f)!r} -> {getattr(out, f)!r}); set it before the first append or "
                                    "open a new session", f)
    return out


# ---- events --------------------------------------------------------------------------------------------------------
def event(type_: str, **fields) -> dict:
    return {"event_id": new_id("event"), "type": type_, **fields}


def error_event(kind: str, message: str, param: str | None = None, client_event_id=None) -> dict:
    err = {"type": "invalid_request_error" if kind not in ("internal", "shutting_down", "capacity") else "server_error",
           "code": kind, "message": message}
    if param is not None:
        err["param"] = param
    if client_event_id is not None:
        err["event_id"] = client_event_id
    return event("error", error=err)


def dumps(ev: dict) -> str:
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":"))


def parse_client_event(text: str) -> dict:
    try:
        ev = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("invalid_json", f"the message is not valid JSON ({e})") from None
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        raise ProtocolError("invalid_event", "an event must be a JSON object with a string 'type'", "type")
    return ev


def decode_audio_field(ev: dict) -> bytes:
    audio = ev.get("audio")
    if not isinstance(audio, str):
        raise ProtocolError("invalid_audio", "input_audio_buffer.append needs 'audio': base64-encoded audio bytes "
                            f"(got {type(audio).__name__})", "audio")
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError("invalid_audio", f"'audio' is not valid base64 ({e})", "audio") from None


def force_eou_requested(ev: dict) -> bool:
    rc = ev.get("runtime_config")
    if not isinstance(rc, dict):
        return False
    v = rc.get("force_eou")
    return v is True or (isinstance(v, str) and v.strip().lower() in ("true", "1"))


# ---- words ---------------------------------------------------------------------------------------------------------
def _is_punct(s: str) -> bool:
    return bool(s) and all(unicodedata.category(c).startswith("P") for c in s)


def words_from_tokens(tokenizer, tokens: list[int], stamps_ms: list[int], frame_ms: int) -> list[dict]:
    """Words of an utterance from its tokens: a piece starting with "▁" starts a word; a word that is only
    punctuation joins the word before it. start_time = its first token's timestamp, end_time = its last token's
    timestamp + one encoder frame (the frame the token was emitted on), in ms of stream time."""
    pieces = tokenizer.pieces(tokens)
    groups: list[tuple[list[int], list[int]]] = []
    for p, t, ms in zip(pieces, tokens, stamps_ms):
        if p.startswith("▁") or not groups:
            groups.append(([], []))
        groups[-1][0].append(t)
        groups[-1][1].append(ms)
    words: list[dict] = []
    for toks, ms in groups:
        w = tokenizer.decode(toks).strip()
        if not w:
            continue
        if words and _is_punct(w):
            words[-1]["word"] += w
            words[-1]["end_time"] = ms[-1] + frame_ms
            continue
        words.append({"word": w, "start_time": ms[0], "end_time": ms[-1] + frame_ms, "confidence": 0.0,
                      "speaker_tag": 0})
    return words


# ---- audio ---------------------------------------------------------------------------------------------------------
_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 1, 3, 0xFFFE
MAX_WAV_HEADER = 1 << 20


class WavStream:
    """A WAV file's bytes, fed in pieces split anywhere -> float32 frames [n, channels] as they complete.
    Integer PCM (8, 16, 24, 32 bit) and IEEE float (32, 64 bit), plain or WAVE_FORMAT_EXTENSIBLE; integers are
    scaled as libsndfile scales them (x / 2^(bits-1); 8 bit unsigned), so that samples equal soundfile's."""

    def __init__(self):
        self.head = bytearray()  # bytes before the data chunk
        self.rest = b""  # a partial frame
        self.in_data = False
        self.data_left: int | None = None  # None: to the end of the input
        self.rate = self.channels = self.bits = self.tag = None
        self.block = 0
        self._pending_data = b""

    def _parse_head(self) -> None:
        h = self.head
        if len(h) >= 4 and bytes(h[:4]) not in (b"RIFF", b"RF64"):
            raise ProtocolError("audio_format", "input_audio_format 'none' takes a WAV file's bytes, header first; "
                                f"these start with {bytes(h[:12])!r}, not RIFF/WAVE (for raw 16-bit samples set "
                                "input_audio_format to 'pcm16')", "audio")
        if len(h) < 12:
            return
        if bytes(h[8:12]) != b"WAVE":
            raise ProtocolError("audio_format", f"a RIFF file of form {bytes(h[8:12])!r}, not WAVE: only WAV files "
                                "are read in input_audio_format 'none'", "audio")
        pos = 12
        while len(h) - pos >= 8:
            cid, size = bytes(h[pos: pos + 4]), struct.unpack_from("<I", h, pos + 4)[0]
            body = pos + 8
            if cid == b"data":
                if self.tag is None:
                    raise ProtocolError("audio_format", "WAV data chunk before its fmt chunk", "audio")
                self.in_data = True
                self.data_left = None if size in (0, 0xFFFFFFFF) or h[:4] == b"RF64" else size
                tail = bytes(h[body:])
                self.head = bytearray()
                self._pending_data = tail
                return
            if len(h) < body + size:
                if size > MAX_WAV_HEADER:
                    raise ProtocolError("audio_format", f"WAV chunk {cid!r} of {size} bytes before the audio data "
                                        f"(over {MAX_WAV_HEADER} bytes)", "audio")
                return
            if cid == b"fmt ":
                self._fmt(bytes(h[body: body + size]))
            pos = body + size + (size & 1)
        if len(h) > MAX_WAV_HEADER:
            raise ProtocolError("audio_format", f"no WAV data chunk within the first {MAX_WAV_HEADER} bytes", "audio")

    def _fmt(self, b: bytes) -> None:
        if len(b) < 16:
            raise ProtocolError("audio_format", "WAV fmt chunk too short", "audio")
        tag, ch, rate, _, block, bits = struct.unpack_from("<HHIIHH", b, 0)
        if tag == _WAVE_EXTENSIBLE and len(b) >= 26:
            tag = struct.unpack_from("<H", b, 24)[0]  # the sub-format GUID's first two bytes
        ok = (tag == _WAVE_PCM and bits in (8, 16, 24, 32)) or (tag == _WAVE_FLOAT and bits in (32, 64))
        if not ok:
            raise ProtocolError("audio_format", f"unsupported WAV encoding (format tag {tag}, {bits} bits): integer "
                                "PCM of 8/16/24/32 bits or IEEE float of 32/64 bits are read", "audio")
        if not 1 <= ch <= MAX_CHANNELS or not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError("audio_format", f"WAV file of {ch} channels at {rate} Hz: 1-{MAX_CHANNELS} channels "
                                f"at {MIN_RATE}-{MAX_RATE} Hz are read", "audio")
        if block != ch * bits // 8:
            raise ProtocolError("audio_format", f"WAV block align {block} does not match {ch} x {bits} bits", "audio")
        self.tag, self.channels, self.rate, self.bits, self.block = tag, ch, rate, bits, block

    def feed(self, data: bytes) -> np.ndarray:
        """-> float32 frames [n, channels] (n may be 0; before the header is complete, channels may be 0)."""
        if not self.in_data:
            self.head += data
            self._parse_head()
            if not self.in_data:
                return np.zeros((0, self.channels or 0), np.float32)
            data = self._pending_data
            self._pending_data = b""
        if self.data_left is not None:
            data = data[: self.data_left]
            self.data_left -= len(data)
        buf = self.rest + data if self.rest else data
        n = len(buf) // self.block
        self.rest = bytes(buf[n * self.block:])
        return self._convert(bytes(buf[: n * self.block]), n)

    def _convert(self, b: bytes, n: int) -> np.ndarray:
        ch, bits = self.channels, self.bits
        if self.tag == _WAVE_FLOAT:
            x = np.frombuffer(b, "<f4" if bits == 32 else "<f8").astype(np.float32)
        elif bits == 8:
            x = (np.frombuffer(b, np.uint8).astype(np.float32) - np.float32(128)) / np.float32(128)
        elif bits == 16:
            x = np.frombuffer(b, "<i2").astype(np.float32) / np.float32(32768)
        elif bits == 24:
            u = np.frombuffer(b, np.uint8).reshape(-1, 3).astype(np.int32)
            v = (u[:, 0] << 8) | (u[:, 1] << 16) | (u[:, 2] << 24)  # as the top 24 bits of an int32
            x = (v.astype(np.float64) / 2147483648.0).astype(np.float32)
        else:
            x = (np.frombuffer(b, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
        return x.reshape(n, ch)


class AudioInput:
    """One session's audio: appended bytes -> float32 mono samples at `target_rate`, as the CLI reads files
    (cli.read_audio): integers scaled to [-1, 1), channels averaged, other rates resampled by soxr (HQ; streamed,
    which gives the same samples as resampling the whole signal at once)."""

    def __init__(self, input_format: str, sample_rate: int, channels: int, target_rate: int):
        self.format = input_format
        self.rate = sample_rate  # for 'none', from the WAV header once read
        self.channels = channels
        self.target = target_rate
        self.wav = WavStream() if input_format == "none" else None
        self._rs = None
        self.bytes_in = 0
        self.samples_out = 0

    def _resampler(self):
        if self._rs is None:
            import soxr

            self._rs = soxr.ResampleStream(self.rate, self.target, 1, dtype="float32", quality="HQ")
        return self._rs

    def feed(self, data: bytes) -> np.ndarray:
        self.bytes_in += len(data)
        if self.wav is not None:
            frames = self.wav.feed(data)
            if self.wav.rate is not None:
                self.rate, self.channels = self.wav.rate, self.wav.channels
        else:
            frame = 2 * self.channels
            if len(data) % frame:
                raise ProtocolError("audio_format", f"pcm16 audio of {self.channels} channel(s) comes in whole frames "
                                    f"of {frame} bytes; this append has {len(data)} bytes (is the audio really "
                                    "16-bit PCM, and input_audio_params.num_channels right?)", "audio")
            frames = (np.frombuffer(data, "<i2").astype(np.float32) / np.float32(32768)).reshape(-1, self.channels)
        if frames.shape[0] == 0:
            return np.zeros(0, np.float32)
        x = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1)
        if self.rate != self.target:
            x = self._resampler().resample_chunk(np.ascontiguousarray(x), last=False)
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.samples_out += x.size
        return x

    def cut(self) -> np.ndarray:
        """The resampler's tail at an utterance's end (force_eou, done): the audio after it is resampled afresh, as
        if it were a file of its own."""
        if self._rs is None:
            return np.zeros(0, np.float32)
        tail = np.ascontiguousarray(self._rs.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)
        self._rs = None
        self.samples_out += tail.size
        return tail
