"""neo.records: the same rows from JSONL, gzip, Parquet, Arrow and real `datasets.save_to_disk` directories."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from neo.records import iter_records

ROWS = [{"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}]


def test_every_format_gives_the_same_rows(tmp_path):
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS)
    (tmp_path / "a.jsonl").write_text(text + "\n", encoding="utf-8")  # a blank line is skipped
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table, tmp_path / "a.parquet")
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "dsd"))
    for name in ("a.jsonl", "a.jsonl.gz", "a.parquet", "a.arrow", "ds", "dsd"):
        assert list(iter_records(tmp_path / name)) == ROWS, name


def test_unreadable_inputs_name_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not JSON"):
        list(iter_records(tmp_path / "bad.jsonl"))
    (tmp_path / "list.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"list\.jsonl:1: expected a JSON object per line, got list"):
        list(iter_records(tmp_path / "list.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown data format; expected JSONL"):
        list(iter_records(tmp_path / "data.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Arrow files"):
        list(iter_records(tmp_path / "empty"))
    DatasetDict({"validation": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "noval"))
    with pytest.raises(ValueError, match="without a 'train' split"):
        list(iter_records(tmp_path / "noval"))
