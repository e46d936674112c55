"""Checks on the committed sample corpus in data/sample/ (built by scripts/build_sample_corpus.py).

Reads only the committed files: no apt, no groff, no network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
MANIFEST = SAMPLE / "MANIFEST.json"

EXPECTED_FILES = {
    "debian-reference.en.jsonl.gz",
    "debian-reference.zh.jsonl.gz",
    "fortunes.en.jsonl.gz",
    "fortunes.zh.jsonl.gz",
    "manpages.en.jsonl.gz",
    "manpages.zh.jsonl.gz",
    "python-stdlib.code.jsonl.gz",
}
REQUIRED = {"id": str, "text": str, "source": str, "lang": str, "license": str, "meta": dict}

CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
ASCII_LETTER_RE = re.compile("[A-Za-z]")
SPACE_RE = re.compile(r"\s")


def iter_jsonl(path: Path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


@cache
def manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


@cache
def records(name: str) -> tuple[dict, ...]:
    return tuple(iter_jsonl(SAMPLE / name))


def char_ratios(name: str) -> tuple[float, float]:
    """(CJK chars, ASCII letters) as shares of all non-whitespace characters of a file's texts."""
    cjk = letters = nonspace = 0
    for r in records(name):
        t = r["text"]
        cjk += len(CJK_RE.findall(t))
        letters += len(ASCII_LETTER_RE.findall(t))
        nonspace += len(t) - len(SPACE_RE.findall(t))
    return cjk / nonspace, letters / nonspace


def test_manifest_lists_all_sources():
    assert set(manifest()["files"]) == EXPECTED_FILES
    assert manifest()["raw"], "no raw HTML pages listed"


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_file_matches_manifest(name):
    entry = manifest()["files"][name]
    path = SAMPLE / name
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["file_bytes"]
    assert data[4:8] == b"\0\0\0\0", "gzip mtime must be 0 for reproducible builds"
    recs = records(name)
    assert len(recs) == entry["docs"] > 0
    assert sum(len(r["text"].encode("utf-8")) for r in recs) == entry["text_bytes"]


def test_raw_files_match_manifest():
    for rel, entry in manifest()["raw"].items():
        data = (SAMPLE / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], rel
        html = gzip.decompress(data).decode("utf-8")
        assert "<html" in html and "</html>" in html, rel


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_records_have_required_fields(name):
    entry = manifest()["files"][name]
    seen = set()
    for r in records(name):
        for key, typ in REQUIRED.items():
            assert isinstance(r.get(key), typ), (name, r.get("id"), key)
        assert r["source"] == entry["source"]
        assert r["lang"] == entry["lang"] in ("en", "zh", "code")
        assert r["id"].startswith(f"{r['source']}/")
        assert r["id"] not in seen, f"duplicate id {r['id']}"
        seen.add(r["id"])
        assert r["text"].strip(), r["id"]
        assert unicodedata.is_normalized("NFC", r["text"]), r["id"]
        assert r["license"].strip()


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED_FILES if ".zh." in n))
def test_zh_files_are_chinese(name):
    cjk, letters = char_ratios(name)
    # measured: 0.42-0.54 of non-space chars are CJK (the rest: commands, options, punctuation)
    assert cjk >= 0.35, (name, cjk, letters)
    assert cjk / (cjk + letters) >= 0.45, (name, cjk, letters)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED_FILES if ".en." in n))
def test_en_files_are_english(name):
    cjk, letters = char_ratios(name)
    # measured: 0.88-0.93 of non-space chars are ASCII letters, no CJK at all
    assert letters >= 0.80, (name, cjk, letters)
    assert cjk < 0.001, (name, cjk, letters)


def test_code_is_python_source():
    recs = records("python-stdlib.code.jsonl.gz")
    cjk, letters = char_ratios("python-stdlib.code.jsonl.gz")
    assert letters >= 0.6 and cjk < 0.001
    assert all(r["meta"]["path"].endswith(".py") for r in recs)
    assert sum("\n    " in r["text"] for r in recs) >= 0.9 * len(recs), "indentation must be kept"


def test_debian_reference_sections_are_parallel():
    en = {r["meta"]["section"] for r in records("debian-reference.en.jsonl.gz")}
    zh = {r["meta"]["section"] for r in records("debian-reference.zh.jsonl.gz")}
    shared = en & zh
    assert len(shared) >= 50
    assert len(shared) >= 0.9 * min(len(en), len(zh))


def test_sizes_are_balanced():
    by_lang = manifest()["bytes_by_lang"]
    total = sum(by_lang.values())
    assert 0.8 <= by_lang["en"] / by_lang["zh"] <= 1.25
    assert 0.15 <= by_lang["code"] / total <= 0.25
    on_disk = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert on_disk < 10_000_000
