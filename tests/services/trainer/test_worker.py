"""The trainer queue: a real Celery worker subprocess on the machine's Redis, jobs run one at a time."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from neo_trainer.settings import TrainerSettings
from neo_trainer.worker import JobStore, execute_job, submit_job

from .helpers import REPO, losses, trainer_env
from .test_reward import planted_rows, rm_config, write_rows
from .test_sft import base_model, sft_files  # noqa: F401  (session fixtures)

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def settings(redis_prefix):
    return TrainerSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix, trainer_queue=f"trainer-{redis_prefix}")


@pytest.fixture
def worker(settings, tmp_path):
    env = trainer_env(NEO_REDIS_URL=settings.redis_url, NEO_REDIS_PREFIX=settings.redis_prefix,
                      NEO_TRAINER_QUEUE=settings.trainer_queue)
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "neo.cli", "train", "worker"], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=REPO)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _wait(store: JobStore, job: str, worker: subprocess.Popen, timeout: float = 150) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline and worker.poll() is None:
        row = store.get(job)
        if row and row["state"] in ("done", "failed"):
            return row
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish: {store.get(job)}")


def test_jobs_run_one_at_a_time_and_report_status(settings, worker, make_config, tmp_path):
    store = JobStore.from_settings(settings)
    bad = make_config("bad", data={"manifest": str(tmp_path / "missing")})
    good = make_config("good", train={"steps": 4, "warmup_steps": 1})
    first = submit_job(settings, "pretrain", bad)
    second = submit_job(settings, "pretrain", good)
    assert store.get(second)["state"] in ("queued", "running")

    failed, done = _wait(store, first, worker), _wait(store, second, worker)
    assert failed["state"] == "failed" and "manifest.json" in failed["error"]
    assert done["state"] == "done", done.get("error")
    assert done["started"] >= failed["finished"]  # strictly one after the other
    assert int(done["step"]) == 4 and float(done["loss"]) == pytest.approx(losses(Path(good["run_dir"]))[4])
    assert int(done["total_steps"]) == 4  # the UI's round panel shows step/total from the job hash
    assert (Path(done["export_dir"]) / "config.json").exists()
    assert [row["id"] for row in store.recent()] == [second, first]
    store.close()


def test_a_reward_model_job_trains_from_the_queue(settings, worker, tmp_path, base_model, sft_files):  # noqa: F811
    """``rm`` is a job kind: a queued Bradley-Terry job runs on the worker and reports its steps and loss."""
    store = JobStore.from_settings(settings)
    prefs = write_rows(tmp_path / "prefs.jsonl", planted_rows(sft_files)[:16])
    job = submit_job(settings, "rm", rm_config(tmp_path, base_model, prefs, steps=3, micro_batch_size=4))
    done = _wait(store, job, worker, timeout=300)
    assert done["state"] == "done", done.get("error")
    assert (done["kind"], int(done["step"]), int(done["total_steps"])) == ("rm", 3, 3)
    assert float(done["loss"]) > 0 and (tmp_path / "rm" / "metrics.jsonl").is_file()
    store.close()


def test_unknown_kind_is_refused(settings):
    with pytest.raises(ValueError, match="unknown job kind 'ppo'"):
        submit_job(settings, "ppo", {"run_dir": "x"})


def test_a_job_left_running_by_a_dead_worker_is_resumed_not_skipped(settings, make_config):
    """A worker SIGKILLed mid-job leaves it `running`; Celery redelivers the task (acks late) and the next
    worker must take it over, not skip it as "already running" forever. A redelivery of a job whose worker
    is alive is watched, not run a second time."""
    store = JobStore.from_settings(settings)
    job = store.create("pretrain", make_config("orphan", train={"steps": 3, "warmup_steps": 1}), 1)
    store.update(job, state="running", heartbeat=time.time())  # a live worker has it: a redelivery watches
    assert execute_job(store, job, poll_s=0.1, stale_after_s=30, watch_s=0.5) == "running"
    assert store.get(job)["state"] == "running" and "command" not in store.get(job)  # nothing was started
    store.update(job, heartbeat=time.time() - 35)  # its worker stopped beating
    assert execute_job(store, job, poll_s=0.1, stale_after_s=30) == "done"
    row = store.get(job)
    assert row["state"] == "done" and int(row["step"]) == 3 and float(row["heartbeat"]) > time.time() - 60
    assert execute_job(store, job) == "done"  # a late redelivery of a finished job does nothing
    store.close()


def test_a_job_with_an_unreadable_config_fails_and_status_still_works(settings, redis_prefix, rds):
    store = JobStore.from_settings(settings)
    job = store.create("pretrain", {"run_dir": "unused"}, 1)
    rds.hset(f"{redis_prefix}train:job:{job}", "config", "{not json")
    assert store.get(job)["config"] is None
    assert execute_job(store, job) == "failed" and "unreadable config" in store.get(job)["error"]
    env = trainer_env(NEO_REDIS_URL=settings.redis_url, NEO_REDIS_PREFIX=redis_prefix)
    for args in ([job], []):
        run = subprocess.run([sys.executable, "-m", "neo.cli", "train", "status", *args], capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert job in run.stdout and "Traceback" not in run.stderr
    store.close()


def test_a_job_the_ui_submits_is_run_by_the_trainer_worker(settings, worker, make_config, tmp_path):
    """The contract end to end: the labeling UI's TrainerQueue (which never imports neo_trainer) records and
    sends a job through neo.jobs; the real Celery trainer worker runs it; both read it back the same way."""
    from neo_ui.jobs import TrainerQueue
    from neo_ui.settings import UISettings

    ui = UISettings(home=tmp_path / "ui", redis_url=settings.redis_url, redis_prefix=settings.redis_prefix,
                    trainer_queue=settings.trainer_queue)
    store = JobStore.from_settings(settings)
    queue = TrainerQueue(ui, store.redis)
    try:
        job = queue.submit("pretrain", make_config("from-ui", train={"steps": 2, "warmup_steps": 1}))
        done = _wait(store, job, worker)
        assert done["state"] == "done", done.get("error")
        seen = queue.status(job)
        assert (seen["state"], seen["kind"], int(seen["step"]), int(seen["total_steps"])) == ("done", "pretrain", 2, 2)
        assert int(seen["schema"]) == 1 and "config" not in seen
    finally:
        queue.close()
        store.close()
