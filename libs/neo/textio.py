"""Reading documents from the files Neo exchanges: plain text, JSONL with a ``text`` field, either
optionally gzip- or zstd-compressed. Errors name the file and line."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def open_text(path: Path) -> IO[str]:
    """Open a possibly compressed text file for reading (strict UTF-8)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if path.suffix == ".zst":
        import zstandard

        return io.TextIOWrapper(zstandard.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 (returned to the caller)


def is_jsonl(path: Path) -> bool:
    return ".jsonl" in Path(path).suffixes or ".json" in Path(path).suffixes


def iter_records(path: Path) -> Iterator[dict]:
    """JSONL records; a bad line is a ValueError naming the file and line number."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
            yield record


def iter_texts(path: Path) -> Iterator[str]:
    """Documents of one file: each JSONL record's text, or the whole plain-text file as one."""
    path = Path(path)
    try:
        if is_jsonl(path):
            for record in iter_records(path):
                yield record["text"]
        else:
            with open_text(path) as f:
                yield f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 at byte {exc.start}") from exc
