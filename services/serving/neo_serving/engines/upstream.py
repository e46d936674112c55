"""The gateway engine: generation by upstream OpenAI-compatible servers (``vllm serve DIR`` replicas, or
another Neo server), with our API keys, metrics, chat template and model table in front.

It speaks token ids both ways, so everything above ``engines/`` works unchanged: a request goes out as
``POST /v1/completions`` with ``prompt`` = the token ids, ``stream``, ``logprobs`` (>= 0, so every chunk
names its tokens), ``return_tokens_as_token_ids`` and ``stop_token_ids`` + ``ignore_eos`` (vLLM's
extras, which Neo's server also accepts), and ``echo`` when prompt logprobs are wanted.

Replicas are tried round-robin among the healthy ones. A replica that refuses the connection, times out
or answers 5xx before the first token is marked unhealthy and the request fails over to the next; after
the first token an error ends the request (502). With no healthy replica the answer is a clear 503. A
background task checks every replica's ``/health`` (and learns its model id from ``/v1/models``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from neo_serving.engines.base import EngineOutput, EngineRequest, EngineStats, ModelInfo, TokenLogprob
from neo_serving.errors import EngineUnavailableError, InvalidRequestError, ServingError, UpstreamError
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 3.0  # a replica slower than this to answer /health is treated as down


@dataclass
class Replica:
    url: str  # base URL, without /v1
    healthy: bool = False
    model_id: str | None = None  # the name the upstream serves the model under
    error: str = "not checked yet"


class _Failover(Exception):
    """This replica failed before producing anything: try the next one."""


class UpstreamEngine:
    """Round-robin over the healthy replicas of one model."""

    def __init__(self, info: ModelInfo, tokenizer: ServedTokenizer, urls: list[str], api_key: str | None = None,
                 health_interval_s: float = 5.0, timeout_s: float = 600.0):
        if not urls:
            raise ValueError(f"gateway: no upstream URL for model {info.name!r} (give --upstream {info.name}=URL)")
        self.info, self.tokenizer = info, tokenizer
        self.replicas = [Replica(url.rstrip("/").removesuffix("/v1")) for url in urls]
        self.health_interval_s, self.timeout_s = health_interval_s, timeout_s
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
        down = "; ".join(f"{r.url}: {r.error or 'healthy'}" for r in self.replicas)
        return EngineUnavailableError(f"no healthy upstream for model {self.info.name!r} ({down})")

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._active), healthy=self.healthy(),
                           extra={"healthy_replicas": float(sum(r.healthy for r in self.replicas)),
                                  "replicas": float(len(self.replicas))})

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
            self._mark_down(replica, f"health check failed: {exc!r}")
            return
        if not replica.healthy:
            log.info("upstream %s for %s is healthy (model %s)", replica.url, self.info.name, replica.model_id)
        replica.healthy, replica.error = True, ""

    def _mark_down(self, replica: Replica, error: str) -> None:
        if replica.healthy:
            log.warning("upstream %s for %s is down: %s", replica.url, self.info.name, error)
        replica.healthy, replica.error = False, error

    # --- requests --------------------------------------------------------------------------------------
    async def abort(self, request_id: str) -> None:
        response = self._active.pop(request_id, None)
        if response is not None:
            await response.aclose()  # the upstream sees the disconnect and frees the request

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        start = next(self._turn)
        order = [self.replicas[(start + i) % len(self.replicas)] for i in range(len(self.replicas))]
        for replica in (r for r in order if r.healthy):
            stream = self._stream(replica, request)
            try:
                first = await anext(stream)
            except _Failover as exc:
                self._mark_down(replica, str(exc))
                continue
            except StopAsyncIteration:
                return
            try:
                yield first
                async for out in stream:
                    yield out
            finally:
                await stream.aclose()
            return
        raise self._unavailable()  # every replica failed: the 503 names each one's last error

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


def _upstream_error(response: httpx.Response) -> ServingError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    if response.status_code in (400, 422):
        return InvalidRequestError(f"upstream refused the request: {message}")
    return UpstreamError(f"upstream answered HTTP {response.status_code}: {message}")


def build_upstream_engine(info: ModelInfo, tokenizer: ServedTokenizer, settings) -> UpstreamEngine:
    urls = [url for name, _, url in (u.partition("=") for u in settings.upstreams) if name == info.name]
    return UpstreamEngine(info, tokenizer, urls, api_key=settings.upstream_api_key,
                          health_interval_s=settings.health_interval_s, timeout_s=settings.upstream_timeout_s)
