"""One choice of a request: an engine's token stream turned into text deltas, shared by chat and
completions.

Stop strings are matched on the decoded text, so a stop that spans several tokens (or starts in the
middle of one) is found and the text is cut exactly before it. While streaming, any tail of the text
that could still become a stop string is held back, so a client never sees part of a stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

from neo_serving.engines.base import Engine, EngineRequest, TokenLogprob
from neo_serving.errors import ContextLengthError


class TokenTimer(Protocol):
    """Receives token arrival times (``metrics.RequestMetrics`` implements it)."""

    def tokens(self, count: int, now: float) -> None: ...

    def queued(self, seconds: float) -> None: ...


@dataclass
class ChoiceDelta:
    """New text of one choice, and the tokens that produced it."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class ChoiceResult:
    """A finished choice (non-streaming responses)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    prompt_logprobs: list[TokenLogprob | None] | None
    finish_reason: str | None
    stop_reason: str | int | None


def plan_max_tokens(prompt_len: int, requested: int | None, max_model_len: int, param: str,
                    default: int | None = None) -> int:
    """Tokens to generate: ``requested`` if prompt + it fits the context, else a 400 naming the numbers.

    With no ``requested``, ``default`` (capped to the room left), or all the room left.
    """
    room = max_model_len - prompt_len
    if requested is None:
        if room < 1:
            raise ContextLengthError(
                f"This model's maximum context length is {max_model_len} tokens. However, your {param} "
                f"has {prompt_len} tokens, which leaves no room for a completion. "
                f"Please reduce the length of the {param}.", param=param)
        return room if default is None else min(default, room)
    if prompt_len + requested > max_model_len:
        raise ContextLengthError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the {param}, {requested} in the completion). "
            f"Please reduce the length of the {param} or completion.", param=param)
    return requested


@dataclass
class ChoiceRun:
    """Runs one ``EngineRequest`` and turns its tokens into text (see the module docstring)."""

    index: int
    engine: Engine
    request: EngineRequest
    stop_strings: Sequence[str] = ()
    timer: TokenTimer | None = None
    text: str = ""  # all text so far (cut at a stop string)
    emitted: int = 0  # characters of ``text`` already handed out
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # None until finished (and for an aborted choice)

    async def deltas(self) -> AsyncIterator[ChoiceDelta]:
        """Text deltas as tokens arrive; the last one carries the finish reason."""
        detok = self.engine.tokenizer.detokenizer()
        stop_ids = frozenset(self.request.params.stop_ids)
        longest = max(map(len, self.stop_strings), default=0)
        async with aclosing(self.engine.generate(self.request)) as stream:
            async for out in stream:
                if self.timer is not None and out.queue_time_s is not None:
                    self.timer.queued(out.queue_time_s)
                if self.timer is not None and out.token_ids:
                    self.timer.tokens(len(out.token_ids), time.perf_counter())
                self.completion_tokens += len(out.token_ids)
                self.token_ids += out.token_ids
                finish, stop_reason = out.finish_reason, None
                text_ids = out.token_ids
                if finish == "stop" and text_ids and text_ids[-1] in stop_ids:
                    stop_reason, text_ids = text_ids[-1], text_ids[:-1]  # a stop id is counted, not shown
                start = len(self.text)
                self.text += detok.push(text_ids) + (detok.flush() if finish else "")
                cut = self._find_stop(max(self.emitted, start - longest))
                if cut is not None:
                    position, stop_reason = cut
                    self.text, finish = self.text[:position], "stop"
                end = len(self.text) if finish else len(self.text) - self._held_back()
                delta = ChoiceDelta(self.index, self.text[self.emitted:end], out.token_ids, out.logprobs,
                                    out.prompt_logprobs, finish, stop_reason)
                self.emitted = max(self.emitted, end)
                self.finish_reason = finish
                yield delta
                if finish:
                    return  # leaving the ``aclosing`` block aborts the engine request after a stop string

    async def result(self) -> ChoiceResult:
        logprobs: list[TokenLogprob] | None = None if self.request.logprobs is None else []
        prompt_logprobs, finish, stop_reason = None, None, None
        async for delta in self.deltas():
            if logprobs is not None and delta.logprobs:
                logprobs += delta.logprobs
            prompt_logprobs = prompt_logprobs or delta.prompt_logprobs
            finish, stop_reason = delta.finish_reason, delta.stop_reason
        return ChoiceResult(self.index, self.text, self.token_ids, logprobs, prompt_logprobs, finish, stop_reason)

    def _find_stop(self, start: int) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self.stop_strings:
            position = self.text.find(stop, start)
            if position != -1 and (best is None or position < best[0]):
                best = (position, stop)
        return best

    def _held_back(self) -> int:
        """Length of the longest tail of the unsent text that is the start of some stop string."""
        tail = self.text[self.emitted:]
        held = 0
        for stop in self.stop_strings:
            for k in range(min(len(stop) - 1, len(tail)), held, -1):
                if tail.endswith(stop[:k]):
                    held = k
                    break
        return held


async def merge(runs: Sequence[ChoiceRun]) -> AsyncIterator[ChoiceDelta]:
    """Deltas of several choices as they come (one task per choice); closing it cancels them all."""
    if len(runs) == 1:
        async with aclosing(runs[0].deltas()) as only:
            async for delta in only:
                yield delta
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(run: ChoiceRun) -> None:
        try:
            async with aclosing(run.deltas()) as stream:
                async for delta in stream:
                    await queue.put(delta)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(run)) for run in runs]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_all(runs: Sequence[ChoiceRun]) -> list[ChoiceResult]:
    """Every choice to the end, concurrently (so the engine batches them); the first error cancels all."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run.result()) for run in runs]
    except BaseExceptionGroup as group_error:  # one choice's error is the request's error
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]
