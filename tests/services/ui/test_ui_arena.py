"""The arena against real serving and Redis: a blind battle of two served versions, the vote stored as a
preference pair (in the DPO export) and as a battle (on the leaderboard); the newest-vs-parent match-up; the
live round panel's reading of a job hash, metrics and the registry; the plots' data."""

from __future__ import annotations

import json
import random

from neo.registry import ModelRegistry
from neo_ui.arena import Arena, Contender, arena_prompt, standings_rows
from neo_ui.client import ServedModel, ServingClient
from neo_ui.export import export
from neo_ui.jobs import TrainerQueue, progress_markdown, round_progress
from neo_ui.labeling import Labeler
from neo_ui.plots import agreement_frame, dpo_curves, labels_per_day, win_rate_by_version
from neo_ui.prompts import PromptQueue
from neo_ui.store import PreferenceStore

from .records import record


def test_a_vote_is_a_pair_and_a_battle_and_moves_the_leaderboard(settings, rds, tmp_path):
    store = PreferenceStore(rds, settings.redis_prefix)
    client = ServingClient(settings)
    labeler = Labeler(settings, store, PromptQueue(rds, settings.redis_prefix), client, rng=random.Random(3))
    arena = Arena(client, ModelRegistry(rds, settings.redis_prefix))
    first, second = arena.default_matchup()
    assert {first, second} == {"tiny", "tiny2"}
    for i in range(3):  # tiny2 wins every battle, whichever side it is shown on
        view = labeler.battle("alice", arena_prompt(f"Say hello {i}"), arena.pick("tiny", "tiny2"))
        assert view.answer_a and view.answer_b
        task = store.task(view.task_id)
        winner = "A better" if task.order[0] == 1 else "B better"
        result = labeler.submit("alice", view.task_id, winner)
        assert result.created and result.record.source == "arena"
        assert {result.record.answer_a.model_version, result.record.answer_b.model_version} == \
            {"tiny:local", "tiny2:local"}
        assert result.record.chosen.model_version == "tiny2:local"
    assert PromptQueue(rds, settings.redis_prefix).open_count() == 0  # battles never enter the labeling queue

    report = export(store, tmp_path / "prefs.jsonl")
    assert report.rows == 3  # each vote is a DPO pair
    board = arena.board(store.iter_labels(), rounds=20)
    assert [s.version for s in board] == ["tiny2:local", "tiny:local"] and board[0].battles == 3
    assert board[0].rating > 1000 > board[1].rating
    rows = standings_rows(board)
    assert rows[0]["rank"] == 1 and rows[0]["win rate"] == "100%"


def test_default_matchup_is_the_newest_version_against_its_parent(settings, rds):
    arena = Arena(ServingClient(settings), ModelRegistry(rds, settings.redis_prefix))
    contenders = [Contender(ServedModel("chat", version="v3"), "chat:v2"),
                  Contender(ServedModel("chat:v1", version="v1")),
                  Contender(ServedModel("chat:v2", version="v2"), "chat:v1")]
    assert arena.default_matchup(contenders) == ("chat", "chat:v2")
    assert arena.default_matchup(contenders[1:2]) is None
    assert arena.default_matchup([Contender(ServedModel("x")), Contender(ServedModel("y"))]) == ("x", "y")


def test_round_progress_running_done_and_failed(settings, rds, tmp_path, checkpoints):
    store = PreferenceStore(rds, settings.redis_prefix)
    queue, registry = TrainerQueue(settings, rds), ModelRegistry(rds, settings.redis_prefix)
    client = ServingClient(settings)
    assert "No DPO round" in progress_markdown(round_progress(store, queue, registry, client))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "job.log").write_text("INFO neo_trainer.stages.dpo: DPO: 12 pairs, 10 steps of 4 pairs, beta 0.1\n")
    job = "job1"
    key = f"{settings.redis_prefix}train:job:{job}"
    rds.hset(key, mapping={"id": job, "kind": "dpo", "state": "running", "run_dir": str(run_dir), "step": 3,
                           "loss": 0.6931})
    store.mark_round(labels=12, path="x.jsonl", job=job)
    progress = round_progress(store, queue, registry, client)
    text = progress_markdown(progress)
    assert (progress.step, progress.total) == (3, 10) and "step **3/10**" in text and "loss 0.6931" in text

    base = registry.register("tiny", checkpoints["tiny"], stage="sft")
    new = registry.register("tiny", checkpoints["tiny2"], stage="dpo", parent=base.ref)
    rds.hset(key, mapping={"state": "done", "step": 10, "export_dir": str(checkpoints["tiny2"])})
    progress = round_progress(store, queue, registry, client)
    assert progress.registered == new.ref and progress.parent == base.ref and not progress.battle_ready
    shown = progress_markdown(progress)
    assert f"New version **{new.ref}**" in shown and "Not served yet" in shown

    rds.hset(key, mapping={"state": "failed", "error": "ValueError: no preference pairs"})
    text = progress_markdown(round_progress(store, queue, registry, client))
    assert "The round failed" in text and "no preference pairs" in text
    queue.close()


def test_plot_frames():
    labels = [record("1", "a", annotator="alice", pair="p1", versions=("m:v1", "m:v2")),
              record("2", "b", annotator="bob", pair="p1", versions=("m:v1", "m:v2"), minutes=60 * 24),
              record("3", "b", annotator="bob", pair="p2", versions=("m:v2", "m:v3"))]
    per_day = labels_per_day(labels)
    assert per_day["labels"].sum() == 3 and per_day["day"].nunique() == 2
    rates = win_rate_by_version(labels)
    assert list(dict.fromkeys(rates["version"])) == ["m:v1", "m:v2", "m:v3"]
    v2 = rates[(rates.version == "m:v2")].set_index("series")["value"]
    assert v2["95% low"] <= v2["win rate"] == 0.3333 <= v2["95% high"]  # lost, won, lost
    agree = agreement_frame(labels)
    assert agree.iloc[0].to_dict() == {"annotators": "alice & bob", "agreement": 0.0, "shared": 1}
    metrics = [json.loads(json.dumps({"step": s, "loss": 0.7 - s / 100, "rewards/margins": s / 10,
                                      "rewards/accuracies": 0.5})) for s in (1, 2)]
    curves = dpo_curves(metrics)
    assert len(curves) == 6 and set(curves["metric"]) == {"loss", "reward margin", "accuracy"}
