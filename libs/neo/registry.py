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


def _from_hash(raw: dict[Any, Any]) -> ModelVersion:
    data = {_text(k): _text(v) for k, v in raw.items()}
    data["parent"] = data.get("parent") or None
    return ModelVersion.model_validate(data)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ModelRegistry:
    """Model versions in Redis under one key prefix (``redis`` is a ``redis.Redis`` client)."""

    def __init__(self, redis: Any, prefix: str = "neo:"):
        self.redis, self.prefix = redis, prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "neo:") -> ModelRegistry:
        import redis

        return cls(redis.Redis.from_url(url), prefix)

    def register(self, name: str, path: str | Path, stage: str, parent: str | None = None) -> ModelVersion:
        """Add a new version of ``name`` pointing at checkpoint directory ``path``; returns it.

        The path must exist and hold a ``config.json``: a registry entry that serving cannot load is refused
        here, not discovered at reload time.
        """
        _check_name(name)
        if stage not in STAGES:
            raise ValueError(f"invalid stage {stage!r}; choose one of: {', '.join(STAGES)}")
        directory = Path(path).resolve()
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} is not a checkpoint directory (no config.json)")
        number = int(self.redis.incr(_key(self.prefix, name, "seq")))
        version = ModelVersion(name=name, version=f"v{number}", path=str(directory), stage=stage, parent=parent,
                               created=datetime.now(UTC).isoformat(timespec="seconds"))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(_key(self.prefix, name, version.version),
                  mapping={k: v for k, v in version.model_dump().items() if v is not None})
        pipe.zadd(_key(self.prefix, name, "versions"), {version.version: number})
        pipe.sadd(_key(self.prefix, "names"), name)
        pipe.execute()
        log.info("registered %s -> %s (%s)", version.ref, directory, stage)
        return version

    def names(self) -> list[str]:
        """Every registered model name, sorted."""
        return sorted(_text(n) for n in self.redis.smembers(_key(self.prefix, "names")))

    def get(self, name: str, version: str) -> ModelVersion | None:
        raw = self.redis.hgetall(_key(self.prefix, name, version))
        return _from_hash(raw) if raw else None

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """All versions of ``name`` (or of every name), oldest first within a name."""
        out = []
        for model in [name] if name is not None else self.names():
            for version in self.redis.zrange(_key(self.prefix, model, "versions"), 0, -1):
                found = self.get(model, _text(version))
                if found is not None:
                    out.append(found)
        return out

    def latest(self, name: str) -> ModelVersion | None:
        """The newest version of ``name``, or None when it was never registered."""
        top = self.redis.zrevrange(_key(self.prefix, name, "versions"), 0, 0)
        return self.get(name, _text(top[0])) if top else None

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
