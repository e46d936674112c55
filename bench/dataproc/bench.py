"""Neo dataproc vs datatrove on the same input, in one run: docs/s per core and dedup precision/recall.

    .venv/bin/python bench/dataproc/bench.py                 # 100k documents, 2 workers each
    .venv/bin/python bench/dataproc/bench.py --docs 20000    # quicker

Input: ``corpus.py`` (the sample corpus cut, repeated with heavy perturbation, plus 10 % planted
near-duplicates with known originals). Neo runs as ``neo data run --workers N`` does (Celery
workers on Redis, all five phases but tokenizing); datatrove runs ``dt_pipeline.py`` with its
LocalPipelineExecutor and the same number of workers. Throughput counts input documents over
wall time × workers (each pipeline runs alone, one after the other, workers = cores).
Recall: planted copies removed / planted copies that survived cleaning with their original;
precision: correct removals / all removals.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import resource
import shutil
import sys
import time
import uuid
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import build  # noqa: E402

log = logging.getLogger("bench.dataproc")


def cpu_seconds() -> float:
    """This process and its reaped children (datatrove's pool workers are not reaped: not reported)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def ids_zst(folder: Path) -> set[str]:
    out: set[str] = set()
    for path in sorted(folder.glob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            out |= {json.loads(line)["meta"]["id"] for line in f}
    return out


def ids_gz(folder: Path) -> set[str]:
    out: set[str] = set()
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out |= {json.loads(line)["id"] for line in f}
    return out


def run_neo(input_dir: Path, work: Path, workers: int) -> tuple[set[str], set[str], dict]:
    from neo_dataproc.config import parse_config
    from neo_dataproc.executors import CeleryExecutor, LocalWorkers
    from neo_dataproc.jobstore import JobStore
    from neo_dataproc.runner import run_job
    from neo_dataproc.settings import DataprocSettings

    prefix = f"neo-bench-{uuid.uuid4().hex[:8]}:"
    settings = DataprocSettings(home=work / "neo-home", redis_prefix=prefix)
    config = parse_config({"name": "bench", "inputs": [{"path": str(input_dir / "*.jsonl.gz")}],
                           "docs_per_shard": 1000}, base_dir=ROOT)
    store = JobStore.from_settings(settings, "bench")
    try:
        with LocalWorkers(settings, workers):
            report = run_job(config, settings, CeleryExecutor(settings, store), store=store, fresh=True)
    finally:
        keys = list(store.r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            store.r.delete(*keys)
    job = settings.job_dir("bench")
    return ids_zst(job / "clean"), ids_zst(job / "docs"), report


def run_datatrove(input_dir: Path, work: Path, workers: int, tasks: int) -> tuple[set[str], set[str]]:
    from dt_pipeline import run

    out = work / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    run(input_dir, out, workers=workers, tasks=tasks)
    return ids_gz(out / "clean"), ids_gz(out / "final")


def dedup_scores(cleaned: set[str], final: set[str], truth: dict[str, str]) -> dict[str, float]:
    removed = cleaned - final
    eligible = {p for p, o in truth.items() if p in cleaned and o in cleaned}
    tp = len(removed & eligible)
    return {"removed": len(removed), "eligible": len(eligible), "tp": tp,
            "precision": tp / len(removed) if removed else 1.0, "recall": tp / len(eligible) if eligible else 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2, help="worker processes for each pipeline (cores used)")
    ap.add_argument("--work", type=Path, default=ROOT / ".neo" / "bench-dataproc")
    ap.add_argument("--only", choices=["neo", "datatrove"], help="run one pipeline only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    input_dir = args.work / f"input-{args.docs}"
    if not (input_dir / "truth.json").exists():
        t0 = time.time()
        info = build(ROOT / "data" / "sample", input_dir, n_docs=args.docs)
        log.info("built input in %.0fs: %s", time.time() - t0, info)
    truth = json.loads((input_dir / "truth.json").read_text())
    n = args.docs
    rows = {}
    if args.only in (None, "neo"):
        c0, t0 = cpu_seconds(), time.time()
        cleaned, final, report = run_neo(input_dir, args.work, args.workers)
        rows["neo"] = (time.time() - t0, cpu_seconds() - c0, cleaned, final)
    if args.only in (None, "datatrove"):
        c0, t0 = cpu_seconds(), time.time()
        tasks = len(list(input_dir.glob("*.jsonl.gz")))
        cleaned, final = run_datatrove(input_dir, args.work, args.workers, tasks=tasks)
        rows["datatrove"] = (time.time() - t0, cpu_seconds() - c0, cleaned, final)
    print(f"\ninput: {n:,} documents ({len(truth):,} planted near-duplicates), {args.workers} workers each\n")
    print("| pipeline | wall s | docs/s | docs/s per core | after cleaning | after dedup | dedup precision "
          "| dedup recall |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rate = {}
    for name, (wall, _cpu, cleaned, final) in rows.items():
        s = dedup_scores(cleaned, final, truth)
        rate[name] = n / wall / args.workers
        print(f"| {name} | {wall:.1f} | {n / wall:.1f} | {rate[name]:.1f} | {len(cleaned):,} | {len(final):,} "
              f"| {s['precision']:.4f} ({s['tp']}/{s['removed']}) | {s['recall']:.4f} ({s['tp']}/{s['eligible']}) |")
    if len(rate) == 2:
        print(f"\nneo / datatrove docs/s per core: {rate['neo'] / rate['datatrove']:.2f}×")


if __name__ == "__main__":
    main()
