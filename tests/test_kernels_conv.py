"""kernels/conv_module.py against nemotron_engine.reference.conv_module (the causal conv module step).

The kernel reads and rewrites the conv caches in a pool [L, S, D, K-1] at the streams' slots; the reference gets
those caches as a dense [B, D, K-1] and returns the new ones. Slots are a random subset in random order; every other
slot of the pool (and every other layer) is NaN and must stay NaN. Inputs are fresh random draws (all weights and
biases, padded frames). The exact values come from the reference on the same (rounded) inputs and weights, in
float32 on the CPU and in float64 on a GPU (where cuDNN may run float32 convolutions in TF32). fp32: relative error
<= RTOL; bf16: at most twice the error of the reference run in bf16. Buffers the launcher allocates are NaN-poisoned (torch's
deterministic mode fills torch.empty).

Without a GPU the kernels run under Triton's interpreter at small widths; the `gpu` cases run d_model 1024,
kernel 9 at up to 256 streams.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from nemotron_engine.kernels import conv_module as K
from nemotron_engine.reference.conv_module import conv_module as conv_module_ref
from tolerances import RTOL, assert_close, rel_err

BENCH = Path(__file__).resolve().parents[1] / "bench"  # bench/ptxas_report.py

LAYERS, LAYER = 3, 1


def make_weights(d: int, k: int, dtype, norm_type: str, bias: bool) -> dict:
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).to(dtype)

    # BatchNorm's statistics stay float32 in every engine dtype (model.py); the reference's F.batch_norm wants its
    # weight and bias in the statistics' dtype, so they are float32 too
    norm_dtype = torch.float32 if norm_type == "batch_norm" else dtype
    w = {
        "pw1.weight": rnd(2 * d, d, scale=d ** -0.5),
        "dw.weight": rnd(d, k, scale=k ** -0.5),
        "pw2.weight": rnd(d, d, scale=d ** -0.5),
        "norm.weight": (1 + 0.2 * torch.randn(d)).to(norm_dtype),
        "norm.bias": (0.2 * torch.randn(d)).to(norm_dtype),
    }
    if norm_type == "batch_norm":
        w["norm.running_mean"] = 0.3 * torch.randn(d)
        w["norm.running_var"] = 0.5 + torch.rand(d)
    if bias:
        w.update({"pw1.bias": rnd(2 * d, scale=0.2), "dw.bias": rnd(d, scale=0.2), "pw2.bias": rnd(d, scale=0.2)})
    return w


def make_pool(slots_total: int, d: int, k: int, dtype, strided: bool) -> torch.Tensor:
    """A NaN pool [L, S, D, K-1]; `strided` lays it out as [L, S, K-1, D] underneath (non-contiguous view)."""
    if strided:
        return torch.full((LAYERS, slots_total, k - 1, d), float("nan"), dtype=dtype).transpose(2, 3)
    return torch.full((LAYERS, slots_total, d, k - 1), float("nan"), dtype=dtype)


@contextlib.contextmanager
def poisoned():
    """torch.empty returns NaN inside: every buffer the launcher allocates starts poisoned."""
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)


def run_case(b, t, d, k, norm_type, bias, dtype, strided=False, device="cpu", tiling=None, eps=1e-5):
    """tiling: "cuda" or "interpreter" runs that default tiling (passed as `tiles`; "cuda" runs the GPU's under the
    interpreter too), None the launcher's own choice for the device."""
    torch.manual_seed(0)
    w = make_weights(d, k, dtype, norm_type, bias)
    s_total = 2 * b + 3
    pool = make_pool(s_total, d, k, dtype, strided)
    slots = torch.randperm(s_total)[:b]
    cache = torch.randn(b, d, k - 1).to(dtype)
    pool[LAYER, slots] = cache
    z = torch.randn(b, t, d).to(dtype)
    valid = torch.randint(0, t + 1, (b,))
    valid[0] = t
    pad = torch.arange(t).unsqueeze(0) >= valid.unsqueeze(1)  # [B, T]
    w = {n: v.to(device) for n, v in w.items()}
    pool, slots, cache, z, pad = pool.to(device), slots.to(device), cache.to(device), z.to(device), pad.to(device)
    untouched = torch.ones(LAYERS, s_total, dtype=torch.bool, device=device)
    untouched[LAYER, slots] = False

    tiles = None if tiling is None else dict(K.TILES[tiling])
    with poisoned():
        out = K.conv_module(z, pool, LAYER, slots, pad, w, norm_type, eps, tiles=tiles)
    assert out.dtype == dtype and out.shape == (b, t, d)
    assert torch.isnan(pool[untouched]).all(), "the kernel wrote outside the streams' slots"
    new_cache = pool[LAYER, slots]

    # the exact values: the reference in float32 on the CPU, float64 on a GPU (cuDNN convolutions may use TF32)
    hi = torch.float64 if device == "cuda" else torch.float32
    out_hi, cache_hi = conv_module_ref(z.to(hi), cache.to(hi), pad, {n: v.to(hi) for n, v in w.items()}, norm_type, eps)
    got = {"out": out.double().cpu(), "cache": new_cache.double().cpu()}
    want = {"out": out_hi.double().cpu(), "cache": cache_hi.double().cpu()}
    if dtype == torch.float32:
        return {name: assert_close(f"conv {name}", want[name], got[name]) for name in got}
    out16, cache16 = conv_module_ref(z, cache, pad, w, norm_type, eps)
    low = {"out": out16.double().cpu(), "cache": cache16.double().cpu()}
    errs = {}
    for name in got:
        err, err_ref = rel_err(want[name], got[name]), rel_err(want[name], low[name])
        assert err <= 2 * err_ref, f"conv {name} bf16: relative error {err:.3g} > 2 x the bf16 reference's {err_ref:.3g}"
        errs[name] = err
    return errs


# (B, T, D, K, norm, biases, strided pool, tiling); small widths for the interpreter
CASES = [
    (1, 14, 48, 9, "layer_norm", True, False, "interpreter"),
    (3, 7, 40, 9, "batch_norm", True, True, "interpreter"),
    (3, 2, 24, 9, "layer_norm", False, False, "interpreter"),
    (17, 1, 32, 9, "batch_norm", False, False, "interpreter"),
    (3, 14, 1024, 9, "layer_norm", True, True, "cuda"),
    (3, 7, 300, 9, "batch_norm", False, False, "cuda"),
    (3, 2, 40, 5, "layer_norm", True, False, "cuda"),
    (17, 1, 64, 9, "layer_norm", True, False, "cuda"),
]


@pytest.mark.parametrize("b, t, d, k, norm_type, bias, strided, tiling", [
    pytest.param(*case, id="B{}-T{}-D{}-K{}-{}-{}-{}-{}".format(
        *case[:5], "bias" if case[5] else "nobias", "strided" if case[6] else "contiguous", case[7]))
    for case in CASES])
def test_conv_module_fp32(b, t, d, k, norm_type, bias, strided, tiling):
    run_case(b, t, d, k, norm_type, bias, torch.float32, strided=strided, tiling=tiling)


@pytest.mark.parametrize("b, t, d, norm_type, tiling", [
    pytest.param(3, 14, 40, "layer_norm", "interpreter", id="B3-T14-D40-layer_norm"),
    pytest.param(3, 7, 320, "batch_norm", "cuda", id="B3-T7-D320-batch_norm-cuda"),
])
def test_conv_module_bf16(b, t, d, norm_type, tiling):
    run_case(b, t, d, 9, norm_type, True, torch.bfloat16, tiling=tiling)


def test_conv_module_rejects_bad_arguments():
    w = make_weights(16, 9, torch.float32, "layer_norm", True)
    z, slots, pad = torch.randn(1, 2, 16), torch.tensor([0]), torch.zeros(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="norm_type must be"):
        K.conv_module(z, torch.zeros(LAYERS, 2, 16, 8), LAYER, slots, pad, w, "group_norm", 1e-5)
    with pytest.raises(ValueError, match="expected \\[L, S, 16, 8\\]"):
        K.conv_module(z, torch.zeros(LAYERS, 2, 16, 4), LAYER, slots, pad, w, "layer_norm", 1e-5)
    with pytest.raises(ValueError, match=r"unknown keys \['num_warps'\]; known: \['glu_rows', 'glu_d', 'norm_elems', "
                                         r"'norm_warps'\]"):
        K.conv_module(z, torch.zeros(LAYERS, 2, 16, 8), LAYER, slots, pad, w, "layer_norm", 1e-5,
                      tiles={"num_warps": 8})
    with pytest.raises(TypeError):
        K.TILES["cuda"]["glu_rows"] = 4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm_type", ["layer_norm", "batch_norm"])
@pytest.mark.parametrize("t", [1, 2, 7, 14])
@pytest.mark.parametrize("b", [1, 17, 256])
def test_conv_module_gpu(b, t, norm_type, dtype):
    run_case(b, t, 1024, 9, norm_type, True, dtype, strided=b == 17, device="cuda")


SM90_COMPILE = r'''
import torch
import ptxas_report as P

for dtype in (torch.float32, torch.bfloat16):
    for name, r in P.conv_module(dtype).items():  # the launcher's own choices on a GPU
        print(dtype, name, r)
        assert r["spill"] == 0, (dtype, name, r)
'''


def test_conv_module_compiles_for_sm90_without_spills():
    """The interpreter does not run Triton's compiler: compile both kernels for sm_90 (H100) here, offline, with the
    launcher's GPU configuration at Nemotron's shape (d_model 1024, kernel 9, T = 1 and 14, both norms), fp32 and
    bf16, and check ptxas spills nothing."""
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.fail("this triton build ships no ptxas (triton 3.6 does)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")])  # bench/ptxas_report.py
    r = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
