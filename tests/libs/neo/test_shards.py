"""neo.shards: the token shard format shared by dataproc (writer) and the trainer (reader)."""

from __future__ import annotations

import numpy as np
import pytest

from neo.schemas import ShardManifest, SourceCounts
from neo.shards import (
    ShardWriter,
    dtype_for_vocab,
    file_sha256,
    files_for,
    open_shard,
    read_manifest,
    verify_shards,
    write_manifest,
    write_tokens,
)


def test_dtype_for_vocab():
    assert dtype_for_vocab(64000) == "uint16"
    assert dtype_for_vocab(65535) == "uint16"
    assert dtype_for_vocab(65536) == "uint32"
    assert dtype_for_vocab(151_000) == "uint32"
    with pytest.raises(ValueError, match="positive"):
        dtype_for_vocab(0)


@pytest.mark.parametrize("dtype, itemsize", [("uint16", 2), ("uint32", 4)])
def test_write_and_memmap_little_endian(tmp_path, dtype, itemsize):
    path = tmp_path / "a.bin"
    assert write_tokens(path, [1, 2, 300, 65000], dtype) == 4
    assert path.stat().st_size == 4 * itemsize
    raw = path.read_bytes()
    assert int.from_bytes(raw[2 * itemsize : 3 * itemsize], "little") == 300
    arr = open_shard(path, dtype)
    assert isinstance(arr, np.memmap) and arr.tolist() == [1, 2, 300, 65000]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_write_rejects_ids_that_do_not_fit(tmp_path):
    with pytest.raises(ValueError, match="do not fit uint16"):
        write_tokens(tmp_path / "x.bin", [70000], "uint16")
    assert not (tmp_path / "x.bin").exists()


def test_open_rejects_partial_token(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(ValueError, match="whole number"):
        open_shard(tmp_path / "odd.bin", "uint16")
    (tmp_path / "empty.bin").write_bytes(b"")
    assert open_shard(tmp_path / "empty.bin", "uint16").size == 0


def test_writer_cuts_fixed_size_files(tmp_path):
    with ShardWriter(tmp_path / "web", "uint16", tokens_per_shard=4, source="web", relative_to=tmp_path) as w:
        w.add([1, 2, 3])
        w.add(np.array([4, 5, 6, 7, 8, 9], dtype=np.int64))
        w.add([])
    files = w.files
    assert [f.tokens for f in files] == [4, 4, 1]
    assert [f.path for f in files] == ["web/00000.bin", "web/00001.bin", "web/00002.bin"]
    assert [open_shard(tmp_path / f.path, "uint16").tolist() for f in files] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert all(f.sha256 == file_sha256(tmp_path / f.path) for f in files)


def _manifest(files):
    return ShardManifest(
        job="t", dtype="uint16", vocab_size=500, tokenizer_sha256="ab" * 32, tokens_per_shard=4,
        sources={"web": SourceCounts(documents=2, tokens=9, files=3)}, files=files,
    )


def test_manifest_roundtrip_and_verify(tmp_path):
    w = ShardWriter(tmp_path / "web", "uint16", tokens_per_shard=4, source="web", relative_to=tmp_path)
    w.add(list(range(9)))
    manifest = _manifest(w.close())
    write_manifest(tmp_path, manifest)
    back = read_manifest(tmp_path)
    assert back == manifest and back.total_tokens == 9
    assert [f.path for f in files_for(back, "web")] == ["web/00000.bin", "web/00001.bin", "web/00002.bin"]
    with pytest.raises(KeyError, match="not in manifest"):
        files_for(back, "code")
    assert verify_shards(tmp_path) == []
    (tmp_path / "web" / "00001.bin").write_bytes(np.array([9, 9, 9, 9], dtype="<u2").tobytes())
    assert verify_shards(tmp_path) == ["web/00001.bin: sha256 mismatch"]
    (tmp_path / "web" / "00002.bin").unlink()
    assert "web/00002.bin: missing" in verify_shards(tmp_path)


def test_read_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a shard directory"):
        read_manifest(tmp_path)
