"""Typed serving errors. ``app.py`` maps each to its HTTP status and OpenAI error JSON in one place.

Engines and the chat/completions code raise these; none of them knows about HTTP.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base: an error the client should see as ``{"error": {"message", "type", "param", "code"}}``."""

    status_code = 500
    error_type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param
        if code is not None:
            self.code = code


class InvalidRequestError(ServingError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class NoChatTemplateError(InvalidRequestError):
    code = "chat_template_missing"


class ModelStartError(InvalidRequestError):
    """A version could not be started (a replica exited or timed out, the checkpoint would not load)."""

    code = "model_start_failed"


class AuthenticationError(ServingError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ServingError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotFoundError(ServingError):
    status_code = 404
    error_type = "not_found_error"
    code = "model_not_found"


class EngineUnavailableError(ServingError):
    """No engine can take the request: it died, or every upstream replica is unhealthy."""

    status_code = 503
    error_type = "service_unavailable"
    code = "engine_unavailable"


class EngineOverloadedError(EngineUnavailableError):
    """The engine's queue is full (``NEO_MAX_WAITING``): the client should retry later, as OpenAI's 503 says."""

    code = "engine_overloaded"


class UpstreamError(ServingError):
    """An upstream server failed after streaming had begun, or answered with an error of its own."""

    status_code = 502
    error_type = "upstream_error"


#: OpenAI's error type for an HTTP status, for errors that only have a status (Starlette's, an upstream's)
STATUS_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                      404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                      422: "invalid_request_error", 429: "rate_limit_error"}


def status_error(status: int, message: str, param: str | None = None, code: str | None = None) -> ServingError:
    """A ``ServingError`` answering ``status``, typed as OpenAI types that status."""
    error = ServingError(message, param=param, code=code)
    error.status_code, error.error_type = status, STATUS_ERROR_TYPES.get(status, "invalid_request_error")
    return error


def openai_error(exc: ServingError) -> tuple[int, dict]:
    """The HTTP status and OpenAI error body of a typed error (app.py's handlers and mid-stream errors)."""
    body = {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}
    return exc.status_code, {"error": body}
