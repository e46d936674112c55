"""The trainer's one settings object (env prefix ``NEO_``)."""

from __future__ import annotations

from neo.settings import NeoSettings


class TrainerSettings(NeoSettings):
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    trainer_queue: str = "trainer"  # the Celery queue `neo train worker` serves (NEO_TRAINER_QUEUE)
