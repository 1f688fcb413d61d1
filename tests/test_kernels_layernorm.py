"""kernels/layernorm.py against F.layer_norm (and the residual add of layer_step), on fresh random inputs.

fp32 within the suite's 1e-5; bf16 within twice the error of F.layer_norm run in bf16, both against float64.
Outputs come from fresh buffers the kernel must fill completely (checked by the NaN test of rel_err).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemotron_engine.kernels.layernorm import add_layer_norm, layer_norm
from tolerances import assert_close, rel_err

# (leading shape, D): odd row counts, D a power of two or not, Nemotron's 1024
SHAPES = [((3, 7), 64), ((17,), 176), ((2, 14), 1024), ((1, 1), 1000)]


def inputs(lead, D, dtype, device, seed=0):
    torch.manual_seed(seed)
    x = (torch.randn(*lead, D, device=device) * 3 + 1).to(dtype)
    y = torch.randn(*lead, D, device=device).to(dtype)
    w = (1 + 0.3 * torch.randn(D, device=device)).to(dtype)
    b = (0.2 * torch.randn(D, device=device)).to(dtype)
    return x, y, w, b


def check(lead, D, dtype, device, eps=1e-5):
    x, y, w, b = inputs(lead, D, dtype, device)
    res, z = add_layer_norm(x, y, 0.5, w, b, eps)
    z1 = layer_norm(x, w, b, eps)
    assert res.shape == z.shape == z1.shape == x.shape and z.dtype == z1.dtype == dtype
    if dtype == torch.float32:
        ref_res = x + 0.5 * y
        assert_close("residual", ref_res, res)
        assert_close("add_layer_norm", F.layer_norm(ref_res, (D,), w, b, eps), z)
        assert_close("layer_norm", F.layer_norm(x, (D,), w, b, eps), z1)
        return
    # bf16: the residual is x + 0.5 y rounded once (0.5 y is exact), the reference's bf16 add rounds the same
    assert torch.equal(res, x + 0.5 * y)
    for name, inp, out in (("add_layer_norm", res, z), ("layer_norm", x, z1)):
        exact = F.layer_norm(inp.double(), (D,), w.double(), b.double(), eps)
        err = rel_err(exact, out.double())
        err_ref = rel_err(exact, F.layer_norm(inp, (D,), w, b, eps).double())
        assert err <= 2 * err_ref, f"{name} bf16: error {err:.3g} > 2 x the bf16 reference's {err_ref:.3g}"


@pytest.mark.parametrize("lead,D", [pytest.param(*c, id="N{}-D{}".format("x".join(map(str, c[0])), c[1]))
                                    for c in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_layer_norm(lead, D, dtype):
    check(lead, D, dtype, "cpu")


def test_layer_norm_without_affine_and_strided_rows():
    x, _, _, _ = inputs((5,), 96, torch.float32, "cpu")
    wide = torch.cat([x, x], dim=-1)[:, :96]  # rows 192 apart, unit last stride
    assert_close("no affine", F.layer_norm(x, (96,), None, None, 1e-5), layer_norm(wide, None, None, 1e-5))


def test_layer_norm_rejects_bad_inputs():
    x, y, w, b = inputs((2,), 32, torch.float32, "cpu")
    with pytest.raises(ValueError, match="weight must be a contiguous \\[32\\] tensor"):
        layer_norm(x, w[:16], b, 1e-5)
    with pytest.raises(TypeError, match="supports float32 and bfloat16, got torch.float16"):
        layer_norm(x.half(), None, None, 1e-5)
    with pytest.raises(ValueError, match="must match x"):
        add_layer_norm(x, y[:1], 0.5, w, b, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [64 * 14, 256 * 2, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_layer_norm_gpu(rows, dtype):
    check((rows,), 1024, dtype, "cuda")
