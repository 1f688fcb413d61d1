"""Launch-configuration sweep of the paged attention kernel (kernels/attention.py) on a GPU (run by
scripts/gpu_check.sh).

    python bench/sweep_attention.py [--json OUT.json] [--batches 16 256] [--chunk 14]

Why: the kernel holds one (stream, head) per program and ptxas gives it every register it may (255 per thread at
8 warps in fp32, compiled offline for sm_90: tests/test_kernels_attention.py), so one program fits on an SM at a
time; at B = 256 it reached 7 % (fp32) and 12 % (bf16) of its roofline on an H100 (README). The variants below
trade registers for occupancy: `maxnreg` caps the registers (128: two 8-warp programs per SM), and
`CONTENT_DC` computes the content product over slices of the head dimension, so that the cap costs few or no spills
(offline sm_90 compile, ptxas: at maxnreg 128, fp32 spills 1356 bytes without slices and 136 with CONTENT_DC = 32;
bf16 168 and 0). Which one is fastest is only known on the device; this script measures it.

For every dtype (fp32, bf16), batch (Nemotron shapes: D 1024, 8 heads of 128, C = 70, T = 14, steady-state streams
at random fill levels over a shuffled page table) and variant: the output's largest error relative to the default
configuration's output (fp32 must stay within 1e-5 of it: the variants only reorder the sums; bf16 within 2e-2),
and the median time (`roofline.time_cuda`). Prints a table with each variant's time over the default's; --json
writes the rows. Without a GPU it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = [
    {},
    {"num_warps": 4},
    {"num_stages": 1},
    {"maxnreg": 128},
    {"CONTENT_DC": 32},
    {"CONTENT_DC": 32, "maxnreg": 128},
    {"CONTENT_DC": 16, "maxnreg": 128},
    {"CONTENT_DC": 32, "maxnreg": 128, "num_warps": 4},
    {"CONTENT_DC": 32, "maxnreg": 96},
]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    p.add_argument("--chunk", type=int, default=14, help="T, frames per chunk (R + 1)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the attention sweep times the kernel on a GPU; nothing to do")
        return 0
    from bench_kernels_attention import C, _attention_inputs  # noqa: E402  (bench/ is on sys.path)
    from roofline import time_cuda

    from nemotron_engine.kernels.attention import paged_attention

    rows, ok = [], True
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for b in a.batches:
            cache, slots, n, look, x = _attention_inputs(b, a.chunk, dtype)
            base_us = base_out = None
            for tuning in VARIANTS:
                out = torch.empty_like(x["q"])

                def fn(tuning=tuning, out=out):
                    return paged_attention(x["q"], x["k_new"], x["v_new"], cache.k[0], cache.v[0], cache.table,
                                           slots, cache.frames, n, look, x["pos"], x["rel_lo"], x["u"], x["v"], C,
                                           out=out, tuning=tuning)

                name = ",".join(f"{k}={v}" for k, v in tuning.items()) or "default"
                try:
                    fn()
                    torch.cuda.synchronize()
                    us = time_cuda(fn, warmup_ms=10, rep_ms=40) * 1e6
                except Exception as e:  # a variant that does not compile or launch is reported, not fatal
                    rows.append({"dtype": dname, "B": b, "T": a.chunk, "variant": name, "error": repr(e)[:200]})
                    print(f"{dname} B={b} {name}: failed: {e!r}"[:300], flush=True)
                    continue
                if base_out is None:
                    base_us, base_out = us, out.float().clone()
                err = float((out.float() - base_out).abs().max() / base_out.abs().max().clamp_min(1e-30))
                good = err <= TOL[dtype]
                ok &= good
                row = {"dtype": dname, "B": b, "T": a.chunk, "variant": name, "us": round(us, 1),
                       "vs_default": round(base_us / us, 3), "rel_err_vs_default": err, "within_tol": good}
                rows.append(row)
                print(f"{dname} B={b:<4} {name:<44} {us:9.1f} us  x{base_us / us:5.2f} vs default  "
                      f"err {err:.2e}{'' if good else '  OUT OF TOLERANCE'}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
