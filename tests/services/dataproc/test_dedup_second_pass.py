"""The verified second dedup pass (``DedupSection.verify_*``, issue #19): permissive LSH candidates
linked only when their exact shingle Jaccard, sizes and length agree. Real pairs from
``data/second_pass_pairs.json``: a word-edited copy from the held-out tune half, and pairs
bench/dataproc's synthetic truth calls distinct."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neo_dataproc.config import parse_config
from neo_dataproc.steps.dedup import MinHasher, loose_pairs, verify_pairs

from .conftest import write_jsonl
from .test_job import final_docs, make_config, run_eager

PAIRS = json.loads((Path(__file__).parent / "data" / "second_pass_pairs.json").read_text())


def _shingles(*texts: str) -> tuple[MinHasher, dict[int, np.ndarray]]:
    h = MinHasher()
    return h, {i: h.shingles(t, "en") for i, t in enumerate(texts)}


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b))
    return inter / (len(a) + len(b) - inter)


def _run(tmp_path, settings, first: str, second: str, job: str = "t", **dedup) -> tuple[set[str], dict]:
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "first", "text": first}, {"id": "second", "text": second}])
    report = run_eager(make_config(tmp_path, name=job, paragraph_dedup=None, dedup=dedup), settings)
    return {d["meta"]["id"] for d in final_docs(settings, job)}, report


def test_word_edited_copy_is_below_the_first_pass_but_verified():
    p = PAIRS["word_edited"]
    h, sh = _shingles(p["orig"], p["copy"])
    sigs = np.stack([h.signature_of(sh[0]), h.signature_of(sh[1])])
    assert (sigs[0] == sigs[1]).mean() < 0.7  # the 20 × 10 pass's signature check rejects it
    assert 0.6 < _jaccard(sh[0], sh[1]) < 0.7
    pairs = loose_pairs(sigs, 4, 0.4)
    assert pairs.tolist() == [[1, 0]]
    assert verify_pairs(pairs, sh, 0.47, 0.9).tolist() == [[1, 0]]


def test_job_removes_word_edited_copy_only_with_the_second_pass(tmp_path, settings):
    p = PAIRS["word_edited"]
    kept, report = _run(tmp_path, settings, p["orig"], p["copy"])
    assert kept == {"first"}
    assert report["stages"]["dedup"]["second_pass_edges"] == 1
    kept, _ = _run(tmp_path / "off", settings, p["orig"], p["copy"], job="off", verify_rows_per_band=0)
    assert kept == {"first", "second"}


@pytest.mark.parametrize("name, override", [("distinct_long", {"verify_min_jaccard": 0.45}),
                                            ("distinct_short", {"verify_min_shingles": 50})])
def test_distinct_pairs_stay_apart(tmp_path, settings, name, override):
    """Below ``verify_min_jaccard`` (0.452 < 0.47) or under ``verify_min_shingles`` (80 < 100): kept
    by default, merged once that threshold is loosened (so the threshold is what keeps them)."""
    p = PAIRS[name]
    kept, report = _run(tmp_path, settings, p["first"], p["second"])
    assert kept == {"first", "second"}
    assert report["stages"]["dedup"]["second_pass_edges"] == 0
    kept, _ = _run(tmp_path / "loose", settings, p["first"], p["second"], job="loose", **override)
    assert kept == {"first"}


def test_size_ratio_rejects_an_excerpt():
    """An excerpt (every shingle shared, two thirds of the size) is not a second-pass duplicate."""
    text = PAIRS["word_edited"]["orig"]
    h, sh = _shingles(text, text[: len(text) * 2 // 3])
    pairs = np.array([[1, 0]])
    assert verify_pairs(pairs, sh, 0.47, 0.9).tolist() == []
    assert verify_pairs(pairs, sh, 0.47, 0.5).tolist() == [[1, 0]]


def test_matrix_profile_has_no_second_pass(tmp_path):
    cfg = parse_config({"name": "t", "inputs": [{"path": "in"}], "profile": "matrix"}, base_dir=tmp_path)
    assert cfg.dedup.verify_rows_per_band == 0
    assert parse_config({"name": "t", "inputs": [{"path": "in"}]}, base_dir=tmp_path).dedup.verify_rows_per_band == 4
