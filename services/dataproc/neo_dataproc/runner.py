"""Run a job: prepare its directory (config + plan), then drive the phases through an executor.

A re-run of the same config resumes: the plan is reused and only units without a done marker
are submitted. A job directory made by a different config is refused (pick another name, or
``fresh=True`` to start over).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from neo_dataproc.config import JobConfig
from neo_dataproc.executors import ProgressFn
from neo_dataproc.jobdir import JobDir
from neo_dataproc.jobstore import JobStore
from neo_dataproc.pipeline import PHASES, units_of, write_json
from neo_dataproc.readers import plan_shards
from neo_dataproc.settings import DataprocSettings

log = logging.getLogger(__name__)


class Executor(Protocol):
    name: str

    def run_units(self, job_dir: Path, phase: str, units: list[int], job: str,
                  progress: ProgressFn | None = None) -> None: ...


class JobConflict(RuntimeError):
    """The job directory holds another config's outputs."""


def prepare_job(config: JobConfig, settings: DataprocSettings, fresh: bool = False) -> JobDir:
    """Create (or reuse) ``NEO_HOME/data/<job>/`` with ``config.json`` and ``plan.json``."""
    jd = JobDir(settings.job_dir(config.name).resolve())
    if fresh and jd.root.exists():
        shutil.rmtree(jd.root)
    if jd.config.exists():
        old = JobConfig.model_validate_json(jd.config.read_text())
        if old.fingerprint() != config.fingerprint():
            raise JobConflict(
                f"{jd.root} holds job {config.name!r} run with a different config; "
                "rename the job or start over with --fresh"
            )
    jd.root.mkdir(parents=True, exist_ok=True)
    write_json(jd.config, json.loads(config.model_dump_json()))
    if not jd.plan.exists():
        t0 = time.time()
        plan = plan_shards(config)
        write_json(jd.plan, plan.to_json())
        log.info("job %s: %d file(s) → %d shard(s) in %.1fs (%d input error(s))", config.name, plan.files,
                 len(plan.shards), time.time() - t0, len(plan.errors))
    return jd


def run_job(config: JobConfig, settings: DataprocSettings, executor: Executor, store: JobStore | None = None,
            fresh: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run every phase to the end; returns the report (also in ``report.json``)."""
    from neo_dataproc.pipeline import load_job

    jd = prepare_job(config, settings, fresh=fresh)
    _, plan = load_job(jd.root)
    totals = {phase: len(units_of(phase, config, plan)) for phase in PHASES}
    if store:
        store.start(str(jd.root), totals, config.fingerprint())
    t0 = time.time()
    try:
        for phase in PHASES:
            units = units_of(phase, config, plan)
            done = [u for u in units if jd.is_done(phase, u)]
            pending = [u for u in units if u not in set(done)]
            if store:
                store.set_phase(phase)
                store.note_resumed(phase, done)
                for u in done:
                    store.done(phase, u, jd.read_stats(phase, u))
            if done:
                log.info("job %s: %s: %d/%d unit(s) already done", config.name, phase, len(done), len(units))
            if pending:
                executor.run_units(jd.root, phase, pending, config.name, progress=progress)
            elif progress and units:
                progress(phase, len(units), len(units))
    except BaseException as exc:
        if store:
            store.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if store:
        store.finish("done")
    log.info("job %s done in %.1fs (%s executor)", config.name, time.time() - t0, executor.name)
    return json.loads(jd.report.read_text())
