"""Tokenized training shards: the file format dataproc writes and the trainer reads.

A shard is a flat array of token ids, little-endian ``uint16`` when the vocabulary fits
(≤ 65,535 ids, halving disk and page cache) or ``uint32`` otherwise, with no header: its length is
``file size / itemsize``. Documents are concatenated as ``<s> text </s>`` so EOS marks document
boundaries. A directory of shards carries ``manifest.json`` (``neo.schemas.ShardManifest``): dtype,
tokenizer hash, per-source document/token counts and every file with its token count and sha256.

Reading::

    manifest = read_manifest(directory)
    for info in manifest.files:            # or files_for(manifest, "web_en")
        tokens = open_shard(directory / info.path, manifest.dtype)   # np.memmap, zero-copy

Writing: ``ShardWriter`` cuts a token stream into fixed-size files; every file is written to a
temporary name and renamed, so a reader never sees a partial shard.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from neo.schemas import MANIFEST_JSON, ShardFileInfo, ShardManifest

TokenDtype = Literal["uint16", "uint32"]
UINT16_MAX_VOCAB = 65_535  # every id < 65535 fits a uint16 (65535 kept free as a sentinel)
DEFAULT_TOKENS_PER_SHARD = 2**26  # 64 Mi tokens: 128 MiB as uint16, a few seconds to hash or copy


def dtype_for_vocab(vocab_size: int) -> TokenDtype:
    """``uint16`` for vocabularies up to 65,535 ids, else ``uint32``."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return "uint16" if vocab_size <= UINT16_MAX_VOCAB else "uint32"


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"unknown shard dtype {dtype!r}: expected 'uint16' or 'uint32'")
    return np.dtype(dtype).newbyteorder("<")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write to a unique temporary sibling, fsync, rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_tokens(path: Path, tokens: Sequence[int] | np.ndarray, dtype: str) -> int:
    """Write one token file atomically; returns the token count. Ids must fit ``dtype``."""
    dt = numpy_dtype(dtype)
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dt).max):
        raise ValueError(f"{path}: token ids {arr.min()}..{arr.max()} do not fit {dtype}")
    atomic_write_bytes(path, arr.astype(dt, copy=False).tobytes())
    return int(arr.size)


def open_shard(path: Path, dtype: str) -> np.ndarray:
    """Memory-map a shard read-only (an empty file gives an empty array)."""
    dt = numpy_dtype(dtype)
    size = Path(path).stat().st_size
    if size % dt.itemsize:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dtype} tokens")
    if size == 0:
        return np.zeros(0, dtype=dt)
    return np.memmap(path, dtype=dt, mode="r")


class ShardWriter:
    """Cut a stream of token arrays into files of exactly ``tokens_per_shard`` tokens (the last
    one shorter) named ``{prefix}{index:05d}.bin`` under ``directory``.

    ``add`` buffers; full files are written as soon as they fill; ``close`` writes the rest and
    returns one ``ShardFileInfo`` per file (path relative to ``relative_to``, default ``directory``).
    """

    def __init__(
        self, directory: Path, dtype: str, tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD,
        prefix: str = "", source: str = "", relative_to: Path | None = None,
    ) -> None:
        if tokens_per_shard <= 0:
            raise ValueError(f"tokens_per_shard must be positive, got {tokens_per_shard}")
        self.directory = Path(directory)
        self.dtype = numpy_dtype(dtype)
        self.dtype_name = dtype
        self.tokens_per_shard = tokens_per_shard
        self.prefix = prefix
        self.source = source
        self.relative_to = Path(relative_to) if relative_to else self.directory
        self.files: list[ShardFileInfo] = []
        self._buf = np.empty(tokens_per_shard, dtype=self.dtype)
        self._fill = 0

    def add(self, tokens: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(tokens, dtype=self.dtype)
        while arr.size:
            take = min(arr.size, self.tokens_per_shard - self._fill)
            self._buf[self._fill : self._fill + take] = arr[:take]
            self._fill += take
            arr = arr[take:]
            if self._fill == self.tokens_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        path = self.directory / f"{self.prefix}{len(self.files):05d}.bin"
        data = self._buf[: self._fill].tobytes()
        atomic_write_bytes(path, data)
        self.files.append(
            ShardFileInfo(
                path=str(path.relative_to(self.relative_to)), source=self.source, tokens=self._fill,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        self._fill = 0

    def close(self) -> list[ShardFileInfo]:
        self._flush()
        return self.files

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def write_manifest(directory: Path, manifest: ShardManifest) -> Path:
    path = Path(directory) / MANIFEST_JSON
    atomic_write_bytes(path, (manifest.model_dump_json(indent=2) + "\n").encode())
    return path


def read_manifest(directory: Path) -> ShardManifest:
    """Read ``manifest.json`` of a shard directory (a clear error if it is missing or unknown)."""
    path = Path(directory) / MANIFEST_JSON
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST_JSON} in {directory}: not a shard directory (run `neo data run`)")
    return ShardManifest.model_validate_json(path.read_text())


def files_for(manifest: ShardManifest, source: str | None = None) -> list[ShardFileInfo]:
    """The manifest's files, optionally only one source's (for the trainer's data mixture)."""
    if source is not None and source not in manifest.sources:
        raise KeyError(f"source {source!r} not in manifest (has: {', '.join(sorted(manifest.sources))})")
    return [f for f in manifest.files if source is None or f.source == source]


def verify_shards(directory: Path, manifest: ShardManifest | None = None) -> list[str]:
    """Re-hash every file; returns the problems found (empty when all match)."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    problems = []
    itemsize = numpy_dtype(manifest.dtype).itemsize
    for info in manifest.files:
        path = directory / info.path
        if not path.exists():
            problems.append(f"{info.path}: missing")
        elif path.stat().st_size != info.tokens * itemsize:
            problems.append(f"{info.path}: {path.stat().st_size} bytes, expected {info.tokens * itemsize}")
        elif file_sha256(path) != info.sha256:
            problems.append(f"{info.path}: sha256 mismatch")
    return problems
