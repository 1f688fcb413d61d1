"""The bf16 gate: the engine in bfloat16 against itself in float32, on the shipped demo model, on every example (the
20-s long-form one included) at every lookahead.

Gate: the tokens are identical; the encoder outputs are within BOUND (max |bf16 - fp32| over max |fp32|, per stream);
a token's timestamp may move by at most TS_FRAMES encoder frames, for at most TS_FRACTION of a stream's tokens.
Measured on the CPU (torch 2.13, backends "cpu" and "torch", the same figures): tokens identical everywhere; encoder
outputs 0.6-1.2 % (largest 1.19 %, the long example at 1120 ms); timestamps identical on the four short examples,
and on the long one (76 tokens) 1 token moved by 2 frames at 1120 ms, 2 tokens by 1 frame at 160 ms, 1 by 1 frame
at 80 ms, none at 560 ms (`pytest -s tests/test_bf16.py` prints these figures per example and lookahead). On a
GPU the same gate runs on the CUDA path (marked gpu; scripts/gpu_check.sh).
"""
import numpy as np
import pytest
import torch

from nemotron_engine.cli import demo_examples, demo_model_dir, read_audio
from nemotron_engine.engine import Engine

BOUND = 0.03  # encoder outputs, relative to their largest magnitude (measured at most 0.0119)
TS_FRAMES = 2  # a timestamp moves by at most this many encoder frames (measured 2)
TS_FRACTION = 0.05  # ... for at most this fraction of a stream's tokens (measured 2 of 76)

CONFIGS = [pytest.param("cpu", "cpu", id="cpu"), pytest.param("cpu", "torch", id="cpu-torch"),
           pytest.param("cuda", None, id="cuda", marks=pytest.mark.gpu)]


def stream(engine: Engine, x: np.ndarray, la: int):
    s = engine.open_stream(lookahead_ms=la)
    try:
        s.push(x)
        s.finish()
        while not s.done:
            engine.step()
        return s.result(), torch.cat(s.encoder_outputs)
    finally:
        engine.close(s)


@pytest.mark.parametrize("device,backend", CONFIGS)
def test_bf16_tokens_equal_fp32(device, backend):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        d = demo_model_dir()
        engines = [Engine(d, device=device, dtype=dt, backend=backend, keep_encoder_outputs=True, max_streams=2,
                          max_queued_s=60) for dt in (torch.float32, torch.bfloat16)]
        cfg = engines[0].cfg
        lookaheads = [(r + 1) * cfg.frame_ms for r in cfg.lookaheads]
        examples = demo_examples()
        assert any(len(read_audio(p, 16000)[0]) > 15 * 16000 for p, _ in examples)  # the long-form one is there
        worst = 0.0
        for path, _ in examples:
            x = read_audio(path, cfg.sample_rate)[0]
            for la in lookaheads:
                (r32, e32), (r16, e16) = (stream(e, x, la) for e in engines)
                where = f"{path.name} at {la} ms"
                assert r16.tokens == r32.tokens, f"{where}: bf16 tokens differ from fp32"
                rel = float((e16 - e32).abs().max() / e32.abs().max())
                worst = max(worst, rel)
                assert rel <= BOUND, f"{where}: encoder outputs differ by {rel:.4f} (bound {BOUND})"
                moved = [abs(a - b) for a, b in zip(r32.timestamps_ms, r16.timestamps_ms) if a != b]
                assert len(r16.timestamps_ms) == len(r32.timestamps_ms)
                assert all(m <= TS_FRAMES * cfg.frame_ms for m in moved), f"{where}: timestamps moved by {moved} ms"
                assert len(moved) <= TS_FRACTION * len(r32.tokens), f"{where}: {len(moved)} timestamps moved"
                print(f"bf16 {device}/{backend} {where}: {len(r32.tokens)} tokens equal, encoder outputs {rel:.4f}, "
                      f"timestamps moved {moved} ms")
        assert worst > 0  # bf16 did run in bf16
    finally:
        torch.set_num_threads(threads)
