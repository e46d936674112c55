"""neo_ui.export and ``neo prefs``: TRL preference JSONL, flags for ties/both-bad, edits, the round marker."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from neo.schemas import PreferencePair
from neo_ui.cli import prefs_app
from neo_ui.export import export, to_pair, to_pairs
from neo_ui.prompts import PromptQueue
from neo_ui.store import PreferenceStore

from .records import record


@pytest.fixture
def store(rds, redis_prefix) -> PreferenceStore:
    s = PreferenceStore(rds, redis_prefix)
    for i, choice in enumerate(["a", "b", "tie", "both_bad"]):
        s.save_label(record(f"t{i}", choice, pair=f"p{i}", minutes=i), 2)
    return s


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_conversational_rows():
    row = to_pair(record("t1", "b", pair="p", swap=True))  # B shown = answer 0
    assert row.prompt[-1].content == "写一首诗 about the sea" and row.prompt[0].role == "system"
    assert row.chosen[0].model_dump() == {"role": "assistant", "content": "answer 0 of p"}
    assert row.rejected[0].content == "answer 1 of p"
    assert (row.chosen_model, row.rejected_model, row.choice) == ("m:v1", "m:v2", "b")


def test_text_rows_and_edits():
    rec = record("t1", "a", edited="a better answer")
    row = to_pair(rec, fmt="text")
    assert (row.prompt, row.chosen, row.rejected, row.edited) == ("写一首诗 about the sea", "a better answer",
                                                                   rec.answer_b.text, True)
    assert to_pair(rec, fmt="text", use_edits=False).chosen == rec.answer_a.text


def test_ties_and_both_bad_are_out_unless_kept():
    records = [record("1", "a"), record("2", "tie"), record("3", "both_bad")]
    rows, skipped = to_pairs(records)
    assert [r.id for r in rows] == ["1"] and skipped == {"ties": 1, "both_bad": 1}
    rows, skipped = to_pairs(records, keep_ties=True, keep_both_bad=True)
    assert [r.choice for r in rows] == ["a", "tie", "both_bad"] and not skipped


def test_export_file_and_round(store, tmp_path):
    report = export(store, tmp_path / "out" / "prefs.jsonl")
    rows = read(report.path)
    assert [r["id"] for r in rows] == ["t0", "t1"] and report.skipped == {"ties": 1, "both_bad": 1}
    for r in rows:
        PreferencePair.model_validate(r)
        assert {"prompt", "chosen", "rejected"} <= set(r)
    marked = export(store, tmp_path / "round.jsonl", keep_ties=True, mark_round=True)
    assert marked.marker["round"] == 1 and marked.marker["labels"] == 4
    assert export(store, tmp_path / "next.jsonl", since_last_round=True).labels == 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_export_import_stats(store, redis_prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_REDIS_PREFIX", redis_prefix)
    monkeypatch.setenv("NEO_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    result = runner.invoke(prefs_app, ["export", "--keep-ties", "--format", "text"])
    assert result.exit_code == 0, result.output
    rows = read(tmp_path / "home" / "data" / "prefs" / "prefs.jsonl")
    assert [r["choice"] for r in rows] == ["a", "b", "tie"] and isinstance(rows[0]["prompt"], str)
    out = tmp_path / "marked.jsonl"
    assert runner.invoke(prefs_app, ["export", str(out), "--mark-round"]).exit_code == 0
    assert store.last_round()["round"] == 1 and len(read(out)) == 2

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "你好"}\n{"prompt": "hi"}\n{"oops": 1}\n', encoding="utf-8")
    result = runner.invoke(prefs_app, ["import", str(prompts)])
    assert result.exit_code == 1 and "2 prompts added" in result.output and "line 3" in result.output
    more = tmp_path / "seed.jsonl"
    more.write_text('{"prompt": "hi"}\n{"prompt": "new"}\n', encoding="utf-8")
    assert runner.invoke(prefs_app, ["import", str(more)]).exit_code == 0
    assert runner.invoke(prefs_app, ["import", str(more), "--source", "team"]).exit_code == 0  # all duplicates
    queue = PromptQueue(store.redis, store.prefix)
    assert queue.sources() == {"prompts": 2, "seed": 1}  # named after their files; duplicates count once

    result = runner.invoke(prefs_app, ["stats", "--json"])
    stats = json.loads(result.output)
    assert stats["total"] == 4 and stats["since_last_round"] == 0 and stats["annotators"][0]["labels"] == 4
    assert "m:v1" in runner.invoke(prefs_app, ["stats"]).output
    assert runner.invoke(prefs_app, ["export", "--format", "yaml"]).exit_code == 2
