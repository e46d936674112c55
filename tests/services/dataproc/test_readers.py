"""Input planning and reading: formats, shard splitting, compressed streams, legacy encodings."""

from __future__ import annotations

import gzip
import json

import zstandard

from neo_dataproc.config import parse_config
from neo_dataproc.readers import ShardReader, _decode, file_format, iter_lines, plan_shards

from .conftest import write_jsonl


def test_file_format_by_extension(tmp_path):
    assert [file_format(tmp_path / n) for n in ("a.jsonl.gz", "b.json", "c.html.zst", "d.py", "e.txt", "f")] == [
        "jsonl", "jsonl", "html", "code", "text", "text"]
    assert file_format(tmp_path / "x.dat", "jsonl") == "jsonl"


def test_plan_splits_files_into_shards_in_order(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": f"a{i}"} for i in range(5)])
    (tmp_path / "in" / "b.txt").write_text("one document")
    write_jsonl(tmp_path / "in" / "c.jsonl.gz", [{"text": f"c{i}"} for i in range(3)])
    config = parse_config({"name": "p", "inputs": [{"path": "in"}, {"path": "in/a.jsonl"}, {"path": "none/*.x"}],
                           "docs_per_shard": 4}, base_dir=tmp_path)
    plan = plan_shards(config)
    assert plan.files == 3  # a.jsonl listed twice counts once
    assert plan.errors == [{"file": "none/*.x", "error": "input matches no file"}]
    layout = [[(s.path.split("/")[-1], s.start, s.stop) for s in sh.segments] for sh in plan.shards]
    assert layout == [[("a.jsonl", 0, 4)], [("a.jsonl", 4, 5), ("b.txt", 0, 1), ("c.jsonl.gz", 0, 2)],
                      [("c.jsonl.gz", 2, 3)]]
    texts = [[d.text for d in ShardReader(sh)] for sh in plan.shards]
    assert texts == [["a0", "a1", "a2", "a3"], ["a4", "one document", "c0", "c1"], ["c2"]]
    uids = [d.uid for sh in plan.shards for d in ShardReader(sh)]
    assert uids == sorted(uids) and len(set(uids)) == 9


def test_multi_member_gzip_and_zstd(tmp_path):
    rec = [json.dumps({"text": f"t{i}"}) + "\n" for i in range(4)]
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress("".join(rec[:2]).encode())
                                          + gzip.compress("".join(rec[2:]).encode()))
    assert [json.loads(x)["text"] for x in iter_lines(tmp_path / "m.jsonl.gz")] == ["t0", "t1", "t2", "t3"]
    (tmp_path / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(rec).encode()))
    assert len(list(iter_lines(tmp_path / "z.jsonl.zst"))) == 4


def test_records_fields(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [
        {"id": "x", "html": "<p>hi</p>", "url": "https://e.org/a", "meta": {"k": 1}},
        {"id": "y", "text": "def f(): pass", "lang": "code", "source": "github"},
    ])
    config = parse_config({"name": "p", "inputs": [{"path": "in"}]}, base_dir=tmp_path)
    html, code = list(ShardReader(plan_shards(config).shards[0]))
    assert (html.kind, html.url, html.source, html.meta) == (
        "html", "https://e.org/a", "a", {"path": "a.jsonl", "line": 1, "id": "x", "meta": {"k": 1}})
    assert (code.kind, code.source) == ("code", "github")


def test_legacy_encodings():
    assert _decode("café crème, déjà vu".encode("cp1252")) == "café crème, déjà vu"
    assert _decode("中文网页的内容".encode("gb18030")) == "中文网页的内容"
    assert _decode(b"plain") == "plain"


def test_a_one_line_bomb_costs_the_line_cap_not_its_size(tmp_path, monkeypatch):
    """A gzip of one huge line (or a huge text file) is cut at MAX_LINE_BYTES and reported, and the records
    after it are read; memory never holds the whole line."""
    from neo_dataproc import readers

    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 1 << 20)
    good = [json.dumps({"text": f"after {i}"}) + "\n" for i in range(3)]
    bomb = b'{"text": "' + b"a" * (40 << 20) + b'"}\n'  # 40 MB in about 40 KB of gzip
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.jsonl.gz").write_bytes(gzip.compress(bomb + "".join(good).encode()))
    (tmp_path / "in" / "plain.jsonl").write_bytes(bomb + "".join(good).encode())
    (tmp_path / "in" / "big.txt.gz").write_bytes(gzip.compress(b"word " * (1 << 20)))
    config = parse_config({"name": "p", "inputs": [{"path": "in"}], "docs_per_shard": 100}, base_dir=tmp_path)
    [shard] = plan_shards(config).shards
    reader = ShardReader(shard)
    assert [d.text for d in reader] == [f"after {i}" for i in range(3)] * 2
    counts = reader.stats.to_dict()
    assert counts["dropped_read_line_too_long"] == 2 and counts["dropped_read_too_large"] == 1
    assert max(len(line) for line in iter_lines(tmp_path / "in" / "bomb.jsonl.gz")) == 1 << 20
