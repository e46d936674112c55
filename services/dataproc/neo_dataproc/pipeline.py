"""The units of work of a job and the steps they run. No Celery here: executors call ``run_unit``.

Phases, each a list of units (an executor runs a phase's units in any order, anywhere):

1. ``clean`` (one unit per shard): read → extract → langid → URL blocklist → OpenCC → Gopher
   repetition/quality → C4 → Chinese rules → code rules → PII; writes the survivors, their exact hashes and
   MinHash signatures.
2. ``dedup_bands`` (one unit per group of LSH bands): candidate edges from all signatures.
3. ``dedup_cluster`` (one unit): exact + fuzzy edges → clusters → the removed documents.
4. ``dedup_paragraphs`` (one unit per hash partition; only with ``paragraph_dedup``): the first
   occurrence of every line among the documents kept so far, from the line hashes pass 1 wrote;
   later occurrences are listed for removal (MAP-Neo Matrix's paragraph dedup).
5. ``tokenize`` (one unit per shard): survivors, their repeated lines removed → clean JSONL (+ token files per source).
6. ``finalize`` (one unit): per-source fixed-size shards, ``manifest.json`` and ``report.json``.

Every unit writes its outputs to temporary names and renames them, and writes its stats file
last: the stats file is the done marker. A unit whose marker exists returns at once, so a
redelivered or re-run task is a no-op and a killed one is simply redone.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from neo.shards import atomic_write_bytes
from neo_dataproc.config import JobConfig
from neo_dataproc.document import Document
from neo_dataproc.jobdir import JobDir, load_tokenizer
from neo_dataproc.readers import Plan, ShardReader
from neo_dataproc.report import build_report, write_shards
from neo_dataproc.steps.build import build_steps
from neo_dataproc.steps.dedup import (
    MinHasher,
    band_edges,
    connected_components,
    exact_edges,
    exact_hash,
    loose_pairs,
    verify_pairs,
)
from neo_dataproc.steps.matrix import drop_paragraphs, paragraph_hashes

log = logging.getLogger(__name__)

PHASES = ("clean", "dedup_bands", "dedup_cluster", "dedup_paragraphs", "tokenize", "finalize")
LiveCallback = Callable[[str, int, dict[str, Any]], None]  # (phase, unit, partial stats)
LIVE_EVERY_S = 1.0
EXAMPLES_PER_REASON = 3  # dropped documents kept per drop reason and shard (report.json "examples")
EXAMPLE_CHARS = 300


# --- job directory ----------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())


@lru_cache(maxsize=8)
def _load_job(root: str, mtime: float) -> tuple[JobConfig, Plan]:
    jd = JobDir(Path(root))
    config = JobConfig.model_validate_json(jd.config.read_text())
    return config, Plan.from_json(json.loads(jd.plan.read_text()))


def load_job(job_dir: Path) -> tuple[JobConfig, Plan]:
    jd = JobDir(job_dir)
    if not jd.plan.exists():
        raise FileNotFoundError(f"{job_dir}: no plan.json (the job was not planned: run `neo data run`)")
    return _load_job(str(Path(job_dir).resolve()), jd.plan.stat().st_mtime)


def units_of(phase: str, config: JobConfig, plan: Plan) -> list[int]:
    if phase in ("clean", "tokenize"):
        return [s.shard for s in plan.shards]
    if phase == "dedup_bands":
        if config.dedup is None or not config.dedup.fuzzy:
            return []
        return list(range(-(-config.dedup.num_bands // config.dedup.bands_per_task)))
    if phase == "dedup_paragraphs":
        return list(range(config.paragraph_dedup.partitions)) if config.paragraph_dedup is not None else []
    return [0]


def _zstd_jsonl(records: list[dict[str, Any]]) -> bytes:
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    return zstandard.ZstdCompressor(level=3).compress(raw)


def _read_zstd_jsonl(path: Path) -> list[dict[str, Any]]:
    with zstandard.open(path, "rb") as f:
        return [json.loads(line) for line in io.TextIOWrapper(f, encoding="utf-8")]


def run_unit(job_dir: Path, phase: str, unit: int, live: LiveCallback | None = None) -> dict[str, Any]:
    """Run one unit of a phase (a no-op returning the recorded stats if it is done)."""
    jd = JobDir(job_dir)
    if jd.is_done(phase, unit):
        return jd.read_stats(phase, unit)
    config, plan = load_job(job_dir)
    t0 = time.time()
    runners = {"clean": _clean, "dedup_bands": _dedup_bands, "dedup_cluster": _dedup_cluster,
               "dedup_paragraphs": _dedup_paragraphs, "tokenize": _tokenize, "finalize": _finalize}
    if phase not in runners:
        raise ValueError(f"unknown phase {phase!r}: expected one of {PHASES}")
    stats = runners[phase](jd, config, plan, unit, live)
    stats["elapsed_s"] = round(time.time() - t0, 3)
    write_json(jd.stats(phase, unit), stats)  # the done marker, last
    return stats


# --- pass 1: clean ----------------------------------------------------------------------------------
def _clean(jd: JobDir, config: JobConfig, plan: Plan, shard: int, live: LiveCallback | None) -> dict[str, Any]:
    reader = ShardReader(plan.shards[shard], config.max_errors_per_file)
    steps = build_steps(config)
    dd = config.dedup
    hasher = (MinHasher(dd.num_bands, dd.rows_per_band, dd.en_ngram, dd.zh_ngram, dd.seed, en_shingle=dd.en_shingle)
              if dd and dd.fuzzy else None)
    pd = config.paragraph_dedup
    pd_langs = frozenset(pd.langs) if pd is not None else frozenset()
    line_rows: list[tuple[int, int, int]] = []  # (uid, line index, hash) for paragraph dedup
    kept: list[Document] = []
    examples: dict[str, list[dict[str, Any]]] = {}
    sigs: list[np.ndarray] = []
    hashes: list[int] = []
    sizes: list[int] = []  # shingles per document (the second pass's size ratio)
    verify: list[bool] = []  # eligible for the verified second pass
    verify_langs = frozenset(dd.verify_langs) if dd is not None else frozenset()
    last = 0.0  # report after the first document, then every LIVE_EVERY_S

    def snapshot() -> dict[str, Any]:
        return {"steps": {"read": reader.stats.to_dict(), **{s.name: s.stats.to_dict() for s in steps}},
                "errors": reader.errors, "docs_out": len(kept), "examples": examples}

    for doc in reader:
        for step in steps:
            before = doc
            doc = step(doc)  # type: ignore[assignment]
            if doc is None:
                reason = getattr(step, "last_drop", step.family)
                got = examples.setdefault(reason, [])
                if len(got) < EXAMPLES_PER_REASON:
                    got.append({"uid": before.uid, "id": before.meta.get("id"), "path": before.meta.get("path"),
                                "url": before.url, "text": before.text[:EXAMPLE_CHARS]})
                break
        else:
            kept.append(doc)
            if pd is not None and doc.lang in pd_langs:
                line_rows += [(doc.uid, i, h) for i, h in paragraph_hashes(doc.text, pd.min_line_chars)]
            if dd is not None:
                hashes.append(exact_hash(doc.text))
                if hasher is not None:
                    sh = hasher.shingles(doc.text, doc.lang)
                    sigs.append(hasher.signature_of(sh))
                    sizes.append(len(sh))
                    verify.append(doc.lang in verify_langs and len(sh) >= dd.verify_min_shingles)
        if config.slow_down_s:
            time.sleep(config.slow_down_s)
        if live is not None and time.time() - last > LIVE_EVERY_S:
            live("clean", shard, snapshot())
            last = time.time()
    for step in steps:
        step.close()
    atomic_write_bytes(jd.clean_docs(shard), _zstd_jsonl([d.to_record() for d in kept]))
    if dd is not None:
        buf = io.BytesIO()
        num_perm = hasher.num_perm if hasher else 0
        np.savez(buf, uids=np.array([d.uid for d in kept], dtype=np.int64),
                 exact=np.array(hashes, dtype=np.uint64),
                 sigs=np.stack(sigs) if sigs else np.zeros((0, num_perm), dtype=np.uint32),
                 sizes=np.array(sizes, dtype=np.int64), verify=np.array(verify, dtype=bool))
        atomic_write_bytes(jd.signatures(shard), buf.getvalue())
    if pd is not None:
        rows = np.array(line_rows, dtype=np.uint64).reshape(-1, 3)
        buf = io.BytesIO()
        np.savez(buf, uids=rows[:, 0].astype(np.int64), lines=rows[:, 1].astype(np.int64), hashes=rows[:, 2])
        atomic_write_bytes(jd.lines(shard), buf.getvalue())
    return snapshot()


# --- dedup ------------------------------------------------------------------------------------------
def _all_signatures(jd: JobDir, plan: Plan, what: str) -> np.ndarray:
    parts = []
    for s in plan.shards:
        with np.load(jd.signatures(s.shard)) as z:
            parts.append(z[what])
    if not parts:
        return np.zeros(0)
    return np.concatenate(parts)


def _dedup_bands(jd: JobDir, config: JobConfig, plan: Plan, group: int, live: LiveCallback | None) -> dict[str, Any]:
    dd = config.dedup
    assert dd is not None
    sigs = _all_signatures(jd, plan, "sigs")
    first = group * dd.bands_per_task
    bands = range(first, min(first + dd.bands_per_task, dd.num_bands))
    edges = [band_edges(sigs, b, dd.rows_per_band, dd.min_similarity) for b in bands]
    all_edges = np.unique(np.concatenate(edges), axis=0) if edges else np.zeros((0, 2), dtype=np.int64)
    buf = io.BytesIO()
    np.save(buf, all_edges.astype(np.int64))
    atomic_write_bytes(jd.edges(group), buf.getvalue())
    return {"bands": list(bands), "edges": int(len(all_edges)), "documents": int(len(sigs))}


def _dedup_cluster(jd: JobDir, config: JobConfig, plan: Plan, unit: int, live: LiveCallback | None) -> dict[str, Any]:
    dd = config.dedup
    if dd is None:
        return {"steps": {}}
    uids = _all_signatures(jd, plan, "uids").astype(np.int64)
    exact = _all_signatures(jd, plan, "exact").astype(np.uint64)
    n = len(uids)
    edge_parts = [exact_edges(exact)] if dd.exact else []
    edge_parts += [np.load(jd.edges(g)) for g in units_of("dedup_bands", config, plan)]
    edges = np.concatenate(edge_parts) if edge_parts else np.zeros((0, 2), dtype=np.int64)
    labels = connected_components(n, edges)
    n_verified = n_loose = 0
    if dd.fuzzy and dd.verify_rows_per_band and n:
        verified, n_loose = _verified_edges(jd, config, plan, uids, labels)
        n_verified = len(verified)
        if n_verified:
            edges = np.concatenate([edges, verified])
            labels = connected_components(n, edges)
    removed = np.nonzero(labels != np.arange(n))[0]
    if dd.exact and n:
        _, first, inverse = np.unique(exact, return_index=True, return_inverse=True)
        is_exact = first[inverse][removed] < removed
    else:
        is_exact = np.zeros(len(removed), dtype=bool)
    buf = io.BytesIO()
    np.savez(buf, uids=uids[removed], exact=is_exact, kept_as=uids[labels[removed]])
    atomic_write_bytes(jd.removed(), buf.getvalue())
    n_exact = int(is_exact.sum())
    sizes = np.bincount(labels, minlength=n) if n else np.zeros(0, dtype=np.int64)
    counts = {"seen": n, "kept": n - len(removed), "dropped": int(len(removed)),
              "dropped_dedup_exact": n_exact, "dropped_dedup_fuzzy": int(len(removed)) - n_exact,
              "clusters": int((sizes > 1).sum()), "largest_cluster": int(sizes.max()) if n else 0,
              "candidate_edges": int(len(edges)), "second_pass_candidates": n_loose,
              "second_pass_edges": n_verified}
    return {"steps": {"dedup": counts}}


def _verified_edges(jd: JobDir, config: JobConfig, plan: Plan, uids: np.ndarray,
                    labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The verified second pass (``DedupSection.verify_*``): permissive-band candidates among the
    eligible documents not already in one cluster, linked when their exact shingle sets agree."""
    dd = config.dedup
    assert dd is not None
    rows = np.nonzero(_all_signatures(jd, plan, "verify").astype(bool))[0]
    if len(rows) < 2:
        return np.zeros((0, 2), dtype=np.int64), 0
    pairs = rows[loose_pairs(_all_signatures(jd, plan, "sigs")[rows], dd.verify_rows_per_band,
                             dd.verify_min_similarity)]
    pairs = pairs[labels[pairs[:, 0]] != labels[pairs[:, 1]]]
    sizes = _all_signatures(jd, plan, "sizes")
    a, b = sizes[pairs[:, 0]], sizes[pairs[:, 1]]
    small, large = np.minimum(a, b), np.maximum(a, b)
    pairs = pairs[small >= dd.verify_min_size_ratio * large]
    if not len(pairs):
        return pairs, 0
    want = {int(uids[r]): int(r) for r in np.unique(pairs)}
    hasher = MinHasher(dd.num_bands, dd.rows_per_band, dd.en_ngram, dd.zh_ngram, dd.seed, en_shingle=dd.en_shingle)
    shingles: dict[int, np.ndarray] = {}
    for shard in sorted({uid >> 32 for uid in want}):
        for d in _read_zstd_jsonl(jd.clean_docs(shard)):
            row = want.get(d["uid"])
            if row is not None:
                shingles[row] = hasher.shingles(d["text"], d["lang"])
    return verify_pairs(pairs, shingles, dd.verify_min_jaccard, dd.verify_min_size_ratio), int(len(pairs))


def _dedup_paragraphs(jd: JobDir, config: JobConfig, plan: Plan, unit: int,
                      live: LiveCallback | None) -> dict[str, Any]:
    """Partition ``unit`` of the line hashes: every line after its hash's first occurrence (smallest
    (uid, line)) among the documents the document dedup kept is listed for removal."""
    pd = config.paragraph_dedup
    assert pd is not None
    parts = {"uids": [], "lines": [], "hashes": []}
    for s in plan.shards:
        with np.load(jd.lines(s.shard)) as z:
            mine = (z["hashes"] % np.uint64(pd.partitions)) == np.uint64(unit)
            for key in parts:
                parts[key].append(z[key][mine])
    uids, lines, hashes = (np.concatenate(parts[k]) if parts[k] else np.zeros(0, dtype=np.int64)
                           for k in ("uids", "lines", "hashes"))
    if config.dedup is not None and len(uids):
        alive = ~np.isin(uids, _removed_uids(str(jd.removed()), jd.removed().stat().st_mtime))
        uids, lines, hashes = uids[alive], lines[alive], hashes[alive]
    order = np.lexsort((lines, uids, hashes))  # by hash, then input order
    sorted_h = hashes[order]
    later = order[np.r_[False, sorted_h[1:] == sorted_h[:-1]]] if len(order) else order
    buf = io.BytesIO()
    np.savez(buf, uids=uids[later], lines=lines[later])
    atomic_write_bytes(jd.paragraph_drops(unit), buf.getvalue())
    return {"lines": int(len(uids)), "duplicate_lines": int(len(later))}


@lru_cache(maxsize=4)
def _paragraph_drops(root: str, units: tuple[int, ...], mtimes: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    jd = JobDir(Path(root))
    uids, lines = [], []
    for u in units:
        with np.load(jd.paragraph_drops(u)) as z:
            uids.append(z["uids"])
            lines.append(z["lines"])
    if not uids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(uids), np.concatenate(lines)


def _strip_paragraphs(jd: JobDir, config: JobConfig, plan: Plan, shard: int,
                      docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Remove the lines ``dedup_paragraphs`` listed from this shard's documents; drop documents left
    under ``min_doc_chars`` (Matrix: 20)."""
    pd = config.paragraph_dedup
    assert pd is not None
    t0 = time.perf_counter()
    units = tuple(units_of("dedup_paragraphs", config, plan))
    uids, lines = _paragraph_drops(str(jd.root), units, tuple(jd.paragraph_drops(u).stat().st_mtime for u in units))
    mine = (uids >> 32) == shard
    by_uid: dict[int, set[int]] = {}
    for uid, line in zip(uids[mine].tolist(), lines[mine].tolist(), strict=True):
        by_uid.setdefault(uid, set()).add(line)
    out = []
    counts: dict[str, Any] = {"seen": len(docs), "kept": 0, "dropped": 0}
    removed_lines = changed = 0
    for d in docs:
        gone = by_uid.get(d["uid"])
        if gone:
            d["text"] = drop_paragraphs(d["text"], gone)
            removed_lines += len(gone)
            changed += 1
            if len(d["text"].strip()) < pd.min_doc_chars:
                counts["dropped"] += 1
                counts["dropped_paragraph_dedup_short"] = counts.get("dropped_paragraph_dedup_short", 0) + 1
                continue
        out.append(d)
    counts["kept"] = len(out)
    counts["lines_removed"] = removed_lines
    counts["documents_changed"] = changed
    counts["time_s"] = round(time.perf_counter() - t0, 4)
    return out, counts


# --- pass 2: tokenize -------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _removed_uids(path: str, mtime: float) -> np.ndarray:
    with np.load(path) as z:
        return np.sort(z["uids"])


def _tokenize(jd: JobDir, config: JobConfig, plan: Plan, shard: int, live: LiveCallback | None) -> dict[str, Any]:
    docs = _read_zstd_jsonl(jd.clean_docs(shard))
    if config.dedup is not None:
        removed = _removed_uids(str(jd.removed()), jd.removed().stat().st_mtime)
        gone = np.isin(np.array([d["uid"] for d in docs], dtype=np.int64), removed)
        docs = [d for d, g in zip(docs, gone, strict=True) if not g]
    step_stats: dict[str, Any] = {}
    if config.paragraph_dedup is not None:
        docs, step_stats["paragraph_dedup"] = _strip_paragraphs(jd, config, plan, shard, docs)
    atomic_write_bytes(jd.final_docs(shard), _zstd_jsonl(docs))
    sources: dict[str, dict[str, int]] = {}
    for d in docs:
        sources.setdefault(d["source"], {"documents": 0, "tokens": 0})["documents"] += 1
    tk = config.tokenize
    if tk.tokenizer:
        from neo.shards import dtype_for_vocab, write_tokens

        tok = load_tokenizer(str(config.resolve(tk.tokenizer)))
        dtype = dtype_for_vocab(tok.vocab_size)
        by_source: dict[str, list[np.ndarray]] = {}
        t0 = time.perf_counter()
        for d in docs:
            ids = tok.encode(d["text"], add_bos=tk.add_bos, add_eos=tk.add_eos)
            by_source.setdefault(d["source"], []).append(np.asarray(ids, dtype=np.uint32))
        for source, arrays in sorted(by_source.items()):
            sources[source]["tokens"] = write_tokens(jd.tokens(shard, source), np.concatenate(arrays), dtype)
        elapsed = time.perf_counter() - t0
        counts = {"seen": len(docs), "kept": len(docs), "dropped": 0,
                  "tokens": sum(s["tokens"] for s in sources.values()),
                  "time_s": round(elapsed, 4)}
        return {"steps": {**step_stats, "tokenize": counts}, "sources": sources}
    return {"steps": step_stats, "sources": sources}


# --- finalize ---------------------------------------------------------------------------------------
def _finalize(jd: JobDir, config: JobConfig, plan: Plan, unit: int, live: LiveCallback | None) -> dict[str, Any]:

    report = build_report(jd, config, plan)
    manifest = write_shards(jd, config, plan, report) if config.tokenize.tokenizer else None
    if manifest is not None:
        report["manifest"] = {"path": str(jd.shards / "manifest.json"), "files": len(manifest.files),
                              "tokens": manifest.total_tokens, "dtype": manifest.dtype}
    write_json(jd.report, report)
    return {"report": str(jd.report)}

