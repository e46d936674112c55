"""What both torch engines (its loop on a thread, or in a process of its own) share on the API side: refusing
a request before its stream starts, reading a stream's queue, and the restart backoff after a death."""

from __future__ import annotations

import asyncio

from neo_serving.engines.base import EngineOutput, EngineRequest, ModelInfo
from neo_serving.errors import EngineOverloadedError, InvalidRequestError

# a dead engine is restarted as the vllm engine restarts a replica: 1 s doubling to 60 s, reset once up 60 s
RESTART_BASE_S, RESTART_MAX_S, STABLE_AFTER_S = 1.0, 60.0, 60.0


async def next_output(queue: asyncio.Queue) -> EngineOutput:
    """The next output of a stream; a slow reader gets everything queued since merged into one."""
    items = [await queue.get()]
    while not queue.empty():
        items.append(queue.get_nowait())
    return _merge(items)


def restart_delay(up_for: float, deaths: int, base: float) -> tuple[int, float]:
    """After an engine that ran ``up_for`` seconds died: (consecutive early deaths, seconds before restarting)."""
    deaths = 0 if up_for >= STABLE_AFTER_S else deaths + 1
    return deaths, min(base * 2 ** max(deaths - 1, 0), RESTART_MAX_S)


def validate_request(request: EngineRequest, info: ModelInfo, vocab: int, waiting: int, max_waiting: int) -> None:
    """Refuse what the engine cannot take, before its stream starts (an OpenAI error, not a dead stream)."""
    if waiting >= max_waiting:
        raise EngineOverloadedError(f"the engine for {info.name} has {waiting} sequences queued, its limit "
                                    f"(NEO_MAX_WAITING): try again later")
    prompt, max_len = request.prompt_ids, info.max_model_len
    if not prompt:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    if len(prompt) >= max_len:
        raise InvalidRequestError(f"the prompt has {len(prompt)} tokens; this model's context is {max_len}",
                                  param="prompt", code="context_length_exceeded")
    if min(prompt) < 0 or max(prompt) >= vocab:
        raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")


def _merge(items: list[EngineOutput | BaseException]) -> EngineOutput:
    for item in items:
        if isinstance(item, BaseException):
            raise item
    outs: list[EngineOutput] = items  # type: ignore[assignment]
    if len(outs) == 1:
        return outs[0]
    logprobs = None
    if outs[0].logprobs is not None:
        logprobs = [lp for o in outs for lp in (o.logprobs or [])]
    return EngineOutput(token_ids=[t for o in outs for t in o.token_ids], logprobs=logprobs,
                        prompt_logprobs=outs[0].prompt_logprobs, finish_reason=outs[-1].finish_reason,
                        queue_time_s=outs[0].queue_time_s)
