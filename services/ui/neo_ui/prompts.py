"""The labeling queue: prompts uploaded as JSONL (or taken from chat logs), handed out one at a time.

Redis keys, under the settings prefix::

    {prefix}prefs:prompt:{id}        string  JSON Prompt (id = hash of its messages: re-uploads are no-ops)
    {prefix}prefs:queue              zset    open prompts, id -> upload order (FIFO)
    {prefix}prefs:queue:seq          string  last upload order handed out
    {prefix}prefs:labeled            hash    prompt id -> labels so far (the label write increments it)
    {prefix}prefs:done:{annotator}   set     prompts this annotator labeled or skipped

An annotator gets the oldest open prompt they have not done. A prompt leaves the queue when it has
``labels_per_prompt`` labels, so several annotators label each prompt (for agreement).

Accepted JSONL lines: ``{"prompt": "text"}``, ``{"prompt": [messages]}`` or ``{"messages": [messages]}``
(ending with a user turn), each with an optional ``"system"`` string; ``"text"`` is read as ``"prompt"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from neo.schemas import PromptMessage

log = logging.getLogger(__name__)

PAGE = 200  # queue entries read per round trip while looking for an annotator's next prompt

# KEYS: prompt key, queue zset, seq counter; ARGV: prompt JSON, prompt id
_ADD = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
  redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
  return 1
end
return 0
"""


class Prompt(BaseModel):
    """A conversation to be answered twice and labeled; it ends with a user turn."""

    id: str
    messages: list[PromptMessage] = Field(min_length=1)
    source: str = "upload"
    meta: dict[str, Any] = Field(default_factory=dict)

    def chat(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]


@dataclass
class ImportReport:
    """What an upload did: every line is added, a duplicate, or an error with its line number."""

    added: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.added} prompts added, {self.duplicates} already queued, {len(self.errors)} bad lines"
        return text + (": " + "; ".join(self.errors[:5]) if self.errors else "")


def prompt_id(messages: list[PromptMessage]) -> str:
    """Content hash of the conversation: the same prompt uploaded twice is one prompt."""
    canonical = json.dumps([m.model_dump() for m in messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def make_prompt(row: dict[str, Any], source: str) -> Prompt:
    """A JSONL row as a Prompt; raises ValueError naming what is wrong."""
    if not isinstance(row, dict):
        raise ValueError("a line must be a JSON object")
    raw = row.get("messages", row.get("prompt", row.get("text")))
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise ValueError("needs 'prompt' (text or messages) or 'messages'")
    try:
        messages = [PromptMessage.model_validate(m) for m in raw]
    except ValidationError as exc:
        raise ValueError(f"bad message: {exc.errors()[0]['msg']}") from exc
    if isinstance(row.get("system"), str) and row["system"] and messages[0].role != "system":
        messages.insert(0, PromptMessage(role="system", content=row["system"]))
    if messages[-1].role != "user" or not messages[-1].content.strip():
        raise ValueError("the conversation must end with a non-empty user turn")
    meta = {k: v for k, v in row.items() if k not in ("messages", "prompt", "text", "system")}
    return Prompt(id=prompt_id(messages), messages=messages, source=source, meta=meta)


class PromptQueue:
    """The queue above, on one Redis client (``decode_responses=True``) and key prefix."""

    def __init__(self, redis: Any, prefix: str):
        self.redis, self.prefix = redis, prefix
        self._add = redis.register_script(_ADD)

    def key(self, *parts: str) -> str:
        return ":".join((f"{self.prefix}prefs", *parts))

    def add(self, prompt: Prompt) -> bool:
        """Queue ``prompt``; False when it was queued before."""
        added = self._add(keys=[self.key("prompt", prompt.id), self.key("queue"), self.key("queue", "seq"),
                                self.key("queue", "sources")],
                          args=[prompt.model_dump_json(), prompt.id, prompt.source])
        return bool(added)

    def _add_row(self, row: Any, source: str, where: str, report: ImportReport) -> None:
        try:
            prompt = make_prompt(row, source)
        except ValueError as exc:
            report.errors.append(f"{where}: {exc}")
            return
        if self.add(prompt):
            report.added += 1
        else:
            report.duplicates += 1

    def add_rows(self, rows: Iterable[dict[str, Any]], source: str) -> ImportReport:
        """Queue prompt rows (dicts as in a JSONL line); bad rows are reported by position."""
        report = ImportReport()
        for n, row in enumerate(rows, 1):
            self._add_row(row, source, f"row {n}", report)
        return report

    def add_jsonl(self, text: str, source: str = "upload") -> ImportReport:
        """Queue every line of a JSONL text; bad lines are reported with their line number, not dropped silently."""
        report = ImportReport()
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                report.errors.append(f"line {n}: not JSON ({exc.msg})")
                continue
            self._add_row(row, source, f"line {n}", report)
        log.info("prompt upload (%s): %s", source, report.summary())
        return report

    def get(self, pid: str) -> Prompt | None:
        raw = self.redis.get(self.key("prompt", pid))
        return Prompt.model_validate_json(raw) if raw else None

    def open_count(self) -> int:
        """Prompts still waiting for labels."""
        return int(self.redis.zcard(self.key("queue")))

    def sources(self) -> dict[str, int]:
        """Prompts ever queued, by where they came from (``seed`` file, ``chat``, ``upload``, ...), most first."""
        counts = {name: int(n) for name, n in self.redis.hgetall(self.key("queue", "sources")).items()}
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def next_for(self, annotator: str, labels_per_prompt: int) -> Prompt | None:
        """The oldest open prompt ``annotator`` has not labeled or skipped, or None."""
        start = 0
        while True:
            ids = self.redis.zrange(self.key("queue"), start, start + PAGE - 1)
            if not ids:
                return None
            counts = self.redis.hmget(self.key("labeled"), ids)
            done = self.redis.smismember(self.key("done", annotator), ids)
            for pid, count, seen in zip(ids, counts, done, strict=True):
                if not seen and int(count or 0) < labels_per_prompt:
                    prompt = self.get(pid)
                    if prompt is not None:
                        return prompt
                    log.warning("queued prompt %s has no record: skipped", pid)
            start += PAGE

    def mark_done(self, annotator: str, pid: str) -> None:
        """``annotator`` will not get ``pid`` again (a skip; labels do this in their own write)."""
        self.redis.sadd(self.key("done", annotator), pid)
