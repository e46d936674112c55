"""HTTP routes: each takes the services from ``app.state``, calls one, and picks JSON or SSE.

No logic lives here; errors are raised as typed ``ServingError``s and turned into OpenAI error JSON
by the handlers in ``app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse

from neo_serving.chat import ChatService
from neo_serving.completions import CompletionService
from neo_serving.errors import EngineUnavailableError, openai_error
from neo_serving.metrics import ServingMetrics, relabel_replica_metrics
from neo_serving.models import ModelTable
from neo_serving.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    ReloadRequest,
    TokenizeRequest,
    TokenizeResponse,
)
from neo_serving.relay import RelayService
from neo_serving.service import GenerationService, check_token_ids
from neo_serving.settings import ServingSettings
from neo_serving.tokens import ServedTokenizer

T = TypeVar("T")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 503)
}
router = APIRouter()


@dataclass
class Services:
    settings: ServingSettings
    models: ModelTable
    metrics: ServingMetrics
    chat: ChatService
    completions: CompletionService
    relay: RelayService


def services(request: Request) -> Services:
    return request.app.state.services


class ClientDisconnected(Exception):
    """The client went away before a non-streaming response was ready."""


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; if the client disconnects first, cancel it (which aborts its engine requests)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientDisconnected
    return task.result()


def _respond(result: Any) -> Any:
    if hasattr(result, "__aiter__"):
        return EventSourceResponse(result, sep="\n")
    return result


@router.get("/health", responses={503: {"model": ErrorResponse}})
async def health(request: Request) -> Response:
    """``{"status": "ok", "models": {name: {version, healthy, replicas?}}, "watcher": …}``, or a 503 error."""
    table = services(request).models
    models = {}
    for name, model in table.items():
        stats = model.engine.stats()
        models[name] = {"version": model.info.version, "healthy": stats.healthy}
        if stats.error is not None:
            models[name]["error"] = stats.error
        if stats.replicas is not None:
            models[name]["replicas"] = stats.replicas
    detail = {"models": models, "watcher": table.watcher.as_dict() if table.settings.watch_registry else None}
    if table.healthy():
        return JSONResponse({"status": "ok", **detail})
    down = "; ".join(f"{name}: {m.get('error', 'not running')}" for name, m in models.items() if not m["healthy"])
    status, body = openai_error(EngineUnavailableError(f"an engine is not running ({down})"))
    return JSONResponse({**body, **detail}, status_code=status)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(services(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/replicas")
async def replica_metrics(request: Request) -> Response:
    """The upstream replicas' own metrics (vLLM's ``vllm:*``), labeled ``replica`` and ``served_model``: one
    scrape target for a Prometheus that cannot reach replicas on their private ports."""
    texts = []
    for name, model in services(request).models.items():
        fetch = getattr(model.engine, "replica_metrics", None)
        if fetch is not None:
            texts += [(name, url, text) for url, text in await fetch() if text is not None]
    return Response(relabel_replica_metrics(texts), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request) -> ModelList:
    """The served names; ``root`` (the checkpoint directory on this server) only for admins."""
    cards = services(request).models.cards()
    if not getattr(request.state, "admin", False):
        cards = [card.model_copy(update={"root": None}) for card in cards]
    return ModelList(data=cards)


async def _generate(request: Request, path: str, body: Any, service: GenerationService, logprobs: int | None,
                    prompts: int = 1) -> Any:
    """Relayed to an upstream replica as it came when the model's engine allows it, else through ``service``."""
    s = services(request)
    relayed = await cancel_on_disconnect(request, s.relay.run(
        path, body, await request.body(), lambda: service.check_limits(body.n, logprobs, prompts)))
    if relayed is not None:
        return relayed
    return _respond(await cancel_on_disconnect(request, service.run(body)))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    return await _generate(request, "/v1/chat/completions", body, services(request).chat, body.top_logprobs)


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(body: CompletionRequest, request: Request) -> Any:
    return await _generate(request, "/v1/completions", body, services(request).completions, body.logprobs,
                           len(body.prompts))


@router.post("/tokenize", response_model=TokenizeResponse, responses=ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    table = services(request).models
    model = table.get(body.model or table.default_name())
    return await asyncio.to_thread(_tokenize, body, model.engine.tokenizer, model.info.max_model_len)


def _tokenize(body: TokenizeRequest, tok: ServedTokenizer, max_model_len: int) -> TokenizeResponse:
    if body.messages is not None:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = tok.encode_chat(messages, body.add_generation_prompt)
    else:
        ids = tok.encode_prompt(body.prompt or "", add_special_tokens=body.add_special_tokens)
    strs = [tok.token_text(i) for i in ids] if body.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=max_model_len, tokens=ids, token_strs=strs)


@router.get("/tokenizer_info", responses=ERRORS)
async def tokenizer_info(request: Request, model: str | None = None) -> dict[str, Any]:
    """The default (or ``?model=``) model's tokenizer config and chat template, as vLLM's endpoint."""
    table = services(request).models
    served = table.get(model or table.default_name())
    return served.engine.tokenizer.info(served.info.max_model_len)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    table = services(request).models
    tok = table.get(body.model or table.default_name()).engine.tokenizer
    check_token_ids(body.tokens, tok.vocab_size, "tokens")
    return DetokenizeResponse(prompt=tok.decode(body.tokens))


@router.post("/v1/admin/reload", response_model=ModelCard, responses=ERRORS)
async def reload(body: ReloadRequest, request: Request) -> ModelCard:
    """Switch a served name to a new checkpoint (``path``, or the registry's latest version)."""
    table = services(request).models
    await table.reload(body.model, body.path)
    return next(card for card in table.cards() if card.id == body.model)
