"""The table of served models: name → the engine of its current version.

A request leases the entry it started on, so a reload (``POST /v1/admin/reload`` or the registry
watcher) swaps the name to a freshly loaded engine for new requests while in-flight ones finish on the
old one, which shuts down when its last lease ends.

What to serve comes from ``--model`` values: a checkpoint ``DIR``, ``NAME=DIR``, a ``NAME`` registered
in the Redis model registry (``neo.registry``), whose latest version is loaded and followed by reloads and
the watcher, or a registry ref ``NAME:vN``, served under that id and pinned to that version (serve
``--model chat --model chat:v1`` to compare the newest version with the first).

The watcher never dies of a bad version: a version that fails to start (a broken checkpoint, a vLLM
replica that exits) is logged, remembered and skipped until a newer one is registered, while the old
version keeps serving; ``/health`` and ``/metrics`` show what it skipped and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from neo.net import hide_password, redact_url
from neo.registry import ModelRegistry, ModelVersion
from neo.schemas import NeoCheckpointInfo
from neo_serving.engines import build_engine
from neo_serving.engines.base import Engine, ModelInfo
from neo_serving.errors import InvalidRequestError, ModelNotFoundError, ModelStartError, ServingError
from neo_serving.protocol import ModelCard
from neo_serving.settings import ServingSettings
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)
T = TypeVar("T")


class RegistryUnavailableError(ServingError):
    status_code = 503
    error_type = "service_unavailable"
    code = "registry_unavailable"


@dataclass
class WatcherState:
    """What the registry watcher did last; shown by ``/health`` and ``/metrics``."""

    running: bool = False
    polls: int = 0
    last_error: str | None = None  # the last poll's error (the registry down, say); None when it went fine
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (ref that failed, why)

    def as_dict(self) -> dict:
        return {"running": self.running, "polls": self.polls, "last_error": self.last_error,
                "skipped": {name: {"ref": ref, "error": error} for name, (ref, error) in self.skipped.items()}}


@dataclass(eq=False)
class ServedModel:
    info: ModelInfo
    engine: Engine
    leases: int = 0
    retired: bool = False


class ModelTable:
    def __init__(self, settings: ServingSettings):
        self.settings = settings
        self._models: dict[str, ServedModel] = {}
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None
        self._registry: ModelRegistry | None = None
        self.watcher = WatcherState()
        self._start_roots: list[Path] = []  # folders of the checkpoints served at start (reload may use them)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            for spec in self.settings.models:
                name, path, version, registered = await self._resolve(spec)
                if name in self._models:
                    raise ValueError(f"two --model values are named {name!r}; name them NAME=DIR")
                self._models[name] = await self._load(name, path, version, registered)
                self._start_roots.append(Path(path).resolve().parent)
        except BaseException:
            await self.shutdown()  # the ones already loaded
            raise
        if self.settings.watch_registry:
            self._watcher = asyncio.create_task(self._watch(), name="registry-watcher")

    async def check_specs(self) -> None:
        """Resolve every ``--model`` value and check it is a checkpoint directory, before anything loads:
        ``neo serve`` turns a ``ValueError`` here into one line instead of a failed server start."""
        for spec in self.settings.models:
            name, path, _, _ = await self._resolve(spec)
            if not (Path(path) / "config.json").is_file():
                raise ValueError(f"--model {spec!r}: {path} is not a checkpoint directory (no config.json)")

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(m.engine.shutdown() for m in models), *self._retiring, return_exceptions=True)

    # --- lookup ----------------------------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(f"The model `{name}` does not exist. Served: {', '.join(self._models) or 'none'}",
                                     param="model")
        return model

    def default_name(self) -> str:
        if not self._models:
            raise ModelNotFoundError("no model is served", param="model")
        return next(iter(self._models))

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[ServedModel]:
        """The current version of ``name``, kept alive until the block ends (even across a reload)."""
        model = self.get(name)
        model.leases += 1
        try:
            yield model
        finally:
            model.leases -= 1
            if model.retired and model.leases == 0:
                self._retire_now(model)

    def items(self) -> list[tuple[str, ServedModel]]:
        return list(self._models.items())

    def healthy(self) -> bool:
        return bool(self._models) and all(m.engine.healthy() for m in self._models.values())

    def cards(self) -> list[ModelCard]:
        return [ModelCard(id=name, created=m.info.created, owned_by=m.info.owned_by, root=str(m.info.path),
                          parent=m.info.parent, max_model_len=m.info.max_model_len, version=m.info.version,
                          stage=m.info.stage) for name, m in self._models.items()]

    # --- versions --------------------------------------------------------------------------------------
    async def reload(self, name: str, path: str | None = None) -> ModelInfo:
        """Serve ``path`` (or the registry's latest version of ``name``) under ``name`` from now on."""
        async with self._reload_lock:
            old = self.get(name)
            version, registered = "local", None
            if path is None and _pinned(name):
                raise InvalidRequestError(f"{name!r} is pinned to a registered version; give a path to serve "
                                          f"something else under this id", param="path")
            if path is None:
                latest = await self._latest(name)
                if latest is None:
                    raise InvalidRequestError(f"{name!r} is not in the model registry; give a path", param="path")
                path, version, registered = latest.path, latest.version, latest
            else:
                self._check_inside_roots(Path(path))
            if not (Path(path) / "config.json").is_file():
                raise InvalidRequestError(f"{path} is not a checkpoint directory (no config.json)", param="path")
            new = await self._load(name, Path(path), version, registered)
            self._models[name] = new
            old.retired = True
            if old.leases == 0:
                self._retire_now(old)
            log.info("%s: now serving %s (%s); %d request(s) finish on the previous version",
                     name, new.info.path, version, old.leases)
            return new.info

    def _check_inside_roots(self, path: Path) -> None:
        """A reload ``path`` must lie in a models root: the API never loads an arbitrary server directory."""
        resolved = path.resolve()
        roots = [self.settings.models_dir.resolve(), *(Path(r).resolve() for r in self.settings.model_roots),
                 *self._start_roots]
        if not any(resolved.is_relative_to(root) for root in roots):
            raise InvalidRequestError(f"path must lie inside a models root ({', '.join(map(str, roots))}); add "
                                      f"its folder to NEO_MODEL_ROOTS to allow it", param="path")

    async def _watch(self) -> None:
        self.watcher.running = True
        try:
            while True:
                await asyncio.sleep(self.settings.watch_interval_s)
                await self.poll_registry()
        finally:
            self.watcher.running = False

    async def poll_registry(self) -> None:
        """One watcher pass: move every followed name to its latest registered version, skipping failed ones."""
        self.watcher.polls += 1
        self.watcher.last_error = None
        for name, model in self.items():
            if _pinned(name):
                continue
            try:
                latest = await self._latest(name)
            except RegistryUnavailableError as exc:
                self.watcher.last_error = exc.message
                log.warning("registry watcher: %s", exc.message)
                return
            if latest is None or Path(latest.path).resolve() == model.info.path:
                continue
            if self.watcher.skipped.get(name, ("",))[0] == latest.ref:
                continue  # failed before: wait for a newer version
            try:
                await self.reload(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a bad version raises, keep following the rest
                error = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
                self.watcher.skipped[name] = (latest.ref, error)
                self.watcher.last_error = f"{latest.ref}: {error}"
                log.error("registry watcher: %s failed to start and is skipped until a newer version is "
                          "registered; %s keeps serving %s: %s", latest.ref, name, model.info.version, error)
            else:
                self.watcher.skipped.pop(name, None)

    def _retire_now(self, model: ServedModel) -> None:
        task = asyncio.get_running_loop().create_task(model.engine.shutdown())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # --- loading ---------------------------------------------------------------------------------------
    async def _load(self, name: str, path: Path, version: str, registered: ModelVersion | None = None) -> ServedModel:
        path = Path(path).resolve()
        try:
            tokenizer = await asyncio.to_thread(ServedTokenizer.load, path)
            info = _model_info(name, path, version, self.settings.max_model_len, registered)
            engine = build_engine(info, tokenizer, self.settings)
            try:
                await engine.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await engine.shutdown()  # whatever it had started (a thread, replicas)
                raise
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint fails in many ways; each is a 400, not a 500
            raise ModelStartError(f"cannot serve {path} as {name!r}: {type(exc).__name__}: {exc}",
                                  param="path") from exc
        log.info("serving %s (%s) from %s, context %d", name, version, path, info.max_model_len)
        return ServedModel(info, engine)

    async def _resolve(self, spec: str) -> tuple[str, Path, str, ModelVersion | None]:
        """``--model`` value → (name, directory, version, its registry entry or None for a directory)."""
        name, sep, rest = spec.partition("=")
        if sep:
            return name, Path(rest), "local", None
        if Path(spec).is_dir():
            info = NeoCheckpointInfo.read(Path(spec))
            return (info.name if info else Path(spec).resolve().name), Path(spec), "local", None
        try:
            found = await self._registry_call(lambda r: r.resolve(spec))  # NAME → latest, NAME:vN → that version
        except KeyError as exc:
            raise ValueError(f"--model {spec!r} is neither a directory nor a model in the registry: "
                             f"{exc.args[0]}") from None
        return spec, Path(found.path), found.version, found

    async def _latest(self, name: str) -> ModelVersion | None:
        return await self._registry_call(lambda r: r.latest(name))

    async def _registry_call(self, call: Callable[[ModelRegistry], T]) -> T:
        """``call(registry)`` in a worker thread; Redis being down becomes a 503."""
        import redis

        if self._registry is None:
            self._registry = ModelRegistry.from_url(self.settings.redis_url, self.settings.redis_prefix)
        try:
            return await asyncio.to_thread(call, self._registry)
        except redis.RedisError as exc:
            url = self.settings.redis_url  # never a password in a response or a log line
            raise RegistryUnavailableError(f"the model registry at {redact_url(url)} is unavailable: "
                                           f"{type(exc).__name__}: {hide_password(str(exc), url)}") from None


def _pinned(name: str) -> bool:
    """A served id of the form ``NAME:vN`` (a registry ref) stays on its version."""
    base, sep, version = name.rpartition(":")
    return bool(sep and base and version[:1] == "v" and version[1:].isdigit())


def _model_info(name: str, path: Path, version: str, max_model_len: int | None,
                registered: ModelVersion | None = None) -> ModelInfo:
    """A registered version's stage and parent (``name:vN``) are the registry's; a directory's, its neo.json's."""
    config = json.loads((path / "config.json").read_text())
    context = int(config.get("max_position_embeddings", 2048))
    neo = NeoCheckpointInfo.read(path)
    if registered is not None:
        parent, stage = registered.parent, registered.stage
    else:
        parent, stage = (neo.parent, neo.stage) if neo else (None, None)
    return ModelInfo(name=name, version=version, path=path,
                     max_model_len=min(max_model_len or context, context), created=int(time.time()),
                     parent=parent, stage=stage)
