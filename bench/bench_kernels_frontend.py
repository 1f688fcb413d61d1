"""Microbenchmarks of the frontend kernels (kernels/subsample.py, kernels/conv_module.py) beside their torch references.

    python -m pytest bench/bench_kernels_frontend.py --benchmark-group-by=group

Nemotron shapes (128 mel bins, 256 subsampling channels, d_model 1024, conv kernel 9), steady-state chunks
(9 cached + 8 (R+1) mel frames; T = R+1 frames in the conv module) at B = 16, 64, 256 streams and R = 13, 1, in fp32
and bf16. Providers:
- `triton`: the launcher as the engine calls it (Triton kernels + the cuBLAS GEMMs it leaves to torch);
- `kernels`: the Triton kernels alone (`conv_stages`, `glu_conv_norm`), without those GEMMs;
- `torch`: the reference function (for the conv module with the pool gather and scatter the engine does around it).

Counting (printed as a table at the end and stored in `benchmark.extra_info`):
- FLOPs are the op's useful work, 2 per multiply-add (conv0's ~2.25x recompute in the fused kernel is not counted);
- bytes: for `triton` and `torch`, the op's compulsory traffic (inputs, weights, outputs and the conv caches read
  and written once), the same figure for both; for `kernels`, what those kernels move, their intermediates
  included (the subsample's y1 written and read back; the conv module's a read, seq written and read back);
- time is the median of `triton.testing.do_bench` (CUDA events, `roofline.time_cuda`); `roofline_fraction` is the
  binding roofline's time (memory at the measured copy bandwidth, or compute at the datasheet rate of the unit:
  "fp32" FMA for fp32, whose products run in full precision, "bf16" tensor cores for bf16) over the measured time.
The pytest-benchmark timing itself is the host wall time of a call followed by `torch.cuda.synchronize()`.

fp32 runs with cuDNN's TF32 off, so the torch reference computes in full fp32 as the kernels do. Without a GPU the
module is skipped, with a message saying so.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the Triton kernel microbenchmarks need a GPU (their correctness tests run on the "
                "CPU under the interpreter: tests/test_kernels_subsample.py, tests/test_kernels_conv.py)",
                allow_module_level=True)

from roofline import Roofline, time_cuda  # noqa: E402

from nemotron_engine.kernels import conv_module as conv_k  # noqa: E402
from nemotron_engine.kernels import subsample as sub_k  # noqa: E402
from nemotron_engine.reference.conv_module import conv_module as conv_module_ref  # noqa: E402
from nemotron_engine.reference.subsample import subsample as subsample_ref  # noqa: E402

N_MELS, CHANNELS, D_MODEL, KERNEL, LAYERS = 128, 256, 1024, 9, 2
BATCHES = [16, 64, 256]
LOOKAHEADS = [13, 1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROVIDERS = ["triton", "kernels", "torch"]

_ROWS: list[tuple[tuple, dict]] = []  # (sort key, row) of every case, printed at the end


@pytest.fixture(scope="module")
def roofline(request):
    rf = Roofline.detect()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield rf
    torch.backends.cudnn.allow_tf32 = tf32
    if not _ROWS:
        return
    head = f"{'case':<44} {'us':>9} {'GB/s':>8} {'TFLOP/s':>8} {'bound':>8} {'roofline':>9}"
    lines = ["", f"frontend kernels on {rf.device} (copy bandwidth {rf.bandwidth_gbs:.0f} GB/s)", head, "-" * len(head)]
    rows = [row for _, row in sorted(_ROWS, key=lambda kr: kr[0])]
    lines += [f"{r['case']:<44} {r['us']:>9.1f} {r['GB/s']:>8.0f} {r['TFLOP/s']:>8.2f} {r['bound']:>8} "
              f"{r['roofline_fraction']:>9.0%}" for r in rows]
    # the table goes to the terminal past pytest's output capture
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n".join(lines), flush=True)


def _out(n: int) -> int:
    return n // 2 + 1


def _record(benchmark, rf, op, provider, b, r, dtype, fn, bytes_moved, flops):
    seconds = time_cuda(fn, warmup_ms=10, rep_ms=50)
    row = rf.row(f"{op} B={b} R={r} {dtype} {provider}", seconds, bytes_moved, flops, unit=dtype)
    _ROWS.append(((op, dtype, -r, b, PROVIDERS.index(provider)), row))
    benchmark.group = f"{op} B={b} R={r} {dtype}"
    benchmark.extra_info.update(row)

    def call():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(call, rounds=3, warmup_rounds=1, iterations=1)


def _subsample_inputs(b, r, dtype):
    torch.manual_seed(0)
    c, f3 = CHANNELS, _out(_out(_out(N_MELS)))
    t_in = 9 + 8 * (r + 1)

    def rnd(*shape, scale):
        return (torch.randn(*shape, device="cuda") * scale).to(dtype)

    w = {"conv0.weight": rnd(c, 1, 3, 3, scale=0.3), "dw1.weight": rnd(c, 1, 3, 3, scale=0.3),
         "pw1.weight": rnd(c, c, 1, 1, scale=c ** -0.5), "dw2.weight": rnd(c, 1, 3, 3, scale=0.3),
         "pw2.weight": rnd(c, c, 1, 1, scale=c ** -0.5), "out.weight": rnd(D_MODEL, c * f3, scale=(c * f3) ** -0.5)}
    for name in ("conv0", "dw1", "pw1", "dw2", "pw2", "out"):
        w[f"{name}.bias"] = rnd(w[f"{name}.weight"].shape[0], scale=0.1)
    mel = rnd(b, t_in, N_MELS, scale=1.0)
    lengths = torch.full((b,), t_in, dtype=torch.int64, device="cuda")
    return mel, lengths, w


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("r", LOOKAHEADS)
@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_subsample(benchmark, roofline, provider, b, r, dtype):
    dt = DTYPES[dtype]
    e = torch.empty(0, dtype=dt).element_size()
    mel, lengths, w = _subsample_inputs(b, r, dt)
    c, d = CHANNELS, D_MODEL
    t0, f0 = mel.shape[1], N_MELS
    t1, f1 = _out(t0), _out(f0)
    t2, f2 = _out(t1), _out(f1)
    t3, f3 = _out(t2), _out(f2)
    conv_flops = 2 * b * (9 * c * t1 * f1 + (9 + c) * c * t2 * f2 + (9 + c) * c * t3 * f3)
    conv_weights = (3 * 9 * c + 2 * c * c + 5 * c) * e
    if provider == "kernels":
        # mel in, weights, y1 written and read back, y2 out
        nbytes = b * t0 * f0 * e + conv_weights + 2 * b * t2 * f2 * c * e + b * t3 * c * f3 * e + 16 * b
        flops = conv_flops

        def fn():
            return sub_k.conv_stages(mel, lengths, w)
    else:
        nbytes = b * t0 * f0 * e + conv_weights + (d * c * f3 + d) * e + b * t3 * d * e + 16 * b
        flops = conv_flops + 2 * b * t3 * c * f3 * d
        op = sub_k.subsample if provider == "triton" else subsample_ref

        def fn():
            return op(mel, lengths, w)

    _record(benchmark, roofline, "subsample", provider, b, r, dtype, fn, nbytes, flops)


def _conv_inputs(b, t, dtype, norm_type="layer_norm"):
    torch.manual_seed(0)
    d, k = D_MODEL, KERNEL

    def rnd(*shape, scale):
        return (torch.randn(*shape, device="cuda") * scale).to(dtype)

    w = {"pw1.weight": rnd(2 * d, d, scale=d ** -0.5), "dw.weight": rnd(d, k, scale=k ** -0.5),
         "pw2.weight": rnd(d, d, scale=d ** -0.5), "norm.weight": 1 + rnd(d, scale=0.1), "norm.bias": rnd(d, scale=0.1)}
    slots_total = 2 * b
    pool = rnd(LAYERS, slots_total, d, k - 1, scale=1.0)
    slots = torch.randperm(slots_total, device="cuda")[:b]
    z = rnd(b, t, d, scale=1.0)
    pad = torch.zeros(b, t, dtype=torch.bool, device="cuda")
    return z, pool, slots, pad, w


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("r", LOOKAHEADS)
@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_conv_module(benchmark, roofline, provider, b, r, dtype):
    dt = DTYPES[dtype]
    e = torch.empty(0, dtype=dt).element_size()
    t, d, k, layer, eps = r + 1, D_MODEL, KERNEL, 1, 1e-5
    z, pool, slots, pad, w = _conv_inputs(b, t, dt)
    m = b * t
    caches = 2 * b * d * (k - 1) * e  # read and written
    if provider == "kernels":
        a = torch.randn(b, t, 2 * d, device="cuda").to(dt)
        # a in, cache in, seq written and read back, y out, cache out, depthwise and norm weights
        nbytes = m * 2 * d * e + caches + 2 * b * (k - 1 + t) * d * e + m * d * e + (d * k + 2 * d) * e + m + 8 * b
        flops = 2 * m * d * k

        def fn():
            return conv_k.glu_conv_norm(a, pool, layer, slots, pad, w, "layer_norm", eps)
    else:
        nbytes = 2 * m * d * e + caches + (3 * d * d + d * k + 2 * d) * e + m + 8 * b
        flops = 2 * m * (2 * d * d + d * k + d * d)
        if provider == "triton":
            def fn():
                return conv_k.conv_module(z, pool, layer, slots, pad, w, "layer_norm", eps)
        else:
            def fn():
                out, cv = conv_module_ref(z, pool[layer, slots], pad, w, "layer_norm", eps)
                pool[layer, slots] = cv
                return out

    _record(benchmark, roofline, "conv_module", provider, b, r, dtype, fn, nbytes, flops)
