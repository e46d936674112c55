"""What chat and completions share: leasing the model for the request's whole life, preparing the
choices before any byte is sent (so bad input is a proper 4xx), running them full or streamed, and
usage and metrics at the end.

A streamed response yields JSON strings for ``data:`` lines and ends with ``[DONE]``; an error after
the stream has begun is sent as one ``data: {"error": …}`` line first, as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from neo_serving.choices import ChoiceRun
from neo_serving.errors import InvalidRequestError, ServingError, openai_error
from neo_serving.metrics import RequestMetrics, ServingMetrics
from neo_serving.models import ModelTable, ServedModel
from neo_serving.protocol import UsageInfo
from neo_serving.settings import ServingSettings
from neo_serving.tokens import ServedTokenizer

log = logging.getLogger(__name__)

DONE = "[DONE]"


@dataclass
class Prepared:
    """A validated request, ready to run: its choices and prompt token count."""

    model: ServedModel
    runs: list[ChoiceRun]
    prompt_tokens: int
    timer: RequestMetrics
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return sum(run.completion_tokens for run in self.runs)

    def usage(self) -> UsageInfo:
        completion = self.completion_tokens
        return UsageInfo(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                         total_tokens=self.prompt_tokens + completion)


class GenerationService:
    def __init__(self, models: ModelTable, metrics: ServingMetrics, settings: ServingSettings):
        self.models, self.metrics, self.settings = models, metrics, settings

    def check_limits(self, n: int, logprobs: int | None, prompts: int = 1) -> None:
        if n > self.settings.max_n:
            raise _invalid(f"n={n} is above this server's limit of {self.settings.max_n}", "n")
        if prompts * n > self.settings.max_choices:
            raise _invalid(f"{prompts} prompt(s) x n={n} is {prompts * n} sequences, above this server's limit of "
                           f"{self.settings.max_choices} per request", "prompt")
        if logprobs is not None and logprobs > self.settings.max_logprobs:
            raise _invalid(f"logprobs={logprobs} is above this server's limit of {self.settings.max_logprobs}",
                           "logprobs")

    async def run(self, request: Any) -> Any:
        """The full response, or (``stream``) an async iterator of SSE data strings."""
        stack = contextlib.AsyncExitStack()
        model = await stack.enter_async_context(self.models.lease(request.model))
        try:
            model.engine.check_available()
            # tokenizing and templating a prompt of megabytes takes seconds: not on the event loop
            prepared = await asyncio.to_thread(self.prepare, request, model)
        except BaseException:
            await stack.aclose()
            raise
        if request.stream:
            return self._stream(request, prepared, stack)
        async with stack:
            try:
                response = await self.full(request, prepared)
            finally:
                self._finish(prepared)
            return response

    async def _stream(self, request: Any, prepared: Prepared, stack: contextlib.AsyncExitStack) -> AsyncIterator[str]:
        try:
            async with stack, contextlib.aclosing(self.stream(request, prepared)) as chunks:
                async for data in chunks:
                    yield data
        except ServingError as exc:
            log.warning("stream of %s failed: %s", request.model, exc.message)
            yield json.dumps(openai_error(exc)[1])
        finally:
            self._finish(prepared)
        yield DONE

    def _finish(self, prepared: Prepared) -> None:
        prepared.timer.finish(prepared.prompt_tokens, prepared.completion_tokens,
                              [run.finish_reason for run in prepared.runs])

    # --- implemented by chat and completions --------------------------------------------------------------
    def prepare(self, request: Any, model: ServedModel) -> Prepared:
        raise NotImplementedError

    async def full(self, request: Any, prepared: Prepared) -> Any:
        raise NotImplementedError

    def stream(self, request: Any, prepared: Prepared) -> AsyncIterator[str]:
        raise NotImplementedError


def token_str(tokenizer: ServedTokenizer, token_id: int, as_ids: bool) -> str:
    """How logprobs name a token: its text, or ``token_id:{id}`` (vLLM's ``return_tokens_as_token_ids``)."""
    return f"token_id:{token_id}" if as_ids else tokenizer.token_text(token_id)


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        raise _invalid(f"token ids in {param} must be in [0, {vocab_size})", param)


def _invalid(message: str, param: str) -> ServingError:
    return InvalidRequestError(message, param=param)
