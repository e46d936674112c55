"""Fixtures shared by every test package: the machine's real Redis, isolated by a fresh key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
