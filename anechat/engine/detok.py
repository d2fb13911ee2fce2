"""Incremental detokenizer: text as tokens arrive, never half a UTF-8 character, never a lost space.

Byte-level BPE splits characters across tokens and SentencePiece-style decoders drop a leading space
when a token is decoded alone, so each step decodes a short window of recent ids and emits only the part
beyond what that window's prefix already produced (the approach of HF's TextStreamer and vLLM)."""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer  # a tokenizers.Tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids up to here have been emitted

    def _decode(self, ids) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""

    def flush(self, cut: bool = False) -> str:
        """What is held back, at the end of a generation. With `cut` (the answer was stopped or reached
        max_tokens), a character whose last bytes never came is left out: it would only show as U+FFFD."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        text = text[len(prefix_text) :]
        return text.rstrip("\ufffd") if cut else text
