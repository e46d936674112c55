"""The trainer worker: Celery on the ``trainer`` queue (Redis broker), one job at a time.

Choice: Celery, as the architecture's queue contract says (one queue per service); the worker runs
with the solo pool and concurrency 1, so jobs run strictly one after another. Each job trains in a
child process (``python -m neo_trainer.launch``, or torchrun for several processes): DeepSpeed's process
group and memory go away with it, and a crash is a failed job, not a dead worker.

Job status lives in Redis under the settings prefix, independent of Celery's own keys (which the
broker's ``global_keyprefix`` also puts under the prefix): the keys, the task name and the record are the
contract of ``neo.jobs``, shared with the UI and every other producer.

While a job runs, the worker tails the run's ``metrics.jsonl`` into the hash every second and stamps
``heartbeat`` (unix time). The training child gets SIGTERM when its worker dies (``PR_SET_PDEATHSIG``), so a
SIGKILLed worker leaves no orphan training into the run directory. Its task, unacknowledged, goes back to
the queue after ``trainer_visibility_timeout_s``; the worker that receives it finds the job ``running`` with
a heartbeat older than ``trainer_stale_after_s`` and resumes it from its last checkpoint. A redelivery of a
job whose worker is alive (a run longer than the visibility timeout) is watched until the job ends, and
taken over if its heartbeat stops: the job always has a worker holding its task, and never two.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neo.jobs import TASK_NAME, job_key, jobs_key, read_job, record_job
from neo.procs import die_with_parent
from neo_trainer.distributed import clean_launcher_env
from neo_trainer.settings import TrainerSettings

log = logging.getLogger(__name__)

#: job kind → the module each training process runs (``python -m MODULE CONFIG [--resume]``)
JOB_KINDS = {"pretrain": "neo_trainer.launch", "sft": "neo_trainer.stages.sft", "dpo": "neo_trainer.stages.dpo",
             "rm": "neo_trainer.stages.rm"}
#: what the worker copies from the run's metrics.jsonl into the job hash (total_steps: the step the run ends at)
_PROGRESS_KEYS = ("step", "total_steps", "loss", "val_loss", "tokens", "lr", "phase")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class JobStore:
    """Job records in Redis (see the module docstring for the keys)."""

    def __init__(self, redis: Any, prefix: str):
        self.redis, self.prefix = redis, prefix

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> JobStore:
        import redis

        return cls(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings.redis_prefix)

    def _key(self, job: str) -> str:
        return job_key(self.prefix, job)

    def create(self, kind: str, config: dict[str, Any], nproc: int) -> str:
        return record_job(self.redis, self.prefix, kind, config, nproc)

    def update(self, job: str, **fields: Any) -> None:
        mapping = {k: v if isinstance(v, str | int | float) else json.dumps(v)
                   for k, v in fields.items() if v is not None}
        if mapping:
            self.redis.hset(self._key(job), mapping=mapping)

    def get(self, job: str) -> dict[str, Any] | None:
        """The job's record; a missing or unreadable ``config`` is None with ``config_error`` saying why."""
        return read_job(self.redis, self.prefix, job)

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        ids = self.redis.zrevrange(jobs_key(self.prefix), 0, n - 1)
        rows = [self.get(i) for i in ids]
        return [{k: v for k, v in r.items() if k != "config"} for r in rows if r]

    def close(self) -> None:
        self.redis.close()


def make_celery(settings: TrainerSettings) -> Any:
    """The Celery app of the trainer queue, its task registered."""
    from celery import Celery

    app = Celery("neo_trainer", broker=settings.redis_url)
    app.conf.update(
        task_default_queue=settings.trainer_queue, task_ignore_result=True, task_acks_late=True,
        worker_prefetch_multiplier=1, worker_concurrency=1, broker_connection_retry_on_startup=True,
        broker_transport_options={
            "global_keyprefix": settings.redis_prefix, "visibility_timeout": settings.trainer_visibility_timeout_s,
            # look for tasks of dead workers every few seconds, not every 100 s (kombu: interval x throttle)
            "unacked_restore_interval": min(10, settings.trainer_visibility_timeout_s), "unacked_restore_throttle": 1},
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK_NAME)
    def run_job(job: str) -> str:
        store = JobStore.from_settings(settings)
        try:
            return execute_job(store, job, stale_after_s=settings.trainer_stale_after_s)
        except Exception as exc:  # the job's status must say so whatever broke, then Celery logs it
            store.update(job, state="failed", finished=_now(), error=f"worker error: {exc!r}")
            raise
        finally:
            store.close()

    return app


def submit_job(settings: TrainerSettings, kind: str, config: dict[str, Any], nproc: int = 1) -> str:
    """Record a job as queued and send it to the trainer queue; returns its id."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}; the trainer runs: {', '.join(JOB_KINDS)}")
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    store = JobStore.from_settings(settings)
    job = store.create(kind, config, nproc)
    make_celery(settings).send_task(TASK_NAME, args=[job], queue=settings.trainer_queue)
    log.info("submitted %s job %s", kind, job)
    return job


def _command(kind: str, config_path: Path, nproc: int, resume: bool) -> list[str]:
    module = JOB_KINDS[kind]
    # only pretraining keeps DeepSpeed checkpoints; SFT/DPO runs are short and start over when redelivered
    args = [str(config_path), *(["--resume"] if resume and kind == "pretrain" else [])]
    if nproc == 1:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def _progress(metrics_path: Path) -> dict[str, Any]:
    """The last record of a metrics file, reduced to what the status hash shows."""
    if not metrics_path.exists():
        return {}
    last: dict[str, Any] = {}
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line) if line.strip() else {}
        except ValueError:
            continue  # the line the trainer is writing right now
        last |= {k: record[k] for k in _PROGRESS_KEYS if k in record}
    return last


def _heartbeat_age(record: dict[str, Any]) -> float:
    return time.time() - float(record.get("heartbeat") or 0)


def execute_job(store: JobStore, job: str, poll_s: float = 1.0, stale_after_s: float = 30.0,
                watch_s: float | None = None) -> str:
    """Run one queued job to the end in a child process, mirroring its progress into Redis.

    A job already ``running`` under a live worker (fresh heartbeat) is watched until it ends (its final
    state is returned) or for ``watch_s`` seconds (None: no limit; then "running"); when its heartbeat
    goes stale, this worker takes it over and resumes it.
    """
    record = store.get(job)
    if record is None:
        raise KeyError(f"no job {job!r} in Redis")
    watch_until = None if watch_s is None else time.monotonic() + watch_s
    while record["state"] == "running" and _heartbeat_age(record) < stale_after_s:
        if watch_until is not None and time.monotonic() >= watch_until:
            return "running"
        log.info("job %s is running on another worker (heartbeat %.0f s ago): watching it", job,
                 _heartbeat_age(record))
        time.sleep(poll_s)
        record = store.get(job) or record
    if record["state"] in ("done", "failed"):
        log.info("job %s is already %s: skipped (redelivery)", job, record["state"])
        return record["state"]
    if record["state"] == "running":
        log.warning("job %s was left running by a dead worker (heartbeat %.0f s ago): resuming it", job,
                    _heartbeat_age(record))
    config = record["config"]
    if config is None:
        store.update(job, state="failed", finished=_now(), error=record["config_error"])
        return "failed"
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "job-config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    resume = (run_dir / "checkpoints" / "latest").exists()  # a redelivered, interrupted job continues
    cmd = _command(record["kind"], config_path, int(record["nproc"]), resume)
    store.update(job, state="running", started=_now(), command=" ".join(cmd), heartbeat=time.time())
    log.info("job %s: %s", job, " ".join(cmd))
    with open(run_dir / "job.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_launcher_env(),
                                preexec_fn=die_with_parent)
        while proc.poll() is None:
            time.sleep(poll_s)
            store.update(job, heartbeat=time.time(), **_progress(run_dir / "metrics.jsonl"))
    store.update(job, **_progress(run_dir / "metrics.jsonl"))
    if proc.returncode == 0:
        export_dir = (config.get("checkpoint") or {}).get("export_dir") or str(run_dir / "hf")
        store.update(job, state="done", finished=_now(), export_dir=export_dir)
        return "done"
    tail = (run_dir / "job.log").read_text(errors="replace").splitlines()[-15:]
    store.update(job, state="failed", finished=_now(), returncode=proc.returncode, error="\n".join(tail))
    log.error("job %s failed (exit %d); log: %s", job, proc.returncode, run_dir / "job.log")
    return "failed"


def run_worker(settings: TrainerSettings, loglevel: str = "INFO") -> None:
    """Block serving the trainer queue: solo pool, one job at a time."""
    app = make_celery(settings)
    app.worker_main(["worker", "-Q", settings.trainer_queue, "-P", "solo", "-c", "1", f"--loglevel={loglevel}",
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-n", f"neo-trainer-{uuid.uuid4().hex[:6]}@%h"])
