"""neo_ui.store and neo_ui.prompts on the machine's Redis: labels written once, the queue, the round marker."""

from __future__ import annotations

import json
import time

import pytest

from neo_ui.prompts import PromptQueue, make_prompt
from neo_ui.store import Pair, PreferenceStore, RoundMoved

from .records import record


@pytest.fixture
def store(rds, redis_prefix) -> PreferenceStore:
    return PreferenceStore(rds, redis_prefix)


@pytest.fixture
def queue(rds, redis_prefix) -> PromptQueue:
    return PromptQueue(rds, redis_prefix)


def test_a_label_is_written_once(store, rds, redis_prefix):
    first = record("t1", "a")
    assert store.save_label(first, labels_per_prompt=2) is True
    again = record("t1", "b")  # a double click, or a retried request, with the same task id
    assert store.save_label(again, labels_per_prompt=2) is False
    assert store.label("t1") == first
    assert rds.zcard(f"{redis_prefix}prefs:labels") == 1
    assert rds.hget(f"{redis_prefix}prefs:labeled", "prompt-p1") == "1"
    assert [r.id for r in store.iter_labels()] == ["t1"]


def test_two_annotators_keep_two_labels_and_close_the_prompt(store, queue, rds, redis_prefix):
    prompt = make_prompt({"prompt": "写一首诗 about the sea", "system": "You are Neo."}, "upload")
    queue.add(prompt)
    r1 = record("t1", "a", annotator="alice").model_copy(update={"prompt_id": prompt.id})
    r2 = record("t2", "b", annotator="bob").model_copy(update={"prompt_id": prompt.id})
    assert store.save_label(r1, 2) and queue.open_count() == 1
    assert queue.next_for("alice", 2) is None  # alice is done with it
    assert queue.next_for("bob", 2).id == prompt.id
    assert store.save_label(r2, 2) and queue.open_count() == 0  # two labels: out of the queue
    assert {r.annotator for r in store.iter_labels()} == {"alice", "bob"}
    assert rds.sismember(f"{redis_prefix}prefs:done:bob", prompt.id)


def test_labels_since_and_until(store):
    for i in range(3):
        store.save_label(record(f"t{i}", "a", pair=f"p{i}", minutes=i), 2)
    t1 = store.label("t1").created
    from datetime import datetime

    cut = datetime.fromisoformat(t1).timestamp()
    assert [r.id for r in store.iter_labels(since_ts=cut)] == ["t2"]
    assert [r.id for r in store.iter_labels(until_ts=cut)] == ["t0", "t1"]
    assert store.label_count() == 3 and store.label_count(since_ts=cut) == 1


def test_round_marker(store):
    assert store.last_round() == {} and store.since_last_round() is None
    marker = store.mark_round(labels=5, path="/tmp/round-001.jsonl", job="abc", at_ts=1000.5)
    assert marker["round"] == 1 and store.last_round() == marker
    assert store.mark_round(labels=2, path="x")["round"] == 2
    assert store.since_last_round() > 1000.5
    # a caller whose export started from round 1 may not mark: round 2 was marked since (labels would be lost)
    with pytest.raises(RoundMoved, match="moved from round 1 to 2"):
        store.mark_round(labels=3, path="y", at_ts=2000.0, expect_round=1)
    assert store.last_round()["round"] == 2 and store.last_round()["path"] == "x"
    assert store.mark_round(labels=3, path="y", at_ts=2000.0, expect_round=2)["round"] == 3


def test_pairs_are_kept_by_the_first_writer(store):
    rec = record("t1", "a")
    first = Pair(id="one", prompt_id="q", answers=[rec.answer_a, rec.answer_b])
    second = Pair(id="two", prompt_id="q", answers=[rec.answer_b, rec.answer_a])
    assert store.put_pair(first) == first
    assert store.put_pair(second) == first  # a concurrent sampler's pair is dropped


def test_tasks_and_pending(store):
    rec = record("t1", "a")
    pair = store.put_pair(Pair(id="pp", prompt_id="q", answers=[rec.answer_a, rec.answer_b]))
    task = store.create_task("alice", pair, (1, 0), ttl_s=60)
    assert store.task(task.id) == task and store.pending("alice") == task
    assert abs(task.shown_at - time.time()) < 5
    store.clear_pending("alice", task.id)
    assert store.pending("alice") is None


def test_persistence_warning_reflects_redis_config(store, rds):
    aof = rds.config_get("appendonly")["appendonly"]
    warning = store.persistence_warning()
    assert (warning is None) == (aof == "yes")
    if warning:
        assert "appendonly" in warning


# --- the prompt queue ------------------------------------------------------------------------------------
def test_upload_dedups_and_reports_bad_lines(queue):
    text = "\n".join([
        json.dumps({"prompt": "Hello <b>there</b>"}),
        json.dumps({"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                                 {"role": "user", "content": "写一首诗"}], "topic": "poetry"}),
        json.dumps({"prompt": "Hello <b>there</b>"}),  # duplicate
        "not json",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        json.dumps({"prompt": [{"role": "robot", "content": "x"}]}),
        "",
    ])
    report = queue.add_jsonl(text)
    assert (report.added, report.duplicates) == (2, 1)
    assert [e.split(":")[0] for e in report.errors] == ["line 4", "line 5", "line 6"]
    assert "end with a non-empty user turn" in report.errors[1]
    assert queue.open_count() == 2


def test_queue_is_fifo_and_skips_what_an_annotator_did(queue):
    queue.add_jsonl("\n".join(json.dumps({"prompt": f"prompt {i}"}) for i in range(3)))
    first = queue.next_for("alice", 2)
    assert first.messages[-1].content == "prompt 0"
    queue.mark_done("alice", first.id)
    assert queue.next_for("alice", 2).messages[-1].content == "prompt 1"
    assert queue.next_for("bob", 2).messages[-1].content == "prompt 0"


def test_system_prompt_and_meta(queue):
    prompt = make_prompt({"prompt": "hi", "system": "Be brief.", "topic": "x"}, "cli")
    assert [m.role for m in prompt.messages] == ["system", "user"]
    assert prompt.meta == {"topic": "x"} and prompt.source == "cli"
    assert prompt.id == make_prompt({"messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "hi"}]}, "upload").id
