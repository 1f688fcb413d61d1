"""kernels/attention.py against its reference: StreamCache.gather_window + attention_mask + rel_attention +
StreamCache.write_rows (what encoder_step_paged does per layer), on fresh random inputs.

Every case: a shuffled page pool whose rows hold NaN wherever a stream may not read (other streams' pages, rows
of frames before a stream's start, stale rows), NaN-poisoned outputs, streams of different fill levels (0, 5, 69,
70, 500 frames: empty, partial, exactly full and wrapped windows), lookaheads and valid lengths in one launch.
The pages after the launch must equal what write_rows writes, untouched elsewhere (NaN where NaN was).
Small shapes run under the interpreter here; the `gpu` cases run the Nemotron shape (D=1024, H=8, C=70).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from nemotron_engine.cache import StreamCache
from nemotron_engine.config import ModelConfig
from nemotron_engine.kernels.attention import paged_attention
from nemotron_engine.reference.attention import attention_mask, position_projection, rel_attention
from tolerances import assert_close, rel_err

BENCH = Path(__file__).resolve().parents[1] / "bench"  # bench/ptxas_report.py

LOOKAHEADS = (13, 6, 1, 0)
FILLS = (0, 5, 69, 70, 500)


def make_case(B, T, H, dh, dtype, device, C=70, seed=0):
    """A pool with B of its streams at the fill levels FILLS (then random), lookaheads r with r + 1 <= T mixed."""
    torch.manual_seed(seed)
    D = H * dh
    cfg = ModelConfig(d_model=D, n_layers=1, n_heads=H, att_context_size=[[C, r] for r in LOOKAHEADS])
    S = B + 2  # two slots no stream of the batch owns
    cache = StreamCache(cfg, max_streams=S, dtype=dtype, device=device)
    P = cache.k.shape[1]
    # each slot's pages shuffled across the pool, repeated along its table row (a ring of pages_per_stream pages)
    own = torch.randperm(P, device=device).view(S, -1)
    cache.table.copy_(own.repeat(1, cache.table_width // cache.pages_per_stream))
    slots = torch.randperm(S, device=device)[:B]
    fills = torch.tensor([FILLS[i] if i < len(FILLS) else int(torch.randint(0, 600, ())) for i in range(B)],
                         device=device)
    cache.frames[slots] = fills
    r_ok = [r for r in LOOKAHEADS if r + 1 <= T]
    look = torch.tensor([r_ok[i % len(r_ok)] for i in range(B)], device=device)
    look[0] = max(r_ok)  # one stream fills T
    n = torch.minimum(torch.randint(0, T + 1, (B,), device=device), look + 1)
    n[0] = T
    # pages: random everywhere, NaN wherever the batch may not read (any row except its streams' live windows)
    k = torch.randn(cache.k.shape, device=device)
    v = torch.randn(cache.v.shape, device=device)
    readable = torch.zeros(cache.k.shape[:3], dtype=torch.bool, device=device)
    f = (fills - C).unsqueeze(1) + torch.arange(C, device=device)  # [B, C] window frames
    page, row = cache.locate(slots, f)
    readable[0, page[f >= 0], row[f >= 0]] = True
    cache.k.copy_(torch.where(readable.unsqueeze(-1), k, float("nan")).to(dtype))
    cache.v.copy_(torch.where(readable.unsqueeze(-1), v, float("nan")).to(dtype))
    r_max = max(LOOKAHEADS)
    w_pos = torch.randn(D, D, device=device) / D**0.5
    pos = position_projection(w_pos, -r_max, C + r_max, H).to(dtype)  # [H, R, dh]
    inputs = dict(
        q=torch.randn(B, T, D, device=device).to(dtype),
        k_new=torch.randn(B, T, D, device=device).to(dtype),
        v_new=torch.randn(B, T, D, device=device).to(dtype),
        pos=pos, rel_lo=-r_max,
        pos_bias_u=(0.5 * torch.randn(H, dh, device=device)).to(dtype),
        pos_bias_v=(0.5 * torch.randn(H, dh, device=device)).to(dtype),
    )
    return cache, slots, n, look, inputs


def reference(cache, slots, n, look, x, compute_dtype):
    """encoder_step_paged's attention for one layer, in compute_dtype -> (out [B, T, D], k pages, v pages)."""
    C = cache.cfg.left_context
    T = x["q"].shape[1]
    f0 = cache.frames[slots]
    ref = copy.copy(cache)  # the same table and counters over other pages
    # masked rows multiply probabilities of exactly 0 in rel_attention: NaN there would read as 0 x NaN
    ref.k = torch.nan_to_num(cache.k.to(compute_dtype), nan=0.0)
    ref.v = torch.nan_to_num(cache.v.to(compute_dtype), nan=0.0)
    k_win, v_win = ref.gather_window(0, slots, f0 - C)
    valid = torch.arange(T, device=n.device).unsqueeze(0) < n.unsqueeze(1)
    masked = torch.cat([attention_mask(T, C, f0[b:b + 1].clamp(max=C), valid[b:b + 1], C, int(look[b]))
                        for b in range(len(slots))])
    c = {k: (t.to(compute_dtype) if torch.is_tensor(t) else t) for k, t in x.items()}
    out = rel_attention(c["q"], torch.cat([k_win, c["k_new"]], 1), torch.cat([v_win, c["v_new"]], 1), c["pos"],
                        c["rel_lo"], c["pos_bias_u"], c["pos_bias_v"], masked)
    # the pages after the launch: the input pages (NaN kept) with the chunk's rows written
    pages = copy.copy(cache)
    pages.k, pages.v = cache.k.clone(), cache.v.clone()
    pages.write_rows(0, slots, f0, x["k_new"], x["v_new"])
    return out, pages.k[0], pages.v[0]


def run_kernel(cache, slots, n, look, x, tuning=None):
    C = cache.cfg.left_context
    out = torch.full_like(x["q"], float("nan"))
    k_pages, v_pages = cache.k[0].clone(), cache.v[0].clone()
    res = paged_attention(x["q"], x["k_new"], x["v_new"], k_pages, v_pages, cache.table, slots, cache.frames, n,
                          look, x["pos"], x["rel_lo"], x["pos_bias_u"], x["pos_bias_v"], C, out=out, tuning=tuning)
    assert res is out
    return out, k_pages, v_pages


def check_pages(k_pages, v_pages, k_ref, v_ref):
    # bit-exact copies; NaN stays NaN where nothing was written
    torch.testing.assert_close(k_pages, k_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(v_pages, v_ref, rtol=0, atol=0, equal_nan=True)


def check_fp32(B, T, H, dh, device, C=70, tuning=None):
    cache, slots, n, look, x = make_case(B, T, H, dh, torch.float32, device, C=C)
    out, k_pages, v_pages = run_kernel(cache, slots, n, look, x, tuning)
    ref, k_ref, v_ref = reference(cache, slots, n, look, x, torch.float32)
    err = assert_close("attention fp32", ref, out)
    pad = torch.arange(T, device=device).unsqueeze(0) >= n.unsqueeze(1)
    assert (out[pad] == 0).all(), "padded queries must output exactly 0"
    check_pages(k_pages, v_pages, k_ref, v_ref)
    return err


def check_bf16(B, T, H, dh, device, tuning=None):
    cache, slots, n, look, x = make_case(B, T, H, dh, torch.bfloat16, device)
    out, k_pages, v_pages = run_kernel(cache, slots, n, look, x, tuning)
    exact, k_ref, v_ref = reference(cache, slots, n, look, x, torch.float64)
    ref_bf16, _, _ = reference(cache, slots, n, look, x, torch.bfloat16)
    err, err_ref = rel_err(exact, out.double()), rel_err(exact, ref_bf16.double())
    assert err <= 2 * err_ref, f"attention bf16: error {err:.3g} > 2 x the bf16 reference's {err_ref:.3g}"
    check_pages(k_pages, v_pages, k_ref, v_ref)
    return err, err_ref


# (B, T, H, dh): chunk lengths 1, 2, 7, 14, head sizes 32, 64, 128, batches 1, 3, 17; kept small for the interpreter
CASES = [(1, 1, 2, 32), (3, 2, 2, 64), (17, 7, 1, 32), (3, 14, 2, 128), (5, 14, 2, 32), (1, 7, 1, 64)]


@pytest.mark.parametrize("B,T,H,dh", [pytest.param(*c, id="B{}-T{}-H{}-dh{}".format(*c)) for c in CASES])
def test_attention_fp32(B, T, H, dh):
    check_fp32(B, T, H, dh, "cpu")


def test_attention_fp32_short_window():
    """A left context that is not the model's (C=9 < T + lookahead chunks): the kernel takes C as a parameter."""
    check_fp32(5, 7, 1, 32, "cpu", C=9)


@pytest.mark.parametrize("B,T,H,dh", [pytest.param(*c, id="B{}-T{}-H{}-dh{}".format(*c))
                                      for c in [(3, 14, 2, 64), (5, 2, 1, 32)]])
def test_attention_bf16(B, T, H, dh):
    check_bf16(B, T, H, dh, "cpu")


# the variants bench/sweep_kernels.py times on a GPU: the content product over DH slices (CONTENT_DC), with the
# other launch options (which the interpreter ignores) passed through
TUNINGS = [{"CONTENT_DC": 16}, {"CONTENT_DC": 32, "maxnreg": 128, "num_warps": 4}]


@pytest.mark.parametrize("tuning", TUNINGS, ids=lambda t: "-".join(f"{k}{v}" for k, v in t.items()))
def test_attention_tuning_variants(tuning):
    check_fp32(3, 14, 2, 64, "cpu", tuning=tuning)
    check_fp32(17, 1, 1, 32, "cpu", tuning=tuning)
    check_bf16(5, 7, 2, 32, "cpu", tuning=tuning)


def test_attention_tuning_is_checked():
    cache, slots, n, look, x = make_case(1, 2, 1, 32, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"tuning: unknown keys \['BLOCK_T'\]"):
        run_kernel(cache, slots, n, look, x, {"BLOCK_T": 32})
    with pytest.raises(ValueError, match="CONTENT_DC must be 0 or a power of two >= 16 dividing 32, got 64"):
        run_kernel(cache, slots, n, look, x, {"CONTENT_DC": 64})


def test_attention_strided_inputs():
    """q, k, v as column slices of one fused [B, T, 3D] projection (what a fused qkv matmul yields)."""
    cache, slots, n, look, x = make_case(3, 7, 2, 32, torch.float32, "cpu")
    qkv = torch.cat([x["q"], x["k_new"], x["v_new"]], dim=-1)
    D = x["q"].shape[-1]
    y = dict(x, q=qkv[..., :D], k_new=qkv[..., D:2 * D], v_new=qkv[..., 2 * D:])
    out, k_pages, v_pages = run_kernel(cache, slots, n, look, y)
    ref, k_ref, v_ref = reference(cache, slots, n, look, x, torch.float32)
    assert_close("attention strided", ref, out)
    check_pages(k_pages, v_pages, k_ref, v_ref)


def test_attention_rejects_bad_inputs():
    cache, slots, n, look, x = make_case(1, 2, 1, 32, torch.float32, "cpu")
    C = cache.cfg.left_context
    args = (cache.k[0], cache.v[0], cache.table, slots, cache.frames, n, look)
    with pytest.raises(ValueError, match="a chunk of T = 2 needs -1 .. 71"):
        paged_attention(x["q"], x["k_new"], x["v_new"], *args, x["pos"][:, 13:], 0, x["pos_bias_u"],
                        x["pos_bias_v"], C)
    with pytest.raises(ValueError, match="k_new has shape"):
        paged_attention(x["q"], x["k_new"][:, :1], x["v_new"], *args, x["pos"], x["rel_lo"], x["pos_bias_u"],
                        x["pos_bias_v"], C)
    with pytest.raises(TypeError, match="supports float32 and bfloat16, got torch.float64"):
        paged_attention(x["q"].double(), x["k_new"].double(), x["v_new"].double(), *args, x["pos"].double(),
                        x["rel_lo"], x["pos_bias_u"], x["pos_bias_v"], C)
    with pytest.raises(TypeError, match="share one dtype"):
        paged_attention(x["q"].bfloat16(), x["k_new"], x["v_new"], *args, x["pos"], x["rel_lo"], x["pos_bias_u"],
                        x["pos_bias_v"], C)


GPU_CASES = [(B, T) for B in (64, 256) for T in (14, 7, 2, 1)]


@pytest.mark.gpu
@pytest.mark.parametrize("B,T", [pytest.param(*c, id="B{}-T{}".format(*c)) for c in GPU_CASES])
def test_attention_fp32_gpu(B, T):
    check_fp32(B, T, 8, 128, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("B,T", [pytest.param(*c, id="B{}-T{}".format(*c)) for c in GPU_CASES])
def test_attention_bf16_gpu(B, T):
    check_bf16(B, T, 8, 128, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dh", [32, 64])
def test_attention_head_sizes_gpu(dh):
    check_fp32(17, 14, 1024 // dh, dh, "cuda")
    check_bf16(17, 14, 1024 // dh, dh, "cuda")


SM90_COMPILE = r'''
import torch
import ptxas_report as P

# the launcher's own choices at Nemotron's shape, then the register-capped variant bench/sweep_kernels.py times
# (2 programs of 8 warps per SM; in fp32 ptxas spills there, reported, not asserted)
for dtype in (torch.float32, torch.bfloat16):
    for tuning in ({}, {"CONTENT_DC": 32, "maxnreg": 128}):
        r = P.attention(dtype, tuning)
        print(dtype, tuning, r)
        if tuning:
            assert r["regs"] <= tuning["maxnreg"], r
        if dtype == torch.bfloat16 or not tuning:
            assert r["spill"] == 0, r
'''


def test_attention_compiles_for_sm90_without_spills():
    """The interpreter does not run Triton's compiler: compile the kernel for sm_90 (H100) here, offline, with the
    launcher's configuration at Nemotron's shape (dh = 128, T = 14), and check ptxas spills nothing; the
    register-capped variant (CONTENT_DC = 32, maxnreg = 128) must respect its cap, and spill nothing in bf16."""
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.fail("this triton build ships no ptxas (triton 3.6 does)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")])  # bench/ptxas_report.py
    r = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
