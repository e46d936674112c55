"""Executors run a phase's units and return when all are done; the pipeline is the same for each.

* ``EagerExecutor``: in this process, one unit after another (small inputs, tests, ``neo up``).
* ``CeleryExecutor``: one task per unit on the ``dataproc`` queue; waits for the units' done
  markers (the job directory is shared with the workers), resubmits a unit whose task failed
  (up to ``max_attempts``), and warns while no worker answers.
* ``LocalWorkers``: ``celery worker`` subprocesses for the length of a run (``--workers N``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neo_dataproc.jobdir import JobDir
from neo_dataproc.jobstore import JobStore
from neo_dataproc.pipeline import run_unit
from neo_dataproc.settings import DataprocSettings

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (phase, units done, units total)


class JobFailed(RuntimeError):
    """A unit failed for good (a bug or an unreadable job directory, not a bad document)."""


class EagerExecutor:
    name = "eager"

    def __init__(self, store: JobStore | None = None) -> None:
        self.store = store

    def run_units(self, job_dir: Path, phase: str, units: list[int], job: str,
                  progress: ProgressFn | None = None) -> None:
        live = self.store.live if self.store else None
        for i, unit in enumerate(units, 1):
            stats = run_unit(job_dir, phase, unit, live=live)
            if self.store:
                self.store.done(phase, unit, stats)
            if progress:
                progress(phase, i, len(units))


class CeleryExecutor:
    name = "celery"

    def __init__(self, settings: DataprocSettings, store: JobStore | None = None, max_attempts: int = 3,
                 no_worker_warn_s: float = 15.0) -> None:
        from neo_dataproc.celery_app import make_celery

        self.settings, self.store = settings, store
        self.app = make_celery(settings)
        self.max_attempts, self.no_worker_warn_s = max_attempts, no_worker_warn_s

    def _send(self, job_dir: Path, phase: str, unit: int, job: str) -> Any:
        from neo_dataproc.celery_app import TASK_NAME

        return self.app.send_task(TASK_NAME, args=[str(job_dir), phase, unit, job],
                                  queue=self.settings.dataproc_queue)

    def workers_alive(self) -> int:
        return len(self.app.control.ping(timeout=1.0) or [])

    def run_units(self, job_dir: Path, phase: str, units: list[int], job: str,
                  progress: ProgressFn | None = None) -> None:
        jd = JobDir(job_dir)
        results = {u: self._send(job_dir, phase, u, job) for u in units}
        attempts: Counter[int] = Counter({u: 1 for u in units})
        pending = set(units)
        last_change, last_warn, done_before = time.time(), time.time(), -1
        while pending:
            for unit in sorted(pending):
                if jd.is_done(phase, unit):
                    pending.discard(unit)
                    continue
                result = results[unit]
                if result.state != "FAILURE":
                    continue
                err = result.result
                if attempts[unit] >= self.max_attempts:
                    raise JobFailed(f"job {job}: {phase} unit {unit} failed {attempts[unit]} times; last: {err!r}")
                log.warning("job %s: %s unit %d failed (%r); resubmitting", job, phase, unit, err)
                result.forget()
                results[unit] = self._send(job_dir, phase, unit, job)
                attempts[unit] += 1
            done = len(units) - len(pending)
            if done != done_before:
                done_before, last_change = done, time.time()
                if progress:
                    progress(phase, done, len(units))
            if not pending:
                break
            now = time.time()
            if now - last_change > self.no_worker_warn_s and now - last_warn > self.no_worker_warn_s:
                last_warn = now
                if not self.workers_alive():
                    log.warning("job %s: no dataproc worker answers; start one with `neo data worker` "
                                "(or run with --eager / --workers N)", job)
            time.sleep(self.settings.dataproc_poll_s)
        for result in results.values():
            result.forget()


def settings_env(settings: DataprocSettings) -> dict[str, str]:
    """The environment that gives a worker process these settings."""
    env = dict(os.environ)
    for key, value in settings.model_dump().items():
        if isinstance(value, Path):
            value = value.resolve()
        env[f"NEO_{key.upper()}"] = str(value)
    return env


def worker_command(settings: DataprocSettings, name: str, pool: str = "solo", concurrency: int = 1,
                   loglevel: str = "warning", quiet: bool = False) -> list[str]:
    return [sys.executable, "-m", "celery", *(["--quiet"] if quiet else []), "-A", "neo_dataproc.tasks", "worker",
            "-Q", settings.dataproc_queue,
            "-P", pool, "-c", str(concurrency), "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
            "-l", loglevel]


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM (Celery's warm shutdown: take nothing new, exit), then SIGKILL whoever outlives ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class LocalWorkers:
    """``n`` single-process ``celery worker`` subprocesses for the duration of a ``with`` block."""

    def __init__(self, settings: DataprocSettings, n: int, loglevel: str = "warning") -> None:
        if n < 1:
            raise ValueError(f"--workers must be ≥ 1, got {n}")
        self.settings, self.n, self.loglevel = settings, n, loglevel
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> LocalWorkers:
        env = settings_env(self.settings)
        for i in range(self.n):
            cmd = worker_command(self.settings, f"neo-dataproc-{os.getpid()}-{i}", loglevel=self.loglevel, quiet=True)
            self.procs.append(subprocess.Popen(cmd, env=env))
        log.info("started %d local dataproc worker(s): pids %s", self.n, [p.pid for p in self.procs])
        return self

    def __exit__(self, *exc: object) -> None:
        stop_workers(self.procs, grace_s=15)
