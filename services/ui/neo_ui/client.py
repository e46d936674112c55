"""Serving, seen from the UI: the ``openai`` client, and every failure turned into one readable sentence.

The UI never imports serving; it talks to any OpenAI-compatible server (``neo serve``, vLLM, a gateway).
Callers get ``ServingUnavailable`` with a message fit to show in the chat, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai

from neo_ui.settings import UISettings

log = logging.getLogger(__name__)


class ServingUnavailable(Exception):
    """The model server could not give an answer; ``str(exc)`` is a sentence for the user."""


@dataclass(frozen=True)
class ServedModel:
    """One ``/v1/models`` entry; ``version``/``stage``/``root``/``parent`` are Neo's extras (None elsewhere)."""

    id: str
    version: str | None = None
    stage: str | None = None
    root: str | None = None
    parent: str | None = None

    @property
    def label(self) -> str:
        """How pickers show it: ``chat · v2 · dpo · from chat:v1`` (what serving told; just the id elsewhere)."""
        version = self.version if self.version and self.version != "local" and not self.id.endswith(
            f":{self.version}") else None
        parts = [p for p in (version, self.stage, f"from {self.parent}" if self.parent else None) if p]
        return " · ".join([self.id, *parts])

    @property
    def ref(self) -> str:
        """``name:version`` as stored with labels (``name:local`` when serving gave no version); an id that
        already is a registry ref (``chat:v1``, a version served pinned) is its own ref."""
        if self.version and self.id.endswith(f":{self.version}"):
            return self.id
        return f"{self.id}:{self.version or 'local'}"


@dataclass(frozen=True)
class Sampling:
    """The knobs the chat side panel and the labeling app send with each request."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int | None = None

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        return args | ({"seed": self.seed} if self.seed is not None else {})


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.response.text[:300] if exc.response is not None else str(exc)


def explain(exc: openai.OpenAIError, url: str, timeout_s: float, model: str | None = None) -> str:
    """One sentence saying what went wrong talking to serving, and what to do about it."""
    if isinstance(exc, openai.APITimeoutError):
        return (f"The model server at {url} did not answer within {timeout_s:g} s: it may be busy or stuck. "
                "Try again, or ask for fewer tokens.")
    if isinstance(exc, openai.APIConnectionError):
        return f"Cannot reach the model server at {url}. Is `neo serve` running there?"
    if isinstance(exc, openai.AuthenticationError):
        return "The model server refused our API key: set NEO_API_KEY to one of its keys."
    if isinstance(exc, openai.NotFoundError):
        return f"The model server has no model {model!r} (any more): pick one from the refreshed list."
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code >= 500:
            return f"The model server failed ({code}): {_detail(exc)}. Try again in a moment."
        return f"The model server refused the request ({code}): {_detail(exc)}"
    return f"The model server's answer broke off: {exc}"


class ServingClient:
    """A thin wrapper of ``openai.OpenAI`` for the UI's three calls: list, stream, complete."""

    def __init__(self, settings: UISettings):
        self.url = settings.api_url
        self.timeout_s = settings.request_timeout_s
        self.client = openai.OpenAI(
            base_url=settings.api_url, api_key=settings.api_key or "none", max_retries=0,
            timeout=openai.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s))

    def _explain(self, exc: openai.OpenAIError, model: str | None = None) -> ServingUnavailable:
        message = explain(exc, self.url, self.timeout_s, model)
        log.warning("serving call failed: %s (%s)", message, type(exc).__name__)
        return ServingUnavailable(message)

    def models(self) -> list[ServedModel]:
        """What serving lists at ``/v1/models``."""
        try:
            page = self.client.models.list()
        except openai.OpenAIError as exc:
            raise self._explain(exc) from exc
        out = []
        for card in page.data:
            extra = card.model_dump()
            out.append(ServedModel(id=card.id, version=extra.get("version"), stage=extra.get("stage"),
                                   root=extra.get("root"), parent=extra.get("parent")))
        return out

    def stream_chat(self, messages: list[dict[str, str]], model: str, sampling: Sampling) -> Iterator[str]:
        """Yield the answer's text pieces as they arrive. Closing the generator closes the HTTP stream
        (the stop button), which makes serving abort the request."""
        try:
            stream = self.client.chat.completions.create(
                model=model, messages=messages, stream=True, **sampling.request_args())  # type: ignore[arg-type]
            with stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            yield choice.delta.content
        except openai.OpenAIError as exc:
            raise self._explain(exc, model) from exc

    def complete_chat(self, messages: list[dict[str, str]], model: str, sampling: Sampling) -> tuple[str, str | None]:
        """One whole answer: (text, finish_reason)."""
        try:
            response = self.client.chat.completions.create(
                model=model, messages=messages, **sampling.request_args())  # type: ignore[arg-type]
        except openai.OpenAIError as exc:
            raise self._explain(exc, model) from exc
        choice = response.choices[0]
        return choice.message.content or "", choice.finish_reason

    def close(self) -> None:
        self.client.close()
