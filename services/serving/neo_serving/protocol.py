"""The wire protocol: pydantic models only, in the shapes of OpenAI's API and vLLM's server.

Request fields follow the order of the OpenAI API reference
(https://platform.openai.com/docs/api-reference/chat/create, .../completions/create). Fields Neo adds
the way vLLM does (``top_k``, ``min_p``, ``repetition_penalty``, ``stop_token_ids`` …) sit in a
marked block. Unknown fields are accepted, as OpenAI clients send new ones, and logged. Cross-field
rules are validators, so bad input fails here with a 400 and never reaches an engine.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from neo.generate import SamplingParams
from neo.tokenizer import IM_END, IM_START

log = logging.getLogger(__name__)

#: Below this temperature sampling is greedy (as vLLM's ``_SAMPLING_EPS``): 1/T would overflow.
GREEDY_BELOW = 1e-5
#: Smallest top_p used: below it float32 cumulative sums drop every token (the limit is the same: top-1).
MIN_TOP_P = 1e-6
MAX_STOP_STRINGS = 16  # OpenAI allows 4; vLLM has no limit


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    """Requests: unknown fields are kept (``model_extra``) and logged, not rejected. Text that is not valid
    Unicode (a lone surrogate such as ``"\\ud800"``, which JSON can escape) is a 400 here: it can be neither
    tokenized nor written back as UTF-8."""

    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        if _has_lone_surrogate(value):
            raise ValueError(f"{info.field_name} is not valid Unicode (it contains a lone surrogate)")
        return value

    @model_validator(mode="after")
    def _log_unknown(self) -> OpenAIModel:
        if self.model_extra:
            log.info("%s: ignoring unknown field(s) %s", type(self).__name__, sorted(self.model_extra))
        return self


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list | tuple):
        return any(_has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingRequest(OpenAIModel):
    """Fields shared by chat and completions, with the rules that tie them together."""

    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="not supported: must be 0")
    logit_bias: dict[str, float] | None = Field(None, description="not supported: must be empty")
    n: int = Field(1, ge=1, le=128, description="choices per prompt")
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="not supported: must be 0")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, description="same seed, same output")
    stop: str | list[str] | None = Field(None, description="text that ends generation (cut, not included)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="0 = greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling; default 1 (off)")
    user: str | None = Field(None, max_length=512, description="end-user id (logged)")

    # --- Neo / vLLM extras ----------------------------------------------------------------------------
    top_k: int | None = Field(None, ge=-1, description="keep the k most likely tokens; 0 or -1 = off")
    min_p: float | None = Field(None, ge=0, le=1, description="drop tokens below min_p × p(best); 0 = off")
    repetition_penalty: float | None = Field(None, ge=0.01, le=10, description="CTRL penalty; 1 = off")
    stop_token_ids: list[int] | None = Field(None, description="token ids that end generation (kept in usage)")
    ignore_eos: bool = Field(False, description="do not stop at the model's end-of-sequence ids")
    return_tokens_as_token_ids: bool = Field(
        False, description="logprobs name tokens 'token_id:{id}' (vLLM; the gateway relies on it)")

    @model_validator(mode="after")
    def _check_sampling(self) -> SamplingRequest:
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty and presence_penalty are not supported; use repetition_penalty")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        stops = self.stop_strings
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(i < 0 for i in self.stop_token_ids or ()):
            raise ValueError("stop_token_ids must be >= 0")
        return self

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_sampling_params(self, max_new_tokens: int, eos_ids: tuple[int, ...], choice: int = 0) -> SamplingParams:
        """Engine parameters for choice ``choice`` (choice i of a seeded request uses ``seed + i``)."""
        temperature = 1.0 if self.temperature is None else self.temperature
        stop_ids = tuple(self.stop_token_ids or ()) + (() if self.ignore_eos else eos_ids)
        seed = None if self.seed is None else (self.seed + choice) % 2**64
        return SamplingParams(
            max_new_tokens=max_new_tokens, temperature=0.0 if temperature < GREEDY_BELOW else temperature,
            top_k=max(self.top_k or 0, 0), top_p=1.0 if self.top_p is None else max(self.top_p, MIN_TOP_P),
            min_p=self.min_p or 0.0, repetition_penalty=self.repetition_penalty or 1.0,
            stop_ids=tuple(dict.fromkeys(stop_ids)), seed=seed)


# --- chat -----------------------------------------------------------------------------------------------
class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _no_role_markers(self) -> ChatMessage:
        """ChatML's markers are control tokens: typed into a message they would fake a turn (a system prompt
        "from" the user), so they are refused, as OpenAI refuses its own special tokens in input."""
        parts = [self.name or ""] + ([self.content] if isinstance(self.content, str) else
                                     [part.text or "" for part in self.content or ()])
        for marker in (IM_START, IM_END):
            if any(marker in part for part in parts):
                raise ValueError(f"{self.role} message contains the control marker {marker!r}")
        return self

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type {part.type!r} are not supported (text only)")
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """https://platform.openai.com/docs/api-reference/chat/create"""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI; max_completion_tokens wins")
    top_logprobs: int | None = Field(None, ge=0, le=20)

    # --- Neo / vLLM extras ----------------------------------------------------------------------------
    add_generation_prompt: bool = Field(True, description="end the prompt with the assistant's turn opener")

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        for message in self.messages:
            message.text()  # raises on non-text parts
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def chat_messages(self) -> list[dict[str, Any]]:
        return [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in self.messages]


class CompletionRequest(SamplingRequest):
    """https://platform.openai.com/docs/api-reference/completions/create"""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, description="only best_of == n is supported")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(16, ge=0, description="OpenAI's default: 16")
    suffix: str | None = Field(None, description="not supported: must be null")

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (it must equal n)")
        if self.suffix is not None:
            raise ValueError("suffix is not supported")
        if self.prompt == "" or self.prompt == [] or any(p in ("", []) for p in self.prompts):
            raise ValueError("prompt must not be empty")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


# --- responses ------------------------------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = Field(None, description="vLLM: the stop string or id that matched")


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: int | str | None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


# --- models, tokenizer, admin ----------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "neo"
    root: str | None = Field(None, description="checkpoint directory on the server (shown to admins only)")
    parent: str | None = None
    max_model_len: int | None = None
    version: str | None = Field(None, description="Neo: registry version served under this name")
    stage: str | None = Field(None, description="Neo: training stage of the checkpoint")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(OpenAIModel):
    """vLLM's /tokenize: either ``prompt`` (text) or ``messages`` (rendered with the chat template)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = Field(True, description="prompt: add BOS as the tokenizer's config says")
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        for message in self.messages or ():
            message.text()
        return self


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIModel):
    model: str | None = None
    tokens: list[int] = Field(description="token ids")


class DetokenizeResponse(BaseModel):
    prompt: str


class ReloadRequest(OpenAIModel):
    """Switch ``model`` to a checkpoint: ``path``, else the registry's latest version of that name."""

    model: str
    path: str | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorInfo
