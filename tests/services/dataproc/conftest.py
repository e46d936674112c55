"""Fixtures for dataproc: crafted input files, a unique Redis key prefix per test (cleaned up after),
settings pointing at a temporary NEO_HOME, a tiny tokenizer, and real ``celery worker`` processes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neo_dataproc.settings import DataprocSettings

REDIS_URL = "redis://127.0.0.1:6379/0"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def settings(tmp_path: Path, redis_prefix: str) -> DataprocSettings:
    return DataprocSettings(
        home=tmp_path / "home", redis_url=REDIS_URL, redis_prefix=redis_prefix,
        dataproc_visibility_timeout_s=4, dataproc_restore_interval_s=1, dataproc_poll_s=0.1,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 800-piece SentencePiece tokenizer trained on a few crafted EN/ZH lines."""
    from neo.tokenizer import TokenizerConfig, train_tokenizer

    from .corpus import EN_DOCS, ZH_DOCS

    root = tmp_path_factory.mktemp("tok")
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": t} for t in EN_DOCS + ZH_DOCS])
    out = root / "tokenizer"
    train_tokenizer([corpus], out, TokenizerConfig(vocab_size=800, num_threads=1))
    return out


class Workers:
    """Real ``celery worker`` subprocesses (solo pool: one process each, so SIGKILL kills the worker)."""

    def __init__(self, settings: DataprocSettings, log_dir: Path) -> None:
        from neo_dataproc.executors import settings_env, worker_command

        self.settings, self.log_dir = settings, log_dir
        self.env = settings_env(settings)
        self._command = worker_command
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, n: int = 1) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(n):
            i = len(self.procs)
            cmd = self._command(self.settings, f"test-{os.getpid()}-{i}", loglevel="info")
            log = open(self.log_dir / f"worker-{i}.log", "wb")  # noqa: SIM115 (closed with the process)
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop(self) -> None:
        from neo_dataproc.executors import stop_workers

        stop_workers(self.procs, grace_s=10)


@pytest.fixture
def workers(settings: DataprocSettings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, tmp_path)
    yield w
    w.stop()
