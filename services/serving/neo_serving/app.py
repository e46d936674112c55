"""``build_app(settings)``: routes, API keys, metrics, the engines' lifetime, and the one place where
errors become HTTP statuses with OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``).

Bad input is a 400 (pydantic's validation errors included, as OpenAI and vLLM answer), an unknown model
a 404, a dead engine or no healthy upstream a 503. Anything else is a bug: a 500 in the same shape,
logged with its traceback.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from neo_serving import api
from neo_serving.chat import ChatService
from neo_serving.completions import CompletionService
from neo_serving.errors import AuthenticationError, InvalidRequestError, ServingError, openai_error
from neo_serving.metrics import HTTPMetricsMiddleware, ServingMetrics
from neo_serving.models import ModelTable
from neo_serving.settings import ServingSettings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/metrics"})  # never behind the API key (probes, Prometheus)
STATUS_TYPES = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}


class APIKeyMiddleware:
    """When keys are set, every route but ``/health`` and ``/metrics`` needs ``Authorization: Bearer KEY``."""

    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app, self.keys = app, [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(token.strip(), k) for k in self.keys):
            await self.app(scope, receive, send)
            return
        status, body = openai_error(AuthenticationError(
            "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'"))
        await JSONResponse(body, status_code=status)(scope, receive, send)


def _json_error(error: ServingError) -> JSONResponse:
    status, body = openai_error(error)
    return JSONResponse(body, status_code=status)


async def _serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    if exc.status_code >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc.message)
    return _json_error(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                        for e in errors[:5])
    return _json_error(InvalidRequestError(message or "invalid request", param=".".join(loc) or None))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error = ServingError(str(exc.detail))
    error.status_code, error.error_type = exc.status_code, STATUS_TYPES.get(exc.status_code, "invalid_request_error")
    return _json_error(error)


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": {"message": "client disconnected", "type": "client_closed_request",
                                   "param": None, "code": None}}, status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": {"message": f"internal error: {type(exc).__name__}", "type": "internal_error",
                                   "param": None, "code": None}}, status_code=500)


def build_app(settings: ServingSettings) -> FastAPI:
    """The serving app. Its lifespan loads every ``settings.models`` entry and shuts the engines down."""
    models = ModelTable(settings)
    metrics = ServingMetrics(lambda: [(name, m.engine.stats()) for name, m in models.items()],
                             watcher=(lambda: models.watcher) if settings.watch_registry else None)
    services = api.Services(settings=settings, models=models, metrics=metrics,
                            chat=ChatService(models, metrics, settings),
                            completions=CompletionService(models, metrics, settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await models.start()
        try:
            yield
        finally:
            await models.shutdown()

    app = FastAPI(title="Neo serving", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for Neo models (torch engine or vLLM gateway).")
    app.state.services = services
    app.include_router(api.router)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(api.ClientDisconnected, _disconnected)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(APIKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    return app
