"""`nemotron-engine parity`: the comparison as a tool, its table, its exit status, and its message without NeMo."""
import subprocess
import sys

import soundfile as sf

import models
import nemotron_parity.nemo_harness as H
from nemotron_parity.report import run_parity

CLI = [sys.executable, "-m", "nemotron_engine.cli"]


def test_parity_tool_passes_and_prints_a_table(tmp_path):
    _, nemo_path, _ = models.nemo_model("nemotron_like")
    wav = tmp_path / "a.wav"
    sf.write(wav, models.corpus()[0][1], 16000, subtype="FLOAT")
    r = subprocess.run(CLI + ["parity", "--nemo", str(nemo_path), "--audio", str(wav), "--lookahead-ms", "80", "1120"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lookahead 80 ms" in r.stdout and "lookahead 1120 ms" in r.stdout and "all equal" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith(str(wav)[-40:])]
    assert len(rows) == 2 and all(" yes " in row for row in rows)


def test_parity_tool_family(tmp_path, capsys):
    """A prompt model in a chosen language (and an unknown one refused, listing the valid keys); an EOU model,
    whose <EOU> tokens close segments mid-stream."""
    _, nemo_path, _ = models.nemo_model("prompt_rnnt")
    wav = tmp_path / "a.wav"
    sf.write(wav, models.corpus()[0][1][:32000], 16000, subtype="FLOAT")
    assert run_parity(str(nemo_path), [str(wav)], [160], language="de-DE") == 0
    out = capsys.readouterr().out
    assert "language 'de-DE' (prompt index 2)" in out and "all equal" in out
    assert run_parity(str(nemo_path), [str(wav)], [160], language="xx") == 2
    assert "choose one of 'auto', 'de-DE'" in capsys.readouterr().err
    _, nemo_path, _ = models.nemo_model("eou")
    assert run_parity(str(nemo_path), [str(wav)], [560]) == 0
    assert "all equal" in capsys.readouterr().out


def test_parity_tool_fails_on_a_mismatch(tmp_path, monkeypatch, capsys):
    _, nemo_path, _ = models.nemo_model("nemotron_like")
    wav = tmp_path / "a.wav"
    sf.write(wav, models.corpus()[0][1], 16000, subtype="FLOAT")
    real = H.nemo_stream

    def off_by_one(*args, **kwargs):
        res = real(*args, **kwargs)
        res.tokens = res.tokens[:-1]  # NeMo "disagrees" on the last token
        return res

    monkeypatch.setattr(H, "nemo_stream", off_by_one)
    assert run_parity(str(nemo_path), [str(wav)], [1120]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_parity_tool_without_nemo(tmp_path):
    fake = tmp_path / "fake" / "nemo"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named nemo')\n")
    env = {"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(CLI + ["parity", "--nemo", "x.nemo"], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "parity needs NeMo, which is not installed" in r.stderr and "Traceback" not in r.stderr
