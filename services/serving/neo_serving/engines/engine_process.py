"""The torch engine's model loop in a process of its own, as vLLM's V1 splits engine core and API server.

In one process the engine thread and the event loop (HTTP, SSE, tokenizing, detokenizing, pydantic) share a
GIL: on 2 cores a 16-row decode step takes ~1.8 ms alone and ~4.5 ms beside a busy server. Here the API
process keeps the event loop and the tokenizer; a spawned child loads the weights and runs the same loop
(``TorchEngine._run``: rows, prefix cache, prefill, decode, seeded sampling) on its own interpreter.

They talk over one ``multiprocessing`` pipe, pickled messages:

* API → core: ``("add", key, EngineRequest)``, ``("abort", request_id)``, ``("stop",)``; a reader thread in
  the child puts them under the loop's lock.
* core → API: ``("ready", max_batch_size, vocab_size, stats)`` once, then one ``("out", items, stats)`` per loop
  iteration: every output of the step as ``(key, EngineOutput | (error kind, message))`` and the loop's
  ``TorchEngine.stats()``, read by an ``add_reader`` callback that fills each stream's queue; ``("died", why)`` last.

The child dying (an exception in the loop, SIGKILL, OOM) closes the pipe: every open stream gets a 503
error, ``/health`` says 503 with the reason, and the child is started again after the same doubling backoff
as the thread engine's (``restart_delay``). Counters stay monotonic across restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from neo_serving.engines.base import EngineOutput, EngineRequest, EngineStats, ModelInfo
from neo_serving.engines.streams import RESTART_MAX_S, next_output, restart_delay, validate_request
from neo_serving.errors import EngineUnavailableError, ModelStartError, ServingError
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # loading the weights in the child (a 7B checkpoint from a slow disk)
STOP_TIMEOUT_S = 30.0  # after ("stop",), then SIGKILL


class ProcessEngine:
    """Serves one checkpoint directory with the torch engine's loop in a child process."""

    def __init__(self, info: ModelInfo, tokenizer: ServedTokenizer, *, threads: int = 0,
                 restart_backoff_s: float = 1.0, max_waiting: int = 1024, start_timeout_s: float = START_TIMEOUT_S,
                 **core_kwargs):
        self.info, self.tokenizer = info, tokenizer
        self.threads = threads  # torch intra-op threads in the child (0: default_threads())
        self.restart_backoff_s, self.max_waiting, self.start_timeout_s = restart_backoff_s, max_waiting, start_timeout_s
        self.core_kwargs = dict(core_kwargs, restart_backoff_s=restart_backoff_s, max_waiting=max_waiting)
        self.max_batch_size: int | None = core_kwargs.get("max_batch_size")
        self.vocab_size = tokenizer.vocab_size if tokenizer is not None else 0
        self.restarts = 0
        self.process: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[int, asyncio.Queue] = {}
        self._keys = itertools.count()
        self._snap = EngineStats()  # the core's stats as of its last message
        self._base: dict[str, float] = {}  # counters of earlier children, so totals never go back
        self._error: str | None = None
        self._stopping = False
        self._deaths = 0
        self._started_at = 0.0
        self._restart_task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    async def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # not fork: the parent's OpenMP pool and threads stay behind
        conn, child_conn = ctx.Pipe()
        process = ctx.Process(target=core_main, name=f"neo-engine-{self.info.name}", daemon=True,
                              args=(child_conn, self.info, self.core_kwargs, self.threads, log.getEffectiveLevel()))
        process.start()
        child_conn.close()
        try:
            msg = await asyncio.to_thread(_wait_ready, conn, process, self.start_timeout_s)
        except ModelStartError as exc:
            conn.close()
            process.kill()
            raise ModelStartError(f"cannot serve {self.info.path} as {self.info.name!r}: {exc.message}",
                                  param="path") from None
        except BaseException:
            conn.close()
            process.kill()
            raise
        _, self.max_batch_size, self.vocab_size, self._snap = msg
        self.process, self._conn = process, conn
        self._started_at, self._error = time.monotonic(), None
        assert self._loop is not None
        self._loop.add_reader(conn.fileno(), self._on_readable)
        log.info("%s: engine process %d up (%d rows)", self.info.name, process.pid, self.max_batch_size)

    async def shutdown(self) -> None:
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
        self._send(("stop",))
        process = self.process
        if process is not None:
            await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
        self._close(EngineUnavailableError(f"the engine for {self.info.name} stopped"))

    def _close(self, error: ServingError) -> None:
        """Stop reading the child and fail every open stream with ``error``."""
        if self._conn is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        streams, self._streams = self._streams, {}
        for queue in streams.values():
            queue.put_nowait(error)

    def _lost(self) -> None:
        """The pipe closed: the child is gone. Fail its streams; restart it after the backoff."""
        if self._stopping:
            self._close(EngineUnavailableError(f"the engine for {self.info.name} stopped"))
            return
        exitcode = None
        if self.process is not None:  # the pipe closed as it died: reap it for its exit code (milliseconds)
            self.process.join(1.0)
            if self.process.is_alive():  # closed its end of the pipe yet lives on: it serves nobody now
                self.process.kill()
            exitcode = self.process.exitcode
        self._error = self._error or f"its process exited (exit code {exitcode})"
        self._close(EngineUnavailableError(f"the engine for {self.info.name} stopped: it died of {self._error}"))
        self._base = self._totals()  # counters continue from the dead child's: the _total series never go back
        self._snap = EngineStats()
        up_for = time.monotonic() - self._started_at
        self._deaths, delay = restart_delay(up_for, self._deaths, self.restart_backoff_s)
        log.warning("engine process of %s died after %.0f s (%s); restarting it in %.1f s", self.info.name, up_for,
                    self._error, delay)
        assert self._loop is not None
        self._restart_task = self._loop.create_task(self._restart(delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.process is not None:
            await asyncio.to_thread(self.process.join, STOP_TIMEOUT_S)
        if self._stopping:
            return
        try:
            await self._spawn()
        except Exception as exc:  # noqa: BLE001 - it failed to come back: try again after a longer backoff
            self._error = f"its restart failed: {exc}"
            self._deaths, delay = self._deaths + 1, min(delay * 2, RESTART_MAX_S)
            log.warning("engine process of %s failed to restart (%s); next try in %.1f s", self.info.name, exc, delay)
            self._restart_task = asyncio.get_running_loop().create_task(self._restart(delay))
            return
        self.restarts += 1
        log.warning("engine process of %s restarted (%d restarts)", self.info.name, self.restarts)

    # --- state -----------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        return (self._conn is not None and self._error is None and self.process is not None
                and self.process.is_alive())

    def check_available(self) -> None:
        if not self.healthy():
            restarting = self._restart_task is not None and not self._restart_task.done()
            reason = f": it died of {self._error}" if self._error else ""
            raise EngineUnavailableError(f"the engine for {self.info.name} is not running{reason}"
                                         + ("; restarting" if restarting else ""))

    def _totals(self) -> dict[str, float]:
        """Running totals over this child and the dead ones: the core's counters and prefix-cache tokens."""
        snap, base = self._snap, self._base
        now = dict(snap.counters, prefix_cache_queries=snap.prefix_cache_queries or 0,
                   prefix_cache_hits=snap.prefix_cache_hits or 0)
        return {k: base.get(k, 0.0) + now.get(k, 0.0) for k in {*base, *now}}

    @property
    def steps(self) -> int:
        return int(self._totals().get("decode_steps", 0))

    @property
    def prefills(self) -> int:
        return int(self._totals().get("prefill_forwards", 0))

    def stats(self) -> EngineStats:
        """The core's last stats, with totals over restarts and this side's health, error and restart count."""
        totals = self._totals()
        queries, hits = totals.pop("prefix_cache_queries"), totals.pop("prefix_cache_hits")
        prefix = self._snap.prefix_cache_queries is not None  # the core has a prefix cache
        return replace(self._snap, healthy=self.healthy(), counters=totals | {"restarts": float(self.restarts)},
                       prefix_cache_queries=int(queries) if prefix else None,
                       prefix_cache_hits=int(hits) if prefix else None,
                       error=None if self._error is None else f"it died of {self._error}")

    # --- requests --------------------------------------------------------------------------------------
    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        self.check_available()
        waiting = max(0, len(self._streams) - self._snap.running)  # the core's count is a step old
        validate_request(request, self.info, self.vocab_size, waiting, self.max_waiting)
        key = next(self._keys)
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[key] = queue
        self._send(("add", key, request))
        finished = False
        try:
            while not finished:
                out = await next_output(queue)
                finished = out.finish_reason is not None
                yield out
        finally:
            self._streams.pop(key, None)
            if not finished:
                await self.abort(request.request_id)

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _send(self, msg: tuple) -> None:
        if self._conn is None:
            return
        try:
            self._conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:  # the child is gone; the reader sees the pipe close and restarts it
            log.debug("engine process of %s is gone; %s not sent", self.info.name, msg[0])

    def _on_readable(self) -> None:
        conn = self._conn
        try:
            while conn is not None and conn.poll():
                msg = pickle.loads(conn.recv_bytes())
                if msg[0] == "out":
                    self._deliver(msg[1])
                    self._snap = msg[2]
                elif msg[0] == "died":
                    self._error = msg[1]
        except (EOFError, OSError):
            self._lost()

    def _deliver(self, items: list[tuple]) -> None:
        for key, out in items:
            queue = self._streams.get(key)
            if queue is None:
                continue  # its reader left (an abort is on its way)
            if isinstance(out, tuple):  # an error, as (kind, message)
                kind, message = out
                out = EngineUnavailableError(message) if kind == "unavailable" else ServingError(message)
            queue.put_nowait(out)


def _wait_ready(conn, process, timeout: float) -> tuple:
    """The child's ``("ready", ...)``, or a ModelStartError saying why it did not come up."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.2):
        if not process.is_alive():
            raise ModelStartError(f"the engine process exited (code {process.exitcode}) while loading the model")
        if time.monotonic() > deadline:
            raise ModelStartError(f"the engine process did not load the model within {timeout:.0f} s")
    try:
        msg = pickle.loads(conn.recv_bytes())
    except EOFError:
        raise ModelStartError(f"the engine process exited (code {process.exitcode}) while loading the model") from None
    if msg[0] != "ready":
        raise ModelStartError(f"the engine process could not load the model: {msg[1]}")
    return msg


# --- the child ---------------------------------------------------------------------------------------------
def core_main(conn, info: ModelInfo, core_kwargs: dict, threads: int, log_level: int) -> None:
    """Entry point of the engine process: load, say ready, run the loop until ``("stop",)`` or death."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s engine[{os.getpid()}] %(levelname)s %(message)s")
    import torch

    from neo_serving.engines.torch_engine import TorchEngine

    core = TorchEngine(info, None, **core_kwargs)  # the tokenizer stays in the API process
    core.decode_threads = threads or default_threads()
    core.prefill_threads = threads or available_cores()  # large prefills: every core (PARALLEL_PREFILL_MIN_TOKENS)
    torch.set_num_threads(core.decode_threads)
    try:
        core.setup()
    except Exception as exc:  # noqa: BLE001 - reported to the API process, which refuses to serve the model
        log.exception("engine process could not load %s", info.path)
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    core.deliver = lambda items: _send_outputs(conn, core, items)
    conn.send_bytes(pickle.dumps(("ready", core.max_batch_size, core.model.config.vocab_size, core.stats())))
    threading.Thread(target=_read_commands, args=(conn, core), name="engine-commands", daemon=True).start()
    core._run()  # returns on ("stop",); an exception inside has failed every request and set core._error
    if core._error is not None:
        conn.send_bytes(pickle.dumps(("died", repr(core._error))))


def default_threads() -> int:
    """The engine process's torch threads when none are set: every core this process may run on but one, which
    the API process keeps for HTTP/SSE (vLLM's CPU backend also reserves one core for its front end). On the
    2-core dev machine, tiny model, c=16: 1 thread 4,196 out tok/s, 2 threads 3,076 (the API starves)."""
    return max(1, available_cores() - 1)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _send_outputs(conn, core, items: list[tuple[object, EngineOutput | BaseException]]) -> None:
    encoded = [(key, (("unavailable" if isinstance(out, EngineUnavailableError) else "serving"), str(out))
                if isinstance(out, BaseException) else out) for key, out in items]
    conn.send_bytes(pickle.dumps(("out", encoded, core.stats()), protocol=pickle.HIGHEST_PROTOCOL))


def _read_commands(conn, core) -> None:
    """The child's reader thread: requests and aborts into the loop's queues, under its lock."""
    while True:
        try:
            msg = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the API process is gone: nobody to serve
            msg = ("stop",)
        seq = core.new_seq(msg[2], msg[1]) if msg[0] == "add" else None
        with core._cond:
            if seq is not None:
                core._waiting.append(seq)
            elif msg[0] == "abort":
                core._aborts.add(msg[1])
            elif msg[0] == "stop":
                core._stopping = True
            core._cond.notify()
        if msg[0] == "stop":
            return

