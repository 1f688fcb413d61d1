"""The shipped demo model on a continuous stream (issue 16): the shipped example recordings back to back, with and
without a second of silence between them, streamed as one stream (no endpointing: one utterance from start to end),
must yield every sentence's words, in order. A model trained on isolated utterances only transcribes the first
sentence and then goes silent."""
import numpy as np
import pytest
import soundfile as sf

from nemotron_engine.cli import demo_examples, demo_model_dir
from nemotron_engine.engine import Engine
from nemotron_parity.demo_eval import normalise

DEMO_DIR = demo_model_dir()
# the isolated examples (the long-form example is already several sentences)
EXAMPLES = [(path.name, text) for path, text in demo_examples(isolated_only=True)]


@pytest.fixture(scope="module")
def engine():
    return Engine(DEMO_DIR)


def _stream(gap_s: float) -> np.ndarray:
    parts = []
    for k, (name, _) in enumerate(EXAMPLES):
        pcm, sr = sf.read(DEMO_DIR / "examples" / name, dtype="float32")
        assert sr == 16000
        if k and gap_s:
            parts.append(np.zeros(int(gap_s * sr), np.float32))
        parts.append(pcm)
    return np.concatenate(parts)


@pytest.mark.parametrize("gap_s", [0.0, 1.0])
@pytest.mark.parametrize("lookahead_ms", [1120, 80])
def test_every_sentence_of_a_continuous_stream_is_transcribed(engine, lookahead_ms, gap_s):
    assert len(EXAMPLES) >= 4
    res = engine.transcribe(_stream(gap_s), lookahead_ms)
    assert res.final
    hyp = normalise(res.text).split()
    at = 0
    for name, text in EXAMPLES:
        want = normalise(text).split()
        found = next((i for i in range(at, len(hyp) - len(want) + 1) if hyp[i: i + len(want)] == want), None)
        assert found is not None, (f"{lookahead_ms} ms, {gap_s:g} s between: the words of {name} ({text!r}) are "
                                   f"not in the transcript after word {at}: {res.text!r}")
        at = found + len(want)
