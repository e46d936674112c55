"""A registry of model versions in Redis: the trainer writes it, serving reads it.

Keys, all under one prefix (``NeoSettings.redis_prefix``, default ``neo:``)::

    {prefix}models:names               set     every registered model name
    {prefix}models:{name}:seq          string  last version number handed out (INCR)
    {prefix}models:{name}:versions     zset    version id -> its number (so "latest" is the top)
    {prefix}models:{name}:{version}    hash    name, version, path, stage, parent, created

A version id is ``v{n}`` with ``n`` counting from 1 per name. Registering never overwrites: a new
DPO round's checkpoint is a new version, and serving switches to ``latest(name)`` when told to
(or when its watcher sees a newer one).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

#: The stages a checkpoint can come from (the same values as ``neo.json``'s ``stage``).
STAGES = ("random", "pretrain", "sft", "dpo", "imported")


class ModelVersion(BaseModel):
    """One registered checkpoint directory."""

    name: str = Field(description="model name, as served by /v1/models")
    version: str = Field(description="v1, v2, ... per name, in registration order")
    path: str = Field(description="absolute path of the Hugging Face checkpoint directory")
    stage: str = Field(description=f"one of {', '.join(STAGES)}")
    parent: str | None = Field(default=None, description="the version it was trained from (name:version)")
    created: str = Field(description="UTC time of registration, ISO 8601")

    @property
    def number(self) -> int:
        return int(self.version.removeprefix("v"))

    @property
    def ref(self) -> str:
        """``name:version``, how a parent is written."""
        return f"{self.name}:{self.version}"


def _key(prefix: str, *parts: str) -> str:
    return ":".join((f"{prefix}models", *parts))


def _check_name(name: str) -> None:
    if not name or ":" in name or "/" in name or name != name.strip():
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.' (no ':' or '/')")


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()}


def _from_hash(raw: dict[Any, Any]) -> ModelVersion:
    data = _decode(raw)
    data["parent"] = data.get("parent") or None
    return ModelVersion.model_validate(data)


def register(
    redis: Any, prefix: str, name: str, path: str | Path, stage: str, parent: str | None = None,
) -> ModelVersion:
    """Add a new version of ``name`` pointing at checkpoint directory ``path``; returns it.

    ``redis`` is a ``redis.Redis`` client. The path must exist and hold a ``config.json``: a registry
    entry that serving cannot load is refused here, not discovered at reload time.
    """
    _check_name(name)
    if stage not in STAGES:
        raise ValueError(f"invalid stage {stage!r}; choose one of: {', '.join(STAGES)}")
    directory = Path(path).resolve()
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint directory (no config.json)")
    number = int(redis.incr(_key(prefix, name, "seq")))
    version = ModelVersion(name=name, version=f"v{number}", path=str(directory), stage=stage, parent=parent,
                           created=datetime.now(UTC).isoformat(timespec="seconds"))
    pipe = redis.pipeline(transaction=True)
    pipe.hset(_key(prefix, name, version.version),
              mapping={k: v for k, v in version.model_dump().items() if v is not None})
    pipe.zadd(_key(prefix, name, "versions"), {version.version: number})
    pipe.sadd(_key(prefix, "names"), name)
    pipe.execute()
    log.info("registered %s -> %s (%s)", version.ref, directory, stage)
    return version


def names(redis: Any, prefix: str) -> list[str]:
    """Every registered model name, sorted."""
    return sorted(n.decode() if isinstance(n, bytes) else n for n in redis.smembers(_key(prefix, "names")))


def get(redis: Any, prefix: str, name: str, version: str) -> ModelVersion | None:
    raw = redis.hgetall(_key(prefix, name, version))
    return _from_hash(raw) if raw else None


def list_versions(redis: Any, prefix: str, name: str | None = None) -> list[ModelVersion]:
    """All versions of ``name`` (or of every name), oldest first within a name."""
    out = []
    for model in [name] if name is not None else names(redis, prefix):
        for version in redis.zrange(_key(prefix, model, "versions"), 0, -1):
            found = get(redis, prefix, model, version.decode() if isinstance(version, bytes) else version)
            if found is not None:
                out.append(found)
    return out


def latest(redis: Any, prefix: str, name: str) -> ModelVersion | None:
    """The newest version of ``name``, or None when it was never registered."""
    top = redis.zrevrange(_key(prefix, name, "versions"), 0, 0)
    if not top:
        return None
    return get(redis, prefix, name, top[0].decode() if isinstance(top[0], bytes) else top[0])


class ModelRegistry:
    """The functions above bound to one Redis client and prefix."""

    def __init__(self, redis: Any, prefix: str = "neo:"):
        self.redis, self.prefix = redis, prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "neo:") -> ModelRegistry:
        import redis

        return cls(redis.Redis.from_url(url), prefix)

    def register(self, name: str, path: str | Path, stage: str, parent: str | None = None) -> ModelVersion:
        return register(self.redis, self.prefix, name, path, stage, parent)

    def names(self) -> list[str]:
        return names(self.redis, self.prefix)

    def get(self, name: str, version: str) -> ModelVersion | None:
        return get(self.redis, self.prefix, name, version)

    def list(self, name: str | None = None) -> list[ModelVersion]:
        return list_versions(self.redis, self.prefix, name)

    def latest(self, name: str) -> ModelVersion | None:
        return latest(self.redis, self.prefix, name)

    def resolve(self, ref: str) -> ModelVersion:
        """``name:vN`` → that version, ``name`` → its latest; KeyError naming what is registered."""
        name, _, version = ref.partition(":")
        found = self.get(name, version) if version else self.latest(name)
        if found is None:
            known = ", ".join(v.ref for v in self.list()) or "none"
            raise KeyError(f"{ref!r} is not a registered model version (registered: {known})")
        return found

    def version_of(self, path: str | Path) -> ModelVersion | None:
        """The newest registered version whose checkpoint directory is ``path`` (None if none is)."""
        target = str(Path(path).resolve())
        found = [v for v in self.list() if v.path == target]
        return max(found, key=lambda v: (v.created, v.number)) if found else None

    def register_next(self, export_dir: str | Path, base_model: str | Path, name: str | None = None,
                      stage: str = "dpo") -> ModelVersion | None:
        """Register ``export_dir`` (trained from ``base_model``) as the next version of ``name``, by default of
        the model ``base_model`` is registered as, with it as parent; None when there is no such name."""
        base = self.version_of(base_model)
        name = name or (base.name if base else None)
        if name is None:
            log.info("%s is not a registered version: %s not registered", base_model, export_dir)
            return None
        return self.register(name, export_dir, stage=stage, parent=base.ref if base else None)
