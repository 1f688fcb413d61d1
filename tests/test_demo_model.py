"""The shipped demo model (weights/demo): its examples are transcribed exactly at every lookahead, the engine and
NeMo agree on them token for token, and the main-job command prints their words."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

import nemotron_parity.nemo_harness as H
from nemotron_engine.cli import demo_model_dir
from nemotron_engine.engine import Engine
from nemotron_parity.demo_eval import normalise
from nemotron_parity.train_demo import DEMO

DEMO_DIR = demo_model_dir()
EXPECTED = json.loads((DEMO_DIR / "examples" / "expected.json").read_text())


def _examples():
    return [(name, sf.read(DEMO_DIR / "examples" / name, dtype="float32")[0], e["text"])
            for name, e in sorted(EXPECTED.items())]


@pytest.fixture(scope="module")
def engine_results():
    eng = Engine(DEMO_DIR)
    out = {}
    for r in eng.cfg.lookaheads:
        ms = (r + 1) * eng.cfg.frame_ms
        for name, pcm, _ in _examples():
            out[(name, r)] = eng.transcribe(pcm, ms)
    return eng.cfg, out


def test_shipped_model_is_small_and_complete():
    files = {p.name for p in DEMO_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "MODEL_CARD.md", "examples"} <= files
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 2**20, f"the shipped demo model takes {total} bytes, over the 20 MiB budget"
    assert len(EXPECTED) >= 3


def test_shipped_files_name_no_machine_path(tmp_path):
    """SentencePiece records the paths it was trained with in the model file; the harness strips them to file names
    (nemo_harness.strip_trainer_paths), which leaves the tokenizer itself as it was."""
    import re

    import sentencepiece as spm

    for p in DEMO_DIR.rglob("*"):
        if p.is_file():
            hit = re.search(rb"(/tmp/|/root/|/home/|/work/)", p.read_bytes())
            assert hit is None, f"{p.name} names a machine path: {hit.group(0)!r}"
    # the stripping, on a tokenizer trained here into a deep directory
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "text.txt").write_text("\n".join(["hello world, how are you?", "the cat sat on the mat."] * 20))
    spm.SentencePieceTrainer.train(input=str(deep / "text.txt"), model_prefix=str(deep / "tok"), vocab_size=40,
                                   model_type="bpe", minloglevel=2, num_threads=1)
    model = deep / "tok.model"
    before = spm.SentencePieceProcessor(model_file=str(model))
    assert str(deep).encode() in model.read_bytes()
    H.strip_trainer_paths(model)
    data = model.read_bytes()
    assert str(tmp_path).encode() not in data and b"text.txt" in data
    after = spm.SentencePieceProcessor(model_file=str(model))
    pieces = [(before.id_to_piece(i), before.get_score(i)) for i in range(before.get_piece_size())]
    assert pieces == [(after.id_to_piece(i), after.get_score(i)) for i in range(after.get_piece_size())]
    assert before.encode("the hat, the cat?") == after.encode("the hat, the cat?")


def test_examples_are_transcribed_exactly(engine_results):
    cfg, out = engine_results
    for (name, r), res in out.items():
        assert res.final
        assert normalise(res.text) == normalise(EXPECTED[name]["text"]), f"{name} at R={r}: {res.text!r}"


def test_engine_equals_nemo_on_examples(engine_results, tmp_path):
    cfg, out = engine_results
    model = H.nemo_from_engine(DEMO_DIR, DEMO, tmp_path)
    for name, pcm, _ in _examples():
        for r in cfg.lookaheads:
            ref = H.nemo_stream(model, pcm, [cfg.left_context, r])
            res = out[(name, r)]
            assert res.tokens == ref.tokens, f"{name} R={r}: engine {res.tokens} != NeMo {ref.tokens}"
            assert res.timestamps_ms == [t * cfg.frame_ms for t in ref.timestamps], f"{name} R={r}: timestamps"


def test_main_job_prints_the_words():
    p = subprocess.run([sys.executable, "-m", "nemotron_engine.cli", "transcribe", "--timing", "--tokens"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for name, e in EXPECTED.items():
        line = next(l for l in p.stdout.splitlines() if l.startswith(str(DEMO_DIR / "examples" / name)))
        assert normalise(line.split(": ", 1)[1]) == normalise(e["text"])
    assert "tokens: " in p.stdout and "real time" in p.stderr
