"""Whole jobs in process (eager executor, real Redis for progress): planted duplicates, bad input,
tokenized shards + manifest, resume, config validation, status."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from neo.shards import open_shard, read_manifest, verify_shards
from neo_dataproc.config import ConfigError, load_config, parse_config
from neo_dataproc.executors import EagerExecutor
from neo_dataproc.jobstore import JobStore
from neo_dataproc.runner import JobConflict, run_job

from .conftest import write_jsonl
from .corpus import EN_DOCS, ZH_DOCS, edit_words, reorder_lines, respace


def make_config(tmp_path: Path, **overrides: Any):
    data = {"name": "t", "inputs": [{"path": "in"}], "docs_per_shard": 4, **overrides}
    return parse_config(data, base_dir=tmp_path)


def run_eager(config, settings) -> dict[str, Any]:
    return run_job(config, settings, EagerExecutor(JobStore.from_settings(settings, config.name)),
                   store=JobStore.from_settings(settings, config.name))


def final_docs(settings, job: str = "t") -> list[dict[str, Any]]:
    out = []
    for path in sorted((settings.job_dir(job) / "docs").glob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            out += [json.loads(line) for line in f]
    return out


PLANTED = [
    # (id, text, expected fate)
    ("en0", EN_DOCS[0], "kept"),
    ("zh0", ZH_DOCS[0], "kept"),
    ("en1", EN_DOCS[1], "kept"),
    ("en0-copy", EN_DOCS[0], "exact"),
    ("en2", EN_DOCS[2], "kept"),
    ("en1-spaces", respace(EN_DOCS[1]), "exact"),
    ("zh1", ZH_DOCS[1], "kept"),
    ("en2-edited", edit_words(EN_DOCS[2], [(20, "massive"), (75, "mysterious")]), "fuzzy"),
    ("en3", EN_DOCS[3], "kept"),
    ("zh2", ZH_DOCS[2], "kept"),
    ("en3-reordered", reorder_lines(EN_DOCS[3]), "fuzzy"),
    ("zh0-edited", ZH_DOCS[0].replace("农民", "村民").replace("风筝", "纸鸢"), "fuzzy"),
    ("zh1-reordered", reorder_lines(ZH_DOCS[1]), "fuzzy"),
]


def test_planted_duplicates_are_found_and_distinct_documents_kept(tmp_path, settings):
    # originals and copies spread over two files and several shards: dedup is across the corpus
    records = [{"id": i, "text": t, "source": "web"} for i, t, _ in PLANTED]
    write_jsonl(tmp_path / "in" / "a.jsonl", records[:6])
    write_jsonl(tmp_path / "in" / "b.jsonl.gz", records[6:])
    report = run_eager(make_config(tmp_path), settings)
    kept = [d["meta"]["id"] for d in final_docs(settings)]
    assert kept == [i for i, _, fate in PLANTED if fate == "kept"]
    dedup = report["stages"]["dedup"]
    assert dedup["seen"] == len(PLANTED)
    assert dedup["dropped_dedup_exact"] == 2
    assert dedup["dropped_dedup_fuzzy"] == 4
    assert dedup["clusters"] == 6
    assert report["documents"] == {"read": 13, "after_cleaning": 13, "final": 7}


def test_bad_input_is_reported_and_the_job_goes_on(tmp_path, settings):
    inp = tmp_path / "in"
    inp.mkdir()
    good = [json.dumps({"id": "g0", "text": EN_DOCS[0]}), "{not json", json.dumps({"id": "g1", "body": "no text"}),
            json.dumps({"id": "g2", "text": ZH_DOCS[0]})]
    (inp / "good.jsonl").write_text("\n".join(good) + "\n")
    (inp / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (inp / "empty.jsonl").write_bytes(b"")
    lines = [json.dumps({"id": f"b{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(EN_DOCS[1:])]
    full = gzip.compress("".join(lines).encode(), mtime=0)
    (inp / "broken.jsonl.gz").write_bytes(full[: len(full) * 3 // 4])  # the last record is cut
    (inp / "notgzip.jsonl.gz").write_bytes(b"this is not gzip at all")
    (inp / "page.html").write_text("<html><body><article>" + "".join(f"<p>{ln}</p>" for ln in ZH_DOCS[1].split("\n"))
                                   + "</article></body></html>")
    report = run_eager(make_config(tmp_path), settings)
    errors = {(Path(e["file"]).name, e.get("line")): e["error"] for e in report["errors"]}
    assert errors[("good.jsonl", 2)].startswith("invalid JSON")
    assert errors[("good.jsonl", 3)] == "no string 'text' (or 'html') field"
    assert errors[("binary.jsonl", None)] == "binary file (NUL bytes), skipped"
    assert errors[("empty.jsonl", None)] == "empty file"
    assert errors[("broken.jsonl.gz", None)].startswith("broken compressed stream after 2 lines (EOFError")
    assert errors[("notgzip.jsonl.gz", None)].startswith("unreadable (error: Error -3")
    assert report["error_count"] == 6
    read = report["stages"]["read"]
    assert (read["dropped_read_invalid_json"], read["dropped_read_no_text"]) == (1, 1)
    kept = sorted(d["meta"].get("id", d["meta"]["path"]) for d in final_docs(settings))
    assert kept == ["b0", "b1", "g0", "g2", "page.html"]  # the broken file's complete records are kept


def test_tokenized_shards_and_manifest(tmp_path, settings, tiny_tokenizer):
    from neo.tokenizer import NeoTokenizer, tokenizer_digest

    write_jsonl(tmp_path / "in" / "en.jsonl", [{"text": t, "source": "books"} for t in EN_DOCS])
    write_jsonl(tmp_path / "in" / "zh.jsonl", [{"text": t, "source": "zhweb"} for t in ZH_DOCS])
    config = make_config(tmp_path, tokenize={"tokenizer": str(tiny_tokenizer), "tokens_per_shard": 300})
    report = run_eager(config, settings)
    shards = settings.job_dir("t") / "shards"
    manifest = read_manifest(shards)
    assert verify_shards(shards, manifest) == []
    tok = NeoTokenizer.load(tiny_tokenizer)
    assert manifest.dtype == "uint16" and manifest.vocab_size == tok.vocab_size
    expected = {src: [tok.encode(t, add_bos=True, add_eos=True) for t in texts]
                for src, texts in (("books", EN_DOCS), ("zhweb", ZH_DOCS))}
    for src, docs in expected.items():
        stream = np.concatenate([open_shard(shards / f.path, manifest.dtype) for f in manifest.files
                                 if f.source == src])
        assert stream.tolist() == [i for ids in docs for i in ids]  # in input order, <s> … </s> per document
        sizes = [f.tokens for f in manifest.files if f.source == src]
        assert all(s == 300 for s in sizes[:-1]) and 0 < sizes[-1] <= 300
        assert manifest.sources[src].documents == len(docs)
        assert manifest.sources[src].tokens == sum(map(len, docs)) == report["sources"][src]["tokens"]
    assert manifest.config["name"] == "t" and manifest.report["documents"]["final"] == 7
    assert manifest.tokenizer_sha256 == tokenizer_digest(tiny_tokenizer)  # the one digest the trainer uses too


def test_rerun_resumes_and_changed_config_is_refused(tmp_path, settings):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": t} for t in EN_DOCS + ZH_DOCS])
    config = make_config(tmp_path)
    first = run_eager(config, settings)
    job = settings.job_dir("t")
    marker = job / "clean" / "00000.stats.json"
    stamp = marker.stat().st_mtime_ns
    (job / "clean" / "00001.stats.json").unlink()  # as if the job died during shard 1
    second = run_eager(config, settings)
    assert marker.stat().st_mtime_ns == stamp  # shard 0 was not redone
    def counts(report):
        return {k: {c: v for c, v in st.items() if c != "time_s"} for k, st in report["stages"].items()}

    assert counts(second) == counts(first) and second["documents"] == first["documents"]
    assert final_docs(settings) and len(final_docs(settings)) == first["documents"]["final"]
    with pytest.raises(JobConflict, match="different config"):
        run_eager(make_config(tmp_path, docs_per_shard=5), settings)


def test_status_shows_progress_and_drop_counts(tmp_path, settings):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": t} for t in EN_DOCS]
                + [{"text": "The cat sat on the mat with a hat, and it was happy there."}])
    run_eager(make_config(tmp_path), settings)
    st = JobStore.from_settings(settings, "t").status()
    assert st is not None and st["state"] == "done"
    assert st["phases"]["clean"] == {"done": 2, "running": 0, "total": 2}
    assert st["docs_read"] == 5 and st["docs_per_s"] > 0
    assert st["stages"]["gopher_quality"]["dropped_gopher_short_doc"] == 1


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"docs_per_shard: Input should be greater than or equal to 1"):
        make_config(tmp_path, docs_per_shard=0)
    with pytest.raises(ConfigError, match=r"en_quality.gopher_quality: .*unexpected keyword argument 'min_words'"):
        make_config(tmp_path, en_quality={"gopher_quality": {"min_words": 3}})
    with pytest.raises(ConfigError, match=r"dedup.num_band: Extra inputs are not permitted"):
        make_config(tmp_path, dedup={"num_band": 3})
    with pytest.raises(ConfigError, match=r"name: Value error, letters, digits"):
        make_config(tmp_path, name="../escape")
    with pytest.raises(ConfigError, match=r"tokenize.tokenizer: no tokenizer.model or tokenizer.json in"):
        make_config(tmp_path, tokenize={"tokenizer": "missing"})
    bad = tmp_path / "job.yaml"
    bad.write_text("name: x\ninputs: [{path: in}]\nlangid: {keep: [en, fr]}\n")
    with pytest.raises(ConfigError, match=r"langid: keep: unknown languages \['fr'\]"):
        load_config(bad)
    good = tmp_path / "ok.yaml"
    good.write_text("name: ok\ninputs: [{path: in}]\nzh_quality: {opencc: null}\ndedup: null\n")
    cfg = load_config(good)
    assert cfg.resolve("in") == tmp_path.resolve() / "in" and cfg.dedup is None



def test_hostile_records_neither_abort_the_job_nor_escape_its_directory(tmp_path, settings, tiny_tokenizer):
    """A ``source`` is a file-name part of the token files; a 100k-deep JSON line must be one bad line; lines
    skipped after too many errors are counted, so the report adds up."""
    escape = tmp_path / "escaped"
    ups = len((settings.job_dir("t") / "tokenize" / "00000").relative_to(tmp_path).parts)  # up to tmp_path
    write_jsonl(tmp_path / "in" / "a.jsonl", [
        {"id": "evil", "text": EN_DOCS[0], "source": "../" * ups + "escaped/x"},
        {"id": "dots", "text": ZH_DOCS[0], "source": ".."},
    ])
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "in" / "deep.jsonl").write_text(deep + "\n" + json.dumps({"id": "after", "text": EN_DOCS[1]}) + "\n")
    bad = ["{not json"] * 25 + [json.dumps({"id": f"late{i}", "text": f"late {i}"}) for i in range(5)]
    (tmp_path / "in" / "bad.jsonl").write_text("\n".join(bad) + "\n")
    config = make_config(tmp_path, docs_per_shard=100,
                         tokenize={"tokenizer": str(tiny_tokenizer), "tokens_per_shard": 300})
    report = run_eager(config, settings)
    job_dir = settings.job_dir("t").resolve()
    written = [p.resolve() for p in settings.home.resolve().rglob("*") if p.is_file()]
    assert not escape.exists() and all(p.is_relative_to(settings.home.resolve()) for p in written)
    assert {d["source"] for d in final_docs(settings)} >= {"escaped_x", "default"}  # "../…/escaped/x", ".."
    assert all(f.is_relative_to(job_dir) for f in (job_dir / "tokenize").rglob("*.bin"))
    kept = {d["meta"].get("id") for d in final_docs(settings)}
    assert {"evil", "dots", "after"} <= kept  # the deep line cost itself, not its file or the job
    read = report["stages"]["read"]
    assert read["dropped_read_invalid_json"] == 21  # the deep line + 20 bad lines before the cut-off
    assert read["dropped_read_skipped_after_errors"] == 10  # 5 more bad lines and the 5 good ones after them
    assert read["seen"] == read["kept"] + read["dropped"]
