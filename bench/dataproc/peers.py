"""Neo's peers on the held-out messy corpus: datatrove with the same rules, and an off-the-shelf pipeline.

Both read the held-out half as a plain reader would: JSONL records as they are, files as UTF-8
(undecodable bytes replaced), each document keyed as Neo keys it (record ``id``, file name).

* ``datatrove``: ``dt_pipeline.py`` (datatrove 0.10's own steps, one worker, one task): datatrove's
  Trafilatura extractor for ``.html`` files, the same language id as Neo (fastText ``lid.176`` +
  Neo's code heuristic), Gopher repetition/quality and C4 for English, Gopher repetition for
  Chinese, ``PIIFormatter``, MinHash 5-grams 20 × 10 in its four stages.
* ``reference``: the off-the-shelf stack of issue #19, one process: trafilatura for HTML, ftfy,
  the same language id, OpenCC ``t2s`` for Chinese, the same datatrove filters and ``PIIFormatter``
  called per document, then datasketch ``MinHashLSH`` (word 5-grams for English and code,
  character 5-grams for Chinese, 20 bands × 10 rows as Neo's default; first occurrence kept).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

Docs = list[dict[str, Any]]
Final = dict[str, dict[str, Any]]


def read_half(half_dir: Path) -> Docs:
    """Records and files of ``a/`` then ``b/`` (Neo's input order): ``{"id", "text", "ext"}``."""
    docs: Docs = []
    for part in ("a", "b"):
        for path in sorted((half_dir / part).glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                docs += [{"id": str(r["id"]), "text": r["text"], "ext": ""} for r in map(json.loads, f)]
        for path in sorted((half_dir / part / "files").iterdir()):
            docs.append({"id": path.name, "text": path.read_bytes().decode("utf-8", errors="replace"),
                         "ext": path.suffix.lower()})
    return docs


def run_datatrove(docs: Docs, work: Path) -> tuple[Final, float]:
    from dt_pipeline import run

    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    with gzip.open(work / "in" / "00000.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d["id"], "text": d["text"], "metadata": {"ext": d["ext"]}}) + "\n")
    t0 = time.time()
    with (work / "datatrove.log").open("w") as log, contextlib.redirect_stderr(log):  # its per-task logs
        run(work / "in", work / "out", workers=1, tasks=1, html=True)
    wall = time.time() - t0
    final: Final = {}
    for path in sorted((work / "out" / "final").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for rec in map(json.loads, f):
                final[str(rec["id"])] = {"text": rec["text"]}
    return final, wall


_WORD = re.compile(r"\w+")


def _shingles(text: str, lang: str, n: int = 5) -> set[bytes]:
    units = [c for c in text if not c.isspace()] if lang == "zh" else _WORD.findall(text.lower())
    return {" ".join(units[i:i + n]).encode() for i in range(max(1, len(units) - n + 1))}


def run_reference(docs: Docs, num_bands: int = 20, rows_per_band: int = 10) -> tuple[Final, float]:
    import ftfy
    import opencc
    import trafilatura
    from datasketch import MinHash, MinHashLSH
    from datatrove.data import Document
    from datatrove.pipeline.formatters import PIIFormatter
    from dt_pipeline import quality_filters

    filters, pii, t2s = quality_filters(), PIIFormatter(), opencc.OpenCC("t2s")
    num_perm = num_bands * rows_per_band
    lsh = MinHashLSH(num_perm=num_perm, params=(num_bands, rows_per_band))
    final: Final = {}
    t0 = time.time()
    for d in docs:
        text = d["text"]
        if d["ext"] == ".html":
            text = trafilatura.extract(text, favor_precision=True) or ""
        text = ftfy.fix_text(text)
        if not text.strip():
            continue
        doc = Document(text=text, id=d["id"], metadata={})
        for f in filters:
            ok = f.filter(doc)
            if ok is not True and (ok is False or not ok[0]):
                break
            if doc.metadata.get("language") == "zh" and f is filters[0]:
                doc.text = t2s.convert(doc.text)
        else:
            doc.text = pii.format(doc.text)
            m = MinHash(num_perm=num_perm, seed=1)
            m.update_batch(list(_shingles(doc.text, doc.metadata.get("language", "en"))))
            if lsh.query(m):
                continue
            lsh.insert(d["id"], m)
            final[d["id"]] = {"text": doc.text}
    return final, time.time() - t0
