"""Microbenchmarks of kernels/attention.py and kernels/layernorm.py beside their torch references.

    python -m pytest bench/bench_kernels_attention.py --benchmark-group-by=group

Nemotron shapes (d_model 1024, 8 heads of 128, left context C = 70, 16-row pages), steady-state streams (full
windows at random fill levels, a shuffled page table) at B = 16, 64, 256 streams and T = 14 (R = 13) and T = 2
(R = 1), in fp32 and bf16. Providers:
- `triton`: `paged_attention` (window read through the page table, the chunk's K/V written into the pages),
  `add_layer_norm` / `layer_norm`;
- `torch`: the reference as encoder_step_paged runs it per layer: `StreamCache.gather_window` + `rel_attention`
  (mask precomputed, as the engine builds it once per step) + `StreamCache.write_rows`; `x + 0.5 * y` then
  `F.layer_norm`.

Counting (printed as a table at the end and stored in `benchmark.extra_info`), the same figures for both providers:
- attention bytes: each input read once (q, the chunk's k and v, the window's C rows of K and V through the pages,
  the C + 2T - 1 rows of the position table the chunk uses, both biases, page table rows and per-stream scalars)
  and each output written once (out, the chunk's K and V rows into the pages);
- attention FLOPs: 2 per multiply-add of the useful work: content scores, position scores and the weighted sum over
  the C + T keys, 6 T (C + T) D per stream (the kernel's padding to 16-row blocks is not counted);
- layer norm bytes: x (and y) read, out (and the residual) written, weight and bias read;
- time is the median of `triton.testing.do_bench` (CUDA events, `roofline.time_cuda`); `roofline_fraction` is the
  binding roofline's time (memory at the measured copy bandwidth, or compute at the datasheet rate: "fp32" FMA for
  fp32, whose products run in full precision, "bf16" tensor cores for bf16) over the measured time.
The pytest-benchmark timing itself is the host wall time of a call followed by `torch.cuda.synchronize()`.

Without a GPU the module is skipped, with a message saying so.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the Triton kernel microbenchmarks need a GPU (their correctness tests run on the "
                "CPU under the interpreter: tests/test_kernels_attention.py, tests/test_kernels_layernorm.py)",
                allow_module_level=True)

import torch.nn.functional as F  # noqa: E402
from roofline import Roofline, time_cuda  # noqa: E402

from nemotron_engine.cache import StreamCache  # noqa: E402
from nemotron_engine.config import ModelConfig  # noqa: E402
from nemotron_engine.kernels.attention import paged_attention  # noqa: E402
from nemotron_engine.kernels.layernorm import add_layer_norm, layer_norm  # noqa: E402
from nemotron_engine.reference.attention import attention_mask, position_projection, rel_attention  # noqa: E402

D_MODEL, HEADS, C = 1024, 8, 70
BATCHES = [16, 64, 256]
CHUNKS = [14, 2]  # T = R + 1 for R = 13, 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROVIDERS = ["triton", "torch"]

_ROWS: list[dict] = []


@pytest.fixture(scope="module")
def roofline(request):
    rf = Roofline.detect()
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in full fp32, as the kernel computes
    yield rf
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    if not _ROWS:
        return
    head = f"{'case':<48} {'us':>9} {'GB/s':>8} {'TFLOP/s':>8} {'bound':>8} {'roofline':>9}"
    lines = ["", f"attention / layer norm kernels on {rf.device} (copy bandwidth {rf.bandwidth_gbs:.0f} GB/s)", head,
             "-" * len(head)]
    lines += [f"{r['case']:<48} {r['us']:>9.1f} {r['GB/s']:>8.0f} {r['TFLOP/s']:>8.2f} {r['bound']:>8} "
              f"{r['roofline_fraction']:>9.0%}" for r in _ROWS]
    # the table goes to the terminal past pytest's output capture
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


def _record(benchmark, rf, case, fn, bytes_moved, flops, unit):
    seconds = time_cuda(fn, warmup_ms=10, rep_ms=40)
    row = rf.row(case, seconds, bytes_moved, flops, unit)
    _ROWS.append(row)
    benchmark.group = case.rsplit(" ", 1)[0]
    benchmark.extra_info.update(row)

    def call():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=5, warmup_rounds=1, iterations=1)


def _attention_inputs(b, t, dtype):
    """A pool of b streams with full windows (fill levels 70 .. 1000), a shuffled page table, one layer."""
    torch.manual_seed(0)
    r = t - 1
    cfg = ModelConfig(d_model=D_MODEL, n_layers=1, n_heads=HEADS)
    cache = StreamCache(cfg, max_streams=b, dtype=dtype, device="cuda")
    cache.table.copy_(torch.randperm(cache.k.shape[1], device="cuda").view(b, -1)
                      .repeat(1, cache.table_width // cache.pages_per_stream))
    cache.k.normal_()
    cache.v.normal_()
    slots = torch.randperm(b, device="cuda")
    cache.frames[slots] = torch.randint(C, 1000, (b,), device="cuda")
    r_max = max(cfg.lookaheads)
    pos = position_projection(torch.randn(D_MODEL, D_MODEL, device="cuda") / D_MODEL ** 0.5, -r_max, C + r_max,
                              HEADS).to(dtype)
    dh = D_MODEL // HEADS
    x = dict(q=torch.randn(b, t, D_MODEL, device="cuda").to(dtype),
             k_new=torch.randn(b, t, D_MODEL, device="cuda").to(dtype),
             v_new=torch.randn(b, t, D_MODEL, device="cuda").to(dtype),
             pos=pos, rel_lo=-r_max, u=(0.5 * torch.randn(HEADS, dh, device="cuda")).to(dtype),
             v=(0.5 * torch.randn(HEADS, dh, device="cuda")).to(dtype))
    n = torch.full((b,), t, dtype=torch.int64, device="cuda")
    look = torch.full((b,), r, dtype=torch.int64, device="cuda")
    return cache, slots, n, look, x


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("t", CHUNKS)
@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_attention(benchmark, roofline, provider, b, t, dtype):
    dt = DTYPES[dtype]
    e = torch.empty(0, dtype=dt).element_size()
    d = D_MODEL
    cache, slots, n, look, x = _attention_inputs(b, t, dt)
    nbytes = (b * t * d * e * 3  # q, k_new, v_new
              + 2 * b * C * d * e  # the window's K and V rows
              + (C + 2 * t - 1) * d * e + 2 * d * e  # position rows used, pos_bias_u / v
              + b * (cache.pages_per_stream * 8 + 4 * 8)  # page table rows, slot, frames, length, lookahead
              + b * t * d * e  # out
              + 2 * b * t * d * e)  # the chunk's K and V rows into the pages
    flops = 6 * b * t * (C + t) * d
    if provider == "triton":
        out = torch.empty_like(x["q"])

        def fn():
            return paged_attention(x["q"], x["k_new"], x["v_new"], cache.k[0], cache.v[0], cache.table, slots,
                                   cache.frames, n, look, x["pos"], x["rel_lo"], x["u"], x["v"], C, out=out)
    else:
        f0 = cache.frames[slots]
        valid = torch.arange(t, device="cuda").unsqueeze(0) < n.unsqueeze(1)
        masked = attention_mask(t, C, f0.clamp(max=C), valid, C, t - 1)

        def fn():
            k_win, v_win = cache.gather_window(0, slots, f0 - C)
            out = rel_attention(x["q"], torch.cat([k_win, x["k_new"]], 1), torch.cat([v_win, x["v_new"]], 1),
                                x["pos"], x["rel_lo"], x["u"], x["v"], masked)
            cache.write_rows(0, slots, f0, x["k_new"], x["v_new"])
            return out

    _record(benchmark, roofline, f"attention B={b} T={t} {dtype} {provider}", fn, nbytes, flops, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["add_layer_norm", "layer_norm"])
@pytest.mark.parametrize("t", CHUNKS)
@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_layer_norm(benchmark, roofline, provider, b, t, op, dtype):
    dt = DTYPES[dtype]
    e = torch.empty(0, dtype=dt).element_size()
    d, rows, eps = D_MODEL, b * t, 1e-5
    torch.manual_seed(0)
    x = torch.randn(b, t, d, device="cuda").to(dt)
    y = torch.randn(b, t, d, device="cuda").to(dt)
    w = (1 + 0.1 * torch.randn(d, device="cuda")).to(dt)
    bias = (0.1 * torch.randn(d, device="cuda")).to(dt)
    fused = op == "add_layer_norm"
    nbytes = (4 if fused else 2) * rows * d * e + 2 * d * e
    flops = (10 if fused else 8) * rows * d  # sums, centring, squares, scale and shift (and the residual)
    if provider == "triton":
        def fn():
            return add_layer_norm(x, y, 0.5, w, bias, eps) if fused else layer_norm(x, w, bias, eps)
    elif fused:
        def fn():
            res = x + 0.5 * y
            return res, F.layer_norm(res, (d,), w, bias, eps)
    else:
        def fn():
            return F.layer_norm(x, (d,), w, bias, eps)

    _record(benchmark, roofline, f"{op} B={b} T={t} {dtype} {provider}", fn, nbytes, flops, "fp32")
