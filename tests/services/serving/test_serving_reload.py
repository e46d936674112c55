"""Model versions: serve a registered name, switch to a new version without dropping in-flight requests."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import redis

from neo.registry import ModelRegistry
from neo_serving.settings import ServingSettings

from .helpers import REDIS_URL, LiveServer, export_random_model


@pytest.fixture
def registry(redis_prefix) -> ModelRegistry:
    return ModelRegistry(redis.Redis.from_url(REDIS_URL), redis_prefix)


@pytest.fixture(scope="module")
def second_version(tmp_path_factory, tokenizer):
    """What a new DPO round would export: same shapes, other weights."""
    return export_random_model(tmp_path_factory.mktemp("models") / "dpo-2", tokenizer, seed=1)


def completion(http, seed=3, model="chat"):
    """Logprobs of a seeded completion: they tell two random models apart (their gibberish may coincide)."""
    r = http.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 8, "seed": seed,
                                           "ignore_eos": True, "logprobs": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["token_logprobs"]


def test_reload_switches_new_requests_and_finishes_in_flight_ones(checkpoint, second_version, registry):
    registry.register("chat", checkpoint, stage="sft")
    settings = ServingSettings(models=["chat"], redis_url=REDIS_URL, redis_prefix=registry.prefix, max_batch_size=4)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        card = http.get("/v1/models").json()["data"][0]
        # a registered version's card carries the registry's stage and parent (its neo.json says "random")
        assert (card["id"], card["version"], card["stage"], card["parent"]) == ("chat", "v1", "sft", None)
        old_text = completion(http)
        old_engine = live.models.get("chat").engine

        body = {"model": "chat", "prompt": "Hi", "max_tokens": 200, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        with http.stream("POST", "/v1/completions", json=body) as stream:
            lines = stream.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    break  # the request is running on v1
            registry.register("chat", second_version, stage="dpo", parent="chat:v1")
            card = http.post("/v1/admin/reload", json={"model": "chat"}).json()
            assert (card["version"], card["root"]) == ("v2", str(second_version.resolve()))
            assert (card["stage"], card["parent"]) == ("dpo", "chat:v1")
            listed = http.get("/v1/models").json()["data"][0]
            assert [listed[k] for k in ("object", "version", "stage", "parent")] == ["model", "v2", "dpo", "chat:v1"]
            new_text = completion(http)  # served by v2 while the stream still runs on v1
            assert old_engine.healthy()
            rest = [json.loads(line[5:]) for line in lines if line.startswith("data:") and "[DONE]" not in line]
        assert rest[-1]["usage"]["completion_tokens"] == 200  # the in-flight request was not dropped
        assert new_text != old_text
        deadline = time.monotonic() + 10
        while old_engine.healthy() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not old_engine.healthy()  # v1 shut down once its last request ended
        assert http.get("/health").status_code == 200 and completion(http) == new_text


def test_reload_errors(checkpoint, registry):
    settings = ServingSettings(models=[f"chat={checkpoint}"], redis_url=REDIS_URL, redis_prefix=registry.prefix,
                               max_batch_size=2)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url) as http:
        assert http.post("/v1/admin/reload", json={"model": "other"}).status_code == 404
        r = http.post("/v1/admin/reload", json={"model": "chat"})
        assert r.status_code == 400 and "not in the model registry" in r.json()["error"]["message"]
        r = http.post("/v1/admin/reload", json={"model": "chat", "path": str(checkpoint / "nope")})
        assert r.status_code == 400 and "no config.json" in r.json()["error"]["message"]
        card = http.post("/v1/admin/reload", json={"model": "chat", "path": str(checkpoint)}).json()
        assert card["version"] == "local" and completion(http)
        assert (card["stage"], card["parent"]) == ("random", None)  # a directory: its neo.json's stage


def test_watcher_follows_the_registry(checkpoint, second_version, registry):
    registry.register("chat", checkpoint, stage="sft")
    settings = ServingSettings(models=["chat"], redis_url=REDIS_URL, redis_prefix=registry.prefix,
                               watch_registry=True, watch_interval_s=0.1, max_batch_size=2)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/v1/models").json()["data"][0]["version"] == "v1"
        registry.register("chat", second_version, stage="dpo")
        deadline, version = time.monotonic() + 15, "v1"
        while version == "v1" and time.monotonic() < deadline:
            time.sleep(0.05)
            version = http.get("/v1/models").json()["data"][0]["version"]
        assert version == "v2"


def test_a_registry_ref_pins_its_version_beside_the_latest(checkpoint, second_version, registry):
    """``--model chat --model chat:v1``: two ids; the watcher moves ``chat`` to v2, ``chat:v1`` stays."""
    registry.register("chat", checkpoint, stage="sft")
    registry.register("chat", second_version, stage="dpo", parent="chat:v1")
    settings = ServingSettings(models=["chat", "chat:v1"], redis_url=REDIS_URL, redis_prefix=registry.prefix,
                               watch_registry=True, watch_interval_s=0.1, max_batch_size=2)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=30) as http:
        cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
        assert {k: (c["stage"], c["parent"]) for k, c in cards.items()} == {
            "chat": ("dpo", "chat:v1"), "chat:v1": ("sft", None)}
        assert {k: (c["version"], c["root"]) for k, c in cards.items()} == {
            "chat": ("v2", str(second_version.resolve())), "chat:v1": ("v1", str(checkpoint.resolve()))}
        assert completion(http, model="chat") != completion(http, model="chat:v1")
        r = http.post("/v1/admin/reload", json={"model": "chat:v1"})
        assert r.status_code == 400 and "pinned" in r.json()["error"]["message"]
        registry.register("chat", checkpoint, stage="dpo", parent="chat:v2")  # v3: the watcher moves `chat` only
        deadline = time.monotonic() + 15
        while live.models.get("chat").info.version != "v3" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.models.get("chat").info.version == "v3" and live.models.get("chat:v1").info.version == "v1"


def test_an_unknown_ref_names_what_is_registered(checkpoint, registry):
    from neo_serving.models import ModelTable

    registry.register("chat", checkpoint, stage="sft")
    table = ModelTable(ServingSettings(models=["chat:v7"], redis_url=REDIS_URL, redis_prefix=registry.prefix))
    with pytest.raises(ValueError, match=r"'chat:v7' is not a registered model version \(registered: chat:v1\)"):
        asyncio.run(table.start())
