"""bench/sweep_kernels.py's variants, checked here so that a GPU run spends no time on a variant that cannot work.

The sweep itself times on a GPU. Here, under Triton's interpreter at small shapes, every attention `tuning`, every
subsampling and conv-module tile table it lists runs and gives the default configuration's output (fp32 within
1e-5); every decoder variant passes the `_ext.rnnt_greedy` wrapper's argument checks (it stops at the CUDA check);
and without a GPU the script says so and exits 0.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch

import test_kernels_attention as ta
import test_kernels_subsample as ts
from nemotron_engine import _ext
from nemotron_engine.kernels import attention as attention_k
from nemotron_engine.kernels import conv_module as conv_k
from nemotron_engine.kernels import subsample as sub_k
from tolerances import RTOL, rel_err

ROOT = Path(__file__).resolve().parents[1]


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep_kernels", ROOT / "bench" / "sweep_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SWEEP = _sweep()


def _gpu_tiles(default, change: dict) -> dict:
    """`tiles` for a launcher on the CPU: every key of the GPU's default table (`default`, e.g. TILES["cuda"]), with
    `change` applied, so the GPU tiling runs under the interpreter."""
    return {**default, **change}


def test_sweep_without_gpu_exits_cleanly(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU machine too
    assert SWEEP.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.parametrize("tuning", SWEEP.ATTENTION, ids=lambda t: "-".join(f"{k}{v}" for k, v in t.items()) or "default")
def test_attention_variant(tuning):
    assert set(tuning) <= set(attention_k.TUNABLE)
    cache, slots, n, look, x = ta.make_case(3, 14, 1, 128, torch.float32, "cpu")
    want, _, _ = ta.run_kernel(cache, slots, n, look, x)
    got, _, _ = ta.run_kernel(cache, slots, n, look, x, tuning)
    assert rel_err(want, got) <= RTOL[torch.float32]


@functools.lru_cache(maxsize=None)
def _subsample_case():
    """(mel, lengths, weights, the default GPU tiling's output): 40 channels (more than one block of input channels
    at every BLOCK_CI), a later chunk at R = 1 (small: the GPU tiles run slowly under the interpreter)."""
    torch.manual_seed(0)
    w = ts.make_weights(40, 16, 24, torch.float32)
    mel = torch.randn(2, ts.mel_frames(1, False), 16)
    lengths = ts.make_lengths(2, mel.shape[1])
    want, _ = sub_k.conv_stages(mel, lengths, w, tiles=_gpu_tiles(sub_k.TILES["cuda"][torch.float32], {}))
    return mel, lengths, w, want


@pytest.mark.parametrize("change", SWEEP.SUBSAMPLE[1:], ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_subsample_variant(change):
    assert set(change) <= set(sub_k.TILES["cuda"][torch.float32])
    mel, lengths, w, want = _subsample_case()
    got, _ = sub_k.conv_stages(mel, lengths, w, tiles=_gpu_tiles(sub_k.TILES["cuda"][torch.float32], change))
    assert rel_err(want, got) <= RTOL[torch.float32]


@pytest.mark.parametrize("change", SWEEP.CONV, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()) or "default")
def test_conv_variant(change):
    assert set(change) <= set(conv_k.TILES["cuda"])
    torch.manual_seed(0)
    b, t, d, k = 3, 14, 64, 9
    w = {"dw.weight": torch.randn(d, k) / 3, "norm.weight": 1 + 0.1 * torch.randn(d), "norm.bias": 0.1 * torch.randn(d)}
    a = torch.randn(b, t, 2 * d)
    pool0 = torch.randn(2, 5, d, k - 1)
    slots = torch.tensor([3, 0, 4])
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[1, 9:] = True
    out = []
    for c in ({}, change):
        pool = pool0.clone()
        tiles = _gpu_tiles(conv_k.TILES["cuda"], c)
        out.append((conv_k.glu_conv_norm(a, pool, 1, slots, pad, w, "layer_norm", 1e-5, tiles=tiles), pool))
    (want, want_pool), (got, got_pool) = out
    assert rel_err(want, got) <= RTOL[torch.float32]
    assert torch.equal(want_pool, got_pool)


def test_decoder_variants_pass_the_wrapper_checks():
    """Each decoder variant's keyword arguments are accepted: the wrapper gets as far as the device check."""
    import test_decoder_cuda as td

    model = td.make_model("small", torch.float32, "cpu")
    a = td._args(model)
    for kw in SWEEP.DECODER:
        with pytest.raises(ValueError, match="f must be a CUDA tensor"):
            _ext.rnnt_greedy(**a, **kw)


def test_best_variant_summary():
    rows = [{"op": "attention", "dtype": "fp32", "B": 16, "variant": "default", "us": 10.0, "vs_default": 1.0,
             "within_tol": True},
            {"op": "attention", "dtype": "fp32", "B": 16, "variant": "maxnreg=128", "us": 5.0, "vs_default": 2.0,
             "within_tol": True},
            {"op": "attention", "dtype": "fp32", "B": 16, "variant": "num_stages=1", "us": 4.0, "vs_default": 2.5,
             "within_tol": False},
            {"op": "attention", "dtype": "fp32", "B": 16, "variant": "num_warps=4", "error": "RuntimeError()"}]
    (line,) = SWEEP.best(rows)
    assert "maxnreg=128" in line and "x2.00" in line
