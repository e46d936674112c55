import pytest
import redis

from neo.registry import ModelRegistry


@pytest.fixture
def reg(redis_prefix):
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    yield ModelRegistry(client, redis_prefix)
    client.close()


def ckpt(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_versions_count_up_and_latest_is_the_newest(reg, tmp_path):
    assert reg.latest("chat") is None and reg.list() == []
    v1 = reg.register("chat", ckpt(tmp_path, "sft"), stage="sft")
    v2 = reg.register("chat", ckpt(tmp_path, "dpo1"), stage="dpo", parent=v1.ref)
    other = reg.register("base", ckpt(tmp_path, "pre"), stage="pretrain")
    assert (v1.version, v2.version, other.version) == ("v1", "v2", "v1")
    assert reg.latest("chat") == v2 and v2.parent == "chat:v1" and v1.parent is None
    assert v2.path == str((tmp_path / "dpo1").resolve())
    assert [v.ref for v in reg.list()] == ["base:v1", "chat:v1", "chat:v2"]
    assert [v.ref for v in reg.list("chat")] == ["chat:v1", "chat:v2"]
    assert reg.names() == ["base", "chat"]
    assert reg.get("chat", "v1") == v1 and reg.get("chat", "v9") is None
    # the module functions see the same data
    assert ModelRegistry(reg.redis, reg.prefix).latest("base") == other  # the state is in Redis
    assert len(ModelRegistry(reg.redis, reg.prefix).list()) == 3


def test_keys_stay_under_the_prefix(reg, tmp_path):
    reg.register("m", ckpt(tmp_path, "a"), stage="random")
    keys = sorted(k.decode() for k in reg.redis.scan_iter(f"{reg.prefix}*"))
    assert keys == [f"{reg.prefix}models:{s}" for s in ("m:seq", "m:v1", "m:versions", "names")]


def test_refuses_what_serving_could_not_load(reg, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        reg.register("m", tmp_path, stage="sft")
    with pytest.raises(ValueError, match="invalid stage 'rlhf'"):
        reg.register("m", ckpt(tmp_path, "x"), stage="rlhf")
    with pytest.raises(ValueError, match="invalid model name"):
        reg.register("a:b", ckpt(tmp_path, "y"), stage="sft")
    assert reg.list() == []


def test_resolve_takes_a_version_or_the_latest_and_names_what_exists(reg, tmp_path):
    v1 = reg.register("chat", ckpt(tmp_path, "sft"), stage="sft")
    v2 = reg.register("chat", ckpt(tmp_path, "dpo1"), stage="dpo", parent=v1.ref)
    assert reg.resolve("chat:v1") == v1 and reg.resolve("chat") == v2
    with pytest.raises(KeyError, match=r"'chat:v9'.*chat:v1, chat:v2"):
        reg.resolve("chat:v9")


def test_register_next_continues_the_line_of_the_base_checkpoint(reg, tmp_path):
    base, trained, stray = ckpt(tmp_path, "base"), ckpt(tmp_path, "dpo-1"), ckpt(tmp_path, "stray")
    reg.register("chat", base, stage="sft")
    assert reg.version_of(base).ref == "chat:v1" and reg.version_of(stray) is None
    version = reg.register_next(trained, base)
    assert (version.ref, version.stage, version.parent) == ("chat:v2", "dpo", "chat:v1")
    assert reg.register_next(ckpt(tmp_path, "orphan"), stray) is None  # no registered base: nothing to follow
