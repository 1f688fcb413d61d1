"""Session-wide fixtures' builders: synthetic speech, random NeMo models, their .nemo files and conversions.

Built once per test session under one temporary directory (NEMOTRON_TEST_CACHE overrides it, to reuse the
models across runs while developing).
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import nemotron_parity.nemo_harness as H
import nemotron_parity.speech as speech


@lru_cache(maxsize=None)
def cache_dir() -> Path:
    d = os.environ.get("NEMOTRON_TEST_CACHE")
    path = Path(d) if d else Path(tempfile.mkdtemp(prefix="nemotron-tests-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=None)
def corpus() -> list:
    """(sentence, float32 16 kHz samples) pairs, several espeak-ng voices."""
    return speech.speech_corpus(cache_dir() / "audio", n=6)


@lru_cache(maxsize=None)
def tokenizer_dir(vocab_size: int = 96, eou: bool = False) -> Path:
    """The harness's tokenizer; a larger one, or one holding the EOU models' <EOU> and <EOB> pieces, on request."""
    name = "tokenizer" if (vocab_size, eou) == (96, False) else f"tokenizer-{vocab_size}{'-eou' if eou else ''}"
    path = H.train_tokenizer(cache_dir() / name, vocab_size=vocab_size, extra_symbols=H.EOU_PIECES if eou else ())
    return path.parent if path.is_file() else path


@lru_cache(maxsize=None)
def nemo_model(variant_id: str, seed: int = 1234):
    """(NeMo model in eval mode, path of its .nemo, converted engine directory)."""
    from nemotron_engine.weights.convert import convert

    nemo_path = cache_dir() / f"{variant_id}-{seed}.nemo"
    out = cache_dir() / f"{variant_id}-{seed}.engine"
    if nemo_path.is_file():
        model = H.load_nemo(nemo_path)
    else:
        v = H.get_variant(variant_id)
        model = H.build_model(v, tokenizer_dir(v.vocab_size, v.model == "eou"), seed=seed,
                              calib_audio=[a for _, a in corpus()])
        H.save_nemo(model, nemo_path)
    if not (out / "config.json").is_file():
        convert(nemo_path, out, force=True)
    return model, nemo_path, out
