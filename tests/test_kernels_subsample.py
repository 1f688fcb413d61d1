"""kernels/subsample.py against nemotron_engine.reference.subsample (the 8x dw_striding frontend).

Inputs are fresh random draws (weights, biases, mel, lengths with padding). The exact values come from the
reference on the same (rounded) inputs and weights, in float32 on the CPU and in float64 on a GPU (where cuDNN may
run float32 convolutions in TF32). fp32: relative error <= RTOL; bf16: at most twice the error of the reference
run in bf16. Every buffer the launcher allocates (intermediates and outputs) is NaN-poisoned (torch's
deterministic mode fills torch.empty), so an element a kernel fails to write shows up as NaN in the output.

Without a GPU the kernels run under Triton's interpreter at small channel counts and mel bins; the `gpu` cases
run the Nemotron shape (128 mel bins, 256 channels, d_model 1024) at up to 256 streams.
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

from nemotron_engine.kernels import subsample as K
from nemotron_engine.reference.subsample import subsample as subsample_ref
from tolerances import RTOL, assert_close, rel_err

BENCH = Path(__file__).resolve().parents[1] / "bench"  # bench/ptxas_report.py


def mel_frames(r: int, first: bool) -> int:
    """Mel frames a chunk feeds the frontend at lookahead R: 1 + 8R for the first, 9 cached + 8(R+1) after."""
    return 1 + 8 * r if first else 9 + 8 * (r + 1)


def make_weights(c: int, n_mels: int, d: int, dtype, bias: bool = True) -> dict:
    f3 = n_mels
    for _ in range(3):
        f3 = f3 // 2 + 1

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).to(dtype)

    w = {
        "conv0.weight": rnd(c, 1, 3, 3, scale=0.3),
        "dw1.weight": rnd(c, 1, 3, 3, scale=0.3),
        "pw1.weight": rnd(c, c, 1, 1, scale=c ** -0.5),
        "dw2.weight": rnd(c, 1, 3, 3, scale=0.3),
        "pw2.weight": rnd(c, c, 1, 1, scale=c ** -0.5),
        "out.weight": rnd(d, c * f3, scale=(c * f3) ** -0.5),
    }
    if bias:
        for name in ("conv0", "dw1", "pw1", "dw2", "pw2", "out"):
            w[f"{name}.bias"] = rnd(w[f"{name}.weight"].shape[0], scale=0.2)
    return w


def make_lengths(b: int, t: int) -> torch.Tensor:
    """Valid mel frames per stream: the first stream full, the others random in [0, T] (padding)."""
    n = torch.randint(0, t + 1, (b,))
    n[0] = t
    return n


def reference_exact(mel, lengths, w):
    """The exact values: the reference in float32 on the CPU, float64 on a GPU (cuDNN convolutions may use TF32),
    with zero biases where the kernel runs without them."""
    hi = torch.float64 if mel.is_cuda else torch.float32
    w_hi = {k: v.to(hi) for k, v in w.items()}
    if "conv0.bias" not in w:
        for name in ("conv0", "dw1", "pw1", "dw2", "pw2", "out"):
            w_hi[f"{name}.bias"] = w_hi[f"{name}.weight"].new_zeros(w_hi[f"{name}.weight"].shape[0])
    return subsample_ref(mel.to(hi), lengths, w_hi)


@contextlib.contextmanager
def poisoned():
    """torch.empty returns NaN (ints: their max) inside: every buffer the launcher allocates starts poisoned."""
    was, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)


def run_case(b, t, n_mels, c, d, dtype, bias, device="cpu", tiling=None):
    """tiling: "cuda" or "interpreter" runs that default tiling and conv0 variant (passed as `tiles`; "cuda" runs the
    GPU's under the interpreter too), None the launcher's own choice for the device."""
    torch.manual_seed(0)
    w = make_weights(c, n_mels, d, dtype, bias)
    mel = torch.randn(b, t, n_mels).to(dtype)
    lengths = make_lengths(b, t)
    w, mel, lengths = {k: v.to(device) for k, v in w.items()}, mel.to(device), lengths.to(device)
    tiles = None if tiling is None else dict(K.TILES[tiling][dtype])
    with poisoned():
        x, n = K.subsample(mel, lengths, w, tiles=tiles)
    x_hi, n_hi = reference_exact(mel, lengths, w)
    assert x.dtype == dtype and x.shape == x_hi.shape
    assert n.dtype == torch.int64 and torch.equal(n.cpu(), n_hi.cpu())
    x, x_hi = x.double().cpu(), x_hi.double().cpu()
    if dtype == torch.float32:
        return assert_close("subsample", x_hi, x)
    x16, _ = subsample_ref(mel, lengths, w)
    err, err_ref = rel_err(x_hi, x), rel_err(x_hi, x16.double().cpu())
    assert err <= 2 * err_ref, f"subsample bf16: relative error {err:.3g} > 2 x the bf16 reference's {err_ref:.3g}"
    return err


# (B, lookahead R, first chunk, n_mels, channels, biases, tiling); small shapes for the interpreter
CASES = [
    (1, 13, True, 16, 8, True, "interpreter"),
    (3, 13, False, 80, 8, True, "interpreter"),
    (3, 6, True, 16, 8, False, "interpreter"),
    (1, 6, False, 80, 8, False, "cuda"),
    (3, 1, True, 16, 8, True, "interpreter"),
    (1, 1, False, 80, 40, True, "interpreter"),
    (17, 0, True, 16, 8, True, "interpreter"),
    (3, 0, False, 80, 8, False, "interpreter"),
    (1, 0, True, 16, 40, True, "cuda"),
]


@pytest.mark.parametrize("b, r, first, n_mels, c, bias, tiling", [
    pytest.param(*case, id="B{}-R{}-{}-F{}-C{}-{}-{}".format(
        case[0], case[1], "first" if case[2] else "later", case[3], case[4], "bias" if case[5] else "nobias",
        case[6])) for case in CASES])
def test_subsample_fp32(b, r, first, n_mels, c, bias, tiling):
    run_case(b, mel_frames(r, first), n_mels, c, 24, torch.float32, bias, tiling=tiling)


@pytest.mark.parametrize("b, r, first, n_mels, c, tiling", [
    pytest.param(3, 13, False, 16, 8, "interpreter", id="B3-R13-later-F16-C8"),
    pytest.param(3, 1, False, 16, 40, "cuda", id="B3-R1-later-F16-C40-cuda"),
])
def test_subsample_bf16(b, r, first, n_mels, c, tiling):
    run_case(b, mel_frames(r, first), n_mels, c, 24, torch.bfloat16, True, tiling=tiling)


def test_subsample_rejects_wrong_mel_bins():
    w = make_weights(8, 16, 24, torch.float32)
    with pytest.raises(ValueError, match="does not match the model's n_mels"):
        K.subsample(torch.randn(1, 17, 20), torch.tensor([17]), w)


def test_subsample_rejects_unknown_tiles():
    """`tiles` overrides keys of the default table; another key is an error naming the known ones, and the default
    table itself is read-only."""
    w = make_weights(8, 16, 24, torch.float32)
    with pytest.raises(ValueError, match=r"unknown keys \['BLOCK_P'\]; known: \['stage1', 'stage2', 'conv0_dot'\]"):
        K.subsample(torch.randn(1, 17, 16), torch.tensor([17]), w, tiles={"BLOCK_P": 64})
    with pytest.raises(TypeError):
        K.TILES["cuda"][torch.float32]["stage1"] = (32, 32, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("r, first", [(13, True), (13, False), (1, True), (1, False)],
                         ids=["R13-first", "R13-later", "R1-first", "R1-later"])
@pytest.mark.parametrize("b", [1, 17, 256])
def test_subsample_gpu(b, r, first, dtype):
    run_case(b, mel_frames(r, first), 128, 256, 1024, dtype, True, device="cuda")


SM90_COMPILE = r'''
import torch
import ptxas_report as P

for dtype in (torch.float32, torch.bfloat16):
    for stage, r in P.subsample(dtype).items():  # the launcher's own choices on a GPU
        print(dtype, stage, r)
        assert r["spill"] == 0, (dtype, stage, r)
'''


def test_subsample_compiles_for_sm90_without_spills():
    """The interpreter does not run Triton's compiler: compile both kernels for sm_90 (H100) here, offline, with the
    launcher's GPU configuration at Nemotron's shape (256 channels), fp32 and bf16, and check ptxas spills nothing."""
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.fail("this triton build ships no ptxas (triton 3.6 does)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")])  # bench/ptxas_report.py
    r = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
