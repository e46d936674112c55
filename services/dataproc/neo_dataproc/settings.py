"""``DataprocSettings``: the one settings object of the dataproc service (env prefix ``NEO_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from neo.settings import NeoSettings


class DataprocSettings(NeoSettings):
    dataproc_queue: str = Field(default="dataproc", description="Celery queue of dataproc tasks")
    dataproc_visibility_timeout_s: int = Field(
        default=3600,
        description="an unacknowledged task (its worker died) is redelivered after this long; keep it above "
        "the longest unit (Redis transport default: 1 hour)",
    )
    dataproc_restore_interval_s: int = Field(
        default=10, description="how often idle workers look for tasks to redeliver (kombu default 10 s × 10)",
    )
    dataproc_poll_s: float = Field(default=0.5, description="how often `neo data run` checks progress")

    def job_dir(self, job: str) -> Path:
        return self.data_dir / job

    @property
    def job_prefix(self) -> str:
        return f"{self.redis_prefix}dataproc:"

    @property
    def celery_prefix(self) -> str:
        return f"{self.redis_prefix}celery:"
