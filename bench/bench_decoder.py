"""Decode-step latency of the batched greedy RNN-T decoder against the number of streams, beside the torch paths.

    python -m pytest bench/bench_decoder.py --benchmark-group-by=group

The Nemotron decoder shape (embedding 1025 x 640, 2-layer LSTM 640, joint 1024 -> 640 -> 1025, max_symbols 10),
random weights with the blank bias set so that ~40 % of fresh decisions emit a label; one steady-state step of
R + 1 = 7 encoder frames per stream (R = 6, 560 ms) for N = 1, 16, 64, 256, 1024 streams, whose decoder state sits
at scattered slots of a pool of 1088; fp32 and bf16. The state carries over from call to call, as in a stream.
Providers, each the whole step the engine pays for (enc [N, 7, 1024] in, token lists on the host out):
- `cuda`: `greedy_decode_pool`: the joint's encoder projection (cuBLAS), the kernel (one launch), one device-to-host
  copy; `kernel_us` in the table and `extra_info` is the kernel alone (median of `roofline.time_cuda`, or of CUDA
  events where triton is missing);
- `grid`: the same with `kernel="grid"`: every block of the GPU on every stream (a cooperative launch, up to 8
  streams in lock step per group), for few streams, where `cuda`'s one block per stream leaves the GPU idle;
- `torch`: `greedy_decode_pool(impl="torch")`, the host-sync-free torch twin (T * max_symbols masked iterations);
- `ref`: the engine's former path: gather the state, reference `greedy_decode`, scatter it back.
The pytest-benchmark time is the host wall time of a call (each provider returns host lists, so it has synced).
Without a GPU or without the CUDA extension the module is skipped, with a message saying so.
"""
from __future__ import annotations

import contextlib
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the decoder bench times the CUDA kernel (its correctness tests run on the CPU "
                "under the kernel emulation: tests/test_decoder_cuda.py)", allow_module_level=True)

import roofline  # noqa: E402

from nemotron_engine import _ext  # noqa: E402
from nemotron_engine.config import ModelConfig  # noqa: E402
from nemotron_engine.decode_cuda import greedy_decode_pool  # noqa: E402
from nemotron_engine.reference.decoder import DecoderState, greedy_decode, initial_state, joint_logits  # noqa: E402

if _ext.load_extension() is None:
    pytest.skip(f"the CUDA extension is unavailable ({_ext.extension_error()})", allow_module_level=True)

STREAMS = [1, 16, 64, 256, 1024]
FRAMES = 7  # R + 1 at R = 6
POOL = 1024 + 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# NEMOTRON_SKIP_GRID=1 (set by scripts/gpu_check.sh when the grid kernel's tests fail): leave the grid kernel out
PROVIDERS = [p for p in ("cuda", "grid", "torch", "ref") if p != "grid" or os.environ.get("NEMOTRON_SKIP_GRID") != "1"]

_ROWS: list[dict] = []


def _time_cuda(fn) -> float:
    """Median seconds of fn() on the device: roofline.time_cuda (triton's do_bench), or CUDA events without triton."""
    try:
        return roofline.time_cuda(fn, warmup_ms=10, rep_ms=50)
    except ImportError:
        fn()
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
        return sorted(times)[len(times) // 2]


def _model(dtype: torch.dtype):
    """The Nemotron decoder shape with random weights on the GPU."""
    cfg = ModelConfig()  # d_model 1024, pred_hidden 640, 2 layers, joint 640, vocab 1024 + blank, max_symbols 10
    d, h, j, v1 = cfg.d_model, cfg.pred_hidden, cfg.joint_hidden, cfg.vocab_size + 1
    g = torch.Generator().manual_seed(0)
    k = 1.5 / math.sqrt(h)
    dec = {"embed": torch.randn(v1, h, generator=g)}
    dec["embed"][cfg.blank_id] = 0.0
    for layer in range(cfg.pred_rnn_layers):
        for name, shape in (("w_ih", (4 * h, h)), ("w_hh", (4 * h, h)), ("b_ih", (4 * h,)), ("b_hh", (4 * h,))):
            dec[f"lstm.{layer}.{name}"] = (torch.rand(shape, generator=g) * 2 - 1) * k
    joint = {"enc.weight": torch.randn(j, d, generator=g) / math.sqrt(d),
             "enc.bias": torch.randn(j, generator=g) * 0.1,
             "pred.weight": torch.randn(j, h, generator=g) / math.sqrt(h),
             "pred.bias": torch.randn(j, generator=g) * 0.1,
             "out.weight": torch.randn(v1, j, generator=g) * (2 / math.sqrt(j)),
             "out.bias": torch.randn(v1, generator=g) * 0.1}
    model = SimpleNamespace(cfg=cfg, dec=dec, joint=joint, dtype=torch.float32, device=torch.device("cpu"))
    f = F.linear(torch.randn(1024, d, generator=g), joint["enc.weight"], joint["enc.bias"])
    logits = joint_logits(f, initial_state(model, 1).pred.expand(1024, -1), joint)
    joint["out.bias"][cfg.blank_id] += torch.quantile(logits[:, :-1].max(dim=1).values - logits[:, -1], 0.6)
    for group in (dec, joint):
        for name in group:
            group[name] = group[name].to(device="cuda", dtype=dtype).contiguous()
    model.dtype, model.device = dtype, torch.device("cuda")
    return model


_MODELS: dict = {}


def _get_model(dtype):
    if dtype not in _MODELS:
        _MODELS[dtype] = _model(dtype)
    return _MODELS[dtype]


@pytest.fixture(scope="module")
def table(request):
    yield
    if not _ROWS:
        return
    head = f"{'case':<28} {'step us':>10} {'kernel us':>10} {'labels/step':>12}"
    lines = ["", f"greedy RNN-T decode step, {FRAMES} frames per stream, on {torch.cuda.get_device_name()}", head,
             "-" * len(head)]
    lines += [f"{r['case']:<28} {r['us']:>10.0f} {r['kernel_us']:>10} {r['labels']:>12}" for r in _ROWS]
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n_streams", STREAMS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_decode_step(benchmark, table, dtype, n_streams, provider):
    model = _get_model(DTYPES[dtype])
    cfg = model.cfg
    g = torch.Generator().manual_seed(n_streams)
    sos = initial_state(model, 1)
    cache = SimpleNamespace(h=sos.h.repeat(1, POOL, 1).contiguous(), c=sos.c.repeat(1, POOL, 1).contiguous(),
                            pred=sos.pred.repeat(POOL, 1).contiguous(), label=sos.label.repeat(POOL).contiguous())
    slots = torch.randperm(POOL, generator=g)[:n_streams].cuda()  # [N]
    enc = torch.randn(n_streams, FRAMES, cfg.d_model, generator=g).to(device="cuda", dtype=model.dtype)  # [N, T, D]
    lengths = torch.full((n_streams,), FRAMES, dtype=torch.int64, device="cuda")
    offsets = torch.zeros(n_streams, dtype=torch.int64, device="cuda")

    if provider == "ref":
        def step():
            st = DecoderState(cache.h[:, slots], cache.c[:, slots], cache.label[slots], cache.pred[slots])
            toks, _, st = greedy_decode(model, enc, lengths, st, offsets)
            cache.h[:, slots], cache.c[:, slots], cache.label[slots], cache.pred[slots] = st.h, st.c, st.label, st.pred
            return toks
    else:
        impl = "torch" if provider == "torch" else "cuda"
        kernel = "grid" if provider == "grid" else "blocked"

        def step():
            return greedy_decode_pool(model, enc, lengths, cache, slots, offsets, impl=impl, kernel=kernel)[0]

    labels = sum(map(len, step()))
    benchmark.group = f"{dtype} N={n_streams}"
    benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    kernel_us = "-"
    if provider in ("cuda", "grid"):
        f = F.linear(enc, model.joint["enc.weight"], model.joint["enc.bias"]).contiguous()
        seconds = _time_cuda(lambda: _ext.rnnt_greedy(
            f, lengths, slots, offsets, cache.h, cache.c, cache.pred, cache.label, model.dec, model.joint,
            max_symbols=cfg.max_symbols, blank_id=cfg.blank_id, kernel=kernel))
        kernel_us = f"{seconds * 1e6:.0f}"
    step_s = benchmark.stats.stats.median
    _ROWS.append({"case": f"{provider} {dtype} N={n_streams}", "us": step_s * 1e6, "kernel_us": kernel_us,
                  "labels": labels})
    benchmark.extra_info.update({
        "device": torch.cuda.get_device_name(), "dtype": dtype, "n_streams": n_streams, "frames": FRAMES,
        "labels_per_step": labels, "kernel_us": kernel_us, "streams_per_s": n_streams / step_s,
    })
