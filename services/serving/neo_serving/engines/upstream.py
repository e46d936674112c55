"""The gateway engine: generation by upstream OpenAI-compatible servers (``vllm serve DIR`` replicas, or
another Neo server), with our API keys, metrics, chat template and model table in front.

It speaks token ids both ways, so everything above ``engines/`` works unchanged: a request goes out as
``POST /v1/completions`` with ``prompt`` = the token ids, ``stream``, ``logprobs`` (>= 0, so every chunk
names its tokens), ``return_tokens_as_token_ids`` and ``stop_token_ids`` + ``ignore_eos`` (vLLM's
extras, which Neo's server also accepts), and ``echo`` when prompt logprobs are wanted.

Routing and health, as a load balancer does it (Envoy's outlier detection is the model):

- A request goes to the available replica with the fewest requests outstanding (ties in turn), not blindly
  round-robin, so a replica slowed by a long prompt gets fewer new ones.
- Active checks: a background task asks every replica's ``/health`` (and learns its model id from
  ``/v1/models``). A replica that was up goes down only after ``unhealthy_after`` consecutive failed checks:
  one slow answer under load is not an outage. One good check brings it back.
- Passive ejection: a replica that refuses the connection, times out or answers 5xx before the first token
  is ejected for a backoff (1 s, doubling to 30 s while it keeps failing; a success resets it) and the
  request fails over to the next replica. After the first token an error ends the request (its stream
  carries the error). With no available replica the answer is a clear 503 naming each replica's state.
- Whoever supervises the replicas' processes (``engines/vllm.py``) marks one down at once when its process
  exits, and up again when a restarted one is healthy.

Relay: when every replica serves the model under the name clients use (always so for the vllm engine, which
names them), chat and completions requests can be forwarded as they came, and the replica's response bytes
sent back untouched (``relay()``; ``relay.py`` above the engines does it). The gateway then costs one socket
copy per chunk instead of parsing, re-tokenizing and re-encoding every token, which on a 2-core machine is
CPU taken from vLLM itself. Routing, ejection and failover before the response starts are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx

from neo_serving.engines.base import EngineOutput, EngineRequest, EngineStats, ModelInfo, TokenLogprob
from neo_serving.errors import (
    ContextLengthError,
    EngineUnavailableError,
    InvalidRequestError,
    ServingError,
    UpstreamError,
    status_error,
)
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 3.0  # a /health answer slower than this counts as a failed check
EJECT_BASE_S, EJECT_MAX_S = 1.0, 30.0  # passive ejection: 1 s, 2 s, 4 s … 30 s while a replica keeps failing


@dataclass
class Replica:
    url: str  # base URL, without /v1
    healthy: bool = False  # the active checks' verdict
    model_id: str | None = None  # the name the upstream serves the model under
    error: str = "not checked yet"
    failed_checks: int = 0  # consecutive failed health checks
    ejections: int = 0  # consecutive request failures (passive), which set the backoff
    ejected_until: float = 0.0  # monotonic time before which no request is sent to it
    outstanding: int = 0  # requests being served by it now
    served: int = 0  # requests it answered (that produced output)

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def state(self, now: float) -> str:
        if not self.healthy:
            return f"down ({self.error})"
        if now < self.ejected_until:
            return f"ejected for {self.ejected_until - now:.1f} s ({self.error})"
        return "up"


class _Failover(Exception):
    """This replica failed before producing anything: try the next one."""


@dataclass
class Relayed:
    """A replica's answer to a relayed request: status, content type, and its body as it arrives."""

    status_code: int
    content_type: str
    chunks: AsyncIterator[bytes]  # closing it early closes the upstream connection (the replica aborts)


class UpstreamEngine:
    """Least-outstanding routing over the available replicas of one model, with active and passive checks."""

    def __init__(self, info: ModelInfo, tokenizer: ServedTokenizer, urls: list[str], api_key: str | None = None,
                 health_interval_s: float = 5.0, timeout_s: float = 600.0, unhealthy_after: int = 3):
        if not urls:
            raise ValueError(f"gateway: no upstream URL for model {info.name!r} (give --upstream {info.name}=URL)")
        self.info, self.tokenizer = info, tokenizer
        self.replicas = [Replica(url.rstrip("/").removesuffix("/v1")) for url in urls]
        self.health_interval_s, self.timeout_s, self.unhealthy_after = health_interval_s, timeout_s, unhealthy_after
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._turn = itertools.count()
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task | None = None
        self._active: dict[str, httpx.Response] = {}

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            headers=self._headers, timeout=httpx.Timeout(self.timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name=f"health-{self.info.name}")

    async def shutdown(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for response in list(self._active.values()):
            await response.aclose()
        if self._client is not None:
            await self._client.aclose()

    def healthy(self) -> bool:
        return any(r.healthy for r in self.replicas)

    def check_available(self) -> None:
        if not self.healthy():
            raise self._unavailable()

    def _unavailable(self) -> EngineUnavailableError:
        now = time.monotonic()
        states = "; ".join(f"{r.url}: {r.state(now)}" for r in self.replicas)
        return EngineUnavailableError(f"no healthy upstream for model {self.info.name!r} ({states})")

    def stats(self) -> EngineStats:
        now = time.monotonic()
        return EngineStats(running=len(self._active), healthy=self.healthy(),
                           extra={"healthy_replicas": float(sum(r.healthy for r in self.replicas)),
                                  "available_replicas": float(sum(r.available(now) for r in self.replicas)),
                                  "replicas": float(len(self.replicas))},
                           replicas=self.replica_states())

    def replica_states(self) -> list[dict]:
        """What ``/health`` shows of each replica."""
        now = time.monotonic()
        return [{"url": r.url, "state": r.state(now), "outstanding": r.outstanding, "served": r.served}
                for r in self.replicas]

    async def replica_metrics(self) -> list[tuple[str, str | None]]:
        """Each replica's ``/metrics`` text (vLLM's own ``vllm:*`` series), or None where it did not answer."""
        assert self._client is not None

        async def one(replica: Replica) -> tuple[str, str | None]:
            try:
                response = await self._client.get(f"{replica.url}/metrics", timeout=HEALTH_TIMEOUT_S)
                response.raise_for_status()
                return replica.url, response.text
            except httpx.HTTPError:
                return replica.url, None

        return list(await asyncio.gather(*(one(r) for r in self.replicas)))

    async def check_health(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await self.check_health()

    async def _check(self, replica: Replica) -> None:
        assert self._client is not None
        try:
            response = await self._client.get(f"{replica.url}/health", timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
            if replica.model_id is None:
                models = await self._client.get(f"{replica.url}/v1/models", timeout=HEALTH_TIMEOUT_S)
                models.raise_for_status()
                ids = [m["id"] for m in models.json()["data"]]
                if self.info.name not in ids and len(ids) != 1:
                    raise ValueError(f"it serves {ids}, not {self.info.name!r}")
                replica.model_id = self.info.name if self.info.name in ids else ids[0]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            replica.failed_checks += 1
            if not replica.healthy or replica.failed_checks >= self.unhealthy_after:
                self.mark_down(replica, f"health check failed: {exc!r}")
            else:
                log.info("upstream %s for %s: health check %d of %d failed: %r", replica.url, self.info.name,
                         replica.failed_checks, self.unhealthy_after, exc)
            return
        if not replica.healthy:
            log.info("upstream %s for %s is healthy (model %s)", replica.url, self.info.name, replica.model_id)
        replica.healthy, replica.error, replica.failed_checks = True, "", 0

    def mark_down(self, replica: Replica, error: str) -> None:
        """Take ``replica`` out of routing until a health check passes again (its process died, say)."""
        if replica.healthy:
            log.warning("upstream %s for %s is down: %s", replica.url, self.info.name, error)
        replica.healthy, replica.error = False, error

    def _eject(self, replica: Replica, error: str) -> None:
        """Passive ejection: no requests for a backoff that doubles while the replica keeps failing."""
        replica.ejections += 1
        backoff = min(EJECT_BASE_S * 2 ** (replica.ejections - 1), EJECT_MAX_S)
        replica.ejected_until, replica.error = time.monotonic() + backoff, error
        log.warning("upstream %s for %s ejected for %.0f s: %s", replica.url, self.info.name, backoff, error)

    def _candidates(self) -> Iterator[Replica]:
        """Replicas to try for one request, fewest outstanding requests first (equal ones in turn), each
        still available when its turn comes (an earlier try may have ejected or marked it down)."""
        turn, n = next(self._turn), len(self.replicas)
        for i in sorted(range(n), key=lambda i: (self.replicas[i].outstanding, (i - turn) % n)):
            if self.replicas[i].available(time.monotonic()):
                yield self.replicas[i]

    # --- relay -----------------------------------------------------------------------------------------
    def can_relay(self) -> bool:
        """True when every replica serves the model under ``info.name`` (a relayed body names it so)."""
        return all(r.model_id in (None, self.info.name) for r in self.replicas)

    async def relay(self, path: str, body: bytes) -> Relayed:
        """Send ``body`` (an OpenAI request for this model) to ``path`` of a replica; fail over until one answers.

        A connection error, timeout or 5xx before the response starts ejects the replica and tries the next;
        4xx answers are the client's (passed on). Raises ``EngineUnavailableError`` when none is left.
        """
        assert self._client is not None
        for replica in self._candidates():
            request = self._client.build_request("POST", f"{replica.url}{path}", content=body,
                                                 headers={"content-type": "application/json"})
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                self._eject(replica, f"request failed: {exc!r}")
                continue
            if response.status_code >= 500:
                await response.aclose()
                self._eject(replica, f"HTTP {response.status_code}")
                continue
            chunks = response.aiter_raw()
            replica.outstanding += 1
            try:  # nothing has reached the client until the first bytes: a replica dying before them fails over
                first = await anext(chunks, b"")
            except BaseException as exc:
                replica.outstanding -= 1
                await response.aclose()
                if not isinstance(exc, httpx.HTTPError):
                    raise
                self._eject(replica, f"failed before its first byte: {exc!r}")
                continue
            replica.ejections, replica.served = 0, replica.served + 1
            return Relayed(response.status_code, response.headers.get("content-type", "application/json"),
                           self._relay_body(replica, response, first, chunks))
        raise self._unavailable()

    async def _relay_body(self, replica: Replica, response: httpx.Response, first: bytes,
                          chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {replica.url} failed mid-stream: {exc!r}") from exc
        finally:
            replica.outstanding -= 1
            await response.aclose()

    # --- requests --------------------------------------------------------------------------------------
    async def abort(self, request_id: str) -> None:
        response = self._active.pop(request_id, None)
        if response is not None:
            await response.aclose()  # the upstream sees the disconnect and frees the request

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        for replica in self._candidates():
            replica.outstanding += 1
            try:
                stream = self._stream(replica, request)
                try:
                    first = await anext(stream)
                except _Failover as exc:
                    self._eject(replica, str(exc))
                    continue
                except StopAsyncIteration:
                    return
                replica.ejections, replica.served = 0, replica.served + 1
                try:
                    yield first
                    async for out in stream:
                        yield out
                finally:
                    await stream.aclose()
                return
            finally:
                replica.outstanding -= 1
        raise self._unavailable()  # every replica failed: the 503 names each one's state

    async def _stream(self, replica: Replica, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Outputs of one upstream request; a failure before the first output raises ``_Failover``."""
        assert self._client is not None
        produced = False
        try:
            req = self._client.build_request("POST", f"{replica.url}/v1/completions", json=self._body(replica, request))
            response = await self._client.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise _Failover(f"request failed: {exc!r}") from exc
        self._active[request.request_id] = response
        try:
            if response.status_code >= 500:
                raise _Failover(f"HTTP {response.status_code}")
            if response.status_code != 200:
                await response.aread()
                raise _upstream_error(response)
            prompt_len = len(request.prompt_ids) if request.prompt_logprobs is not None else 0
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise UpstreamError(f"upstream {replica.url}: {chunk['error'].get('message')}")
                for choice in chunk.get("choices") or ():
                    out = _parse_choice(choice, prompt_len if not produced else 0)
                    produced = True
                    yield out
        except httpx.HTTPError as exc:
            if not produced:
                raise _Failover(f"stream failed: {exc!r}") from exc
            raise UpstreamError(f"upstream {replica.url} failed mid-stream: {exc!r}") from exc
        finally:
            self._active.pop(request.request_id, None)
            await response.aclose()

    def _body(self, replica: Replica, request: EngineRequest) -> dict:
        p = request.params
        body = {
            "model": replica.model_id or self.info.name, "prompt": request.prompt_ids,
            "max_tokens": p.max_new_tokens, "temperature": p.temperature, "top_p": p.top_p,
            "top_k": p.top_k or -1, "min_p": p.min_p, "repetition_penalty": p.repetition_penalty,
            "stop_token_ids": list(p.stop_ids), "ignore_eos": True, "stream": True,
            "logprobs": request.logprobs or 0, "return_tokens_as_token_ids": True,
            "echo": request.prompt_logprobs is not None, "skip_special_tokens": False,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        return body


def _token_id(name: str) -> int:
    if not name.startswith("token_id:"):
        raise UpstreamError(f"upstream did not return token ids (got token {name!r}); "
                            "it must support return_tokens_as_token_ids (vLLM or Neo)")
    return int(name.removeprefix("token_id:"))


def _parse_choice(choice: dict, prompt_len: int) -> EngineOutput:
    """One streamed completion choice → token ids (+ logprobs); the first ``prompt_len`` are the echo."""
    lp = choice.get("logprobs") or {}
    names, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or [None] * len(names)
    entries = []
    for name, value, top in zip(names, values, tops, strict=False):
        alternatives = sorted(((_token_id(k), v) for k, v in (top or {}).items()), key=lambda kv: -kv[1])
        entries.append(None if value is None else TokenLogprob(_token_id(name), value, alternatives))
    ids = [_token_id(n) for n in names]
    prompt_lp = entries[:prompt_len] if prompt_len else None
    generated = [e for e in entries[prompt_len:] if e is not None]
    return EngineOutput(token_ids=ids[prompt_len:], logprobs=generated, prompt_logprobs=prompt_lp,
                        finish_reason=choice.get("finish_reason"))


def _error_fields(content: bytes) -> tuple[str, str | None]:
    """(message, param) of an upstream's OpenAI error body, or its first 500 characters."""
    try:
        error = json.loads(content)["error"]
        param = error.get("param")
        return str(error.get("message") or error), param if isinstance(param, str) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return content[:500].decode(errors="replace"), None


def _upstream_error(response: httpx.Response) -> ServingError:
    message, _ = _error_fields(response.content)
    if response.status_code in (400, 422):
        return InvalidRequestError(f"upstream refused the request: {message}")
    return UpstreamError(f"upstream answered HTTP {response.status_code}: {message}")


CONTEXT_PHRASES = ("max_model_len", "maximum context length", "context length")


def upstream_refusal(status: int, content: bytes) -> ServingError:
    """A relayed replica's 4xx as our OpenAI error: its status kept, typed as OpenAI types it (vLLM names
    types after its exception classes and gives codes as ints), context overflows as ours."""
    message, param = _error_fields(content)
    if status == 400 and any(phrase in message for phrase in CONTEXT_PHRASES):
        return ContextLengthError(message, param=param)
    return status_error(status, message, param=param)


def build_upstream_engine(info: ModelInfo, tokenizer: ServedTokenizer, settings) -> UpstreamEngine:
    urls = [url for name, _, url in (u.partition("=") for u in settings.upstreams) if name == info.name]
    return UpstreamEngine(info, tokenizer, urls, api_key=settings.upstream_api_key,
                          health_interval_s=settings.health_interval_s, timeout_s=settings.upstream_timeout_s,
                          unhealthy_after=settings.unhealthy_after)
