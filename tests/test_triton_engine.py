"""The engine on the Triton path (backend="triton"): here under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 without a GPU), on a CUDA device compiled. Token-exact parity with NeMo's own cache-aware
streaming, and every step's encoder output within 1e-5 of NeMo's, on random models of two variants (LayerNorm conv
without biases; BatchNorm conv with biases, xscaling and tied position biases)."""
import inspect
import os
import subprocess
import sys

import pytest
import torch

import models
import nemotron_parity.nemo_harness as H
from nemotron_engine import _ext
from nemotron_engine.decode_cuda import greedy_decode_pool
from nemotron_engine.engine import Engine
from nemotron_engine.ops import get_ops, triton_ops
from tolerances import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("variant", ["nemotron_like", "bias_bn_xscale"])
def test_triton_path_matches_nemo(variant):
    model, _, out = models.nemo_model(variant, 1234)
    engine = Engine(out, device=DEVICE, backend="triton", keep_encoder_outputs=True)
    cfg = engine.cfg
    # the interpreter runs every program in numpy: 1.5 s of two voices, the longest lookahead and a short one
    # (R = 1: ten steps, the rows before the stream start masked in the first four)
    utts = [(text, audio[:24000]) for text, audio in models.corpus()[:2]]
    lookaheads = [max(cfg.lookaheads), sorted(cfg.lookaheads)[1]]
    streams = {}
    for u, (_, audio) in enumerate(utts):
        for r in lookaheads:
            s = engine.open_stream((r + 1) * cfg.frame_ms)
            s.push(audio)
            s.finish()
            streams[(u, r)] = s
    for _ in engine.drain():
        pass
    emitted = 0
    for (u, r), s in streams.items():
        ref = H.nemo_stream(model, utts[u][1], [cfg.left_context, r])
        where = f"{variant} utt{u} R={r} (triton)"
        assert len(s.encoder_outputs) == len(ref.step_encoded), f"{where}: step count"
        for i, (a, b) in enumerate(zip(s.encoder_outputs, ref.step_encoded)):
            assert_close(f"{where} step {i} encoder output", b, a)
        assert s.result().tokens == ref.tokens, f"{where}: tokens differ"
        assert s.result().timestamps_ms == [t * cfg.frame_ms for t in ref.timestamps], f"{where}: timestamps"
        emitted += len(ref.tokens) > 0
    assert emitted >= len(streams) // 2, "the model must emit for this to test decoding"


def test_backend_is_checked():
    _, _, out = models.nemo_model("nemotron_like", 1234)
    with pytest.raises(ValueError, match="backend must be one of 'torch', 'cpu', 'triton', got 'cudnn'"):
        Engine(out, backend="cudnn")
    with pytest.raises(ValueError, match="decoder_kernel must be 'blocked' or 'grid', got 'warp'"):
        triton_ops(torch.device("cpu"), decoder_kernel="warp")
    with pytest.raises(ValueError, match="backend='cpu' runs on the CPU, not on cuda"):
        get_ops("cpu", torch.device("cuda"))
    assert "decoder_kernel" not in inspect.signature(Engine).parameters  # the grid kernel: benchmarks only


def test_triton_on_cuda_needs_the_extension():
    """No silent fallback to the reference decoder (a host sync per token): without the extension, an error that
    says why it is missing and how to build it."""
    if _ext.load_extension() is None:
        with pytest.raises(ValueError, match="needs the CUDA extension") as e:
            triton_ops(torch.device("cuda"))
        assert _ext.extension_error() in str(e.value) and "pip install -e ." in str(e.value)
    else:
        assert triton_ops(torch.device("cuda")).decode.func is greedy_decode_pool


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal")
def test_triton_on_cpu_needs_the_interpreter():
    """Kernels imported without TRITON_INTERPRET=1 are compiled kernels, which need a CUDA device: a clear error."""
    _, _, out = models.nemo_model("nemotron_like", 1234)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys; from nemotron_engine import Engine\n"
            "try:\n    Engine(sys.argv[1], backend='triton')\nexcept ValueError as e:\n    print(e); sys.exit(3)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "TRITON_INTERPRET=1" in r.stdout
    assert Engine(out).backend == "cpu"  # the CPU default
