"""Smoke test of the benchmark (nemotron_parity.bench, the steppers bench/bench_engine.py times) on a tiny model.

Runs `nemotron-engine bench`'s main() end to end on a 2-layer random model (build, convert, engine and NeMo
sweeps, JSON, PNG) with 1.5 s of speech and N = 1, 2, and checks the arithmetic (useful FLOPs from the shape,
bytes per stream, frame counts) against the model itself. Needs NeMo, espeak-ng and sox, like the parity tests.
"""
from __future__ import annotations

import json

import pytest
import torch

import models
import nemotron_parity.nemo_harness as H
from nemotron_parity import bench as B
from nemotron_engine.config import ModelConfig
from nemotron_engine.engine import Engine


@pytest.fixture(scope="module")
def tiny():
    """The tiny benchmark model (built once into the test cache): (Prepared, NeMo model)."""
    prep = B.prepare_model(B.SIZES["tiny"], models.cache_dir() / "bench")
    return prep, B.load_nemo_model(prep)


def test_useful_flops_of_the_full_shape():
    cfg = ModelConfig()  # the defaults are the Nemotron shape: 24 x 1024, ff 4096, kernel 9, 256 channels
    f = B.useful_flops_per_frame(cfg, 0)
    dense = f["feed_forward"] + f["attention_proj"] + f["conv_module"]
    assert dense == 2 * 24 * (2 * 2 * 1024 * 4096 + 4 * 1024 * 1024 + 3 * 1024 * 1024 + 1024 * 9)
    assert abs(dense / 1e9 - 1.158) < 1e-3  # the ~1.16 GFLOP per 80 ms frame of ANCHORS.md
    assert 1.17e9 < f["total"] < 1.21e9
    # a longer lookahead only widens the attention window (70 + R + 1 keys)
    assert B.useful_flops_per_frame(cfg, 13)["total"] - f["total"] == 24 * 6 * 1024 * 13
    b = B.bytes_per_stream(cfg)
    assert b["kv_cache"] == 2 * 24 * 70 * 1024 * 4
    assert b["conv_cache"] == 24 * 1024 * 8 * 4
    assert b["total"] > b["kv_cache"]


def test_flops_formula_counts_the_models_weights(tiny):
    prep, model = tiny
    cfg = Engine(prep.engine_dir).cfg
    f = B.useful_flops_per_frame(cfg, 0)
    # dense terms = 2 FLOPs per weight of every encoder layer matmul (linear_pos is a load-time table; the
    # position biases pos_bias_u/v [H, d_k] are additions)
    weights = sum(p.numel() for name, p in model.encoder.layers.named_parameters()
                  if p.dim() >= 2 and "linear_pos" not in name and "pos_bias" not in name)
    assert f["feed_forward"] + f["attention_proj"] + f["conv_module"] == 2 * weights
    # the subsampling's output Linear reads C x F3 features (F: 128 -> 65 -> 33 -> 17)
    c, f3 = cfg.subsampling_channels, ((cfg.n_mels // 2 + 1) // 2 + 1) // 2 + 1
    assert model.encoder.pre_encode.out.in_features == c * f3
    # NeMo's per-stream cache: layer inputs (70 frames) + conv cache, no projected K/V
    nb = B.nemo_cache_bytes_per_stream(model)
    assert nb["cache_last_channel"] == cfg.n_layers * 70 * cfg.d_model * 4


@pytest.mark.parametrize("r", [0, 1, 6, 13])
def test_stream_frames_match_the_harness(r):
    cfg = ModelConfig()
    for n in (0, 159, 160, 1280, 16000, 16000 + 7 * 160, 16000 + 9 * 160, 80000, 96123):
        assert B.stream_frames(cfg, n, r) == H.expected_stream_frames(n, r), (n, r)


def test_bench_main_tiny(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    rc = B.main(["--size", "tiny", "--cache-dir", str(models.cache_dir() / "bench"), "--out", str(out),
                 "--lookahead-ms", "80", "560", "--streams", "1", "2", "--audio-s", "1.5", "--threads", "1"])
    assert rc == 0
    assert torch.get_num_threads() == threads  # restored
    rep = json.loads((out / "bench.json").read_text())
    assert rep["machine"]["torch_threads"] == 1 and rep["machine"]["device"].startswith("cpu")
    assert rep["machine"]["sgemm_gflops"] > 0
    assert rep["model"]["n_layers"] == 2 and rep["model"]["random_weights"]
    recs = rep["records"]
    for provider in ("engine", "nemo"):
        for la in (80, 560):
            got = sorted(r["n_streams"] for r in recs if r["provider"] == provider and r["lookahead_ms"] == la)
            assert got == [1, 2], (provider, la, got)  # a tiny model is real time at N = 2: no early stop
    for r in recs:
        assert r["rtf"] > 0 and r["wall_s"] > 0 and r["steps"] > 0 and r["encoder_frames"] > 0
        assert r["useful_gflops"] > 0 and r["step_ms_p50"] <= r["step_ms_p90"]
        assert r["tokens"] > 0  # the calibrated model emits
        assert r["tokens_match"] == 1.0  # the engine's tokens equal NeMo's batched streaming, stream by stream
    for row in rep["summary"]:
        assert row["engine"]["max_rt_streams"] == 2 and row["engine"]["capped"]
        assert row["ratio_rtfx"] > 0 and row["ratio_rt_streams"] > 0 and row["tokens_match_min"] == 1.0
        assert row["goal_basis"] == "ratio_rt_streams" and "goal_met" in row
    mem = rep["bytes_per_stream"]
    assert mem["engine"]["bytes_per_stream"] > 0 and mem["nemo"]["report"]["total"] > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "80 ms |" in text and "560 ms |" in text and "bytes per stream" in text


def test_steppers_tiny(tiny):
    """The steady-state steps bench/bench_engine.py times: one chunk per stream per engine step, NeMo batches."""
    prep, model = tiny
    engine = Engine(prep.engine_dir)
    cfg = engine.cfg
    audios = B.bench_audio(models.cache_dir() / "bench", 2, 2.5)
    for la in (80, 1120):
        st = B.EngineStepper(engine, la, audios)
        for _ in range(3 if la == 1120 else 36):  # 36 x 80 ms: the streams are re-opened once
            st.setup()
            st.step()
        assert st.updates == [2] * len(st.updates)
        st.close()
        assert not engine.streams
        ns = B.NemoStepper(model, cfg.lookahead_from_ms(la), audios)
        for _ in range(3):
            ns.setup()
            ns.step()
        assert ns.steps == 3 and len(ns.nb.tokens()) == 2
