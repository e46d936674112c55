"""The interface every engine implements, and the data that crosses it.

An engine turns prompt token ids into a stream of sampled token ids (with logprobs when asked). Text,
chat templates, stop strings, ``n`` and the OpenAI wire format all live above it (``chat.py``,
``completions.py``), so the torch engine and the upstream gateway are interchangeable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from neo.generate import SamplingParams
from neo_serving.tokens import ServedTokenizer


@dataclass
class EngineRequest:
    """One sequence to generate. ``n`` > 1 is several requests (seeds ``seed``, ``seed + 1`` …)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams  # max_new_tokens, sampling, stop_ids, seed
    logprobs: int | None = None  # None: none; k >= 0: the sampled token's logprob and the k most likely
    prompt_logprobs: int | None = None  # same, for every prompt token after the first (``echo``)


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (raw logits, before temperature and filters)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # the k most likely (id, logprob), best first


@dataclass
class EngineOutput:
    """What a request produced since its previous output (usually one token)."""

    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None  # one per token id when requested
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first output only; entry 0 is None
    finish_reason: str | None = None  # "stop" (a stop id was sampled, it is the last token) or "length"
    queue_time_s: float | None = None  # first output only: seconds queued before the engine took it


@dataclass
class ModelInfo:
    name: str  # the name clients send as ``model``
    version: str  # registry version, or "local" for a directory given on the command line
    path: Path  # checkpoint directory (tokenizer, chat template, neo.json)
    max_model_len: int  # prompt + generated tokens must fit
    created: int  # unix time the version was loaded
    owned_by: str = "neo"
    parent: str | None = None
    stage: str | None = None


@dataclass
class EngineStats:
    waiting: int = 0  # queued, not yet admitted
    running: int = 0  # holding a KV-cache row (or an upstream stream)
    healthy: bool = True
    extra: dict[str, float] = field(default_factory=dict)  # more gauges, exported as neo_engine_{key}
    counters: dict[str, float] = field(default_factory=dict)  # running totals, exported as neo_engine_{key}_total
    kv_cache_usage: float | None = None  # fraction of KV-cache rows in use (vLLM's kv_cache_usage_perc)
    prefix_cache_queries: int | None = None  # prompt tokens looked up in the prefix cache (None: no cache)
    prefix_cache_hits: int | None = None  # of those, tokens whose keys/values were reused
    error: str | None = None  # why the engine is not running (shown by /health)
    replicas: list[dict] | None = None  # upstream engines: each replica's url, state, counts (for /health)


@runtime_checkable
class Engine(Protocol):
    """A started engine serving one model version."""

    info: ModelInfo
    tokenizer: ServedTokenizer

    async def start(self) -> None:
        """Load weights / connect; called once by the model table before the first request."""

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream outputs until one has a finish_reason. Closing the iterator early aborts the request."""

    async def abort(self, request_id: str) -> None:
        """Stop generating for ``request_id`` and free what it holds; unknown ids are ignored."""

    def healthy(self) -> bool:
        """False when the engine can take no request (its loop died, or no upstream is healthy)."""

    def check_available(self) -> None:
        """Raise ``EngineUnavailableError`` saying why, when not ``healthy()`` (before a stream starts)."""

    def stats(self) -> EngineStats:
        """Queue length and running requests, for /metrics."""

    async def shutdown(self) -> None:
        """Stop after the running requests were aborted or finished; idempotent."""
