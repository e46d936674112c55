"""The stats page, as plain functions over labels: per annotator, per model version, win rates,
agreement between annotators on shared prompts, and labels since the last DPO round.

Win rate of a model version = (wins + ½ ties) / (wins + losses + ties) over labels whose two answers came
from *different* versions; both-bad labels and same-version pairs are counted but not in the rate.
Agreement compares, for every two annotators of the same answer pair, the answer each picked (or tie /
both bad): it does not depend on the A/B order either was shown.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from neo.schemas import PreferenceRecord


@dataclass
class PreferenceStats:
    """Everything the stats page shows; rows are lists of dicts (one table each)."""

    total: int = 0
    since_last_round: int = 0
    last_round: dict[str, Any] = field(default_factory=dict)
    annotators: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    matchups: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)
    agreement_pairs: list[dict[str, Any]] = field(default_factory=list)


def outcome(record: PreferenceRecord) -> str:
    """What the annotator said, independent of display order: the winning answer's id, 'tie' or 'both_bad'."""
    chosen = record.chosen
    return chosen.id if chosen is not None else record.choice


def _rate(wins: int, losses: int, ties: int) -> float | None:
    games = wins + losses + ties
    return round((wins + 0.5 * ties) / games, 3) if games else None


def per_annotator(records: list[PreferenceRecord]) -> list[dict[str, Any]]:
    by: dict[str, list[PreferenceRecord]] = defaultdict(list)
    for r in records:
        by[r.annotator].append(r)
    rows = []
    for name, rs in sorted(by.items()):
        choices = Counter(r.choice for r in rs)
        rows.append({"annotator": name, "labels": len(rs), "A": choices["a"], "B": choices["b"],
                     "tie": choices["tie"], "both_bad": choices["both_bad"],
                     "edited": sum(r.edited is not None for r in rs),
                     "median_s": round(statistics.median(r.time_spent_s for r in rs), 1)})
    return rows


def per_model(records: list[PreferenceRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per model version, one row per pair of versions that met)."""
    score: dict[str, Counter[str]] = defaultdict(Counter)
    games: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in records:
        va, vb = r.answer_a.model_version, r.answer_b.model_version
        for v in {va, vb}:
            score[v]["labels"] += 1
        if va == vb:
            score[va]["same_version"] += 1
            continue
        first, second = sorted((va, vb))
        game = games[(first, second)]
        if r.choice in ("tie", "both_bad"):
            for v in (va, vb):
                score[v][r.choice] += 1
            game[r.choice] += 1
            continue
        winner = r.chosen.model_version  # type: ignore[union-attr]
        loser = vb if winner == va else va
        score[winner]["wins"] += 1
        score[loser]["losses"] += 1
        game["first_wins" if winner == first else "second_wins"] += 1
    models = [{"model_version": v, "labels": c["labels"], "wins": c["wins"], "losses": c["losses"], "ties": c["tie"],
               "both_bad": c["both_bad"], "same_version": c["same_version"],
               "win_rate": _rate(c["wins"], c["losses"], c["tie"])} for v, c in sorted(score.items())]
    matchups = [{"model_1": a, "model_2": b, "model_1_wins": c["first_wins"], "model_2_wins": c["second_wins"],
                 "ties": c["tie"], "both_bad": c["both_bad"],
                 "model_1_win_rate": _rate(c["first_wins"], c["second_wins"], c["tie"])}
                for (a, b), c in sorted(games.items())]
    return models, matchups


def agreement(records: list[PreferenceRecord]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(overall agreement on shared pairs, one row per two annotators who shared pairs)."""
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for r in records:
        by_pair[r.pair_id].setdefault(r.annotator, outcome(r))  # an annotator's first label of a pair counts
    shared = {pid: votes for pid, votes in by_pair.items() if len(votes) >= 2}
    pairs: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for votes in shared.values():
        for (x, vx), (y, vy) in itertools.combinations(sorted(votes.items()), 2):
            pairs[(x, y)]["shared"] += 1
            pairs[(x, y)]["agree"] += int(vx == vy)
    comparisons = sum(c["shared"] for c in pairs.values())
    agreed = sum(c["agree"] for c in pairs.values())
    summary = {"shared_prompts": len(shared), "comparisons": comparisons, "agreements": agreed,
               "rate": round(agreed / comparisons, 3) if comparisons else None}
    rows = [{"annotator_1": x, "annotator_2": y, "shared": c["shared"], "agree": c["agree"],
             "rate": round(c["agree"] / c["shared"], 3)} for (x, y), c in sorted(pairs.items())]
    return summary, rows


def compute(records: Iterable[PreferenceRecord], last_round: dict[str, Any] | None = None) -> PreferenceStats:
    """Every table of the stats page from the labels; ``last_round`` is the store's round marker."""
    records = list(records)
    last_round = last_round or {}
    since = last_round.get("at_ts")
    models, matchups = per_model(records)
    summary, rows = agreement(records)
    fresh = sum(1 for r in records if since is None or _ts(r.created) > since)
    return PreferenceStats(total=len(records), since_last_round=fresh, last_round=last_round,
                           annotators=per_annotator(records), models=models, matchups=matchups,
                           agreement=summary, agreement_pairs=rows)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def summary_markdown(stats: PreferenceStats) -> str:
    """The headline numbers as a few Markdown lines."""
    last = stats.last_round
    round_line = (f"last DPO round: #{last['round']} at {last['at']} ({last['labels']} labels)"
                  if last else "no DPO round yet")
    agree = stats.agreement
    agree_line = (f"annotator agreement: {agree['rate']:.0%} over {agree['comparisons']} comparisons on "
                  f"{agree['shared_prompts']} shared prompts" if agree.get("comparisons") else
                  "annotator agreement: no prompt labeled by two annotators yet")
    return "\n".join([f"**{stats.total}** labels · **{stats.since_last_round}** since the last DPO round",
                      f"- {round_line}", f"- {agree_line}"])
