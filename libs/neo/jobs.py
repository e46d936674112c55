"""The trainer's job queue contract, in one place for every service that submits or reads jobs.

The trainer worker (``neo_trainer.worker``) runs the jobs; the UI's DPO button, ``neo train submit`` and the stack
record them. All of them read and write the same Redis keys, under the settings prefix::

    {prefix}train:jobs         zset   job id -> submit time (unix s)
    {prefix}train:job:{id}     hash   id, kind, state (queued|running|done|failed), config (JSON), nproc, run_dir,
                                      submitted, schema; the worker adds started, finished, step, total_steps,
                                      loss, val_loss, tokens, lr, phase, heartbeat, export_dir, error, command

and the Celery task ``TASK_NAME`` (args: ``[job id]``) on the trainer queue (``NEO_TRAINER_QUEUE``) of the Redis
broker, with every broker key under the same prefix (kombu's ``global_keyprefix``). ``schema`` is
``SCHEMA_VERSION``; a record without it was written before the field existed (version 1 has the same fields).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: the Celery task the trainer worker registers (``neo_trainer.worker.make_celery``)
TASK_NAME = "neo_trainer.run_job"
#: version of the job hash's layout (the fields in the module docstring)
SCHEMA_VERSION = 1
JobState = Literal["queued", "running", "done", "failed"]


def jobs_key(prefix: str) -> str:
    return f"{prefix}train:jobs"


def job_key(prefix: str, job: str) -> str:
    return f"{prefix}train:job:{job}"


def record_job(redis: Any, prefix: str, kind: str, config: dict[str, Any], nproc: int = 1) -> str:
    """Write a ``queued`` job (its hash and its index entry, in one transaction); returns its id. Sending the
    Celery task is the caller's (each service has its own Celery app)."""
    if "run_dir" not in config:
        raise ValueError("a job config needs run_dir (where the worker writes job.log and metrics.jsonl)")
    job = uuid.uuid4().hex[:12]
    record = {"id": job, "kind": kind, "state": "queued", "config": json.dumps(config), "nproc": nproc,
              "run_dir": str(config["run_dir"]), "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
              "schema": SCHEMA_VERSION}
    with redis.pipeline(transaction=True) as pipe:
        pipe.hset(job_key(prefix, job), mapping=record)
        pipe.zadd(jobs_key(prefix), {job: time.time()})
        pipe.execute()
    return job


def read_job(redis: Any, prefix: str, job: str) -> dict[str, Any] | None:
    """A job's hash (``decode_responses=True`` client) with ``config`` parsed; an unreadable config is None with
    ``config_error`` saying why. None when there is no such job."""
    raw = redis.hgetall(job_key(prefix, job))
    if not raw:
        return None
    try:
        raw["config"] = json.loads(raw["config"])
        if not isinstance(raw["config"], dict):
            raise ValueError(f"expected a JSON object, got {type(raw['config']).__name__}")
    except (KeyError, ValueError) as exc:
        raw["config"], raw["config_error"] = None, f"unreadable config: {exc!r}"
    return raw


class DPOJobData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preferences: list[str] = Field(min_length=1, description="TRL preference JSONL files")
    format: Literal["conversational", "text"] = "conversational"


class DPOJobCheckpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    export_dir: str = Field(description="where the trained policy is exported (a Hugging Face directory)")


class DPOJobConfig(BaseModel):
    """What a producer of a ``dpo`` job sends: the part of the trainer's ``DPOConfig`` that names the run and its
    data (the trainer validates the whole config when it runs; its training knobs keep their defaults unless a
    producer adds them, as ``neo align round`` does)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    stage: Literal["dpo"] = "dpo"
    run_dir: str
    base_model: str = Field(description="the policy to start from (a Hugging Face directory)")
    parent: str | None = Field(None, description="registry ref of base_model")
    register_export: bool | None = Field(None, description="register the export as the next version (the stage's "
                                                           "default: yes)")
    seq_len: int | None = Field(None, gt=0)
    data: DPOJobData
    checkpoint: DPOJobCheckpoint

    def to_config(self) -> dict[str, Any]:
        """The job's ``config`` JSON object (unset optional fields left out, so the stage's defaults apply)."""
        return self.model_dump(exclude_none=True)
