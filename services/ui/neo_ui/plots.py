"""The Plots tab's data, as pandas DataFrames in long form (one row per point) for Gradio's native plots.

- labels per day, stacked by annotator; labels per annotator, stacked by choice;
- win rate by version, versions in registration order (each DPO round makes one), with its 95% Wilson
  interval as two more series (``low``, ``high``);
- agreement between every two annotators on the pairs both labeled;
- the last DPO round's curves from the trainer's ``<run_dir>/metrics.jsonl``: loss, reward margin, accuracy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pandas as pd

from neo.schemas import PreferenceRecord
from neo_ui.leaderboard import Standing, battles_from_labels, wilson
from neo_ui.stats import agreement

DPO_CURVES = {"loss": "loss", "rewards/margins": "reward margin", "rewards/accuracies": "accuracy"}


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def labels_per_day(records: Iterable[PreferenceRecord]) -> pd.DataFrame:
    counts: Counter[tuple[str, str]] = Counter()
    for r in records:
        counts[datetime.fromisoformat(r.created).date().isoformat(), r.annotator] += 1
    rows = [{"day": day, "annotator": who, "labels": n} for (day, who), n in sorted(counts.items())]
    return _frame(rows, ["day", "annotator", "labels"])


def labels_per_annotator(records: Iterable[PreferenceRecord]) -> pd.DataFrame:
    counts: Counter[tuple[str, str]] = Counter((r.annotator, r.choice) for r in records)
    rows = [{"annotator": who, "choice": choice, "labels": n} for (who, choice), n in sorted(counts.items())]
    return _frame(rows, ["annotator", "choice", "labels"])


def _order(ref: str) -> tuple[str, int, str]:
    name, _, version = ref.rpartition(":")
    number = int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else -1
    return name, number, version


def win_rate_by_version(records: Iterable[PreferenceRecord]) -> pd.DataFrame:
    """Each version's win rate over its battles (ties half) and its 95% Wilson interval, in version order."""
    won: dict[str, float] = defaultdict(float)
    played: Counter[str] = Counter()
    for battle in battles_from_labels(records):
        score_a = {"a": 1.0, "b": 0.0}.get(battle.winner, 0.5)
        for me, score in ((battle.a, score_a), (battle.b, 1.0 - score_a)):
            won[me] += score
            played[me] += 1
    rows = []
    for version in sorted(played, key=_order):
        low, high = wilson(won[version], played[version])
        rate = won[version] / played[version]
        rows += [{"version": version, "series": "win rate", "value": round(rate, 4), "battles": played[version]},
                 {"version": version, "series": "95% low", "value": round(low, 4), "battles": played[version]},
                 {"version": version, "series": "95% high", "value": round(high, 4), "battles": played[version]}]
    return _frame(rows, ["version", "series", "value", "battles"])


def ratings(board: list[Standing]) -> pd.DataFrame:
    """The leaderboard's ratings with their bootstrap intervals, for a scatter plot."""
    rows = []
    for s in board:
        rows += [{"version": s.version, "series": "rating", "elo": round(s.rating, 1)},
                 {"version": s.version, "series": "95% low", "elo": round(s.low, 1)},
                 {"version": s.version, "series": "95% high", "elo": round(s.high, 1)}]
    return _frame(rows, ["version", "series", "elo"])


def agreement_frame(records: Iterable[PreferenceRecord]) -> pd.DataFrame:
    _, pairs = agreement(list(records))
    rows = [{"annotators": f"{p['annotator_1']} & {p['annotator_2']}", "agreement": p["rate"],
             "shared": p["shared"]} for p in pairs]
    return _frame(rows, ["annotators", "agreement", "shared"])


def dpo_curves(metrics: list[dict[str, Any]]) -> pd.DataFrame:
    """Loss, reward margin and accuracy per step of a DPO run's metrics records."""
    rows = [{"step": int(m["step"]), "metric": label, "value": float(m[key])}
            for m in metrics if "step" in m for key, label in DPO_CURVES.items()
            if isinstance(m.get(key), int | float)]
    return _frame(rows, ["step", "metric", "value"])
