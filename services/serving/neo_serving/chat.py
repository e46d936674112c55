"""``POST /v1/chat/completions``: messages → the checkpoint's chat template → engine → message.

The prompt is rendered with the ``chat_template`` of the model's own ``tokenizer_config.json`` (a model
without one answers 400). Streaming sends the role first, then content deltas, then a chunk with the
finish reason, and the usage chunk when ``stream_options.include_usage`` is set, as OpenAI does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from neo_serving.choices import ChoiceRun, merge, plan_max_tokens, run_all
from neo_serving.engines.base import EngineRequest, TokenLogprob
from neo_serving.models import ServedModel
from neo_serving.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatResponseMessage,
    ChatTokenLogprob,
    ChatTopLogprob,
    DeltaMessage,
    UsageInfo,
    random_id,
)
from neo_serving.service import GenerationService, Prepared, token_str


class ChatService(GenerationService):
    def prepare(self, request: ChatCompletionRequest, model: ServedModel) -> Prepared:
        self.check_limits(request.n, request.top_logprobs)
        tok, info = model.engine.tokenizer, model.info
        ids = tok.encode_chat(request.chat_messages(), request.add_generation_prompt)
        max_new = plan_max_tokens(len(ids), request.max_new_tokens, info.max_model_len, "messages")
        rid = random_id("chatcmpl")
        timer = self.metrics.request(info.name)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        runs = [
            ChoiceRun(j, model.engine,
                      EngineRequest(request_id=f"{rid}-{j}", prompt_ids=ids,
                                    params=request.to_sampling_params(max_new, tok.stop_ids, choice=j),
                                    logprobs=logprobs),
                      request.stop_strings, timer if j == 0 else None)
            for j in range(request.n)
        ]
        return Prepared(model, runs, len(ids), timer, extra={"id": rid})

    async def full(self, request: ChatCompletionRequest, prepared: Prepared) -> ChatCompletionResponse:
        results = await run_all(prepared.runs)
        choices = [
            ChatChoice(index=r.index, message=ChatResponseMessage(content=r.text),
                       logprobs=self._logprobs(request, prepared, r.logprobs) if request.logprobs else None,
                       finish_reason=r.finish_reason, stop_reason=r.stop_reason)
            for r in results
        ]
        return ChatCompletionResponse(id=prepared.extra["id"], model=request.model, choices=choices,
                                      usage=prepared.usage())

    async def stream(self, request: ChatCompletionRequest, prepared: Prepared) -> AsyncIterator[str]:
        created, rid = int(time.time()), prepared.extra["id"]

        def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> str:
            return ChatCompletionChunk(id=rid, created=created, model=request.model, choices=choices,
                                       usage=usage).model_dump_json()

        for run in prepared.runs:
            yield chunk([ChatChunkChoice(index=run.index, delta=DeltaMessage(role="assistant", content=""))])
        async with aclosing(merge(prepared.runs)) as deltas:
            async for delta in deltas:
                logprobs = self._logprobs(request, prepared, delta.logprobs) if request.logprobs else None
                if delta.text or (logprobs and logprobs.content):
                    yield chunk([ChatChunkChoice(index=delta.index, delta=DeltaMessage(content=delta.text),
                                                 logprobs=logprobs)])
                if delta.finish_reason is not None:
                    yield chunk([ChatChunkChoice(index=delta.index, delta=DeltaMessage(),
                                                 finish_reason=delta.finish_reason, stop_reason=delta.stop_reason)])
        if request.include_usage:
            yield chunk([], prepared.usage())

    def _logprobs(self, request: ChatCompletionRequest, prepared: Prepared,
                  entries: list[TokenLogprob] | None) -> ChatLogprobs:
        tok = prepared.model.engine.tokenizer
        as_ids, k = request.return_tokens_as_token_ids, request.top_logprobs or 0

        def top(token_id: int, logprob: float) -> ChatTopLogprob:
            name = token_str(tok, token_id, as_ids)
            return ChatTopLogprob(token=name, logprob=logprob, bytes=tok.token_bytes(token_id))

        content = [
            ChatTokenLogprob(**top(e.token_id, e.logprob).model_dump(),
                             top_logprobs=[top(t, lp) for t, lp in e.top[:k]])
            for e in entries or ()
        ]
        return ChatLogprobs(content=content)

