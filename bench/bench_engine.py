"""One steady-state batched step at N streams: the engine (`engine.step()`) vs NeMo (`conformer_stream_step` over
a batch of N, as NeMo's cache-aware streaming example drives a batch), per lookahead.

    python -m pytest bench/bench_engine.py --bench-size full --benchmark-group-by=param:lookahead_ms

Each case is `benchmark.pedantic` around one step: the untimed setup pushes one chunk of audio per stream (the
engine) or takes the buffer's next chunk (NeMo). `extra_info` carries the device, the torch thread count, the
streams, the useful GFLOP of the step and the real-time factor one step implies (step time / chunk duration).
The sweep that finds the real-time stream counts is `nemotron-engine bench` (nemotron_parity.bench,
parity/nemotron_parity/bench.py).
"""
from __future__ import annotations

import pytest
import torch

from nemotron_parity import bench as B


@pytest.mark.parametrize("n_streams", [1, 4, 16])
@pytest.mark.parametrize("lookahead_ms", [80, 160, 560, 1120])
@pytest.mark.parametrize("provider", ["engine", "nemo"])
def test_step(request, benchmark, provider, lookahead_ms, n_streams, bench_engine, bench_audios):
    cfg = bench_engine.cfg
    r = cfg.lookahead_from_ms(lookahead_ms)
    audios = bench_audios(n_streams)
    if provider == "engine":
        stepper = B.EngineStepper(bench_engine, lookahead_ms, audios)
    else:
        stepper = B.NemoStepper(request.getfixturevalue("bench_nemo"), r, audios)
    rounds = request.config.getoption("--bench-rounds")
    benchmark.group = f"{lookahead_ms} ms, N={n_streams}"
    benchmark.pedantic(stepper.step, setup=stepper.setup, rounds=rounds, warmup_rounds=1, iterations=1)
    if provider == "engine":
        # every timed step must have advanced every stream by one chunk
        assert stepper.updates == [n_streams] * len(stepper.updates), stepper.updates
        stepper.close()
    step_s = benchmark.stats.stats.median
    frames = n_streams * (r + 1)  # a steady-state chunk: R + 1 encoder frames per stream
    benchmark.extra_info.update({
        "device": B.device_name(),
        "torch_threads": torch.get_num_threads(),
        "model": f"{cfg.n_layers}x{cfg.d_model}",
        "n_streams": n_streams,
        "useful_gflop_per_step": B.useful_flops_per_frame(cfg, r)["total"] * frames / 1e9,
        "useful_gflops": B.useful_flops_per_frame(cfg, r)["total"] * frames / step_s / 1e9,
        "rtf": step_s / (lookahead_ms / 1000),
    })
