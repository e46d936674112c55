"""DPO rounds through the trainer's queue, by contract only (the UI never imports ``neo_trainer``).

The contract (keys, record, Celery task) is ``neo.jobs``: a round exports the labels since the last round to
``$NEO_HOME/data/prefs/round-NNN.jsonl``, records a ``dpo`` job (``neo.jobs.DPOJobConfig``; ``run_dir`` is what
the worker itself reads) and sends the task, and keeps the round "in progress"; the round marker moves when the
job is ``done`` (``settle_round``, run by the live panel and by the next round's start).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neo.jobs import TASK_NAME, DPOJobCheckpoint, DPOJobConfig, DPOJobData, read_job, record_job
from neo.registry import ModelRegistry
from neo_ui.client import ServingClient, ServingUnavailable
from neo_ui.export import ExportReport, export
from neo_ui.settings import UISettings
from neo_ui.store import PreferenceStore, RoundMoved

log = logging.getLogger(__name__)

DPO_KIND = "dpo"
DPO_SEQ_LEN = 512  # the DPO stage's default seq_len, cut to the base model's context when that is shorter


class RoundError(RuntimeError):
    """A DPO round that cannot start; the message says why."""


class TrainerQueue:
    """Records jobs and sends them to the trainer's Celery queue; reads their status back."""

    def __init__(self, settings: UISettings, redis: Any):
        self.settings, self.redis, self.prefix = settings, redis, settings.redis_prefix
        self._celery: Any = None

    def _app(self) -> Any:
        if self._celery is None:
            from celery import Celery

            self._celery = Celery("neo_ui", broker=self.settings.redis_url, set_as_current=False)
            self._celery.conf.update(broker_transport_options={"global_keyprefix": self.prefix},
                                     broker_connection_retry_on_startup=False, task_ignore_result=True)
        return self._celery

    def submit(self, kind: str, config: dict[str, Any], nproc: int = 1) -> str:
        """Record a queued job and send it to the trainer queue; returns its id."""
        job = record_job(self.redis, self.prefix, kind, config, nproc)
        self._app().send_task(TASK_NAME, args=[job], queue=self.settings.trainer_queue)
        log.info("sent %s job %s to the %r queue", kind, job, self.settings.trainer_queue)
        return job

    def status(self, job: str) -> dict[str, Any] | None:
        raw = read_job(self.redis, self.prefix, job)
        return {k: v for k, v in raw.items() if k not in ("config", "config_error")} if raw else None

    def close(self) -> None:
        if self._celery is not None:
            self._celery.close()


def _context_length(checkpoint: str) -> int | None:
    """The HF checkpoint's ``max_position_embeddings`` when its config.json is readable here, else None."""
    try:
        return int(json.loads((Path(checkpoint) / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dpo_job_config(settings: UISettings, round_no: int, preferences: Path, base_model: str) -> dict[str, Any]:
    """The round's ``dpo`` job config (``neo.jobs.DPOJobConfig``), its ``seq_len`` cut to the base model's context."""
    name = f"dpo-round-{round_no:03d}"
    context = _context_length(base_model)
    return DPOJobConfig(
        name=name, run_dir=str((settings.runs_dir / name).resolve()), base_model=base_model,
        seq_len=min(DPO_SEQ_LEN, context) if context else None,
        data=DPOJobData(preferences=[str(Path(preferences).resolve())], format="conversational"),
        checkpoint=DPOJobCheckpoint(export_dir=str((settings.models_dir / name).resolve()))).to_config()


def base_model(settings: UISettings, client: ServingClient, registry: ModelRegistry | None = None) -> str:
    """The checkpoint a round starts from: ``NEO_DPO_BASE_MODEL``, else the labeled model's directory: from the
    model registry for a registered version (serving shows ``root`` to admins only), else serving's ``root``."""
    if settings.dpo_base_model:
        return settings.dpo_base_model
    served = client.models()
    wanted = settings.label_models[:1] or [m.id for m in served][:1]
    for model in served:
        if model.id not in wanted:
            continue
        if registry is not None and model.version and model.version != "local":
            found = registry.get(model.ref.split(":")[0], model.version)
            if found is not None:
                return found.path
        if model.root:
            return model.root
    raise RoundError("Serving does not say which checkpoint it serves (a version not in the registry, and no "
                     "admin key to see its path): set NEO_DPO_BASE_MODEL.")


@dataclass(frozen=True)
class RoundStarted:
    job: str
    export: ExportReport
    marker: dict[str, Any]


def settle_round(store: PreferenceStore, queue: TrainerQueue) -> dict[str, Any] | None:
    """Move the round marker once the round in progress has trained: its job ``done`` (the DPO stage has then
    registered the new version) → ``mark_round`` up to the round's cut-off, so a failed or lost round leaves its
    labels for the next one. Returns the new marker, or None when nothing was settled."""
    pending = store.round_in_progress()
    job = pending.get("job")
    if not job:
        return None
    status = queue.status(job)
    if status is None:  # the trainer's record is gone: nothing will ever finish it
        log.warning("round %s: job %s has no record in Redis; its labels stay for the next round",
                    pending["round"], job)
        store.end_round_in_progress(job)
        return None
    if status.get("state") != "done":
        return None
    try:
        marker = store.mark_round(labels=int(pending["labels"]), path=pending["path"], job=job,
                                  at_ts=float(pending["at_ts"]), expect_round=int(pending["expect_round"]))
    except RoundMoved as exc:
        log.warning("round %s trained but is not marked: %s", pending["round"], exc)
        marker = None
    store.end_round_in_progress(job)
    return marker


def start_dpo_round(settings: UISettings, store: PreferenceStore, queue: TrainerQueue,
                    client: ServingClient) -> RoundStarted:
    """Export the labels since the last round and queue a DPO job on them. The round marker moves when the job is
    done (``settle_round``), not now: a round that fails leaves its labels for the next one."""
    settle_round(store, queue)
    pending = store.round_in_progress()
    if pending:
        state = (queue.status(pending["job"]) or {}).get("state")
        if state in ("queued", "running"):
            raise RoundError(f"Round {pending['round']} is still {state} (job `{pending['job']}`): wait for it to "
                             "finish before starting the next.")
    round_no = int(store.last_round().get("round", 0)) + 1
    base = base_model(settings, client, ModelRegistry(store.redis, settings.redis_prefix))
    path = settings.prefs_dir / f"round-{round_no:03d}.jsonl"
    report = export(store, path, since_last_round=True)
    if report.rows == 0:
        path.unlink(missing_ok=True)
        raise RoundError(f"No preference pairs since the last round ({report.summary()}): label more first.")
    job = queue.submit(DPO_KIND, dpo_job_config(settings, round_no, path, base))
    started = store.start_round(round_no, labels=report.labels, path=str(path), job=job, at_ts=report.until_ts)
    return RoundStarted(job=job, export=report, marker=started)


def status_markdown(job: str | None, status: dict[str, Any] | None) -> str:
    """A job's status in a line or two (or why there is none)."""
    if not job:
        return "No DPO round has been started yet."
    if status is None:
        return f"Job `{job}`: no record in Redis (the trainer's store was cleared?)."
    line = f"Job `{job}` ({status.get('kind', '?')}): **{status.get('state', '?')}**"
    progress = [f"{k} {status[k]}" for k in ("step", "loss", "val_loss") if k in status]
    if progress:
        line += " · " + ", ".join(progress)
    if status.get("state") == "failed" and status.get("error"):
        line += "\n\n```\n" + status["error"][-1500:] + "\n```"
    return line


# --- the round, live ---------------------------------------------------------------------------------------
_TOTAL = re.compile(r"DPO: \d+ pairs, (\d+) steps")  # the DPO stage's first log line (neo_trainer.stages.dpo)


def read_metrics(run_dir: str | Path | None) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` (the trainer's per-step metrics); [] when there are none yet."""
    path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # the line the trainer is writing right now
    return out


def total_steps(status: dict[str, Any]) -> int | None:
    """The job's step count: the hash's ``total_steps`` when the worker writes it, else the DPO stage's
    first log line in ``<run_dir>/job.log``."""
    if status.get("total_steps"):
        return int(float(status["total_steps"]))
    log_path = Path(status.get("run_dir") or "") / "job.log"
    if status.get("run_dir") and log_path.is_file():
        found = _TOTAL.search(log_path.read_text(errors="replace")[:200_000])
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class RoundProgress:
    """The last round as the live panel shows it: the job's state and progress, then the version it made."""

    round: int | None
    job: str | None
    status: dict[str, Any] | None
    step: int | None = None
    total: int | None = None
    registered: str | None = None  # the new version's ref, once the trainer registered it
    parent: str | None = None  # the version it was trained from
    served: str | None = None  # the served id of the new version, once serving serves it
    parent_served: str | None = None

    @property
    def state(self) -> str | None:
        return (self.status or {}).get("state")

    @property
    def battle_ready(self) -> bool:
        return bool(self.served and self.parent_served)


def round_progress(store: PreferenceStore, queue: TrainerQueue, registry: ModelRegistry,
                   client: ServingClient) -> RoundProgress:
    """Read the current round's job hash, the registry and serving's model list (each may be missing); settles
    a finished round first (the round marker moves)."""
    settle_round(store, queue)
    marker = store.current_round()
    job = marker.get("job") or None
    status = queue.status(job) if job else None
    if status is None:
        return RoundProgress(marker.get("round"), job, status)
    step = int(float(status["step"])) if status.get("step") else None
    registered = parent = served = parent_served = None
    if status.get("state") == "done" and status.get("export_dir"):
        version = registry.version_of(status["export_dir"])
        if version is not None:
            registered, parent = version.ref, version.parent
            try:
                models = client.models()
            except ServingUnavailable:
                models = []
            refs = {m.ref: m.id for m in models}
            served, parent_served = refs.get(registered), refs.get(parent) if parent else None
    return RoundProgress(marker.get("round"), job, status, step, total_steps(status), registered, parent, served,
                         parent_served)


def progress_markdown(progress: RoundProgress) -> str:
    """The live panel: state, a step bar and loss while running; the new version and whether it is served
    when done; the reason when failed."""
    if not progress.job:
        return "No DPO round has been started yet."
    status = progress.status
    if status is None:
        return f"Job `{progress.job}`: no record in Redis (the trainer's store was cleared?)."
    state = status.get("state", "?")
    lines = [f"**Round {progress.round}** · job `{progress.job}` · state: **{state}**"]
    if progress.step is not None or state == "running":
        step = progress.step or 0
        if progress.total:
            filled = round(20 * min(step, progress.total) / progress.total)
            lines.append(f"`[{'#' * filled}{'.' * (20 - filled)}]` step **{step}/{progress.total}**")
        else:
            lines.append(f"step **{step}**")
    numbers = [f"{k} {float(status[k]):.4f}" for k in ("loss", "val_loss") if status.get(k)]
    if numbers:
        lines.append(" · ".join(numbers))
    if state == "queued":
        lines.append("Waiting for a trainer worker (`neo train worker`) to take the job.")
    elif state == "failed":
        lines.append("**The round failed.** Reason (the end of the job's log):")
        lines.append("```\n" + (status.get("error") or "no error recorded")[-1500:] + "\n```")
    elif state == "done":
        if progress.registered is None:
            lines.append(f"Exported to `{status.get('export_dir', '?')}`; not (yet) in the model registry.")
        else:
            lines.append(f"New version **{progress.registered}** (parent {progress.parent or 'none'}).")
            lines.append(f"Served as `{progress.served}`." if progress.served else
                         "Not served yet: serving loads it when its registry watcher sees it (or on reload).")
            if progress.battle_ready:
                lines.append("Ready for an arena battle against its parent.")
    return "\n\n".join(lines)
