"""End-to-end engine check and throughput on a CUDA device (run by scripts/gpu_check.sh).

    python bench/gpu_engine.py MODEL_DIR WAV... [--json OUT.json] [--streams 1 64 256 1024]

1. Parity of the paths: every file is transcribed, streaming, at every lookahead, by the reference on the CPU
   (backend "torch", fp32), the reference on the GPU (backend "torch", cuda) and the Triton + CUDA path
   (backend "triton", cuda), with either CUDA decoder kernel (the grid kernel through its own op table,
   `ops.triton_ops(device, decoder_kernel="grid")`: the engine does not offer it until it passes its GPU tests); their
   tokens must be identical (exit 1 otherwise).
2. CUDA graphs (`Engine(graphs=True)`, nemotron_engine/graphs.py): the same files, several streams at once so that
   batches are padded, through the captured graphs and through the same padded step run eagerly
   (`StepGraphs(capture=False)`): every encoder output must be the same bits and the tokens identical (exit 1
   otherwise); the tokens beside the engine without graphs (unpadded batches) are reported.
3. Throughput: N concurrent streams of the same files (cycled) through the Triton path, all pushed at once and
   drained; reports the real-time factor (audio seconds / wall seconds) and the mean step time per lookahead,
   beside the reference backend on the same GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nemotron_engine import Engine
from nemotron_engine.ops import triton_ops


# NEMOTRON_SKIP_GRID=1 (set by scripts/gpu_check.sh when the grid kernel's tests fail): the grid decoder is left out
SKIP_GRID = os.environ.get("NEMOTRON_SKIP_GRID") == "1"


def read_wav(path) -> np.ndarray:
    """16-bit PCM mono WAV -> float32 [N] (the stdlib reader: soundfile may be absent on a GPU box)."""
    import wave

    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != 16000:
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def transcribe_all(model_dir, pcms, lookahead_ms, **kw) -> list[list[int]]:
    with Engine(model_dir, max_streams=len(pcms), **kw) as eng:
        return [r.tokens for r in eng.transcribe_many(pcms, lookahead_ms)]


def graphs_check(model_dir, pcms, lookahead_ms: int, dtype=torch.float32) -> dict:
    """Captured graphs against the same padded step run eagerly, and against no graphs (module docstring, 2)."""
    from nemotron_engine.graphs import StepGraphs

    streams_audio = (pcms * 5)[:5]  # 5 streams: steps of 5 padded to 6, then 4, 3, 2, 1 as they end

    def run(graphs, capture=True):
        with Engine(model_dir, device="cuda", dtype=dtype, max_streams=8, keep_encoder_outputs=True,
                    graphs=graphs) as eng:
            if graphs and not capture:
                eng.graphs = StepGraphs(eng, capture=False)
            t0 = time.perf_counter()
            streams = []
            for x in streams_audio:
                s = eng.open_stream(lookahead_ms)
                s.push(x)
                s.finish()
                streams.append(s)
            while eng.pending():
                eng.step()
            torch.cuda.synchronize()
            return ([s.result().tokens for s in streams], [torch.cat(s.encoder_outputs) for s in streams],
                    eng.graph_report(), time.perf_counter() - t0)

    t0 = time.perf_counter()
    cap_tok, cap_enc, rep, cap_s = run(True)
    startup = time.perf_counter() - t0 - cap_s
    eag_tok, eag_enc, _, _ = run(True, capture=False)
    off_tok, off_enc, _, off_s = run(False)
    bits = all(torch.equal(a, b) for a, b in zip(cap_enc, eag_enc))
    return {"lookahead_ms": lookahead_ms, "dtype": str(dtype).replace("torch.", ""), "graphs": rep,
            "engine_start_s": round(startup, 2), "captured_vs_eager_same_bits": bits,
            "captured_vs_eager_same_tokens": cap_tok == eag_tok, "vs_no_graphs_same_tokens": cap_tok == off_tok,
            "vs_no_graphs_max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(cap_enc, off_enc)),
            "wall_s_graphs": round(cap_s, 3), "wall_s_no_graphs": round(off_s, 3),
            "ok": bits and cap_tok == eag_tok}


def throughput(model_dir, pcms, lookahead_ms, n, **kw) -> dict:
    audio_s = 0.0
    with Engine(model_dir, max_streams=n, **kw) as eng:
        # warm-up (Triton compilation, cuBLAS handles) on a few streams
        w = [eng.open_stream(lookahead_ms) for _ in range(min(n, 4))]
        for s in w:
            s.push(pcms[0])
            s.finish()
        for _ in eng.drain():
            pass
        for s in w:
            eng.close(s)
        streams = [eng.open_stream(lookahead_ms) for _ in range(n)]
        for i, s in enumerate(streams):
            x = pcms[i % len(pcms)]
            audio_s += len(x) / 16000
            s.push(x)
            s.finish()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        steps = 0
        while eng.pending():
            eng.step()
            steps += 1
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"streams": n, "lookahead_ms": lookahead_ms, "backend": kw.get("backend"), "audio_s": round(audio_s, 2),
            "wall_s": round(wall, 3), "rtfx": round(audio_s / wall, 1), "steps": steps,
            "ms_per_step": round(1000 * wall / max(steps, 1), 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("wavs", nargs="+")
    p.add_argument("--json", default=None)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 64, 512])
    a = p.parse_args(argv)
    # fp32 parity needs full-precision GEMMs and convolutions on the GPU (cuDNN allows TF32 by default)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pcms = [read_wav(w) for w in a.wavs]
    from nemotron_engine.config import ModelConfig

    cfg = ModelConfig.load(a.model)
    report = {"device": torch.cuda.get_device_name(), "parity": [], "throughput": []}
    grid_ops = triton_ops(torch.device("cuda"), decoder_kernel="grid")
    ok = True
    for r in cfg.lookaheads:
        ms = (r + 1) * cfg.frame_ms
        cpu = transcribe_all(a.model, pcms, ms, device="cpu", backend="torch")
        ref = transcribe_all(a.model, pcms, ms, device="cuda", backend="torch")
        tri = transcribe_all(a.model, pcms, ms, device="cuda", backend="triton")
        grid = tri if SKIP_GRID else transcribe_all(a.model, pcms, ms, device="cuda", backend=grid_ops)
        same = cpu == ref == tri == grid
        ok &= same
        row = {"lookahead_ms": ms, "files": len(pcms), "tokens": sum(map(len, cpu)), "identical": same,
               "cpu_vs_triton_mismatched_files": sum(x != y for x, y in zip(cpu, tri)),
               "triton_grid_decoder_vs_blocked_mismatched_files": sum(x != y for x, y in zip(tri, grid))}
        report["parity"].append(row)
        print(json.dumps(row), flush=True)
    report["graphs"] = []
    for r in (min(cfg.lookaheads), max(cfg.lookaheads)):
        for dt in (torch.float32, torch.bfloat16):
            try:
                row = graphs_check(a.model, pcms, (r + 1) * cfg.frame_ms, dt)
            except Exception as e:  # noqa: BLE001 (reported; the throughput runs go on)
                row = {"lookahead_ms": (r + 1) * cfg.frame_ms, "dtype": str(dt), "ok": False,
                       "error": f"{type(e).__name__}: {e}"[:600]}
            ok &= row["ok"]
            report["graphs"].append(row)
            print(json.dumps(row), flush=True)
    for r in (max(cfg.lookaheads), min(cfg.lookaheads)):
        ms = (r + 1) * cfg.frame_ms
        for n in a.streams:
            for backend, decoder in (("triton", "blocked"), (grid_ops, "grid"), ("torch", "-")):
                if SKIP_GRID and decoder == "grid":
                    continue
                if backend == "torch" and n > 64:
                    continue  # the reference's host-synchronising decoder loop: slow at large N, not the point
                row = throughput(a.model, pcms, ms, n, device="cuda", backend=backend)
                row["backend"], row["decoder_kernel"] = ("triton" if decoder == "grid" else backend), decoder
                report["throughput"].append(row)
                print(json.dumps(row), flush=True)
            try:  # the blocked decoder's Triton path again, with CUDA graphs
                row = throughput(a.model, pcms, ms, n, device="cuda", backend="triton", graphs=[ms])
                row["backend"], row["decoder_kernel"], row["graphs"] = "triton", "blocked", True
            except Exception as e:  # noqa: BLE001
                row = {"streams": n, "lookahead_ms": ms, "graphs": True, "error": f"{type(e).__name__}: {e}"[:300]}
            report["throughput"].append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
