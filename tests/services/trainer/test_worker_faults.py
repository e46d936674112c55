"""Fault injection (slow): the trainer worker, and Redis under it, are SIGKILLed in the middle of a job.

What must survive: the job. A killed worker's training child dies with it (no orphan keeps writing into the
run directory); the task goes back to the queue (acks late, visibility timeout); the next worker finds the
heartbeat stale and resumes from the last checkpoint, and every step's loss equals an uninterrupted run's.
A Redis crash and restart (same data, AOF) mid-job costs status updates while it is down, not the job.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from neo_trainer.config import build_config
from neo_trainer.settings import TrainerSettings
from neo_trainer.stages.pretrain import run_pretrain
from neo_trainer.worker import JobStore, submit_job

from .helpers import REPO, losses, trainer_env

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"
COMMON = {"train": {"steps": 24, "warmup_steps": 3, "decay_fraction": 0.25},
          "data": {"decay_mixture": {"code": 1, "zh": 1}},
          "checkpoint": {"every": 4, "keep": 2},
          "metrics": {"log_every": 1, "eval_every": 8, "eval_rows": 4, "tensorboard": False, "progress": False}}


def start_worker(settings: TrainerSettings, log: Path) -> subprocess.Popen:
    env = trainer_env(NEO_REDIS_URL=settings.redis_url, NEO_REDIS_PREFIX=settings.redis_prefix,
                      NEO_TRAINER_QUEUE=settings.trainer_queue, NEO_TRAINER_STALE_AFTER_S="3",
                      NEO_TRAINER_VISIBILITY_TIMEOUT_S="4")
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "neo.cli", "train", "worker"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reference_losses(make_config) -> dict[int, float]:
    cfg = make_config("reference", **COMMON)
    run_pretrain(build_config(cfg))  # uninterrupted, in this process (one thread, as the children)
    return losses(Path(cfg["run_dir"]))


def test_a_sigkilled_worker_takes_its_training_down_and_the_next_worker_resumes_it(redis_prefix, make_config,
                                                                                   tmp_path):
    settings = TrainerSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix,
                               trainer_queue=f"trainer-{redis_prefix}")
    cfg = make_config("killed", **COMMON)
    run_dir = Path(cfg["run_dir"])
    first = start_worker(settings, tmp_path / "worker-1.log")
    second = None
    store = JobStore.from_settings(settings)
    try:
        job = submit_job(settings, "pretrain", cfg)
        wait_for(lambda: last_step(run_dir) >= 10, 240, "step 10")
        children = psutil.Process(first.pid).children(recursive=True)
        assert children, "the worker trains in a child process"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"training outlived its worker: {alive}"
        killed_at = last_step(run_dir)
        assert 10 <= killed_at < 24 and store.get(job)["state"] == "running"

        second = start_worker(settings, tmp_path / "worker-2.log")
        wait_for(lambda: store.get(job)["state"] in ("done", "failed"), 300, "the job to end on the second worker")
        row = store.get(job)
        assert row["state"] == "done", row.get("error")
        assert "loaded checkpoint" in (run_dir / "job.log").read_text()
    finally:
        stop(first)
        if second is not None:
            stop(second)
        store.close()
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 25))
    assert got == reference_losses(make_config)


def test_a_redis_crash_mid_job_costs_status_updates_not_the_job(redis_process, make_config, tmp_path):
    settings = TrainerSettings(redis_url=redis_process.url, redis_prefix="neo:", trainer_queue="trainer")
    cfg = make_config("redis-crash", **COMMON)
    run_dir = Path(cfg["run_dir"])
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        job = submit_job(settings, "pretrain", cfg)
        wait_for(lambda: last_step(run_dir) >= 6, 240, "step 6")
        redis_process.kill()
        time.sleep(2)  # the worker's heartbeats fail meanwhile
        redis_process.start()
        store = JobStore.from_settings(settings)
        wait_for(lambda: (store.get(job) or {}).get("state") in ("done", "failed"), 300, "the job to end")
        row = store.get(job)
        assert row["state"] == "done", (row.get("error"), (tmp_path / "worker.log").read_text()[-3000:])
        assert int(row["step"]) == 24 and worker.poll() is None
        store.close()
    finally:
        stop(worker)
    assert losses(run_dir) == reference_losses(make_config)
