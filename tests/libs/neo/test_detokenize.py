"""neo.detokenize: streamed text never holds half a character and joins to ``decode`` of all the ids."""

from __future__ import annotations

import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from neo.detokenize import IncrementalDetokenizer
from neo.tokenizer import NeoTokenizer

TEXTS = [
    "你好世界😀",  # 世界 and the emoji are not in the vocabulary: byte pieces, 3 and 4 at a time
    "龘中文🎉ok👍🏽 and 你好，世界！",  # a skin-tone modifier is a second 4-byte character
    "👨‍👩‍👧 家庭 family",  # a ZWJ sequence: several characters, each complete on its own
    "Hello 世界! 你好 world 🙂",
]


@pytest.fixture(scope="module", params=["sentencepiece", "tokenizers"])
def tok(request: pytest.FixtureRequest, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> NeoTokenizer:
    if request.param == "sentencepiece":
        return NeoTokenizer.load(tokenizer_dir)
    only_json = tmp_path_factory.mktemp("only_json")  # tokenizer.json alone: the HF backend
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, only_json / name)
    tok = NeoTokenizer.load(only_json)
    assert tok.backend == "tokenizers"
    return tok


def stream(tok: NeoTokenizer, ids: Sequence[int], sizes: Sequence[int] = (1,)) -> list[str]:
    """The deltas for ``ids`` pushed in chunks of the given sizes (cycled), then the flush."""
    detok, deltas, k, n = IncrementalDetokenizer(tok), [], 0, 0
    while k < len(ids):
        step = sizes[n % len(sizes)]
        deltas.append(detok.push(ids[k:k + step]))
        k, n = k + step, n + 1
    return [*deltas, detok.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_join_to_decode(tok: NeoTokenizer, text: str) -> None:
    ids = tok.encode(text, add_bos=True)
    assert sum(map(tok.is_byte, ids)) >= 7  # really split across byte-fallback tokens
    deltas = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids) == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas[-1] == ""  # nothing was left to flush
    held = [k for k, i in enumerate(ids) if tok.is_byte(i) and not deltas[k]]
    assert held and len([d for d in deltas if d]) >= 3  # bytes are held back, the rest still streams


def test_chunked_pushes_give_the_same_text(tok: NeoTokenizer) -> None:
    ids = tok.encode("".join(TEXTS))
    r = random.Random(0)
    for _ in range(20):
        deltas = stream(tok, ids, [r.randint(1, 5) for _ in range(7)])
        assert "".join(deltas) == tok.decode(ids) and all("\ufffd" not in d for d in deltas)


def test_special_tokens_are_skipped(tok: NeoTokenizer) -> None:
    ids = tok.encode_chat([{"role": "user", "content": "你好😀"}]) + [tok.im_end_id, tok.eos_id]
    assert "".join(stream(tok, ids)) == tok.decode(ids) == "user\n你好😀\nassistant\n"


def test_flush_releases_an_incomplete_character(tok: NeoTokenizer) -> None:
    ids = tok.encode("好😀")[:-1]  # the emoji's last byte never came
    deltas = stream(tok, ids)
    assert deltas[:-1] == ["好", "", "", ""] and deltas[-1] and set(deltas[-1]) == {"\ufffd"}
    assert "".join(deltas) == tok.decode(ids)
    detok = IncrementalDetokenizer(tok)
    assert detok.flush() == "" and detok.push([]) == ""


def test_only_a_window_of_recent_tokens_is_decoded(tok: NeoTokenizer) -> None:
    decoded: list[int] = []

    class Counting:
        def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
            decoded.append(len(ids))
            return tok.decode(ids, skip_special)

    ids = tok.encode("".join(TEXTS) * 50)
    detok = IncrementalDetokenizer(Counting())
    text = "".join(detok.push([i]) for i in ids) + detok.flush()
    assert text == tok.decode(ids)
    assert max(decoded) <= 10  # the window spans one held-back character at most, not the whole answer


def byte_ids(tok: NeoTokenizer, data: bytes) -> list[int]:
    ids = [tok.piece_to_id(f"<0x{b:02X}>") for b in data]
    assert all(i is not None and tok.is_byte(i) for i in ids)
    return ids


def test_stray_bytes_do_not_stall_the_stream(tok: NeoTokenizer) -> None:
    """A model emitting bytes no character can be made of (a random model does): they are released as U+FFFD
    once more than 3 are pending, instead of holding every later delta until the flush."""
    ids = tok.encode("ok") + byte_ids(tok, b"\x80\x81\x82\x83\x84\x85") + tok.encode(" 你好 more")
    deltas = stream(tok, ids)
    stray = len(tok.encode("ok"))
    assert not any(deltas[stray:stray + 3])  # up to 3 pending bytes could still be a character
    assert "\ufffd" in deltas[stray + 3]  # the 4th: the first can no longer be one
    assert "".join(deltas[:-1]).endswith("more") and deltas[-1] == ""
    if tok.backend == "sentencepiece":  # tokenizers' ByteFallback turns a whole invalid run into U+FFFDs
        assert "".join(deltas) == tok.decode(ids)


def test_a_character_after_stray_bytes_is_not_split(tok: NeoTokenizer) -> None:
    """Stray bytes right before a 4-byte emoji (and a 3-byte 中) arriving byte by byte, in any chunking.
    SentencePiece only: tokenizers' ByteFallback decodes a byte run with an invalid byte as U+FFFDs throughout,
    the emoji's bytes included, in ``decode`` of all the ids as much as in a stream."""
    if tok.backend != "sentencepiece":
        pytest.skip("tokenizers' ByteFallback decodes the whole run as U+FFFD")
    ids = byte_ids(tok, b"\x80\x80\x80" + "😀".encode() + b"\xbf" + "中".encode()) + tok.encode("!")
    r = random.Random(1)
    for sizes in [(1,), (2,), (3,), (5,), *([r.randint(1, 4) for _ in range(5)] for _ in range(10))]:
        deltas = stream(tok, ids, sizes)
        assert "😀" in "".join(deltas) and "中" in "".join(deltas)  # never cut into U+FFFDs
        assert "".join(deltas) == tok.decode(ids)
