"""DPO rounds through the trainer queue's Redis/Celery contract (no trainer code imported)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from neo_ui.client import ServingClient
from neo_ui.jobs import RoundError, TrainerQueue, settle_round, start_dpo_round, status_markdown
from neo_ui.store import PreferenceStore

from .records import record


@pytest.fixture
def parts(settings, rds):
    store = PreferenceStore(rds, settings.redis_prefix)
    queue = TrainerQueue(settings, rds)
    yield store, queue, ServingClient(settings)
    queue.close()


def broker_messages(rds, prefix: str, queue: str = "trainer") -> list[dict]:
    """The Celery messages waiting in the Redis broker list (kombu's JSON envelope)."""
    return [json.loads(raw) for raw in rds.lrange(f"{prefix}{queue}", 0, -1)]


def test_round_exports_queues_a_job_and_moves_the_marker(parts, rds, settings, checkpoints):
    store, queue, client = parts
    for i, choice in enumerate(["a", "b", "tie"]):
        store.save_label(record(f"t{i}", choice, pair=f"p{i}", minutes=i), 2)
    started = start_dpo_round(settings, store, queue, client)
    assert started.export.rows == 2 and started.marker["round"] == 1 and started.marker["job"] == started.job
    rows = [json.loads(line) for line in started.export.path.read_text().splitlines()]
    assert started.export.path.name == "round-001.jsonl" and [r["id"] for r in rows] == ["t0", "t1"]

    job = rds.hgetall(f"{settings.redis_prefix}train:job:{started.job}")
    assert job["kind"] == "dpo" and job["state"] == "queued"
    config = json.loads(job["config"])
    assert config["base_model"] == str(checkpoints["tiny"]) and config["data"]["preferences"] == [
        str(started.export.path.resolve())]
    assert rds.zscore(f"{settings.redis_prefix}train:jobs", started.job) is not None

    [message] = broker_messages(rds, settings.redis_prefix)
    assert message["headers"]["task"] == "neo_trainer.run_job"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [started.job]

    # the marker moves when the round has trained, not when it is queued: a failed round keeps its labels
    assert store.last_round() == {} and store.current_round()["job"] == started.job
    with pytest.raises(RoundError, match=f"Round 1 is still queued \\(job `{started.job}`\\)"):
        start_dpo_round(settings, store, queue, client)
    job_key = f"{settings.redis_prefix}train:job:{started.job}"
    rds.hset(job_key, mapping={"state": "failed", "error": "boom"})  # as the trainer worker writes it
    assert settle_round(store, queue) is None and store.last_round() == {}
    retried = start_dpo_round(settings, store, queue, client)  # the same labels again, as round 1
    assert retried.marker["round"] == 1 and retried.export.rows == 2 and retried.job != started.job

    rds.hset(f"{settings.redis_prefix}train:job:{retried.job}", "state", "done")
    marker = settle_round(store, queue)
    assert marker["round"] == 1 and marker["job"] == retried.job and store.round_in_progress() == {}
    assert store.last_round()["round"] == 1 and settle_round(store, queue) is None  # settled once
    assert store.label_count(since_ts=store.since_last_round()) == 0
    with pytest.raises(RoundError, match="No preference pairs since the last round"):
        start_dpo_round(settings, store, queue, client)
    store.save_label(record("t9", "a", pair="p9").model_copy(update={"created": datetime.now(UTC).isoformat()}), 2)
    assert start_dpo_round(settings, store, queue, client).marker["round"] == 2


def test_status_is_read_from_the_trainer_hash(parts, rds, settings):
    _, queue, _ = parts
    job = queue.submit("dpo", {"run_dir": "/tmp/x"})
    assert "**queued**" in status_markdown(job, queue.status(job))
    rds.hset(f"{settings.redis_prefix}train:job:{job}", mapping={"state": "failed", "step": 3, "error": "boom"})
    text = status_markdown(job, queue.status(job))
    assert "**failed**" in text and "step 3" in text and "boom" in text
    assert "no record" in status_markdown("missing", None)
    assert "No DPO round" in status_markdown(None, None)


def test_a_round_finds_its_base_in_the_registry_when_serving_hides_paths(rds, settings, checkpoints, redis_prefix):
    """Serving shows `root` to admins only; a registered version's path comes from the registry instead."""
    import os
    import subprocess
    import sys

    from neo.net import free_port, wait_http
    from neo.registry import ModelRegistry
    from neo_ui.jobs import base_model

    registry = ModelRegistry(rds, redis_prefix)
    version = registry.register("chat", checkpoints["tiny"], stage="sft")
    port = free_port()
    env = {**os.environ, "NEO_REDIS_URL": settings.redis_url, "NEO_REDIS_PREFIX": redis_prefix,
           "NEO_API_KEYS": '["sk-ui"]', "NEO_ADMIN_KEYS": '["sk-admin"]'}  # the UI holds an inference key only
    proc = subprocess.Popen([sys.executable, "-m", "neo.cli", "serve", "--model", "chat", "--port", str(port),
                             "--threads", "1", "--log-level", "warning"], env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        ui = settings.model_copy(update={"api_url": f"http://127.0.0.1:{port}/v1", "api_key": "sk-ui",
                                         "label_models": ["chat"]})
        client = ServingClient(ui)
        assert [m.root for m in client.models()] == [None]  # serving hides the path from a non-admin
        assert base_model(ui, client, registry) == version.path
        with pytest.raises(RoundError, match="NEO_DPO_BASE_MODEL"):
            base_model(ui, client)  # without the registry there is nothing to go on
    finally:
        proc.terminate()
        proc.wait(timeout=30)
