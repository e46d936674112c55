"""The labeling logic against real serving and Redis: blinded pairs, written-once labels, two annotators."""

from __future__ import annotations

import json
import random

import pytest

from neo_ui.client import ServingClient, ServingUnavailable
from neo_ui.labeling import Labeler, LabelError
from neo_ui.prompts import PromptQueue
from neo_ui.stats import compute
from neo_ui.store import PreferenceStore

from .conftest import make_settings


def labeler_for(settings, rds, seed: int = 0) -> Labeler:
    return Labeler(settings, PreferenceStore(rds, settings.redis_prefix), PromptQueue(rds, settings.redis_prefix),
                   ServingClient(settings), rng=random.Random(seed))


@pytest.fixture
def labeler(settings, rds) -> Labeler:
    lab = labeler_for(settings, rds)
    lab.prompts.add_jsonl("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prompt": "写一首关于春天的短诗", "system": "You are Neo."}, {"prompt": "Say hello"}]))
    return lab


def test_a_pair_is_blinded_and_labeled_once(labeler, rds, settings):
    view = labeler.next_task("alice")
    assert view.prompt[-1]["content"] == "写一首关于春天的短诗" and view.prompt[0]["role"] == "system"
    assert view.answer_a != view.answer_b
    assert labeler.next_task("alice").task_id == view.task_id  # unlabeled: a reload shows the same task
    first = labeler.submit("alice", view.task_id, "A better", comment=" nice ", edit="")
    again = labeler.submit("alice", view.task_id, "B better")  # a double click
    assert first.created and not again.created and again.record == first.record
    rec = first.record
    assert rec.answer_a.text == view.answer_a and rec.choice == "a" and rec.comment == "nice"
    assert {rec.answer_a.model_version, rec.answer_b.model_version} == {"tiny:local", "tiny2:local"}
    assert rec.sampling["max_tokens"] == settings.label_max_tokens and len(rec.sampling["seeds"]) == 2
    assert rec.time_spent_s >= 0 and rec.annotator == "alice" and rec.edited is None
    assert rds.zcard(f"{settings.redis_prefix}prefs:labels") == 1
    stored = json.loads(rds.get(f"{settings.redis_prefix}prefs:label:{view.task_id}"))
    assert stored["id"] == view.task_id and stored["choice"] == "a"


def test_two_annotators_same_pair_and_agreement(labeler):
    a = labeler.next_task("alice")
    b = labeler.next_task("bob")
    assert a.prompt == b.prompt and a.task_id != b.task_id
    assert {a.answer_a, a.answer_b} == {b.answer_a, b.answer_b}  # the same two answers, maybe swapped
    ra = labeler.submit("alice", a.task_id, "A better").record
    pick_same = "A better" if b.answer_a == a.answer_a else "B better"
    rb = labeler.submit("bob", b.task_id, pick_same).record
    assert ra.pair_id == rb.pair_id and ra.id != rb.id
    stats = compute(labeler.store.iter_labels())
    assert stats.agreement == {"shared_prompts": 1, "comparisons": 1, "agreements": 1, "rate": 1.0}
    assert labeler.prompts.open_count() == 1  # the first prompt has its two labels


def test_edit_skip_and_end_of_queue(labeler):
    view = labeler.next_task("carol")
    assert labeler.better_text("carol", view.task_id, "B better") == view.answer_b
    rec = labeler.submit("carol", view.task_id, "B better", edit="A rewritten answer 更好").record
    assert rec.edited == "A rewritten answer 更好"
    unchanged = labeler.next_task("carol")
    rec2 = labeler.submit("carol", unchanged.task_id, "Tie", edit="ignored for ties").record
    assert rec2.edited is None and rec2.choice == "tie"
    assert labeler.next_task("carol") is None
    view = labeler.next_task("dave")
    labeler.skip("dave", view.task_id)
    assert labeler.next_task("dave").prompt != view.prompt


def test_bad_labels_are_refused(labeler):
    view = labeler.next_task("alice")
    with pytest.raises(LabelError, match="Pick one of"):
        labeler.submit("alice", view.task_id, "C better")
    with pytest.raises(LabelError, match="shown to alice"):
        labeler.submit("mallory", view.task_id, "A better")
    with pytest.raises(LabelError, match="no longer open"):
        labeler.submit("alice", "no-such-task", "A better")
    with pytest.raises(LabelError, match="Sign in first"):
        labeler.next_task("  ")


def test_one_model_twice_and_missing_models(settings, rds):
    lab = labeler_for(settings.model_copy(update={"label_models": ["tiny2"]}), rds)
    lab.prompts.add_jsonl('{"prompt": "hi"}')
    view = lab.next_task("alice")
    rec = lab.submit("alice", view.task_id, "Both bad").record
    assert rec.answer_a.model_version == rec.answer_b.model_version == "tiny2:local"
    assert rec.answer_a.id != rec.answer_b.id
    lab = labeler_for(settings.model_copy(update={"label_models": ["gone"]}), rds)
    lab.prompts.add_jsonl('{"prompt": "another"}')
    with pytest.raises(ServingUnavailable, match="does not serve gone"):
        lab.next_task("alice")


def test_serving_down_while_sampling(tmp_path, redis_prefix, rds):
    lab = labeler_for(make_settings(tmp_path, redis_prefix, "http://127.0.0.1:9"), rds)
    lab.prompts.add_jsonl('{"prompt": "hi"}')
    with pytest.raises(ServingUnavailable, match="Cannot reach"):
        lab.next_task("alice")
