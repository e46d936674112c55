"""The trainer's one settings object (env prefix ``NEO_``)."""

from __future__ import annotations

from pydantic import Field

from neo.settings import NeoSettings


class TrainerSettings(NeoSettings):
    threads: int = Field(default=0, ge=0, description="torch intra-op threads on CPU; 0 = torch's default")
    trainer_queue: str = Field(default="trainer", description="the Celery queue `neo train worker` serves")
    trainer_visibility_timeout_s: int = Field(
        default=120, ge=1,
        description="seconds before the broker hands a job whose worker died (unacknowledged) to another worker; "
                    "a live worker's job that is redelivered is watched, not run twice (see worker.py)")
    trainer_stale_after_s: float = Field(
        default=30.0, gt=0, description="a running job whose heartbeat is older than this has lost its worker "
                                        "and is resumed from its last checkpoint")
