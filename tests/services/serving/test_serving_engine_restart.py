"""A torch engine whose loop dies: its requests get an OpenAI-shaped error, /health says 503 and why, and
the engine comes back after its backoff (counted in neo_engine_restarts_total) and serves again.

The failures are real: the engine process (the default) is SIGKILLed while it decodes a long request; in the
thread engine (``engine_process=False``) an exception is raised inside the running engine thread (CPython's
``PyThreadState_SetAsyncExc``, the way to kill a Python thread).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import threading
import time

import httpx
import pytest

from neo.generate import SamplingParams
from neo_serving.engines.base import EngineRequest, ModelInfo
from neo_serving.engines.torch_engine import TorchEngine
from neo_serving.errors import EngineUnavailableError
from neo_serving.settings import ServingSettings
from neo_serving.tokens import ServedTokenizer

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


def stream_until_error(client: httpx.Client, body: dict, after_chunks: int, kill_it) -> tuple[int, dict | None]:
    """Stream ``body``; after ``after_chunks`` chunks call ``kill_it()``; (chunks read, the error event)."""
    chunks = 0
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if "error" in data:
                return chunks, data["error"]
            chunks += 1
            if chunks == after_chunks:
                kill_it()
    return chunks, None


@pytest.mark.parametrize("process", [True, False], ids=["engine-process", "engine-thread"])
def test_a_dead_engine_fails_its_requests_says_503_and_restarts(checkpoint, process):
    """The engine process (the default) SIGKILLed, or an exception raised in the engine thread, mid-stream."""
    settings = ServingSettings(models=[f"tiny={checkpoint}"], max_batch_size=4, engine_restart_backoff_s=BACKOFF_S,
                               engine_process=process)
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 250, "temperature": 0, "ignore_eos": True,
            "stream": True}
    why = "exit code -9" if process else "EngineKilled"
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        engine = server.models.get("tiny").engine
        assert client.get("/health").status_code == 200 and restarts(client) == 0
        old = engine.process if process else engine._thread
        killer = (lambda: os.kill(old.pid, signal.SIGKILL)) if process else (lambda: kill(old))
        chunks, error = stream_until_error(client, body, 5, killer)
        died_at = time.monotonic()
        assert error is not None and chunks >= 5
        assert error["type"] == "service_unavailable" and error["code"] == "engine_unavailable"
        assert why in error["message"] and set(error) == {"message", "type", "param", "code"}

        health = client.get("/health")
        refused = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 2})
        assert time.monotonic() - died_at < BACKOFF_S  # both asked during the backoff
        assert health.status_code == 503
        assert why in health.json()["models"]["tiny"]["error"] and why in health.json()["error"]["message"]
        assert refused.status_code == 503 and "restarting" in refused.json()["error"]["message"]

        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the engine did not come back"
            time.sleep(0.1)
        assert time.monotonic() - died_at >= BACKOFF_S * 0.9
        assert not old.is_alive() and (engine.process if process else engine._thread) is not old
        assert restarts(client) == 1
        steps_before = engine.steps
        again = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 8})
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 8
        assert engine.steps > steps_before  # counters go on from the dead loop's, never back
        assert client.get("/health").json()["models"]["tiny"]["healthy"] is True


def test_the_restart_backoff_doubles_while_the_engine_keeps_dying(checkpoint):
    """Two deaths within a minute: the second restart waits twice the first's backoff."""
    info = ModelInfo("tiny", "local", checkpoint, 256, 0)

    async def die_and_wait(engine, n: int) -> float:
        """Kill the engine thread while it decodes; seconds until it takes requests again."""
        request = EngineRequest(f"long{n}", [5] * 8, SamplingParams(max_new_tokens=240, temperature=0))
        try:
            async for _ in engine.generate(request):
                if engine.healthy():
                    kill(engine._thread)
        except EngineUnavailableError as exc:
            assert "EngineKilled" in str(exc)
        died = time.monotonic()
        while not engine.healthy():
            await asyncio.sleep(0.02)
        return time.monotonic() - died

    async def main():
        engine = TorchEngine(info, ServedTokenizer.load(checkpoint), max_batch_size=2, restart_backoff_s=0.5)
        await engine.start()
        try:
            return [await die_and_wait(engine, n) for n in range(2)], engine.restarts
        finally:
            await engine.shutdown()

    (first, second), restarts = asyncio.run(main())
    assert restarts == 2
    assert first >= 0.45 and second >= 0.95  # 0.5 s, then 1 s (without the doubling: 0.5 s again)
