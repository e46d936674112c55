"""Reading documents from the files Neo exchanges: plain text (one document per line) or JSONL with a
``text`` field, optionally gzip- or zstd-compressed (``.gz``, ``.zst``: dataproc writes ``clean/*.jsonl.zst``).
Errors name the file, the line and the byte offset."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

_TEXT_SUFFIXES = (".gz", ".zst", ".jsonl", ".json", ".ndjson", ".txt")


def source_name(path: str | Path) -> str:
    """A text file's source name: its file name without text/compression extensions
    (``python-stdlib.code.jsonl.gz`` → ``python-stdlib.code``)."""
    name = Path(path).name
    while name.endswith(_TEXT_SUFFIXES):
        name = name[: name.rfind(".")]
    return name or "text"


def _open_binary(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".zst":
        try:
            import zstandard
        except ModuleNotFoundError:
            raise InputError(f"{path}: reading .zst needs zstandard (pip install 'neo-llm[data]')") from None
        return io.BufferedReader(zstandard.open(path, "rb"))  # type: ignore[arg-type]  # adds readline
    return path.open("rb")


class InputError(ValueError):
    """Input that cannot be read: empty, not UTF-8, bad JSONL. The message names file and line."""


def iter_documents(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """Non-empty documents of one file: the ``text_field`` of each line of ``.jsonl``/``.json``/``.ndjson``
    (optionally ``.gz`` or ``.zst``), else each line of a text file (without its newline)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    compressed = path.suffix in (".gz", ".zst")
    jsonl = (path.name[: -len(path.suffix)] if compressed else path.name).endswith((".jsonl", ".json", ".ndjson"))
    where, offset = " (decompressed)" if compressed else "", 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}: invalid UTF-8 at byte offset {offset + e.start}{where}, "
                                          f"line {lineno}") from None
            offset += len(raw)
            if not jsonl:
                text = line.rstrip("\n")
            elif not line.strip():
                continue
            else:
                try:
                    text = json.loads(line)[text_field]
                except (ValueError, KeyError, TypeError, IndexError) as e:
                    raise InputError(f"{path}:{lineno}: expected a JSON object with a string "
                                              f"{text_field!r} field ({type(e).__name__}: {e})") from None
                if not isinstance(text, str):
                    raise InputError(f"{path}:{lineno}: {text_field!r} is not a string")
                if re.search("[\ud800-\udfff]", text):  # lone surrogates from \\u escapes are not UTF-8
                    text = text.encode("utf-8", "replace").decode("utf-8")
            if text:
                yield text


def open_text(path: str | Path) -> TextIO:
    """Open a text file, gzip-compressed when it ends in ``.gz``, as strict UTF-8 (CSV-friendly)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix in (".gz", ".zst"):
        return io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")
