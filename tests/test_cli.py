"""`nemotron-engine transcribe`: streams files, JSON output, conversion of other formats, unreadable files."""
import json
import subprocess
import sys

import numpy as np
import soundfile as sf
import soxr
import torch

import models
from nemotron_engine.engine import Engine

CLI = [sys.executable, "-m", "nemotron_engine.cli"]


def test_transcribe_json_and_errors(tmp_path):
    _, _, out = models.nemo_model("nemotron_like")
    (_, a), (_, b) = models.corpus()[:2]
    wav_a = tmp_path / "a.wav"
    sf.write(wav_a, a, 16000, subtype="FLOAT")
    # b as 22.05 kHz stereo int16: converted with a note
    b22 = soxr.resample(b, 16000, 22050, quality="HQ")
    wav_b = tmp_path / "b.wav"
    sf.write(wav_b, np.stack([b22, b22 * 0.5], axis=1), 22050, subtype="PCM_16")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    r = subprocess.run(CLI + ["transcribe", "--model", str(out), "--json", str(wav_a), str(bad), str(wav_b)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["file"] for row in rows] == [str(wav_a), str(wav_b)]
    err = [line for line in r.stderr.splitlines() if line.startswith("nemotron-engine: error:")]
    assert len(err) == 1 and str(bad) in err[0] and "Traceback" not in r.stderr
    assert any("resampled 22050 Hz -> 16000 Hz" in line and "2 channels averaged" in line
               for line in r.stderr.splitlines())
    engine = Engine(out)
    # the default lookahead is the checkpoint's first att_context_size
    want_a = engine.transcribe(a)
    assert rows[0]["tokens"] == want_a.tokens and rows[0]["text"] == want_a.text
    assert rows[0]["timestamps_ms"] == want_a.timestamps_ms
    assert len(rows[0]["tokens"]) == len(rows[0]["timestamps_ms"]) > 0
    x, sr = sf.read(wav_b, dtype="float32")
    want_b = engine.transcribe(soxr.resample(x.mean(axis=1), sr, 16000, quality="HQ").astype(np.float32))
    assert rows[1]["tokens"] == want_b.tokens


def test_transcribe_lookahead_and_plain_text(tmp_path):
    _, _, out = models.nemo_model("nemotron_like")
    _, a = models.corpus()[0]
    wav = tmp_path / "a.wav"
    sf.write(wav, a, 16000, subtype="FLOAT")
    engine = Engine(out)
    for ms in (80, 560):
        r = subprocess.run(CLI + ["transcribe", "--model", str(out), "--lookahead-ms", str(ms), str(wav)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert r.stdout.rstrip("\n") == engine.transcribe(a, lookahead_ms=ms).text
    r = subprocess.run(CLI + ["transcribe", "--model", str(out), "--lookahead-ms", "100", str(wav)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "100 ms" in r.stderr and "[80, 160, 560, 1120]" in r.stderr


def test_transcribe_device_options(tmp_path, monkeypatch, capsys):
    """--device / --dtype / --backend reach the engine (torch backend, bfloat16 on the CPU here); a CUDA device on a
    machine without one is a clear error, exit 2."""
    from nemotron_engine import cli

    _, _, out = models.nemo_model("nemotron_like")
    _, a = models.corpus()[0]
    wav = tmp_path / "a.wav"
    sf.write(wav, a, 16000, subtype="FLOAT")
    want = Engine(out, dtype=torch.bfloat16).transcribe(a)
    assert cli.main(["transcribe", "--model", str(out), "--device", "cpu", "--dtype", "bfloat16", "--backend", "torch",
                     "--json", str(wav)]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == want.tokens
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["transcribe", "--model", str(out), "--device", "cuda", str(wav)]) == 2
    assert "device 'cuda': no CUDA device here" in capsys.readouterr().err


def test_parity_and_bench_without_the_harness():
    """Without the nemotron_parity harness, `parity` and `bench` say in one line how to install it, exit 2."""
    hide = "import sys; sys.modules['nemotron_parity'] = None; from nemotron_engine.cli import main; sys.exit(main())"
    for argv in (["parity", "--nemo", "x.nemo"], ["bench", "--size", "tiny"]):
        r = subprocess.run([sys.executable, "-c", hide, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        err = [line for line in r.stderr.splitlines() if line.startswith("nemotron-engine: error:")]
        assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{argv[0]} needs the NeMo parity harness" in err[0] and "pip install -e ./parity" in err[0]
