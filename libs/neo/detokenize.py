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


MAX_HELD_TOKENS = 3  # a UTF-8 character is at most 4 bytes: an incomplete one is at most 3 byte pieces


class IncrementalDetokenizer:
    """Token ids in, text deltas out. Text is held back while it ends in an incomplete UTF-8 character.

    Only the last ``MAX_HELD_TOKENS`` tokens can be such a character; when more are pending and the text still
    ends in U+FFFD, the bytes before them can never complete one (a model that emits stray bytes): they are
    released as U+FFFD, as the final ``decode`` shows them, instead of stalling the stream until its end.

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
        if not text:
            return ""
        end = len(self.ids)
        if text.endswith("\ufffd"):  # a character may still be incomplete: hold the (at most 3) tokens it spans
            end = max(self.read, end - MAX_HELD_TOKENS)
            for cut in range(len(self.ids) - 1, end, -1):  # the shortest tail whose removal leaves whole text
                head = self.tok.decode(self.ids[self.prefix:cut])
                if not head.endswith("\ufffd"):
                    end, text = cut, head
                    break
            else:
                if end == self.read:
                    return ""
                text = self.tok.decode(self.ids[self.prefix:end])
        done = self.tok.decode(self.ids[self.prefix:self.read])
        self.prefix, self.read = self.read, end
        return text[len(done):]

    def flush(self) -> str:
        """At the end: whatever is still held back (an incomplete character shows as U+FFFD)."""
        text = self.tok.decode(self.ids[self.prefix:])
        done = self.tok.decode(self.ids[self.prefix:self.read])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]
