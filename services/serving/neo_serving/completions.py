"""``POST /v1/completions``: prompt(s) → token ids → engine → text, full or streamed.

Several prompts (text or token ids, as lm-eval's ``local-completions`` sends) and ``n`` choices each run
concurrently; choice ``i * n + j`` is prompt ``i``'s ``j``-th. ``echo`` puts the prompt in front of the
text and, with ``logprobs``, the prompt tokens' logprobs in front of the generated ones (the first
token has none), which is how lm-eval scores log-likelihoods.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from neo_serving.choices import ChoiceRun, merge, plan_max_tokens, run_all
from neo_serving.engines.base import EngineRequest, TokenLogprob
from neo_serving.models import ServedModel
from neo_serving.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    random_id,
)
from neo_serving.service import GenerationService, Prepared, check_token_ids, token_str

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions, used when the request names none


class CompletionService(GenerationService):
    def prepare(self, request: CompletionRequest, model: ServedModel) -> Prepared:
        self.check_limits(request.n, request.logprobs, len(request.prompts))
        tok, info = model.engine.tokenizer, model.info
        requested = request.max_tokens if "max_tokens" in request.model_fields_set else None
        runs, prompt_tokens, texts = [], 0, []
        rid = random_id("cmpl")
        timer = self.metrics.request(info.name)
        for i, prompt in enumerate(request.prompts):
            if isinstance(prompt, str):
                ids, text = tok.encode_prompt(prompt), prompt
            else:
                check_token_ids(prompt, tok.vocab_size, "prompt")
                ids, text = list(prompt), tok.decode(prompt) if request.echo else ""
            if not ids:
                ids = [tok.bos_id]  # an empty encoding still needs one token to condition on
            max_new = plan_max_tokens(len(ids), requested, info.max_model_len, "prompt", DEFAULT_MAX_TOKENS)
            prompt_tokens += len(ids)
            texts.append(text)
            for j in range(request.n):
                index = i * request.n + j
                echo_lp = request.logprobs if request.echo and request.logprobs is not None else None
                engine_request = EngineRequest(
                    request_id=f"{rid}-{index}", prompt_ids=ids,
                    params=request.to_sampling_params(max_new, tok.stop_ids, choice=j),
                    logprobs=request.logprobs, prompt_logprobs=echo_lp)
                runs.append(ChoiceRun(index, model.engine, engine_request, request.stop_strings,
                                      timer if index == 0 else None))
        return Prepared(model, runs, prompt_tokens, timer, extra={"id": rid, "texts": texts})

    async def full(self, request: CompletionRequest, prepared: Prepared) -> CompletionResponse:
        results = await run_all(prepared.runs)
        choices = []
        for run, result in zip(prepared.runs, results, strict=True):
            echo = prepared.extra["texts"][run.index // request.n] if request.echo else ""
            logprobs = None
            if request.logprobs is not None:
                logprobs = CompletionLogprobs()
                covered = 0
                if request.echo:
                    covered = self._add_logprobs(logprobs, prepared, run.request.prompt_ids,
                                                 result.prompt_logprobs, request, covered)
                self._add_logprobs(logprobs, prepared, result.token_ids, result.logprobs, request, covered)
            choices.append(CompletionChoice(index=run.index, text=echo + result.text, logprobs=logprobs,
                                            finish_reason=result.finish_reason, stop_reason=result.stop_reason))
        return CompletionResponse(id=prepared.extra["id"], model=request.model, choices=choices,
                                  usage=prepared.usage())

    async def stream(self, request: CompletionRequest, prepared: Prepared) -> AsyncIterator[str]:
        created, rid = int(time.time()), prepared.extra["id"]
        echoed: set[int] = set()
        covered: dict[int, int] = {}  # characters of each choice's text so far, for text_offset
        async with aclosing(merge(prepared.runs)) as deltas:
            async for delta in deltas:
                text, logprobs = delta.text, None
                run = prepared.runs[delta.index]
                if request.logprobs is not None:
                    logprobs = CompletionLogprobs()
                if request.echo and delta.index not in echoed:
                    echoed.add(delta.index)
                    text = prepared.extra["texts"][delta.index // request.n] + text
                    if logprobs is not None:
                        covered[delta.index] = self._add_logprobs(
                            logprobs, prepared, run.request.prompt_ids, delta.prompt_logprobs, request, 0)
                if logprobs is not None:
                    covered[delta.index] = self._add_logprobs(logprobs, prepared, delta.token_ids, delta.logprobs,
                                                              request, covered.get(delta.index, 0))
                if not text and not (logprobs and logprobs.tokens) and delta.finish_reason is None:
                    continue
                choice = CompletionChoice(index=delta.index, text=text, logprobs=logprobs,
                                          finish_reason=delta.finish_reason, stop_reason=delta.stop_reason)
                chunk = CompletionResponse(id=rid, created=created, model=request.model, choices=[choice])
                yield chunk.model_dump_json()
        if request.include_usage:
            yield CompletionResponse(id=rid, created=created, model=request.model, choices=[],
                                     usage=prepared.usage()).model_dump_json()

    def _add_logprobs(self, out: CompletionLogprobs, prepared: Prepared, token_ids: list[int],
                      entries: list[TokenLogprob | None] | None, request: CompletionRequest, base: int) -> int:
        """Append tokens with their logprobs; prompt entries may be None (the first prompt token).

        ``text_offset`` is each token's character offset in the choice's text (OpenAI's meaning): ``base``
        (the text before these tokens) plus the length of the decoded tokens before it, so special tokens
        such as ``<s>`` take no room and a byte-fallback ``<0x0A>`` is one character. Returns the offset
        after the last token.
        """
        tok = prepared.model.engine.tokenizer
        as_ids, k = request.return_tokens_as_token_ids, request.logprobs or 0
        entries = entries or []
        offsets = tok.char_offsets(token_ids)
        for position, token_id in enumerate(token_ids):
            entry = entries[position] if position < len(entries) else None
            name = token_str(tok, token_id, as_ids)
            out.text_offset.append(base + offsets[position])
            out.tokens.append(name)
            if entry is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(entry.logprob)
            top = {token_str(tok, t, as_ids): lp for t, lp in entry.top[:k]}
            top.setdefault(name, entry.logprob)  # vLLM: the sampled token is always there (k + 1 at most)
            out.top_logprobs.append(top)
        return base + len(tok.decode(token_ids))

