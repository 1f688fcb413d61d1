"""`nemotron-engine parity`: the engine against NeMo's own cache-aware streaming, for a user's checkpoint.

Converts the .nemo into a temporary directory, streams each audio file through NeMo (driven as NeMo's example
script drives it) and through the engine, for every requested lookahead, and prints a table per lookahead:
tokens equal, timestamps equal, max relative error of the encoder outputs (max |a - b| / max |b| over every step;
for a prompt model the joint's input after the language prompt as well). A prompt model streams in `language` (its
default language when None) on both sides; an EOU model's tokens are those of all its segments together (the
state carries on over an <EOU>, as in NeMo). Exits non-zero on any mismatch (tokens, timestamps, or an error above
1e-5).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

RTOL = 1e-5


def _rel(a: torch.Tensor, b: np.ndarray) -> float:
    b = torch.as_tensor(b, dtype=torch.float64)
    a = a.to(torch.float64)
    if a.shape != b.shape:
        return float("inf")
    if b.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def run_parity(nemo_path: str, audio_files: list[str], lookahead_ms: list[int] | None, out=None,
               language: str | None = None) -> int:
    """Print the comparison tables to `out` (stdout); return 0 when everything matches, 1 on a mismatch, 2 when
    the checkpoint cannot be converted."""
    out = out or sys.stdout
    from nemotron_engine.cli import read_audio
    from nemotron_engine.engine import Engine
    from nemotron_engine.weights.convert import ConversionError, convert

    from .nemo_harness import load_nemo, nemo_stream
    from .speech import SENTENCES, synthesize

    torch.set_float32_matmul_precision("highest")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            convert(nemo_path, Path(tmp) / "model")
        except ConversionError as e:
            print(f"nemotron-engine: error: {e}", file=sys.stderr)
            return 2
        engine = Engine(Path(tmp) / "model", keep_encoder_outputs=True)
        cfg = engine.cfg
        try:
            cfg.prompt_index(language)
        except ValueError as e:
            print(f"nemotron-engine: error: {e}", file=sys.stderr)
            return 2
        if cfg.num_prompts and language is None:
            language = cfg.default_language
        if language is not None:
            print(f"language {language!r} (prompt index {cfg.prompt_index(language)})", file=out)
        model = load_nemo(nemo_path)
        if audio_files:
            audios = [(f, read_audio(f, cfg.sample_rate)[0]) for f in audio_files]
        else:
            audios = [(f"espeak:{v}", synthesize(t, voice=v)) for t, v in zip(SENTENCES[:3], ["en-us", "en-gb", "en-us+f3"])]
        wanted = lookahead_ms or [(r + 1) * cfg.frame_ms for r in cfg.lookaheads]
        failures = 0
        for ms in wanted:
            r = cfg.lookahead_from_ms(ms)
            print(f"\nlookahead {ms} ms (att_context_size [{cfg.left_context}, {r}])", file=out)
            print(f"{'audio':40s} {'tokens':>7s} {'equal':>6s} {'times':>6s} {'steps':>6s} {'enc max rel err':>16s}", file=out)
            for name, pcm in audios:
                ref = nemo_stream(model, pcm, [cfg.left_context, r], language=language)
                s = engine.open_stream(ms, language=language)
                segments = []
                pos = 0
                while not s.done:
                    if not s.input_done:  # as much as the engine lets queue ahead of it
                        n = min(s.room(), len(pcm) - pos)
                        s.push(pcm[pos: pos + n])
                        pos += n
                        if pos == len(pcm):
                            s.finish()
                    segments += [g for u in engine.step() if u.stream is s for g in u.segments]
                engine.close(s)
                same_steps = len(s.encoder_outputs) == len(ref.step_encoded)
                err = max((_rel(a, b) for a, b in zip(s.encoder_outputs, ref.step_encoded)), default=0.0)
                if cfg.num_prompts:
                    err = max([err] + [_rel(a, b) for a, b in zip(s.joint_inputs, ref.step_joint_input)])
                if not same_steps:
                    err = float("inf")
                tok_ok = [t for g in segments for t in g.tokens] == ref.tokens
                ts_ok = [t for g in segments for t in g.timestamps_ms] == [t * cfg.frame_ms for t in ref.timestamps]
                ok = tok_ok and ts_ok and err <= RTOL
                failures += not ok
                print(f"{name[-40:]:40s} {len(ref.tokens):7d} {'yes' if tok_ok else 'NO':>6s} "
                      f"{'yes' if ts_ok else 'NO':>6s} {len(ref.step_encoded):6d} {err:16.3e}"
                      f"{'' if ok else '  MISMATCH'}", file=out)
        print(f"\n{'all equal' if failures == 0 else f'{failures} mismatch(es)'} "
              f"(encoder bound {RTOL:g} relative)", file=out)
        return 0 if failures == 0 else 1
