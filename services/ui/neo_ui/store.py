"""Durable preference labels in Redis: answer pairs, shown tasks, labels written once, the round marker.

Redis keys, under the settings prefix (default ``neo:``)::

    {prefix}prefs:pair:{prompt_id}     string  JSON Pair: the two answers every annotator of the prompt sees
    {prefix}prefs:task:{task_id}       string  JSON Task: a pair shown to one annotator (order, time); expires
    {prefix}prefs:pending:{annotator}  string  the task shown and not yet labeled (a reload shows it again)
    {prefix}prefs:label:{id}           string  JSON neo.schemas.PreferenceRecord; id = task id; SET NX: once
    {prefix}prefs:labels               zset    label id -> created (unix seconds)
    {prefix}prefs:last_round           hash    round, at, at_ts, labels, path, job: the last DPO round's marker
    {prefix}prefs:round_in_progress    hash    the same fields plus expect_round: a round queued from the UI whose
                                               job has not finished; the marker moves when it is done

A label is written by one Lua script: the record (only if absent), its index entry, the prompt's label
count and the annotator's done set, atomically. A second submit of the same task (a double click, a
retry after a timeout) finds the record and changes nothing; two annotators have two tasks, so both
labels are kept. The UI holds nothing a restart could lose: it writes the label before it answers the
click. Redis must persist it: ``docker compose`` runs Redis with ``--appendonly yes`` (AOF, fsync every
second); the UI logs a warning at start when persistence is off.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, Field

from neo.schemas import PreferenceAnswer, PreferenceRecord

log = logging.getLogger(__name__)
_ROUND_NUMBERS = ("round", "labels", "at_ts", "expect_round")  # JSON-encoded fields of the round hashes

BATCH = 500  # records fetched per MGET when reading every label

# KEYS: record, labels zset, prompt label counts, annotator done set, queue zset
# ARGV: record JSON, created (unix s), label id, prompt id, labels per prompt
_SAVE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  local n = redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
  redis.call('SADD', KEYS[4], ARGV[4])
  if n >= tonumber(ARGV[5]) then redis.call('ZREM', KEYS[5], ARGV[4]) end
  return 1
end
return 0
"""


class RoundMoved(RuntimeError):
    """The round marker is not where the caller's export left it."""


class Pair(BaseModel):
    """Two answers to one prompt, sampled once and shown to every annotator of it."""

    id: str
    prompt_id: str
    answers: list[PreferenceAnswer] = Field(min_length=2, max_length=2)
    sampling: dict[str, Any] = Field(default_factory=dict)


class Task(BaseModel):
    """A pair shown to one annotator: which answer is A (random), and when it was shown."""

    id: str
    annotator: str
    prompt_id: str
    pair_id: str
    order: tuple[int, int] = Field(description="answers[order[0]] is shown as A, answers[order[1]] as B")
    shown_at: float = Field(description="unix seconds")


def _after(ts: float | None) -> str:
    """A ZRANGEBYSCORE lower bound: strictly after ``ts``, or everything."""
    return "-inf" if ts is None else f"({ts!r}"


class PreferenceStore:
    """Pairs, tasks and labels on one Redis client (``decode_responses=True``) and key prefix."""

    def __init__(self, redis: Any, prefix: str):
        self.redis, self.prefix = redis, prefix
        self._save = redis.register_script(_SAVE)

    def key(self, *parts: str) -> str:
        return ":".join((f"{self.prefix}prefs", *parts))

    # --- pairs and tasks ---------------------------------------------------------------------------------
    def pair(self, prompt_id: str) -> Pair | None:
        raw = self.redis.get(self.key("pair", prompt_id))
        return Pair.model_validate_json(raw) if raw else None

    def put_pair(self, pair: Pair) -> Pair:
        """Keep ``pair`` unless another process stored one for the prompt first; returns the one kept."""
        if self.redis.set(self.key("pair", pair.prompt_id), pair.model_dump_json(), nx=True):
            return pair
        kept = self.pair(pair.prompt_id)
        assert kept is not None, "a pair key that refused SET NX must exist"
        return kept

    def create_task(self, annotator: str, pair: Pair, order: tuple[int, int], ttl_s: int) -> Task:
        task = Task(id=uuid.uuid4().hex, annotator=annotator, prompt_id=pair.prompt_id, pair_id=pair.id,
                    order=order, shown_at=time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("task", task.id), task.model_dump_json(), ex=ttl_s)
        pipe.set(self.key("pending", annotator), task.id, ex=ttl_s)
        pipe.execute()
        return task

    def task(self, task_id: str) -> Task | None:
        raw = self.redis.get(self.key("task", task_id))
        return Task.model_validate_json(raw) if raw else None

    def pending(self, annotator: str) -> Task | None:
        """The task ``annotator`` was shown and has not labeled (or skipped) yet."""
        task_id = self.redis.get(self.key("pending", annotator))
        if not task_id or self.redis.exists(self.key("label", task_id)):
            return None
        return self.task(task_id)

    def clear_pending(self, annotator: str, task_id: str) -> None:
        if self.redis.get(self.key("pending", annotator)) == task_id:
            self.redis.delete(self.key("pending", annotator))

    # --- labels ------------------------------------------------------------------------------------------
    def save_label(self, record: PreferenceRecord, labels_per_prompt: int) -> bool:
        """Write ``record`` once. True if written now; False if a label with its id already existed."""
        created = datetime.fromisoformat(record.created).timestamp()
        written = self._save(
            keys=[self.key("label", record.id), self.key("labels"), self.key("labeled"),
                  self.key("done", record.annotator), self.key("queue")],
            args=[record.model_dump_json(), created, record.id, record.prompt_id, labels_per_prompt])
        if written:
            self.clear_pending(record.annotator, record.id)
            log.info("label %s by %s: %s (prompt %s)", record.id, record.annotator, record.choice, record.prompt_id)
        return bool(written)

    def label(self, label_id: str) -> PreferenceRecord | None:
        raw = self.redis.get(self.key("label", label_id))
        return PreferenceRecord.model_validate_json(raw) if raw else None

    def label_count(self, since_ts: float | None = None) -> int:
        """Labels created after ``since_ts`` (all when None)."""
        return int(self.redis.zcount(self.key("labels"), _after(since_ts), "+inf"))

    def iter_labels(self, since_ts: float | None = None, until_ts: float | None = None) -> Iterator[PreferenceRecord]:
        """Labels created after ``since_ts`` and up to ``until_ts`` (when given), oldest first."""
        ids = self.redis.zrangebyscore(self.key("labels"), _after(since_ts), "+inf" if until_ts is None else until_ts)
        for start in range(0, len(ids), BATCH):
            chunk = ids[start:start + BATCH]
            for label_id, raw in zip(chunk, self.redis.mget([self.key("label", i) for i in chunk]), strict=True):
                if raw is None:
                    log.error("label %s is indexed but its record is missing", label_id)
                    continue
                yield PreferenceRecord.model_validate_json(raw)

    # --- DPO rounds ----------------------------------------------------------------------------------------
    def last_round(self) -> dict[str, Any]:
        """The last round's marker (empty before the first round)."""
        raw = self.redis.hgetall(self.key("last_round"))
        return {k: json.loads(v) if k in _ROUND_NUMBERS else v for k, v in raw.items()}

    def mark_round(self, labels: int, path: str, job: str | None = None, at_ts: float | None = None,
                   expect_round: int | None = None) -> dict[str, Any]:
        """Record that a DPO round took the labels up to ``at_ts`` (default: now); returns the marker.

        ``expect_round``: the round the caller's export started from; if another round was marked since (the
        UI's button while a CLI round trained), nothing is written and ``RoundMoved`` says so, as the labels
        between the two cut-offs would otherwise be counted twice or never.
        """
        at_ts = time.time() if at_ts is None else at_ts
        key = self.key("last_round")
        with self.redis.pipeline() as pipe:
            pipe.watch(key)  # the marker is read and written as one transaction
            current = int(json.loads(pipe.hget(key, "round") or "0"))
            if expect_round is not None and current != expect_round:
                pipe.unwatch()
                raise RoundMoved(f"the labels' round marker moved from round {expect_round} to {current} while this "
                                 "round ran: not marking it (export again with --since-last-round)")
            marker = {"round": current + 1, "labels": labels, "path": path, "job": job or "", "at_ts": at_ts,
                      "at": datetime.fromtimestamp(at_ts, UTC).isoformat()}
            pipe.multi()
            pipe.hset(key, mapping={k: json.dumps(v) if k in _ROUND_NUMBERS else v for k, v in marker.items()})
            try:
                pipe.execute()
            except redis.exceptions.WatchError as exc:
                raise RoundMoved("another DPO round was marked at the same moment: not marking this one") from exc
        log.info("DPO round %d marked: %d labels, %s", marker["round"], labels, path)
        return marker

    def round_in_progress(self) -> dict[str, Any]:
        """A round queued from the UI and not settled yet (its job not done): empty when there is none."""
        raw = self.redis.hgetall(self.key("round_in_progress"))
        return {k: json.loads(v) if k in _ROUND_NUMBERS else v for k, v in raw.items()}

    def start_round(self, round_no: int, labels: int, path: str, job: str, at_ts: float) -> dict[str, Any]:
        """Record a queued round (the marker itself moves only when its job is done: ``mark_round``)."""
        pending = {"round": round_no, "labels": labels, "path": path, "job": job, "at_ts": at_ts,
                   "at": datetime.fromtimestamp(at_ts, UTC).isoformat(), "expect_round": round_no - 1}
        key = self.key("round_in_progress")
        with self.redis.pipeline() as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={k: json.dumps(v) if k in _ROUND_NUMBERS else v for k, v in pending.items()})
            pipe.execute()
        return pending

    def end_round_in_progress(self, job: str) -> None:
        """Forget the round in progress if it is still ``job``'s (settled, or its job record is gone)."""
        key = self.key("round_in_progress")
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            if pipe.hget(key, "job") != job:
                pipe.unwatch()
                return
            pipe.multi()
            pipe.delete(key)
            try:
                pipe.execute()
            except redis.exceptions.WatchError:
                log.info("round in progress changed while ending job %s's: left as it is", job)

    def current_round(self) -> dict[str, Any]:
        """What the live panel follows: the round in progress, else the last marked round."""
        return self.round_in_progress() or self.last_round()

    def since_last_round(self) -> float | None:
        """Unix time of the last round's marker, or None before the first round."""
        return self.last_round().get("at_ts")

    # --- Redis health --------------------------------------------------------------------------------------
    def persistence_warning(self) -> str | None:
        """A warning when this Redis would lose labels on restart (AOF off) or cannot be reached, else None."""
        try:
            aof = self.redis.config_get("appendonly").get("appendonly")
        except redis.exceptions.ResponseError as exc:  # managed Redis may forbid CONFIG: then we cannot tell
            log.info("cannot read Redis persistence settings: %s", exc)
            return None
        except redis.exceptions.RedisError as exc:
            return f"Redis is unreachable ({exc}): labeling and chat logs fail until it is back."
        if aof != "yes":
            return ("Redis runs without AOF (appendonly no): labels written since the last RDB snapshot are lost "
                    "if Redis restarts. Run it with --appendonly yes, as compose.yaml does.")
        return None
