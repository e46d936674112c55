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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neo_serving import api
from neo_serving.chat import ChatService
from neo_serving.completions import CompletionService
from neo_serving.errors import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    ServingError,
    openai_error,
    status_error,
)
from neo_serving.metrics import HTTPMetricsMiddleware, ServingMetrics
from neo_serving.models import ModelTable
from neo_serving.relay import RelayService
from neo_serving.settings import ServingSettings

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/metrics", "/metrics/replicas"})  # never behind the API key (probes, Prometheus)


ADMIN_PREFIX = "/v1/admin/"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class APIKeyMiddleware:
    """When keys are set, every route but ``/health`` and ``/metrics`` needs ``Authorization: Bearer KEY``.

    Admin routes (``/v1/admin/*``: switching the served model) take admin keys only. With none set they
    are open only while the server listens on loopback; beyond it they answer 403 until an admin key is set.
    Admins (by key, or everyone on such a loopback server) also see checkpoint paths in ``/v1/models``.
    """

    def __init__(self, app: ASGIApp, keys: list[str], admin_keys: list[str], host: str):
        self.app, self.keys = app, [k.encode() for k in keys]
        self.admin_keys, self.loopback = [k.encode() for k in admin_keys], host in LOOPBACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        admin = scope["path"].startswith(ADMIN_PREFIX)
        if admin and not self.admin_keys and not self.loopback:
            await _json_error(PermissionDeniedError(
                "admin routes are disabled on a server that listens beyond loopback without an admin key: "
                "set NEO_ADMIN_KEYS"))(scope, receive, send)
            return
        token = _bearer(scope)
        is_admin, is_user = _matches(token, self.admin_keys), _matches(token, self.keys)
        if admin and self.admin_keys:
            allowed = is_admin
        else:  # admins also list what is served (and see where it lies)
            allowed = not self.keys or is_user or (scope["path"] == "/v1/models" and is_admin)
        if allowed:
            # admins (an admin key, or anyone while admin routes are open on loopback) also see server paths
            scope.setdefault("state", {})["admin"] = is_admin if self.admin_keys else self.loopback
            await self.app(scope, receive, send)
            return
        what = "admin key" if admin and self.admin_keys else "API key"
        await _json_error(AuthenticationError(
            f"Incorrect or missing {what}: send it as 'Authorization: Bearer <key>'"))(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with a 413, by Content-Length or while they stream in."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)  # the server stops a body at its Content-Length
            return
        # chunked: read it here, at most `limit` bytes, then hand it to the app
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _json_error(status_error(
            413, f"request body is larger than this server's limit of {self.limit} bytes (NEO_MAX_BODY_BYTES)",
            code="request_too_large"))(scope, receive, send)


def _matches(token: bytes | None, keys: list[bytes]) -> bool:
    """``token`` is one of ``keys`` (each compared in constant time)."""
    return token is not None and any(hmac.compare_digest(token, k) for k in keys)


def _bearer(scope: Scope) -> bytes | None:
    header = dict(scope["headers"]).get(b"authorization", b"")
    scheme, _, token = header.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None


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
    return _json_error(status_error(exc.status_code, str(exc.detail)))


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
                            completions=CompletionService(models, metrics, settings),
                            relay=RelayService(models, metrics, settings))

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
    app.add_middleware(APIKeyMiddleware, keys=settings.api_keys, admin_keys=settings.admin_keys,
                       host=settings.serve_host)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
    return app
