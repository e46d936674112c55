"""Parquet, Hugging Face ``datasets`` save_to_disk directories and WARC / WARC.gz inputs, on files the
test writes itself; sharded across files like JSONL, with the same fields."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neo_dataproc.readers import count_documents, file_format, iter_records

from .corpus import EN_DOCS, ZH_DOCS
from .test_job import final_docs, make_config, run_eager

HTML = "<html><head><title>t</title></head><body><article>{}</article></body></html>"


def write_warc(path: Path, pages: list[tuple[str, str]], gz: bool) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=gz)
        for url, body in pages:
            w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
            status = "404 Not Found" if "missing" in url else "200 OK"
            ctype = "image/png" if url.endswith(".png") else "text/html; charset=utf-8"
            http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body.encode()), http_headers=http))


def html_page(text: str) -> str:
    return HTML.format("".join(f"<p>{line}</p>" for line in text.split("\n")))


def test_formats_by_extension():
    assert file_format(Path("a.warc.gz")) == "warc" and file_format(Path("a.warc")) == "warc"
    assert file_format(Path("x.parquet")) == "parquet" and file_format(Path("data-00000-of-00001.arrow")) == "arrow"


def test_warc_parquet_and_hf_dataset_inputs(tmp_path, settings):
    datasets = pytest.importorskip("datasets")
    inp = tmp_path / "in"
    inp.mkdir()
    write_warc(inp / "crawl.warc.gz", [("https://a.example/1", html_page(EN_DOCS[0])),
                                       ("https://a.example/missing", html_page(EN_DOCS[3])),
                                       ("https://a.example/logo.png", "\x89PNG"),
                                       ("https://b.example/2", html_page(ZH_DOCS[0]))], gz=True)
    write_warc(inp / "plain.warc", [("https://c.example/3", html_page(EN_DOCS[1]))], gz=False)
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "text": [EN_DOCS[2], ZH_DOCS[1], EN_DOCS[3]],
                             "url": ["https://p.example/1", None, None]}), inp / "part.parquet", row_group_size=2)
    ds = datasets.Dataset.from_dict({"text": [EN_DOCS[1], ZH_DOCS[2]], "id": ["h1", "h2"]})
    ds.save_to_disk(str(inp / "hf"))
    assert count_documents(inp / "crawl.warc.gz", "warc") == (2, None)
    assert count_documents(inp / "part.parquet", "parquet") == (3, None)
    assert [r["id"] for r in iter_records(inp / "part.parquet", "parquet", 1, 3)] == ["p2", "p3"]
    warc_recs = list(iter_records(inp / "crawl.warc.gz", "warc", 1, 2))
    assert [r["url"] for r in warc_recs] == ["https://b.example/2"]

    config = make_config(tmp_path, docs_per_shard=2, dedup=None, paragraph_dedup=None)  # repeats on purpose
    report = run_eager(config, settings)
    docs = final_docs(settings)
    by_id = {d["meta"].get("id"): d for d in docs}
    assert {"p1", "p2", "p3", "h1", "h2"} <= set(by_id)
    urls = {d["url"] for d in docs if d["url"]}
    assert {"https://a.example/1", "https://b.example/2", "https://c.example/3", "https://p.example/1"} <= urls
    assert len(docs) == 8 and report["input"]["records"] == 8  # 2 + 1 WARC pages, 3 Parquet rows, 2 HF rows
    assert report["error_count"] == 0, report["errors"]
    page = next(d for d in docs if d["url"] == "https://a.example/1")
    assert "market day" in page["text"] and "<p>" not in page["text"]


def test_broken_parquet_is_a_plan_error(tmp_path, settings):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "in" / "ok.parquet").write_bytes(b"")
    pq.write_table(pa.table({"text": [EN_DOCS[0]]}), tmp_path / "in" / "ok.parquet")
    report = run_eager(make_config(tmp_path), settings)
    assert report["documents"]["final"] == 1
    assert any("bad.parquet" in e["file"] and "unreadable parquet" in e["error"] for e in report["errors"])
