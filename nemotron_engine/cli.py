"""nemotron-engine: convert | transcribe | parity | bench | loadtest | serve.

    nemotron-engine convert SRC.nemo OUT_DIR
    nemotron-engine transcribe [--model OUT_DIR] [--lookahead-ms 80|160|560|1120] [--language KEY] [--json] [--timing]
                               [--tokens]
                               [--device cpu|cuda[:N]] [--dtype float32|bfloat16]
                               [--backend cpu|torch|triton] [FILE...]
                               (default: the shipped demo model and its examples, on the CPU)
    nemotron-engine parity --nemo SRC.nemo [--audio FILE ...] [--lookahead-ms ...] [--language L]
    nemotron-engine bench [--size full|tiny] [--lookahead-ms ...] [--streams ...] [--out DIR] ...   (--help)
    nemotron-engine loadtest [--model DIR | --micro] [--lookahead-ms 80 1120] [--streams N ...] [--capacity --n-max N]
                             [--run-s S] [--out DIR] ...   (--help)
    nemotron-engine loadtest --url ws://HOST:PORT --streams N [--lookahead-ms MS] [--audio FILE ...] ...
    nemotron-engine serve [--model DIR] [--host 127.0.0.1] [--port 9000] [--max-streams N] [--api-key KEY] ...
                          (--help; docs/server.md)
    nemotron-engine serve --ray --replicas N [--ray-address auto] ...   (Ray Serve: docs/ray.md)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _err(msg: str) -> None:
    print(f"nemotron-engine: error: {msg}", file=sys.stderr)


def read_audio(path: str | Path, sample_rate: int) -> tuple[np.ndarray, str | None]:
    """Read an audio file as float32 mono at `sample_rate` -> (samples [N], a note if it was converted).

    Channels are averaged; other rates are resampled with soxr (high quality).
    """
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, channels]
    notes = []
    if x.shape[1] > 1:
        notes.append(f"{x.shape[1]} channels averaged")
        x = x.mean(axis=1, keepdims=True)
    x = x[:, 0]
    if sr != sample_rate:
        import soxr

        notes.append(f"resampled {sr} Hz -> {sample_rate} Hz")
        x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(x), (", ".join(notes) if notes else None)


def cmd_convert(args) -> int:
    from nemotron_engine.weights.convert import ConversionError, convert

    try:
        cfg = convert(args.src, args.out_dir, force=args.force)
    except ConversionError as e:
        _err(str(e))
        return 2
    except OSError as e:
        _err(f"{args.src}: {e.strerror or e}")
        return 2
    print(f"wrote {args.out_dir}: {cfg.model_class}, {cfg.n_layers} layers x {cfg.d_model}, vocabulary "
          f"{cfg.vocab_size}, lookaheads {[ (r + 1) * cfg.frame_ms for r in cfg.lookaheads]} ms")
    return 0


def transcribe_files(engine, files: list[str], lookahead_ms: int | None, language: str | None = None):
    """Stream every readable file through one engine, chunk by chunk, all streams stepping together (in `language`,
    a prompt model's language key; None: the checkpoint's default).

    Yields (file, Result or None, error message or None) in the order of `files`.
    """
    cfg = engine.cfg
    streams, errors = {}, {}
    for f in files:
        try:
            pcm, note = read_audio(f, cfg.sample_rate)
        except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, OSError...
            errors[f] = f"{f}: cannot read audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
            continue
        if note:
            print(f"nemotron-engine: note: {f}: {note}", file=sys.stderr)
        s = engine.open_stream(lookahead_ms, language=language)
        streams[f] = (s, pcm)
    # feed each stream one chunk of audio per step, as a live source would, then step the engine
    piece = cfg.chunk_mel(max(cfg.lookaheads)) * cfg.hop_length
    pos = {f: 0 for f in streams}
    while True:
        for f, (s, pcm) in streams.items():
            if not s.input_done:
                n = min(piece, s.room())  # no more than the engine lets queue ahead of it
                s.push(pcm[pos[f]: pos[f] + n])
                pos[f] += n
                if pos[f] >= len(pcm):
                    s.finish()
        engine.step()
        if all(s.done for s, _ in streams.values()):
            break
    for f in files:
        if f in errors:
            yield f, None, errors[f]
        else:
            s = streams[f][0]
            yield f, s.result(), None
            engine.close(s)


def cmd_transcribe(args) -> int:
    import torch

    from nemotron_engine.engine import Engine

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model = args.model or demo_model_dir()
    try:
        if not (Path(model) / "config.json").is_file():
            raise FileNotFoundError(f"{model}: not a model directory (no config.json); give --model, a directory "
                                    "written by `nemotron-engine convert`")
        t_load = time.perf_counter()
        engine = Engine(model, device=args.device, dtype=getattr(torch, args.dtype), backend=args.backend)
        t_load = time.perf_counter() - t_load
        if args.lookahead_ms is not None:
            engine.cfg.lookahead_from_ms(args.lookahead_ms)
        if args.language is not None and not engine.cfg.num_prompts:
            raise ValueError(f"--language {args.language}: this model ({engine.cfg.model_class}) has no language "
                             "prompt; omit --language")
        try:
            engine.cfg.prompt_index(args.language)  # an unknown key, or none given where the model has no default
        except ValueError as e:
            raise ValueError(f"--language: {e}") from None
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # RuntimeError: e.g. an invalid CUDA device index
        _err(str(e))
        return 2
    status = 0
    files = args.files or [str(p) for p in sorted(Path(model, "examples").glob("*.wav"))]
    if not files:
        _err(f"no audio files given and no examples under {model}/examples")
        return 2
    t0 = time.perf_counter()
    audio_s = 0.0
    for f, res, err in transcribe_files(engine, files, args.lookahead_ms, args.language):
        if err:
            _err(err)
            status = 1
            continue
        audio_s += res.audio_s
        if args.json:
            print(json.dumps({"file": f, "text": res.text, "tokens": res.tokens,
                              "timestamps_ms": res.timestamps_ms}), flush=True)
        else:
            print(f"{f}: {res.text}" if len(files) > 1 else res.text, flush=True)
            if args.tokens:
                pieces = engine.tokenizer.pieces(res.tokens)
                print("  tokens: " + " ".join(f"{p}@{t}ms" for p, t in zip(pieces, res.timestamps_ms)), flush=True)
    if args.timing:
        wall = time.perf_counter() - t0
        la = args.lookahead_ms or (engine.cfg.lookaheads[0] + 1) * engine.cfg.frame_ms
        print(f"timing: {len(files)} files, {audio_s:.2f} s of audio streamed in {wall:.2f} s "
              f"({audio_s / max(wall, 1e-9):.1f}x real time) at {la} ms lookahead on {engine.device}; "
              f"model load {t_load:.2f} s", file=sys.stderr)
    return status


def demo_model_dir() -> Path:
    """The shipped demo model (weights/demo, installed as nemotron_engine/weights/demo)."""
    from nemotron_engine import weights

    return Path(weights.__file__).parent / "demo"


def demo_examples(isolated_only: bool = False) -> list[tuple[Path, str]]:
    """The demo model's example recordings with their texts, by name: (path, text). isolated_only: leave out the
    long-form example (several sentences back to back; `"split": "long_example"` in examples/expected.json)."""
    ex = demo_model_dir() / "examples"
    meta = json.loads((ex / "expected.json").read_text())
    return [(ex / name, e["text"]) for name, e in sorted(meta.items())
            if not (isolated_only and e.get("split") == "long_example")]


def _parity_missing(cmd: str) -> bool:
    """True, after one line on stderr saying how to install it, when the nemotron_parity harness is not installed."""
    try:
        import nemotron_parity  # noqa: F401  (imported only to check it is there)
    except ImportError:
        _err(f"{cmd} needs the NeMo parity harness (nemotron-parity), which is not installed: pip install -e ./parity "
             "(from a clone of the repository; brings nemo_toolkit[asr]==3.0.0)")
        return True
    return False


def cmd_parity(args) -> int:
    # NeMo is not a dependency of the engine: the comparison lives in the separate nemotron-parity distribution
    if _parity_missing("parity"):
        return 2
    from nemotron_parity import nemo_missing

    missing = nemo_missing()
    if missing:
        _err(f"parity needs NeMo, which is not installed: pip install 'nemo_toolkit[asr]==3.0.0' ({missing})")
        return 2
    from nemotron_parity.report import run_parity

    return run_parity(args.nemo, args.audio, args.lookahead_ms, language=args.language)


def cmd_loadtest(args) -> int:
    if args.url:
        # over the network: WebSocket clients against a running `nemotron-engine serve` (ws_loadtest.py)
        from nemotron_engine.ws_loadtest import cli_run as ws_cli_run

        return ws_cli_run(args)
    # in process, no NeMo: the real-time load test and the host-overhead measurement (nemotron_engine/loadtest.py)
    from nemotron_engine.loadtest import cli_run

    return cli_run(args)


def cmd_serve(args) -> int:
    # the realtime WebSocket server (nemotron_engine/server.py, docs/server.md)
    from nemotron_engine.server import cli_run

    return cli_run(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # the benchmark runs NeMo beside the engine: it lives in nemotron_parity, with its own options
        if _parity_missing("bench"):
            return 2
        from nemotron_parity.bench import main as bench_main

        return bench_main(argv[1:])
    p = argparse.ArgumentParser(prog="nemotron-engine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("convert", help="convert a NeMo .nemo checkpoint to the engine's format")
    c.add_argument("src", help="the .nemo file")
    c.add_argument("out_dir", help="output directory (config.json, model.safetensors, tokenizer.model)")
    c.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("transcribe", help="stream audio files through the engine and print transcripts")
    t.add_argument("--model", default=None,
                   help="a directory written by `convert` (default: the shipped demo model, weights/demo)")
    t.add_argument("--lookahead-ms", type=int, default=None,
                   help="latency mode (default: the checkpoint's first att_context_size)")
    t.add_argument("--language", default=None,
                   help="a prompt model's language, a key of its prompt dictionary (default: the checkpoint's); "
                        "an error for a model without a language prompt")
    t.add_argument("--json", action="store_true", help="one JSON object per file: file, text, tokens, timestamps_ms")
    t.add_argument("--timing", action="store_true", help="print audio seconds, wall time and real-time factor")
    t.add_argument("--tokens", action="store_true", help="print each token piece with its timestamp")
    t.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights and activations (default float32, the parity dtype)")
    t.add_argument("--backend", default=None, choices=["cpu", "torch", "triton"],
                   help="the op table (see Engine): default cpu on the CPU, triton (Triton kernels + the CUDA "
                        "decoder) on CUDA; torch: the plain reference ops")
    t.add_argument("files", nargs="*", help="audio files (default: the model's examples/*.wav)")
    t.set_defaults(func=cmd_transcribe)

    q = sub.add_parser("parity", help="compare the engine with NeMo's own cache-aware streaming (needs NeMo)")
    q.add_argument("--nemo", required=True, help="the .nemo checkpoint")
    q.add_argument("--audio", nargs="*", default=[], help="audio files (default: synthesised speech)")
    q.add_argument("--lookahead-ms", type=int, nargs="*", default=None, help="default: every lookahead")
    q.add_argument("--language", default=None,
                   help="a prompt model's language, a key of its prompt dictionary (default: the checkpoint's)")
    q.set_defaults(func=cmd_parity)

    sub.add_parser("bench", help="streams sustained in real time, beside NeMo (see `nemotron-engine bench --help`)")

    from nemotron_engine.loadtest import add_arguments as add_loadtest_arguments

    lt = sub.add_parser("loadtest", help="live streams on a wall-clock schedule: chunk latency, real-time capacity")
    add_loadtest_arguments(lt)
    from nemotron_engine.ws_loadtest import add_arguments as add_ws_loadtest_arguments

    add_ws_loadtest_arguments(lt)
    lt.set_defaults(func=cmd_loadtest)

    from nemotron_engine.server import add_arguments as add_serve_arguments

    sv = sub.add_parser("serve", help="the realtime WebSocket server (NVIDIA's realtime ASR protocol; docs/server.md)")
    add_serve_arguments(sv)
    sv.set_defaults(func=cmd_serve)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
