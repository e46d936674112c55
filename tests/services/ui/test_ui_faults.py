"""Fault injection (slow): Redis, the store of every label, is SIGKILLed and restarted while labels are written.

What must survive: every label whose write was acknowledged (AOF with fsync every second, as ``neo up``
runs it: a killed server process loses nothing the OS already has), and the store keeps working on the
same client once Redis is back.
"""

from __future__ import annotations

import time

import pytest
import redis

from neo_ui.store import PreferenceStore

from .records import record

pytestmark = pytest.mark.slow


def test_acknowledged_labels_survive_a_redis_crash_and_the_store_reconnects(redis_process):
    client = redis.Redis.from_url(redis_process.url, decode_responses=True)
    store = PreferenceStore(client, "neo:")
    acknowledged = [f"label-{i}" for i in range(200) if store.save_label(record(f"label-{i}", "a", pair=f"p{i}"), 1)]
    assert len(acknowledged) == 200
    redis_process.kill()  # right after the last acknowledged write
    with pytest.raises(redis.ConnectionError):
        store.save_label(record("while-down", "a", pair="down"), 1)  # a clear error, not a silent loss
    redis_process.start()  # same port, same data directory

    fresh = PreferenceStore(redis.Redis.from_url(redis_process.url, decode_responses=True), "neo:")
    assert sorted(r.id for r in fresh.iter_labels()) == sorted(acknowledged)
    assert fresh.label_count() == 200
    deadline = time.monotonic() + 10
    while True:  # the old client reconnects by itself on its next command
        try:
            assert store.save_label(record("after", "b", pair="after"), 1)
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert fresh.label("after") is not None and fresh.label("while-down") is None
