"""Score Neo's pipeline on the held-out messy corpus (``scripts/build_heldout_corpus.py``): the quality table.

    .venv/bin/python scripts/build_heldout_corpus.py --out .neo/heldout      # once (seconds)
    .venv/bin/python bench/dataproc/heldout.py                               # report half, default profile
    .venv/bin/python bench/dataproc/heldout.py --half tune                   # tune on the other half
    .venv/bin/python bench/dataproc/heldout.py --half both --json out.json

The job runs in this process (eager executor: one core, the same units a Celery worker runs), all
phases but tokenizing. Every document's truth is in the corpus's ``truth.json``; the metrics:

* duplicates removed: planted copies gone from the output (or left with under half of their
  original's word 5-grams, when paragraph dedup took the shared part), among those whose original
  was kept; by form (exact, near by Jaccard bin, HTML vs text, re-templated, Traditional ``s2twp``);
* clean unique documents kept (precision): JSONL records, raw text files, HTML pages, originals of
  the duplicates and documents with planted PII;
* junk + spam removed; code junk (generated, data tables, minified, base64) removed;
* mojibake handled: a repairable document kept with none but its original's characters, a lossy
  one dropped (or repaired);
* code kept: whole ``.py`` files, source as JSONL records, documentation with fenced code;
* PII masked: each planted email / phone / IP absent from its kept document (digits too);
* mixed EN/ZH documents kept with at least 70 % of their characters.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import zstandard

ROOT = Path(__file__).resolve().parents[2]

# Profiles: the job config's ``profile`` (neo_dataproc.config.PROFILES): Neo's default rules, or
# MAP-Neo's Matrix settings (English rule set, 13-character MinHash 9 × 13, paragraph dedup,
# Chinese similar-line dedup, sensitive-word lines removed).
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "matrix": {"profile": "matrix"},
}


def read_zst(folder: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                meta = rec.get("meta") or {}
                out[str(meta.get("id") or meta.get("path"))] = rec
    return out


def run_pipeline(half_dir: Path, overrides: dict[str, Any], work: Path) -> tuple[dict, dict, dict, float]:
    from neo_dataproc.config import parse_config
    from neo_dataproc.executors import EagerExecutor
    from neo_dataproc.runner import run_job
    from neo_dataproc.settings import DataprocSettings

    settings = DataprocSettings(home=work)
    data = {"name": "heldout", "inputs": [{"path": str(half_dir / "a")}, {"path": str(half_dir / "b")}],
            "docs_per_shard": 500, **overrides}
    config = parse_config(data, base_dir=ROOT)
    t0 = time.time()
    report = run_job(config, settings, EagerExecutor(), fresh=True)
    wall = time.time() - t0
    job = settings.job_dir("heldout")
    return read_zst(job / "clean"), read_zst(job / "docs"), report, wall


_WORD = re.compile(r"\w+")
_CJK = re.compile("[\u3400-\u9fff]")


def grams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    units = [c for c in text.lower() if c.isalnum()] if _CJK.search(text) else _WORD.findall(text.lower())
    return {tuple(units[i:i + n]) for i in range(max(1, len(units) - n + 1))}


def containment(part: str, whole: str) -> float:
    a = grams(part)
    return len(a & grams(whole)) / max(1, len(a))


def frac(num: int, den: int) -> dict[str, Any]:
    return {"value": round(num / den, 3) if den else None, "n": f"{num}/{den}"}


def score(truth: dict[str, dict], clean: dict, final: dict) -> dict[str, Any]:
    m: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: dict[str, list[str]] = defaultdict(list)

    def count(name: str, ok: bool) -> None:
        m[name][0] += int(ok)
        m[name][1] += 1
        if not ok:
            misses[name].append(key)

    placeholders = 0
    for key, t in truth.items():
        cat, out = t["cat"], final.get(key)
        text = out["text"] if out else ""
        if t["expect"] == "dup":
            if t["orig"] not in final:
                count("dup.orig_dropped", True)
                continue
            removed = out is None or containment(text, t["text"]) < 0.5
            count("dup", removed)
            form = t["form"]
            if form.startswith("near"):
                j = t["jaccard"]
                form = "near_ge0.8" if j >= 0.8 else ("near_0.7-0.8" if j >= 0.7 else "near_lt0.7")
            count(f"dup.{form}", removed)
            count(f"dup.{t['lang']}", removed)
            continue
        if cat.startswith(("clean_", "raw_", "html_", "orig_", "pii_")):
            kept = out is not None
            count("precision", kept)
            count(f"precision.{t['lang']}", kept)
            if cat.startswith("raw_"):
                count("precision.raw_files", kept)
                if t.get("wrapped"):
                    count("precision.raw_wrapped", kept)
            if cat.startswith("html_") or (cat.startswith("orig_") and t.get("form") == "html"):
                count("precision.html", kept)
            if cat.startswith("clean_") and out:
                placeholders += len(re.findall(r"<(?:EMAIL|PHONE|IP|ID_CARD)>", text))
        if cat.startswith("junk_"):
            count("junk", out is None)
            count(f"junk.{t['lang']}", out is None)
            count(f"junk.{t['lang']}.{t['junk']}", out is None)
        if cat == "code_junk":
            count("code_junk", out is None)
            count(f"code_junk.{t['junk']}", out is None)
        if cat.startswith("moji_"):
            orig_chars = set(t["text"])
            repaired = bool(out) and len(text.strip()) > 0 and sum(
                1 for c in text if ord(c) > 127 and c not in orig_chars) <= 0.01 * max(
                1, sum(1 for c in text if ord(c) > 127))
            ok = (repaired or out is None) if t["lossy"] else repaired
            count("mojibake", ok)
            count(f"mojibake.{t['moji']}", ok)
        if cat in ("code_file", "code_jsonl"):
            count("code", out is not None)
            count(f"code.{t['form']}", out is not None)
        if cat.startswith("docs_code_"):
            count("code.docs_with_code", out is not None)
            count("code", out is not None)
        if cat.startswith("pii_") and out:
            for p in t["pii"]:
                v = p["value"]
                digits = re.sub(r"\D", "", v)
                leaked = v in text or (p["kind"] == "phone" and len(digits) >= 7 and digits in re.sub(r"\D", "", text))
                count(f"pii.{p['kind']}", not leaked)
                if p["sub"] != p["kind"]:
                    count(f"pii.{p['sub']}", not leaked)
        if cat == "mixed":
            ok = bool(out) and len(text) >= 0.7 * len(t.get("text") or "") if t.get("text") else out is not None
            count("mixed", ok)
            count(f"mixed.{t['main']}", ok)
    res = {k: frac(*v) for k, v in sorted(m.items())}
    res["false_pii_placeholders_in_clean_docs"] = placeholders
    res["misses"] = dict(misses)
    return res


TABLE = [  # (metric, goal)
    ("dup", 0.95), ("dup.exact", None), ("dup.near_ge0.8", None), ("dup.near_0.7-0.8", None), ("dup.near_lt0.7", None),
    ("dup.html_vs_text", None), ("dup.retemplated", None), ("dup.s2twp", None), ("dup.en", None), ("dup.zh", None),
    ("precision", 0.99), ("precision.en", None), ("precision.zh", None), ("precision.raw_files", None),
    ("precision.raw_wrapped", None), ("precision.html", None),
    ("junk", 0.98), ("junk.en", None), ("junk.zh", 0.98), ("code_junk", None),
    ("mojibake", 0.95), ("mojibake.cp1252", None), ("mojibake.cp1252_twice", None), ("mojibake.latin1", None),
    ("mojibake.gbk_file", None), ("mojibake.cp1252_file", None), ("mojibake.lossy_replace", None),
    ("mojibake.lossy_gbk", None),
    ("code", 0.95), ("code.py_file", None), ("code.jsonl_record", None), ("code.jsonl_function", None),
    ("code.docs_with_code", None),
    ("pii.email", 0.95), ("pii.phone", 0.95), ("pii.ip", 0.95), ("pii.ipv4", None), ("pii.ipv6", None),
    ("mixed", 0.9),
]


def print_table(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    print("| metric | goal | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for metric, goal in TABLE:
        cells = []
        for name in names:
            r = results[name]["scores"].get(metric)
            cells.append(f"{r['value']:.3f} ({r['n']})" if r and r["value"] is not None else "–")
        label = metric if "." not in metric else "  " + metric
        print(f"| {label} | {f'≥ {goal:.2f}' if goal else ''} | " + " | ".join(cells) + " |")
    print("| false PII placeholders in clean docs | | " + " | ".join(
        str(results[n]["scores"]["false_pii_placeholders_in_clean_docs"]) for n in names) + " |")
    print("| docs/s per core (one process) | | " + " | ".join(f"{results[n]['docs_per_s']:.1f}" for n in names) + " |")


def evaluate(corpus: Path, half: str, profile: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    half_dir = corpus / half
    truth = json.loads((half_dir / "truth.json").read_text())
    with tempfile.TemporaryDirectory(prefix="neo-heldout-") as tmp:
        clean, final, report, wall = run_pipeline(half_dir, {**PROFILES[profile], **(extra or {})}, Path(tmp))
    scores = score(truth, clean, final)
    return {"half": half, "profile": profile, "docs": len(truth), "wall_s": round(wall, 2),
            "docs_per_s": len(truth) / wall, "scores": scores, "steps": report.get("steps")}


def evaluate_peer(corpus: Path, half: str, peer: str) -> dict[str, Any]:
    """datatrove with the same rules, or the off-the-shelf reference (``peers.py``), on one half."""
    import peers

    half_dir = corpus / half
    truth = json.loads((half_dir / "truth.json").read_text())
    docs = peers.read_half(half_dir)
    with tempfile.TemporaryDirectory(prefix="neo-heldout-peer-") as tmp:
        final, wall = peers.run_datatrove(docs, Path(tmp)) if peer == "datatrove" else peers.run_reference(docs)
    return {"half": half, "profile": peer, "docs": len(truth), "wall_s": round(wall, 2),
            "docs_per_s": len(truth) / wall, "scores": score(truth, {}, final)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / ".neo" / "heldout")
    ap.add_argument("--half", choices=["report", "tune", "both"], default="report")
    ap.add_argument("--profile", action="append", choices=sorted(PROFILES), help="repeatable (default: default)")
    ap.add_argument("--peers", action="store_true",
                    help="also run datatrove (same rules) and the off-the-shelf reference (peers.py; the bench extra)")
    ap.add_argument("--json", type=Path, help="write the full results here")
    ap.add_argument("--misses", type=str, help="print the documents that fail this metric prefix (e.g. precision)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.corpus / "report" / "truth.json").exists():
        sys.exit(f"no held-out corpus at {args.corpus}: run scripts/build_heldout_corpus.py --out {args.corpus}")
    halves = ["tune", "report"] if args.half == "both" else [args.half]
    results = {}
    for profile in args.profile or ["default"]:
        for half in halves:
            results[f"{profile}/{half}"] = evaluate(args.corpus, half, profile)
    if args.peers:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        for peer in ("datatrove", "reference"):
            for half in halves:
                results[f"{peer}/{half}"] = evaluate_peer(args.corpus, half, peer)
    print_table(results)
    if args.misses:
        for name, r in results.items():
            for metric, keys in r["scores"]["misses"].items():
                if metric == args.misses:
                    print(f"\n{name} {metric}: {len(keys)} missed")
                    for k in keys:
                        print("  ", k)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
