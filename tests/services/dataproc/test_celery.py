"""Real ``celery worker`` processes on real Redis: two workers give the eager output, and a worker
killed with SIGKILL in the middle of a shard costs time, not documents."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import zstandard

from neo.shards import read_manifest
from neo_dataproc.config import parse_config
from neo_dataproc.executors import CeleryExecutor, EagerExecutor
from neo_dataproc.jobstore import JobStore
from neo_dataproc.runner import run_job

from .conftest import REDIS_URL, write_jsonl
from .corpus import EN_DOCS, ZH_DOCS, edit_words, reorder_lines

pytestmark = pytest.mark.slow
LAST = (
    "秋天的山林里，树叶慢慢变成了金黄色和火红色。\n"
    "登山的人们沿着小路向上走，不时停下来拍照留念。\n"
    "山顶上有一座小小的亭子，可以俯瞰整个山谷的风景。\n"
    "傍晚的夕阳洒在湖面上，波光粼粼，美丽极了。\n"
    "下山的时候，大家都说明年还要再来这里看红叶。"
)


def corpus(tmp_path: Path) -> None:
    """19 lines over 3 files: originals, planted duplicates, a few that the rules drop, one bad line."""
    docs = []
    for round_ in range(2):
        for i, t in enumerate(EN_DOCS):
            docs.append({"id": f"en{i}-{round_}", "text": t if round_ == 0 else reorder_lines(t), "source": "en"})
        for i, t in enumerate(ZH_DOCS):
            docs.append({"id": f"zh{i}-{round_}", "text": t if round_ == 0 else reorder_lines(t), "source": "zh"})
    docs.append({"id": "edited", "text": edit_words(EN_DOCS[1], [(30, "rusty")]), "source": "en"})
    docs.append({"id": "short", "text": "The cat sat on the mat.", "source": "en"})
    docs.append({"id": "fr", "text": "Le marché du village ouvre tôt le samedi matin, et tout le monde y va.",
                 "source": "en"})
    write_jsonl(tmp_path / "in" / "a.jsonl", docs[:11])
    write_jsonl(tmp_path / "in" / "b.jsonl.gz", docs[11:])
    last = json.dumps({"id": "last", "text": LAST}, ensure_ascii=False)
    (tmp_path / "in" / "c.jsonl").write_text('{"id": "broken"\n' + last + "\n")


def config(tmp_path: Path, name: str, tokenizer: Path, **extra: Any):
    return parse_config({"name": name, "inputs": [{"path": "in"}], "docs_per_shard": 3,
                         "tokenize": {"tokenizer": str(tokenizer), "tokens_per_shard": 500}, **extra},
                        base_dir=tmp_path)


def outputs(settings, job: str) -> dict[str, Any]:
    """What a job produced, minus names and timings: final documents and token files."""
    root = settings.job_dir(job)
    docs = []
    for path in sorted((root / "docs").glob("*.jsonl.zst")):
        with zstandard.open(path, "rt", encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    manifest = read_manifest(root / "shards")
    files = [(f.path, f.tokens, f.sha256) for f in manifest.files]
    report = json.loads((root / "report.json").read_text())
    return {"docs": docs, "files": files, "sources": manifest.model_dump()["sources"],
            "stages": {k: {c: v for c, v in s.items() if c != "time_s"} for k, s in report["stages"].items()},
            "errors": report["errors"]}


def run_eager(tmp_path, settings, tokenizer, name="ref") -> dict[str, Any]:
    cfg = config(tmp_path, name, tokenizer)
    store = JobStore.from_settings(settings, name)
    run_job(cfg, settings, EagerExecutor(store), store=store)
    return outputs(settings, name)


def test_two_workers_give_the_eager_output(tmp_path, settings, workers, tiny_tokenizer):
    corpus(tmp_path)
    reference = run_eager(tmp_path, settings, tiny_tokenizer)
    assert [d["meta"]["id"] for d in reference["docs"]] == [
        "en0-0", "en1-0", "en2-0", "en3-0", "zh0-0", "zh1-0", "zh2-0", "last"]
    assert reference["stages"]["dedup"]["dropped_dedup_fuzzy"] == 8
    workers.start(2)
    store = JobStore.from_settings(settings, "two")
    run_job(config(tmp_path, "two", tiny_tokenizer), settings, CeleryExecutor(settings, store), store=store)
    assert outputs(settings, "two") == reference
    st = store.status()
    assert st["state"] == "done" and st["phases"]["clean"]["done"] == st["phases"]["clean"]["total"] == 7


def test_worker_killed_mid_shard_loses_and_duplicates_nothing(tmp_path, settings, workers, tiny_tokenizer):
    corpus(tmp_path)
    reference = run_eager(tmp_path, settings, tiny_tokenizer)
    (victim,) = workers.start(1)
    cfg = config(tmp_path, "killed", tiny_tokenizer, slow_down_s=0.5)  # 1.5 s a shard: time to kill one
    store = JobStore.from_settings(settings, "killed")
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            run_job(cfg, settings, CeleryExecutor(settings, store), store=store)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            failure.append(exc)

    job = threading.Thread(target=drive, daemon=True)
    job.start()
    r = redis.Redis.from_url(REDIS_URL)
    live_key = f"{settings.job_prefix}killed:live:clean"
    deadline = time.time() + 60
    running: dict[bytes, bytes] = {}
    while time.time() < deadline and not running:
        running = {k: v for k, v in r.hgetall(live_key).items() if json.loads(v)["steps"]["read"]["seen"] >= 1}
        time.sleep(0.05)
    assert running, "no shard started within 60 s"
    unit = int(next(iter(running)))
    clean_dir = settings.job_dir("killed") / "clean"
    assert not (clean_dir / f"{unit:05d}.stats.json").exists()
    os.kill(victim.pid, signal.SIGKILL)  # mid-shard: its task is unacknowledged in Redis
    victim.wait()
    assert not (clean_dir / f"{unit:05d}.stats.json").exists()
    workers.start(1)  # a fresh worker picks the lost task up after the visibility timeout
    job.join(timeout=120)
    assert not job.is_alive(), "job did not finish"
    assert not failure, failure
    assert (clean_dir / f"{unit:05d}.stats.json").exists()
    assert outputs(settings, "killed") == reference
    ids = [d["meta"]["id"] for d in outputs(settings, "killed")["docs"]]
    assert len(ids) == len(set(ids))


def test_tokens_are_identical_bytes(tmp_path, settings, tiny_tokenizer):
    """Eager runs are reproducible to the byte (the basis of the comparisons above)."""
    corpus(tmp_path)
    a = run_eager(tmp_path, settings, tiny_tokenizer, name="a")
    b = run_eager(tmp_path, settings, tiny_tokenizer, name="b")
    assert a == b
    digest = hashlib.sha256(json.dumps(a["files"]).encode()).hexdigest()
    assert len(digest) == 64
