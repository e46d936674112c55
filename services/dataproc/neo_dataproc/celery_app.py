"""The Celery app of dataproc, built from ``DataprocSettings`` (Redis as broker and result store).

Delivery is at-least-once: ``acks_late`` with ``reject_on_worker_lost`` puts a task back when its
worker process dies, and a task left unacknowledged by a killed worker is redelivered after the
visibility timeout. Units are idempotent, so a redelivered unit is redone or skipped, never doubled.
"""

from __future__ import annotations

from celery import Celery

from neo_dataproc.settings import DataprocSettings

TASK_NAME = "neo_dataproc.run_unit"


def make_celery(settings: DataprocSettings) -> Celery:
    app = Celery("neo_dataproc", broker=settings.redis_url, backend=settings.redis_url)
    transport = {
        "global_keyprefix": settings.celery_prefix,
        "visibility_timeout": settings.dataproc_visibility_timeout_s,
        "unacked_restore_interval": settings.dataproc_restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        broker_transport_options=transport,
        result_backend_transport_options={"global_keyprefix": settings.celery_prefix},
        task_default_queue=settings.dataproc_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,  # a worker holds one unit at a time: a killed worker loses one
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app
