"""Incremental detokenization: token ids in, text deltas out, never half a character.

Byte-fallback pieces of a Chinese character or an emoji arrive one byte at a time; their text is held
back until the character is complete. Serving streams answers with it, and so does ``neo chat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Decoder(Protocol):
    """What detokenizing needs of a tokenizer (``NeoTokenizer`` is one)."""

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Token ids in, text deltas out. Text is held back while it ends in an incomplete UTF-8 character.

    Only a window of recent tokens is decoded at each step (``prefix``..end), so a long answer costs
    linear time; the window's own decode is subtracted so the delta is exact: the deltas of all
    ``push`` calls and the final ``flush`` join to ``tokenizer.decode(all ids)``.
    """

    def __init__(self, tokenizer: Decoder):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start
        self.read = 0  # tokens whose text has been returned

    def push(self, token_ids: Sequence[int]) -> str:
        self.ids.extend(token_ids)
        text = self.tok.decode(self.ids[self.prefix:])
        if not text or text.endswith("\ufffd"):  # nothing yet, or a character is still incomplete
            return ""
        done = self.tok.decode(self.ids[self.prefix:self.read])
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        """At the end: whatever is still held back (an incomplete character shows as U+FFFD)."""
        text = self.tok.decode(self.ids[self.prefix:])
        done = self.tok.decode(self.ids[self.prefix:self.read])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]
