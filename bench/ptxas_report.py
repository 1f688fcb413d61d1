"""Registers and spills of the GPU kernels for sm_90 (H100), compiled offline: no GPU needed.

    python bench/ptxas_report.py                   # every kernel and every variant bench/sweep_kernels.py times
    python bench/ptxas_report.py --only attention  # or subsample, conv_module, decoder

The Triton kernels are compiled with Triton's own compiler and its bundled ptxas at Nemotron's shapes, with the
launch configurations their launchers use on a GPU (or a variant's); the CUDA decoder kernels with nvcc
(`-Xptxas -v`), when nvcc is found. Each line: kernel, configuration, registers per thread, bytes of spill stores.
The tests `*_compiles_for_sm90*` call the same functions and assert on them; this script prints what they see, and
is where README figures on registers and spills come from.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
DT = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def _compile(kernel, sig: dict, constexprs: dict, options: dict) -> dict:
    """{"regs": registers per thread, "spill": bytes of spill stores} of one Triton kernel for sm_90a."""
    # what the JIT specialises at run time: 16-byte aligned pointers (and, where given, strides)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names)
             if sig[n].startswith("*") or sig[n] == "i32_div16"}
    sig = {n: "i32" if t == "i32_div16" else t for n, t in sig.items()}
    c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        Path(ptx).write_text(c.asm["ptx"])
        r = subprocess.run([PTXAS, "-arch=sm_90a", "-v", ptx, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, check=True)
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", r.stderr)]
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", r.stderr)]
    return {"regs": max(regs), "spill": max(spills, default=0)}


def attention(dtype, tuning: dict | None = None) -> dict:
    """paged_attention at dh = 128, T = 14, C = 70, 16-row pages, with the launcher's config (and `tuning`)."""
    from nemotron_engine.kernels.attention import _config, _paged_attention_fwd_kernel as K

    cfg = _config(14, 70, 128, 16, dtype, interpreted=False)
    cfg.update(tuning or {})
    opts = {k: cfg.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in cfg}
    ptrs = ("q", "k_new", "v_new", "k_pages", "v_pages", "pos", "bias_u", "bias_v", "out")
    ints = ("table", "slots", "frames", "lengths", "lookahead")
    strides = ("s_qb", "s_qt", "s_kb", "s_kt", "s_vb", "s_vt", "s_ob", "s_ot", "s_kp", "s_kr", "s_vp", "s_vr", "s_ph",
               "s_pr", "s_uh", "s_vh")
    sig = {n: "constexpr" if n in cfg else "*" + DT[dtype] if n in ptrs else "*i64" if n in ints
           else "fp32" if n == "sm_scale" else "i32_div16" if n in strides else "i32" for n in K.arg_names}
    return _compile(K, sig, cfg, opts)


def subsample(dtype, change: dict | None = None) -> dict:
    """{stage: result} of the two subsampling kernels at 256 channels, the GPU tile table (with `change`)."""
    from nemotron_engine.kernels import subsample as S

    c = 256
    tiles = {**S.TILES["cuda"][dtype], **(change or {})}
    mm = tl.float32 if dtype == torch.float32 else tl.bfloat16
    out = {}
    for kernel, stage in ((S._subsample_stage1_fwd_kernel, "stage1"), (S._subsample_stage2_fwd_kernel, "stage2")):
        block_p, block_ci, num_warps = tiles[stage]
        cfg = dict(C=c, HAS_BIAS=True, MM_DTYPE=mm, ROUND_BF16=False, BLOCK_P=block_p, BLOCK_CI=block_ci,
                   BLOCK_CO=min(max(triton.next_power_of_2(c), 16), 256))
        if stage == "stage1":
            cfg["CONV0_DOT"] = tiles["conv0_dot"]
        ints = ("lengths", "n_out")
        sig = {n: "constexpr" if n in cfg else "*i64" if n in ints else "i32" if n[0] in "TF" else "*" + DT[dtype]
               for n in kernel.arg_names}
        out[stage] = _compile(kernel, sig, cfg, {"num_warps": num_warps})
    return out


def conv_module(dtype, change: dict | None = None) -> dict:
    """{kernel and case: result} of the conv-module kernels at d_model 1024, kernel 9 (T = 1 and 14, both norms),
    the GPU tile table (with `change`)."""
    from nemotron_engine.kernels import conv_module as CM

    d, k = 1024, 9
    tiles = {**CM.TILES["cuda"], **(change or {})}
    block_d = triton.next_power_of_2(d)
    cases = [("glu", CM._conv_glu_fwd_kernel, 4, dict(KM1=k - 1, ROUND_BF16=False, BLOCK_R=tiles["glu_rows"],
                                                       BLOCK_D=min(tiles["glu_d"], block_d)))]
    for t in (1, 14):
        for layer_norm in (True, False):
            cfg = dict(K=k, HAS_BIAS=False, LAYER_NORM=layer_norm, ROUND_BF16=False,
                       BLOCK_T=min(triton.next_power_of_2(t), max(1, tiles["norm_elems"] // block_d)),
                       BLOCK_D=block_d, BLOCK_K=triton.next_power_of_2(k - 1), BLOCK_DC=min(block_d, 256))
            cases.append((f"dw_norm T={t} {'LN' if layer_norm else 'BN'}", CM._conv_dw_norm_fwd_kernel,
                          tiles["norm_warps"], cfg))
    out = {}
    for name, kernel, num_warps, cfg in cases:
        sig = {n: "constexpr" if n in cfg else "*i64" if n == "slots" else "*u8" if n == "pad"
               else "fp32" if n == "eps" else "*fp32" if n in ("n_mean", "n_var")
               else "i32" if n in ("T", "D") or n.startswith("s_") else "*" + DT[dtype] for n in kernel.arg_names}
        out[name] = _compile(kernel, sig, cfg, {"num_warps": num_warps})
    return out


def decoder() -> dict | None:
    """{kernel instantiation: result} of csrc/rnnt_greedy.cu for sm_90 (nvcc -Xptxas -v); None without nvcc or
    pybind11 (a build requirement of the extension, which pip installs only into its isolated build environment)."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        return None
    try:
        import pybind11
    except ImportError:
        return None

    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-Xptxas", "-v", "-c", str(ROOT / "csrc/rnnt_greedy.cu"),
                            f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc/include'}", f"-I{pybind11.get_include()}",
                            f"-I{__import__('sysconfig').get_paths()['include']}", "-o", os.path.join(d, "r.o")],
                           capture_output=True, text=True, check=True)
    out, name = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '_ZN8nemotron(\d+)(\w+)'", line)
        if m:  # e.g. _ZN8nemotron18rnnt_greedy_kernelINS_4bf16ELi4ELb1EEEv...: kernel, storage type, G, kVec
            kind, args = m[2][: int(m[1])], m[2][int(m[1]):]
            g, v = re.search(r"Li(\d+)ELb(\d)", args).groups()
            name = f"{kind} {'bf16' if 'bf16' in args else 'fp32'} G={g} {'vec' if v == '1' else 'scalar'}"
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            out[name] = {"spill": int(m[1])}
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            out[name]["regs"] = int(m[1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["attention", "subsample", "conv_module", "decoder"])
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sweep_kernels as sk

    def show(kernel, config, r):
        print(f"{kernel:<40} {config:<48} {r['regs']:>4} registers {r['spill']:>6} bytes spilled", flush=True)

    for dtype in (torch.float32, torch.bfloat16):
        if a.only in (None, "attention"):
            for tuning in [{}, {"maxnreg": 128}] + [t for t in sk.ATTENTION if t and t != {"maxnreg": 128}]:
                show(f"attention {DT[dtype]}", str(tuning or "default"), attention(dtype, tuning))
        if a.only in (None, "subsample"):
            for change in sk.SUBSAMPLE:
                for stage, r in subsample(dtype, change).items():
                    show(f"subsample {DT[dtype]} {stage}", str(change or "default"), r)
        if a.only in (None, "conv_module"):
            for change in sk.CONV:
                for name, r in conv_module(dtype, change).items():
                    show(f"conv_module {DT[dtype]} {name}", str(change or "default"), r)
    if a.only in (None, "decoder"):
        res = decoder()
        if res is None:
            print("decoder: nvcc or pybind11 not found (pip install pybind11)")
        for name, r in (res or {}).items():
            show(name, "", r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
