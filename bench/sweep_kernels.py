"""Launch-configuration sweeps of the Triton kernels on a GPU (run last by scripts/gpu_check.sh).

    python bench/sweep_kernels.py [--json OUT.json] [--batches 16 256] [--ops attention subsample conv_module]

Why: the kernels' launch configurations were chosen offline, from ptxas's register report for sm_90 (the
`*_compiles_for_sm90*` tests), never from timings, and on an H100 they reached 7-12 % (attention), 6-17 %
(subsampling) and 28-58 % (conv module) of their rooflines (README). Timing the alternatives needs the device; this
script does it in one pass, so one GPU run tells which configuration to make the default.
- attention (`paged_attention(..., tuning=...)`): one (stream, head) per program, and ptxas gives it every register
  it may (255 per thread at 8 warps in fp32), so one program fits on an SM at a time. `maxnreg` caps the registers
  (128: two 8-warp programs per SM); `CONTENT_DC` computes the content product over slices of the head dimension,
  so the cap costs few or no spills (at maxnreg 128: fp32 spills 1380 bytes without slices and 136 with
  CONTENT_DC = 32; bf16 168 and 0). Registers and spills of every variant below, offline for sm_90:
  `python bench/ptxas_report.py`.
- subsample (`conv_stages(..., tiles=...)`, overriding keys of `kernels.subsample.TILES["cuda"]`; the two Triton
  stages only, not the output Linear): (BLOCK_P positions, BLOCK_CI input channels, warps) of each stage.
- conv_module (`glu_conv_norm(..., tiles=...)`, overriding keys of `kernels.conv_module.TILES["cuda"]`; the GLU /
  depthwise / norm kernels, not the pointwise products): GLU rows x channels per program, the norm kernel's elements
  and warps.
- decoder (`_ext.rnnt_greedy`, one step of 7 frames, N = 1, 4, 16, 64 streams): the per-stream kernel beside the
  grid-wide one (`kernel="grid"`, not yet run on a GPU) and its launch options; tokens must be identical.

For every op, dtype (fp32, bf16), batch (Nemotron shapes, R = 13 or T = 14) and variant: the output's largest error relative
to the default configuration's output (fp32 within 1e-5: the variants only reorder sums or change tiling; bf16
within 2e-2) and the median time (`roofline.time_cuda`). Prints one line per variant with its time over the
default's, then the fastest variant of each case; --json writes the rows. Exit 1 if a variant's output leaves its tolerance. Without a GPU it says so and
exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

ATTENTION = [
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
# `tiles` overrides: (BLOCK_P, BLOCK_CI, num_warps) per stage; {} is the shipped table. Each compiles for sm_90
# without spills in fp32 and bf16 (`python bench/ptxas_report.py --only subsample`)
SUBSAMPLE = [
    {},
    {"stage1": (32, 32, 8), "stage2": (32, 16, 8)},
    {"stage1": (64, 16, 8), "stage2": (64, 16, 8)},
    {"stage1": (32, 16, 4), "stage2": (32, 16, 4)},
    {"stage1": (16, 32, 4), "stage2": (16, 16, 4)},
]
# `tiles` overrides; each compiles for sm_90 without spills (`python bench/ptxas_report.py --only conv_module`)
CONV = [
    {},
    {"glu_rows": 4, "glu_d": 256},
    {"glu_rows": 16, "glu_d": 128},
    {"norm_elems": 1024, "norm_warps": 4},
    {"norm_elems": 4096, "norm_warps": 8},
]
# the CUDA greedy decoder (`_ext.rnnt_greedy`), one step of 7 frames at the Nemotron decoder's shape: the per-stream
# kernel (the engine's default, listed first so the others are compared with it) and the grid-wide kernel's launch
# options; their tokens, frames and counts must be identical
DECODER = [
    {"kernel": "blocked"},
    {"kernel": "grid"},
    {"kernel": "grid", "threads": 128},
    {"kernel": "grid", "threads": 128, "grid_blocks": 264},
    {"kernel": "grid", "grid_blocks": 66},
    {"kernel": "grid", "streams_per_block": 4},
]
if os.environ.get("NEMOTRON_SKIP_GRID") == "1":  # set by scripts/gpu_check.sh when the grid kernel's tests fail
    DECODER = DECODER[:1]
DECODER_BATCHES = [1, 4, 16, 64]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _cases(op: str, dtype, b: int):
    """(variants, make(variant) -> fn returning the output, reset() restoring the inputs an op updates in place)
    for one op, dtype and batch."""
    import bench_kernels_attention as ba  # noqa: E402  (bench/ is on sys.path)
    import bench_kernels_frontend as bf  # noqa: E402

    from nemotron_engine.kernels import conv_module as conv_k
    from nemotron_engine.kernels import subsample as sub_k
    from nemotron_engine.kernels.attention import paged_attention

    if op == "decoder":
        return _decoder_case(dtype, b)
    if op == "attention":
        cache, slots, n, look, x = ba._attention_inputs(b, 14, dtype)

        def make(tuning):
            out = torch.empty_like(x["q"])
            return lambda: paged_attention(x["q"], x["k_new"], x["v_new"], cache.k[0], cache.v[0], cache.table,
                                           slots, cache.frames, n, look, x["pos"], x["rel_lo"], x["u"], x["v"],
                                           ba.C, out=out, tuning=tuning)
        # the chunk's rows written into the pages never overlap the window read: calls repeat exactly
        return ATTENTION, make, lambda: None
    if op == "subsample":
        mel, lengths, w = bf._subsample_inputs(b, 13, dtype)

        def make(change):
            return lambda: sub_k.conv_stages(mel, lengths, w, tiles=change)[0]
        return SUBSAMPLE, make, lambda: None
    z, pool, slots, pad, w = bf._conv_inputs(b, 14, dtype)
    a = torch.randn(b, 14, 2 * z.shape[-1], device="cuda").to(dtype)
    pool0 = pool.clone()

    def make(change):
        return lambda: conv_k.glu_conv_norm(a, pool, 1, slots, pad, w, "layer_norm", 1e-5, tiles=change)
    # the kernels update the conv caches in place: each variant's checked call starts from the same ones
    return CONV, make, lambda: pool.copy_(pool0)


def _decoder_case(dtype, b: int):
    from types import SimpleNamespace

    import bench_decoder as bd  # noqa: E402
    import torch.nn.functional as F

    from nemotron_engine import _ext
    from nemotron_engine.reference.decoder import initial_state

    model = bd._get_model(dtype)
    cfg = model.cfg
    g = torch.Generator().manual_seed(b)
    sos = initial_state(model, 1)
    pool0 = SimpleNamespace(h=sos.h.repeat(1, bd.POOL, 1), c=sos.c.repeat(1, bd.POOL, 1), pred=sos.pred.repeat(bd.POOL, 1),
                            label=sos.label.repeat(bd.POOL))
    cache = SimpleNamespace(**{k: v.clone().contiguous() for k, v in vars(pool0).items()})
    slots = torch.randperm(bd.POOL, generator=g)[:b].cuda()
    enc = torch.randn(b, bd.FRAMES, cfg.d_model, generator=g).to(device="cuda", dtype=dtype)
    f = F.linear(enc, model.joint["enc.weight"], model.joint["enc.bias"]).contiguous()
    lengths = torch.full((b,), bd.FRAMES, dtype=torch.int64, device="cuda")
    offsets = torch.zeros(b, dtype=torch.int64, device="cuda")

    def make(kw):
        def fn():
            tokens, frames, counts = _ext.rnnt_greedy(f, lengths, slots, offsets, cache.h, cache.c, cache.pred,
                                                      cache.label, model.dec, model.joint,
                                                      max_symbols=cfg.max_symbols, blank_id=cfg.blank_id, **kw)
            keep = torch.arange(tokens.shape[1], device="cuda")[None, :] < counts[:, None].long()
            return torch.cat([counts.float(), (tokens * keep).float().flatten(), (frames * keep).float().flatten()])
        return fn

    def reset():  # every variant's checked call decodes from the same state (the timed calls carry it on)
        for k, v in vars(pool0).items():
            getattr(cache, k).copy_(v)
    return DECODER, make, reset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 256])
    p.add_argument("--ops", nargs="+", default=["attention", "decoder", "subsample", "conv_module"],
                   choices=["attention", "decoder", "subsample", "conv_module"])
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the kernel sweeps time the kernels on a GPU; nothing to do")
        return 0
    from roofline import time_cuda

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows, ok = [], True
    for op in a.ops:
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            for b in DECODER_BATCHES if op == "decoder" else a.batches:
                try:
                    variants, make, reset = _cases(op, dtype, b)
                except BaseException as e:  # e.g. pytest.skip from a bench module: the CUDA extension is missing
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    rows.append({"op": op, "dtype": dname, "B": b, "error": repr(e)[:200]})
                    print(f"{op} {dname} B={b}: cannot set up: {e!r}"[:300], flush=True)
                    continue
                base_us = base_out = None
                for change in variants:
                    name = ",".join(f"{k}={v}" for k, v in change.items()) or "default"
                    head = {"op": op, "dtype": dname, "B": b, "variant": name}
                    fn = make(change)
                    try:
                        reset()
                        out = fn()
                        out = (out[0] if isinstance(out, tuple) else out).float().clone()
                        torch.cuda.synchronize()
                        us = time_cuda(fn, warmup_ms=10, rep_ms=40) * 1e6
                    except Exception as e:  # a variant that does not compile or launch is reported, not fatal
                        rows.append({**head, "error": repr(e)[:200]})
                        print(f"{op} {dname} B={b} {name}: failed: {e!r}"[:300], flush=True)
                        continue
                    if base_out is None:
                        base_us, base_out = us, out
                    err = float((out - base_out).abs().max() / base_out.abs().max().clamp_min(1e-30))
                    good = err <= (0.0 if op == "decoder" else TOL[dtype])
                    ok &= good
                    rows.append({**head, "us": round(us, 1), "vs_default": round(base_us / us, 3),
                                 "rel_err_vs_default": err, "within_tol": good})
                    print(f"{op:<11} {dname} B={b:<4} {name:<44} {us:9.1f} us  x{base_us / us:5.2f} vs default  "
                          f"err {err:.2e}{'' if good else '  OUT OF TOLERANCE'}", flush=True)
        if a.json:  # after each op: a run stopped by its time limit keeps what it measured
            Path(a.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    print("\n".join(["", "fastest variant within tolerance (x = default's time / its time):", *best(rows)]), flush=True)
    return 0 if ok else 1


def best(rows: list[dict]) -> list[str]:
    """One line per (op, dtype, batch): the fastest variant whose output stayed within tolerance."""
    groups: dict = {}
    for r in rows:
        if "us" in r and r["within_tol"]:
            groups.setdefault((r["op"], r["dtype"], r["B"]), []).append(r)
    return [f"{op:<11} {dt} B={b:<4} {min(g, key=lambda r: r['us'])['variant']:<44} "
            f"x{min(g, key=lambda r: r['us'])['vs_default']:.2f}" for (op, dt, b), g in groups.items()]


if __name__ == "__main__":
    sys.exit(main())
