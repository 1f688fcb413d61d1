"""The 8x dw_striding causal subsampling frontend in Triton; matches `nemotron_engine.reference.subsample.subsample`.

mel [B, T0, F0] -> conv0 (full 3x3, 1 -> C) -> ReLU -> dw1 (depthwise 3x3) -> pw1 (1x1, C -> C) -> ReLU -> dw2 ->
pw2 -> ReLU -> flatten (c * F3 + f) -> Linear -> [B, T3, D]. Every 3x3 conv is causal, stride 2, with (2, 1) zeros
around both axes, so T_{k+1} = T_k // 2 + 1 and F_{k+1} = F_k // 2 + 1 (128 -> 65 -> 33 -> 17 mel bins).

Two kernels and one GEMM:

1. `_subsample_stage1_fwd_kernel`: conv0 + ReLU + dw1 + pw1 + ReLU -> y1 [B, T2, F2, C]. A program owns BLOCK_P
   output positions (t2, f2) of one stream and BLOCK_CO output channels. conv0's output y0 [B, C, T1, F1] (4 MB per
   stream in fp32 at Nemotron sizes, the largest activation of the model) never leaves the chip: for each of dw1's
   9 taps, the y0 values it reads are recomputed from the mel patch, i.e. conv0 is done ~2.25x over (one extra
   row and column per output) in exchange for not writing and re-reading y0. bf16 recomputes them as a
   [BLOCK_P, 16] x [16, BLOCK_CI] tensor-core product (the 9 conv0 taps padded to 16), fp32 as 9 outer products
   on the FMA units (see TILES). The dw1 result is the A operand of pw1's product, accumulated over input-channel
   blocks, so it is never stored either. (The pw1 product is done here, not by cuBLAS, to keep dw1's output on
   chip: 1 MB per stream in fp32 that would otherwise be written and read back.)
2. `_subsample_stage2_fwd_kernel`: dw2 + pw2 + ReLU -> y2 [B, T3, C * F3], stored at the flattened index
   c * F3 + f, so the output Linear is a plain row-major GEMM with no reshape; it also writes the output lengths.
3. The output Linear [B * T3, C * F3] x [C * F3, D] is `torch.nn.functional.linear` (cuBLAS): a plain dense GEMM
   with a large K (4352) that cuBLAS runs near the device's peak (full-precision SGEMM for fp32 under the default
   `torch.backends.cuda.matmul.allow_tf32 = False`, tensor cores for bf16), and there is nothing left to fuse into
   it (its input is already in its final layout; its epilogue is the bias). The reference ends with the same call.

`conv_stages` launches the two kernels (the microbenchmark also times it alone); `subsample` adds the Linear.

The time mask (frames t >= n_k zeroed, n_{k+1} = n_k // 2 + 1) is applied where the reference applies it: mel
frames t0 >= n0 read as zeros, y0 frames t1 >= n1 are zero, and after each pointwise conv the frames t >= n_k are
zero (the masks the reference applies before the pointwise convs and before the ReLUs only touch those frames,
which the pointwise result at the same frame overwrites with zero anyway). Lengths must be non-negative.

Precision: accumulation is fp32; fp32 products use `input_precision="ieee"` (Triton's default tf32 would miss
1e-5). For bf16 the products take bf16 operands (tensor cores), rounding the on-chip dw outputs to bf16 as the
reference does; y1 and y2 are stored in the input dtype. Under the interpreter (CPU tensors) the bf16 operands
are rounded to bf16 and multiplied in fp32, because the interpreter's dot does not support bf16, and roundings
to bf16 are done by hand (`_common.cast_rne`), because the interpreter's cast truncates.

Loops over channels have constexpr bounds (C): under the interpreter with numpy >= 2 a loop bound that is a kernel
argument fails (`int()` of a 1-element array).
"""
from __future__ import annotations

from types import MappingProxyType

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import cast_rne, launch_config


@triton.jit
def _subsample_stage1_fwd_kernel(
    mel,  # [B, T0, F0]
    lengths,  # [B] int64 valid mel frames
    w0,  # [C, 9] conv0 weight (kt * 3 + kf)
    b0,  # [C]
    w1,  # [C, 9] dw1 weight
    b1,  # [C]
    wp,  # [C_out, C_in] pw1 weight
    bp,  # [C]
    y1,  # [B, T2, F2, C] out
    T0, F0, T1, F1, T2, F2,
    C: tl.constexpr,  # channels (constexpr: loop bounds must be Python ints under the interpreter with numpy 2)
    HAS_BIAS: tl.constexpr,
    MM_DTYPE: tl.constexpr,  # dtype of the product operands: the input dtype, or fp32 under the interpreter
    ROUND_BF16: tl.constexpr,  # bf16 under the interpreter: round by hand (see _common.cast_rne)
    CONV0_DOT: tl.constexpr,  # conv0 as a product (tensor cores) or as 9 outer products (FMA)
    BLOCK_P: tl.constexpr,
    BLOCK_CI: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):
    i_p, i_co, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    X_DTYPE = mel.dtype.element_ty
    n0 = tl.load(lengths + i_b)
    n1 = n0 // 2 + 1
    n2 = n1 // 2 + 1
    # the stream's base pointers (64-bit); offsets within a stream are 32-bit
    mel += i_b * T0 * F0
    y1 += i_b * T2 * F2 * C

    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] flat output position t2 * F2 + f2
    m_p = o_p < T2 * F2
    t2 = o_p // F2
    f2 = o_p % F2
    # conv0 taps kt0 * 3 + kf0, padded from 9 to 16 (the smallest K of a product)
    o_k = tl.arange(0, 16)
    m_k = o_k < 9
    kt0 = o_k // 3
    kf0 = o_k % 3
    o_co = i_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    m_co = o_co < C

    b_acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for ci in range(0, C, BLOCK_CI):
        o_ci = ci + tl.arange(0, BLOCK_CI)
        m_ci = o_ci < C
        if CONV0_DOT:
            b_w0 = tl.load(w0 + o_ci[None, :] * 9 + o_k[:, None], mask=m_k[:, None] & m_ci[None, :], other=0.)
            b_w0 = b_w0.to(MM_DTYPE)  # [16, BLOCK_CI]
        b_dw = tl.zeros([BLOCK_P, BLOCK_CI], dtype=tl.float32)
        if HAS_BIAS:
            b_b0 = tl.load(b0 + o_ci, mask=m_ci, other=0.).to(tl.float32)
            b_dw += tl.load(b1 + o_ci, mask=m_ci, other=0.).to(tl.float32)[None, :]
        for k1 in range(9):  # a loop, not unrolled: the taps then share registers
            # the y0 position dw1's tap k1 reads; outside [0, T1) x [0, F1) it is dw1's zero padding, at t1 >= n1
            # the time mask
            t1 = 2 * t2 - 2 + k1 // 3
            f1 = 2 * f2 - 2 + k1 % 3
            m_1 = m_p & (t1 >= 0) & (t1 < T1) & (t1 < n1) & (f1 >= 0) & (f1 < F1)
            if CONV0_DOT:
                # conv0 at (t1, f1) as [BLOCK_P, 16] mel taps x [16, BLOCK_CI] weights
                t0 = 2 * t1[:, None] - 2 + kt0[None, :]
                f0 = 2 * f1[:, None] - 2 + kf0[None, :]
                m_0 = m_1[:, None] & m_k[None, :] & (t0 >= 0) & (t0 < T0) & (t0 < n0) & (f0 >= 0) & (f0 < F0)
                b_x = tl.load(mel + t0 * F0 + f0, mask=m_0, other=0.).to(MM_DTYPE)
                b_y0 = tl.dot(b_x, b_w0, input_precision="ieee")
            else:
                # conv0 at (t1, f1) as 9 outer products (fewer registers than an FMA product, no padding to 16)
                b_y0 = tl.zeros([BLOCK_P, BLOCK_CI], dtype=tl.float32)
                for k0 in tl.static_range(9):
                    t0 = 2 * t1 - 2 + k0 // 3
                    f0 = 2 * f1 - 2 + k0 % 3
                    m_0 = m_1 & (t0 >= 0) & (t0 < T0) & (t0 < n0) & (f0 >= 0) & (f0 < F0)
                    b_x = tl.load(mel + t0 * F0 + f0, mask=m_0, other=0.).to(tl.float32)
                    b_w = tl.load(w0 + o_ci * 9 + k0, mask=m_ci, other=0.).to(tl.float32)
                    b_y0 += b_x[:, None] * b_w[None, :]
            if HAS_BIAS:
                b_y0 += b_b0[None, :]
            b_y0 = tl.where(m_1[:, None], tl.maximum(b_y0, 0.), 0.)
            b_w1 = tl.load(w1 + o_ci * 9 + k1, mask=m_ci, other=0.).to(tl.float32)
            b_dw += b_y0 * b_w1[None, :]
        b_wp = tl.load(wp + o_co[None, :] * C + o_ci[:, None], mask=m_ci[:, None] & m_co[None, :], other=0.)
        b_dw = cast_rne(b_dw, X_DTYPE, ROUND_BF16).to(MM_DTYPE)
        b_acc = tl.dot(b_dw, b_wp.to(MM_DTYPE), b_acc, input_precision="ieee")
    if HAS_BIAS:
        b_acc += tl.load(bp + o_co, mask=m_co, other=0.).to(tl.float32)[None, :]
    b_acc = tl.where((t2 < n2)[:, None], tl.maximum(b_acc, 0.), 0.)
    p_y = y1 + o_p[:, None] * C + o_co[None, :]
    tl.store(p_y, cast_rne(b_acc, X_DTYPE, ROUND_BF16), mask=m_p[:, None] & m_co[None, :])


@triton.jit
def _subsample_stage2_fwd_kernel(
    y1,  # [B, T2, F2, C] (zero at frames t2 >= n2)
    lengths,  # [B] int64 valid mel frames
    w2,  # [C, 9] dw2 weight
    b2,  # [C]
    wp,  # [C_out, C_in] pw2 weight
    bp,  # [C]
    y2,  # [B, T3, C * F3] out, flattened c * F3 + f
    n_out,  # [B] int64 out: output lengths
    T2, F2, T3, F3,
    C: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MM_DTYPE: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_CI: tl.constexpr,
    BLOCK_CO: tl.constexpr,
):
    i_p, i_co, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    X_DTYPE = y1.dtype.element_ty
    n3 = ((tl.load(lengths + i_b) // 2 + 1) // 2 + 1) // 2 + 1
    tl.store(n_out + i_b, n3, mask=(i_p == 0) & (i_co == 0))
    y1 += i_b * T2 * F2 * C
    y2 += i_b * T3 * C * F3

    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] flat output position t3 * F3 + f3
    m_p = o_p < T3 * F3
    t3 = o_p // F3
    f3 = o_p % F3
    o_co = i_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    m_co = o_co < C

    b_acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    for ci in range(0, C, BLOCK_CI):
        o_ci = ci + tl.arange(0, BLOCK_CI)
        m_ci = o_ci < C
        b_dw = tl.zeros([BLOCK_P, BLOCK_CI], dtype=tl.float32)
        if HAS_BIAS:
            b_dw += tl.load(b2 + o_ci, mask=m_ci, other=0.).to(tl.float32)[None, :]
        for k in range(9):  # a loop, not unrolled: the taps then share registers
            t2 = 2 * t3 - 2 + k // 3
            f2 = 2 * f3 - 2 + k % 3
            m_2 = m_p & (t2 >= 0) & (t2 < T2) & (f2 >= 0) & (f2 < F2)
            p_x = y1 + (t2 * F2 + f2)[:, None] * C + o_ci[None, :]
            b_x = tl.load(p_x, mask=m_2[:, None] & m_ci[None, :], other=0.).to(tl.float32)
            b_w = tl.load(w2 + o_ci * 9 + k, mask=m_ci, other=0.).to(tl.float32)
            b_dw += b_x * b_w[None, :]
        b_wp = tl.load(wp + o_co[None, :] * C + o_ci[:, None], mask=m_ci[:, None] & m_co[None, :], other=0.)
        b_dw = cast_rne(b_dw, X_DTYPE, ROUND_BF16).to(MM_DTYPE)
        b_acc = tl.dot(b_dw, b_wp.to(MM_DTYPE), b_acc, input_precision="ieee")
    if HAS_BIAS:
        b_acc += tl.load(bp + o_co, mask=m_co, other=0.).to(tl.float32)[None, :]
    b_acc = tl.where((t3 < n3)[:, None], tl.maximum(b_acc, 0.), 0.)
    p_y = y2 + t3[:, None] * (C * F3) + o_co[None, :] * F3 + f3[:, None]
    tl.store(p_y, cast_rne(b_acc, X_DTYPE, ROUND_BF16), mask=m_p[:, None] & m_co[None, :])


# The default launch configuration, read-only, per device kind ("cuda", or "interpreter" for any other device) and
# dtype: for each stage (BLOCK_P output positions, BLOCK_CI input channels per step, num_warps), and how conv0 is
# computed (conv0_dot). A caller overrides some of these keys with `subsample(..., tiles=...)` (the sweep, the
# tests). The GPU tiles were chosen by compiling for sm_90 (Triton's bundled ptxas; the test
# test_subsample_compiles_for_sm90_without_spills repeats it; `python bench/ptxas_report.py --only subsample`
# prints it) and reading the register use: no spills, 116-151 registers per thread; they are not yet tuned by
# timing. fp32 computes conv0 as FMAs (an FMA-unit product of the 9 taps padded to 16 took 255 registers and
# spilled), bf16 as a tensor-core product. The interpreter's cost is per program and per operation, not per element,
# so on the CPU a program takes a whole stream's positions (up to 1024) and conv0 is one product; tests also run
# the GPU configuration there, by passing TILES["cuda"][dtype] as `tiles`.
TILES = MappingProxyType({
    "cuda": MappingProxyType({
        torch.float32: MappingProxyType({"stage1": (64, 32, 16), "stage2": (64, 16, 16), "conv0_dot": False}),
        torch.bfloat16: MappingProxyType({"stage1": (64, 32, 8), "stage2": (64, 32, 16), "conv0_dot": True}),
    }),
    "interpreter": MappingProxyType({
        torch.float32: MappingProxyType({"stage1": (1024, 32, 4), "stage2": (1024, 32, 4), "conv0_dot": True}),
        torch.bfloat16: MappingProxyType({"stage1": (1024, 32, 4), "stage2": (1024, 32, 4), "conv0_dot": True}),
    }),
})


def _out_size(n: int) -> int:
    return n // 2 + 1


def subsample(
    mel: torch.Tensor,  # [B, T, n_mels]
    lengths: torch.Tensor,  # [B] int64 valid mel frames
    w: dict,  # engine keys under "subsample." (biases optional: all present or all absent)
    tiles: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample mel frames 8x in time: returns (x [B, T3, D] in mel's dtype, lengths [B] int64).

    Parameters
    ----------
    mel : [B, T, F] float32 or bfloat16, the dtype of the weights
    lengths : [B] int64 (or int32), valid frames per stream (>= 0; frames beyond are read as zeros)
    w : conv0/dw1/pw1/dw2/pw2/out .weight and .bias, as grouped in `Model.sub`
    tiles : overrides of the launch configuration, keys of TILES[kind][dtype] ("stage1", "stage2": (BLOCK_P,
        BLOCK_CI, num_warps); "conv0_dot"); the rest comes from TILES for mel's device and dtype. Unknown keys are a
        ValueError.

    >>> x, n = subsample(mel, torch.tensor([105], device="cuda"), model.sub)   # 105 mel frames -> 14 frames
    """
    y2, n = conv_stages(mel, lengths, w, tiles)
    return F.linear(y2, w["out.weight"], w.get("out.bias")), n


def conv_stages(
    mel: torch.Tensor,  # [B, T, n_mels]
    lengths: torch.Tensor,  # [B]
    w: dict,
    tiles: dict | None = None,  # overrides of TILES[kind][dtype], as in `subsample`
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two Triton kernels of `subsample` (everything but the output Linear): (y2 [B, T3, C * F3], lengths [B])."""
    B, T0, F0 = mel.shape
    C = w["conv0.weight"].shape[0]
    T1, F1 = _out_size(T0), _out_size(F0)
    T2, F2 = _out_size(T1), _out_size(F1)
    T3, F3 = _out_size(T2), _out_size(F2)
    if w["out.weight"].shape[1] != C * F3:
        raise ValueError(f"out.weight has {w['out.weight'].shape[1]} input features, but {F0} mel bins and {C} "
                         f"channels give {C} * {F3} = {C * F3}: the mel input does not match the model's n_mels")
    has_bias = "conv0.bias" in w
    mel = mel.contiguous()
    lengths = lengths.contiguous()
    dev, dt = mel.device, mel.dtype
    mm_dtype = tl.float32 if dt == torch.float32 or dev.type != "cuda" else tl.bfloat16 if dt == torch.bfloat16 \
        else tl.float16
    round_bf16 = dt == torch.bfloat16 and dev.type != "cuda"
    tiles = launch_config(TILES["cuda" if dev.type == "cuda" else "interpreter"][
        torch.float32 if dt == torch.float32 else torch.bfloat16], tiles)

    def wt(name, shape):
        return w[name].reshape(shape).contiguous()

    w0, w1, w2 = wt("conv0.weight", (C, 9)), wt("dw1.weight", (C, 9)), wt("dw2.weight", (C, 9))
    wp1, wp2 = wt("pw1.weight", (C, C)), wt("pw2.weight", (C, C))
    b0, b1, bp1, b2, bp2 = ((w[f"{k}.bias"] if has_bias else w0) for k in ("conv0", "dw1", "pw1", "dw2", "pw2"))

    y1 = torch.empty(B, T2, F2, C, dtype=dt, device=dev)
    y2 = torch.empty(B, T3, C * F3, dtype=dt, device=dev)
    n = torch.empty(B, dtype=torch.int64, device=dev)
    if B == 0:
        return y2, n
    block_co = min(max(triton.next_power_of_2(C), 16), 256)

    block_p, block_ci, num_warps = tiles["stage1"]
    block_p = min(block_p, max(triton.next_power_of_2(T2 * F2), 16))
    grid = (triton.cdiv(T2 * F2, block_p), triton.cdiv(C, block_co), B)
    _subsample_stage1_fwd_kernel[grid](
        mel, lengths, w0, b0, w1, b1, wp1, bp1, y1, T0, F0, T1, F1, T2, F2, C,
        HAS_BIAS=has_bias, MM_DTYPE=mm_dtype, ROUND_BF16=round_bf16, CONV0_DOT=tiles["conv0_dot"],
        BLOCK_P=block_p, BLOCK_CI=block_ci, BLOCK_CO=block_co, num_warps=num_warps,
    )
    block_p, block_ci, num_warps = tiles["stage2"]
    block_p = min(block_p, max(triton.next_power_of_2(T3 * F3), 16))
    grid = (triton.cdiv(T3 * F3, block_p), triton.cdiv(C, block_co), B)
    _subsample_stage2_fwd_kernel[grid](
        y1, lengths, w2, b2, wp2, bp2, y2, n, T2, F2, T3, F3, C,
        HAS_BIAS=has_bias, MM_DTYPE=mm_dtype, ROUND_BF16=round_bf16,
        BLOCK_P=block_p, BLOCK_CI=block_ci, BLOCK_CO=block_co, num_warps=num_warps,
    )
    return y2, n
