"""A torch engine whose thread dies: its requests get an OpenAI-shaped error, /health says 503 and why, and
the engine comes back after its backoff (counted in neo_engine_restarts_total) and serves again.

The failure is real: an exception raised inside the running engine thread (CPython's
``PyThreadState_SetAsyncExc``, the way to kill a Python thread), while it decodes a long request.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time

import httpx

from neo_serving.settings import ServingSettings

from .helpers import LiveServer

BACKOFF_S = 3.0  # long enough to see the 503 even on a loaded machine


class EngineKilled(Exception):
    """Raised inside the engine thread by the test (not one of the per-request errors it catches)."""


def kill(thread: threading.Thread) -> None:
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(EngineKilled))
    assert hit == 1


def restarts(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('neo_engine_restarts_total{model="tiny"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no neo_engine_restarts_total for tiny")


def test_a_dead_engine_fails_its_requests_says_503_and_restarts(checkpoint):
    settings = ServingSettings(models=[f"tiny={checkpoint}"], max_batch_size=4, engine_restart_backoff_s=BACKOFF_S)
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 200, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        engine = server.models.get("tiny").engine
        assert client.get("/health").status_code == 200 and restarts(client) == 0
        old_thread = engine._thread
        chunks, error = 0, None
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    error = data["error"]
                    break
                chunks += 1
                if chunks == 5:
                    kill(old_thread)
        died_at = time.monotonic()
        assert error is not None and chunks >= 5
        assert error["type"] == "service_unavailable" and error["code"] == "engine_unavailable"
        assert "EngineKilled" in error["message"] and set(error) == {"message", "type", "param", "code"}

        health = client.get("/health")
        refused = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
        assert time.monotonic() - died_at < BACKOFF_S  # both asked during the backoff
        assert health.status_code == 503
        assert "EngineKilled" in health.json()["models"]["tiny"]["error"]
        assert "EngineKilled" in health.json()["error"]["message"]
        assert refused.status_code == 503 and "restarting" in refused.json()["error"]["message"]

        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the engine did not come back"
            time.sleep(0.1)
        assert time.monotonic() - died_at >= BACKOFF_S * 0.9
        assert not old_thread.is_alive() and engine._thread is not old_thread
        assert restarts(client) == 1
        again = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 8})
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 8
        assert client.get("/health").json()["models"]["tiny"]["healthy"] is True
