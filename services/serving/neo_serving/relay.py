"""Relayed chat and completions: the request's own bytes go to an upstream replica, its response bytes come
back untouched (``UpstreamEngine.relay``). Used when the engine's replicas serve the model under the
name clients use (the vllm engine names them so) and ``NEO_RELAY`` is on (the default).

What stays Neo's: the API keys, request validation (FastAPI has parsed the body into our request models
before this runs, so bad input is our 400), the limits on ``n`` and logprobs, the model table's lease (a
stream keeps its version alive through a rollout), routing and failover, and the metrics. What becomes
the replica's: the chat template, tokenization, sampling, the response JSON, and its 4xx errors, which are
OpenAI's shape in vLLM too.

Metrics without parsing every chunk: a streamed request asks the replica for the usage chunk
(``stream_options.include_usage``) and drops it again when the client did not ask; every other event is
counted as one token step for TTFT/ITL by a byte search, and only events that carry a finish reason or the
usage are parsed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse, StreamingResponse

from neo_serving.engines.upstream import Relayed, UpstreamEngine, upstream_refusal
from neo_serving.errors import ServingError, openai_error
from neo_serving.metrics import RequestMetrics, ServingMetrics
from neo_serving.models import ModelTable, ServedModel
from neo_serving.settings import ServingSettings

log = logging.getLogger(__name__)

FINISH = re.compile(rb'"finish_reason":"(\w+)"')
SEP = b"\n\n"


class RelayService:
    def __init__(self, models: ModelTable, metrics: ServingMetrics, settings: ServingSettings):
        self.models, self.metrics, self.settings = models, metrics, settings

    def engine_for(self, model: ServedModel) -> UpstreamEngine | None:
        """The engine to relay through, or None when the request must go the token way."""
        engine = model.engine
        if self.settings.relay and isinstance(engine, UpstreamEngine) and engine.can_relay():
            return engine
        return None

    async def run(self, path: str, request: Any, raw: bytes, check_limits: Callable[[], None]) -> Response | None:
        """The replica's response to ``raw`` as ours, or None when this model is not relayed."""
        stack = contextlib.AsyncExitStack()
        model = await stack.enter_async_context(self.models.lease(request.model))
        try:
            engine = self.engine_for(model)
            if engine is None:
                await stack.aclose()
                return None
            engine.check_available()
            check_limits()
            body, strip_usage = raw, False
            if request.stream and not request.include_usage:
                data = json.loads(raw)
                data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
                body, strip_usage = json.dumps(data).encode(), True
            timer = self.metrics.request(model.info.name)
            relayed = await engine.relay(path, body)
        except BaseException:
            await stack.aclose()
            raise
        if request.stream and relayed.status_code == 200:
            return StreamingResponse(self._stream(relayed, stack, timer, strip_usage),
                                     media_type="text/event-stream", headers={"cache-control": "no-cache"})
        async with stack:
            content = b"".join([chunk async for chunk in relayed.chunks])
        if relayed.status_code == 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                answer = json.loads(content)
                usage = answer.get("usage") or {}
                timer.tokens(1, time.perf_counter())
                timer.finish(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                             [c.get("finish_reason") for c in answer.get("choices", ())])
            return Response(content, status_code=200, media_type=relayed.content_type)
        status, body = openai_error(upstream_refusal(relayed.status_code, content))
        return JSONResponse(body, status_code=status)

    async def _stream(self, relayed: Relayed, stack: contextlib.AsyncExitStack, timer: RequestMetrics,
                      strip_usage: bool) -> AsyncIterator[bytes]:
        usage: dict = {}
        reasons: list[str] = []
        buffer = b""
        try:
            async with stack:
                async for chunk in relayed.chunks:
                    buffer += chunk
                    if SEP not in buffer:
                        continue
                    *events, buffer = buffer.split(SEP)
                    out, steps = [], 0
                    for event in events:
                        if b'"usage":{' in event:
                            with contextlib.suppress(ValueError, KeyError, TypeError):
                                usage = json.loads(event.removeprefix(b"data:").strip())["usage"]
                            if strip_usage and b'"choices":[]' in event:
                                continue
                        elif event.startswith(b"data: {"):
                            steps += 1
                            if b'"finish_reason":"' in event:
                                reasons += [m.decode() for m in FINISH.findall(event)]
                        out.append(event)
                    if steps:
                        timer.tokens(steps, time.perf_counter())
                    if out:
                        yield SEP.join(out) + SEP
                if buffer:
                    yield buffer
        except ServingError as exc:
            log.warning("relayed stream failed: %s", exc.message)
            yield b"data: " + json.dumps(openai_error(exc)[1]).encode() + SEP + b"data: [DONE]" + SEP
        finally:
            timer.finish(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), reasons or [None])
