"""Celery tasks: only an executor. (job dir, phase, unit) → ``pipeline.run_unit`` → stats into Redis.

Start workers with ``neo data worker`` (or ``celery -A neo_dataproc.tasks worker -Q dataproc``);
the settings come from the environment (``NEO_HOME``, ``NEO_REDIS_URL``, ``NEO_REDIS_PREFIX`` …).
A redelivered task for a finished unit returns its recorded stats without doing anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from neo_dataproc.celery_app import TASK_NAME, make_celery
from neo_dataproc.jobstore import JobStore
from neo_dataproc.pipeline import run_unit
from neo_dataproc.settings import DataprocSettings

log = logging.getLogger(__name__)

settings = DataprocSettings()
app = make_celery(settings)


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def run_unit_task(job_dir: str, phase: str, unit: int, job: str) -> dict[str, Any]:
    store = JobStore.from_settings(settings, job)
    stats = run_unit(Path(job_dir), phase, unit, live=store.live)
    store.done(phase, unit, stats)
    log.info("job %s: %s unit %d done in %.1fs", job, phase, unit, stats.get("elapsed_s", 0))
    return {"phase": phase, "unit": unit, "elapsed_s": stats.get("elapsed_s", 0)}
