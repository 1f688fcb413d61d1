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

    def decode_delta(self, context: list[int], new: list[int]) -> str:
        """The text that `new` tokens add after `context` (the tokens before them in the same utterance; the last
        few suffice) -> str, such that the deltas of an utterance's tokens, concatenated, equal decode(all tokens):
        word starts keep their space (none at the utterance's start), and the punctuation rule applies across the
        boundary. Costs O(len(context) + len(new)), whatever the utterance's length.
        """
        if not new:
            return ""
        before = self.decode(context)
        after = self.decode(list(context) + list(new))
        if after.startswith(before):
            return after[len(before):]
        # a piece that changes the text before it (byte-fallback pieces completing a character): the longest
        # common prefix is what was already handed out
        i = 0
        while i < min(len(before), len(after)) and before[i] == after[i]:
            i += 1
        return after[i:]
