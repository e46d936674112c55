"""neo_ui.stats: counts per annotator and model version, win rates, agreement, labels since a round."""

from __future__ import annotations

from neo_ui.stats import agreement, compute, outcome, per_annotator, per_model, summary_markdown

from .records import T0, record


def test_outcome_ignores_display_order():
    shown_normally = record("t1", "a", pair="p")
    shown_swapped = record("t2", "b", pair="p", swap=True)  # B is answer 0 here
    assert outcome(shown_normally) == outcome(shown_swapped) == "p:0"
    assert outcome(record("t3", "tie")) == "tie"


def test_per_annotator():
    rows = per_annotator([record("1", "a"), record("2", "tie", minutes=2), record("3", "b", annotator="bob",
                                                                                  edited="better")])
    assert rows == [
        {"annotator": "alice", "labels": 2, "A": 1, "B": 0, "tie": 1, "both_bad": 0, "edited": 0, "median_s": 4.0},
        {"annotator": "bob", "labels": 1, "A": 0, "B": 1, "tie": 0, "both_bad": 0, "edited": 1, "median_s": 3.0}]


def test_win_rates_per_version_and_matchup():
    records = [record("1", "a", pair="p1"),                      # v1 beats v2
               record("2", "a", pair="p2", swap=True),           # A is answer 1 (v2): v2 beats v1
               record("3", "b", pair="p3"),                      # v2 beats v1
               record("4", "tie", pair="p4"),
               record("5", "both_bad", pair="p5"),
               record("6", "a", pair="p6", versions=("m:v1", "m:v1"))]  # same version: no game
    models, matchups = per_model(records)
    v1, v2 = models
    assert v1 == {"model_version": "m:v1", "labels": 6, "wins": 1, "losses": 2, "ties": 1, "both_bad": 1,
                  "same_version": 1, "win_rate": round(1.5 / 4, 3)}
    assert (v2["wins"], v2["losses"], v2["win_rate"]) == (2, 1, round(2.5 / 4, 3))
    assert matchups == [{"model_1": "m:v1", "model_2": "m:v2", "model_1_wins": 1, "model_2_wins": 2, "ties": 1,
                         "both_bad": 1, "model_1_win_rate": round(1.5 / 4, 3)}]


def test_agreement_on_shared_pairs():
    records = [record("1", "a", annotator="alice", pair="p1"),
               record("2", "b", annotator="bob", pair="p1", swap=True),   # same answer (p1:0): agree
               record("3", "a", annotator="carol", pair="p1"),            # agrees with both
               record("4", "a", annotator="alice", pair="p2"),
               record("5", "tie", annotator="bob", pair="p2"),            # disagree
               record("6", "a", annotator="alice", pair="p3")]            # not shared
    summary, rows = agreement(records)
    assert summary == {"shared_prompts": 2, "comparisons": 4, "agreements": 3, "rate": 0.75}
    assert {(r["annotator_1"], r["annotator_2"]): (r["shared"], r["agree"]) for r in rows} == {
        ("alice", "bob"): (2, 1), ("alice", "carol"): (1, 1), ("bob", "carol"): (1, 1)}


def test_labels_since_last_round_and_summary():
    records = [record(str(i), "a", pair=f"p{i}", minutes=i) for i in range(4)]
    marker = {"round": 1, "at": "x", "labels": 2, "at_ts": T0.timestamp() + 90}  # after minute 1
    stats = compute(records, marker)
    assert (stats.total, stats.since_last_round) == (4, 2)
    text = summary_markdown(stats)
    assert "**4** labels · **2** since the last DPO round" in text and "round: #1" in text
    assert compute([]).agreement["rate"] is None
