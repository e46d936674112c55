"""Chat turns and thumbs up/down from the chat app, in Redis.

Keys, under the settings prefix::

    {prefix}chat:log        list   JSON ChatTurnLog, newest first, capped at ``chat_log_max``
    {prefix}chat:feedback   hash   feedback id -> JSON Feedback (a second click on the same answer replaces
                                   the first: the id is the session, the answer's position and its text)

The labeling queue can take its prompts from the log (``prompts_from_log``).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

from neo.schemas import PromptMessage

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ChatTurnLog(BaseModel):
    """One answered turn: the conversation sent, the answer, and how it was sampled."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    at: str = Field(default_factory=_now)
    model: str
    messages: list[PromptMessage] = Field(description="what was sent (system prompt first, last turn the user's)")
    answer: str
    sampling: dict[str, Any] = Field(default_factory=dict)
    finish: Literal["done", "stopped"] = "done"
    user: str | None = Field(default=None, description="the signed-in account (None: the chat has no logins)")


class Feedback(BaseModel):
    """A thumbs up or down on one chat answer."""

    id: str
    at: str = Field(default_factory=_now)
    rating: Literal["up", "down"]
    model: str | None = None
    messages: list[PromptMessage] = Field(description="the conversation before the rated answer")
    answer: str
    session: str | None = None
    user: str | None = Field(default=None, description="the signed-in account (None: the chat has no logins)")


def feedback_id(session: str | None, index: int, answer: str) -> str:
    """The same answer rated twice in one session keeps one record (the last rating wins)."""
    return hashlib.sha256(f"{session}\x00{index}\x00{answer}".encode()).hexdigest()[:16]


def prompt_row(messages: list[dict[str, str]], model: str | None, chat_turn: str | None = None) -> dict[str, Any]:
    """A chat conversation (system prompt first, last turn the user's) as a row for the labeling queue
    (``PromptQueue.add_rows(rows, source="chat")``): the queue's id is a hash of the messages, so the same
    conversation sent from the chat app and taken from the log is one prompt."""
    return {"messages": messages, "chat_model": model} | ({"chat_turn": chat_turn} if chat_turn else {})


class ChatLog:
    """The chat log and feedback on one Redis client (``decode_responses=True``) and prefix."""

    def __init__(self, redis: Any, prefix: str, max_turns: int = 10_000, enabled: bool = True):
        self.redis, self.prefix, self.max_turns, self.enabled = redis, prefix, max_turns, enabled

    def key(self, *parts: str) -> str:
        return ":".join((f"{self.prefix}chat", *parts))

    def log_turn(self, turn: ChatTurnLog) -> None:
        """Append a turn (newest first). A Redis outage costs the log entry, not the chat: it is logged."""
        if not self.enabled:
            return
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.lpush(self.key("log"), turn.model_dump_json())
            pipe.ltrim(self.key("log"), 0, self.max_turns - 1)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("chat turn %s not logged: Redis unavailable (%s)", turn.id, exc)

    def recent(self, n: int = 100) -> list[ChatTurnLog]:
        """The ``n`` newest logged turns, newest first."""
        return [ChatTurnLog.model_validate_json(raw) for raw in self.redis.lrange(self.key("log"), 0, n - 1)]

    def prompts_from_log(self, n: int = 100) -> list[dict[str, Any]]:
        """The newest ``n`` logged conversations as prompt rows for the labeling queue."""
        return [prompt_row([m.model_dump() for m in turn.messages], turn.model, turn.id) for turn in self.recent(n)]

    def save_feedback(self, feedback: Feedback) -> None:
        self.redis.hset(self.key("feedback"), feedback.id, feedback.model_dump_json())
        log.info("feedback %s: %s on a %s answer", feedback.id, feedback.rating, feedback.model)

    def feedback(self) -> list[Feedback]:
        return [Feedback.model_validate_json(raw) for raw in self.redis.hvals(self.key("feedback"))]
