"""Detokenisation: SentencePiece ids -> text, with NeMo's punctuation-spacing rule
(docs/streaming.md#9-detokenisation).

NeMo (`tokenizer_utils.extract_punctuation_from_vocab`): the supported punctuation is every Unicode 'P*' character
found in a piece that is not special (not [..], <..>, ##.., ▁.., or blank). After SentencePiece decoding, one
whitespace immediately before such a mark is removed (regex (\\s)(<punct>) -> \\2).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import sentencepiece as spm

_SPECIAL = [re.compile(p) for p in (r"^\[.*\]$", r"^<.*>$", r"^##", r"^▁", r"^\s*$")]


class Tokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the model directory needs its tokenizer.model")
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        punct = {ch for p in pieces if not any(s.match(p) for s in _SPECIAL)
                 for ch in p if unicodedata.category(ch).startswith("P")}
        self.punctuation = punct
        self._space_before_punct = (re.compile(r"(\s)(" + "|".join(re.escape(p) for p in sorted(punct)) + ")")
                                    if punct else None)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def pieces(self, ids: list[int]) -> list[str]:
        """The SentencePiece piece of each token id ("▁" marks a word start)."""
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: list[int]) -> str:
        text = self.sp.decode_ids([int(i) for i in ids])
        if self._space_before_punct is not None:
            text = self._space_before_punct.sub(r"\2", text)
        return text
