"""The arena leaderboard: Bradley-Terry ratings recover planted strengths, intervals cover them, ties and
two-version labels become battles, and each version's win rate against its parent."""

from __future__ import annotations

import math
import random

import pytest

from neo_ui.leaderboard import Battle, battles_from_labels, fit_bradley_terry, leaderboard, wilson

from .records import record


def simulate(strengths: dict[str, float], n: int, seed: int = 1) -> list[Battle]:
    """Battles between random pairs, won with the Bradley-Terry probability of the planted Elo ratings."""
    rng, names, out = random.Random(seed), list(strengths), []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p_a = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
        out.append(Battle(a, b, "a" if rng.random() < p_a else "b"))
    return out


def test_ratings_recover_planted_strengths_and_their_order():
    planted = {"neo:v1": 1000.0, "neo:v2": 1100.0, "neo:v3": 1250.0}
    ratings = fit_bradley_terry(simulate(planted, 3000))
    assert sorted(ratings, key=ratings.get) == ["neo:v1", "neo:v2", "neo:v3"]
    gaps = (ratings["neo:v2"] - ratings["neo:v1"], ratings["neo:v3"] - ratings["neo:v1"])
    assert gaps == pytest.approx((100, 250), abs=30)


def test_intervals_cover_the_truth_and_shrink_with_more_votes():
    planted = {"a:v1": 1000.0, "a:v2": 1150.0}
    few, many = (leaderboard(simulate(planted, n, seed=3), rounds=100) for n in (40, 800))
    for board in (few, many):
        top = board[0]
        assert top.version == "a:v2" and top.low <= top.rating <= top.high
    gap = {s.version: s.rating for s in many}
    assert gap["a:v2"] - gap["a:v1"] == pytest.approx(150, abs=60)
    assert max(s.high - s.low for s in many) < min(s.high - s.low for s in few)


def test_a_version_that_never_won_keeps_a_finite_rating():
    ratings = fit_bradley_terry([Battle("x:v1", "x:v2", "b")] * 5)
    assert all(math.isfinite(r) for r in ratings.values()) and ratings["x:v2"] > ratings["x:v1"]


def test_labels_become_battles_only_across_versions_and_ties_count_half():
    labels = [record("1", "a", versions=("m:v1", "m:v2")), record("2", "tie", pair="p2", versions=("m:v1", "m:v2")),
              record("3", "both_bad", pair="p3", versions=("m:v2", "m:v1")),
              record("4", "a", pair="p4", versions=("m:v1", "m:v1"))]
    battles = battles_from_labels(labels)
    assert [b.winner for b in battles] == ["a", "tie", "tie"]
    board = {s.version: s for s in leaderboard(battles, parents={"m:v2": "m:v1"}, rounds=20)}
    assert board["m:v1"].wins == 2.0 and board["m:v1"].battles == 3  # one win and two half wins
    rate, low, high, n = board["m:v2"].vs_parent
    assert (rate, n) == (pytest.approx(1 / 3), 3) and low < rate < high
    assert board["m:v1"].vs_parent is None


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
