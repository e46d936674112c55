"""Counters that add up: a step's counts → a shard's → the job's → the report.

Each step owns a ``StepStats``: ``seen``, ``kept``, ``dropped``, ``dropped_<reason>``, free-form
counters (``masked_email``, ``line_removed_c4_policy`` …) and ``time_s``. A shard writes
``{step: counts}`` as JSON; ``merge`` adds such dicts, so the report is a plain sum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping


class StepStats:
    __slots__ = ("counts", "time_s")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.time_s = 0.0

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.counts["dropped"] += n
        self.counts[f"dropped_{reason}"] += n

    def to_dict(self) -> dict[str, float]:
        out: dict[str, float] = {"seen": 0, "kept": 0, "dropped": 0}
        out.update(sorted(self.counts.items()))
        out["time_s"] = round(self.time_s, 4)
        return out


def merge(items: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Sum ``{step: {counter: n}}`` dicts, keeping the steps' first-seen order."""
    total: dict[str, dict[str, float]] = {}
    for item in items:
        for step, counts in item.items():
            acc = total.setdefault(step, {})
            for key, value in counts.items():
                acc[key] = acc.get(key, 0) + value
    for acc in total.values():
        if "time_s" in acc:
            acc["time_s"] = round(acc["time_s"], 4)
    return total


def drop_reasons(counts: Mapping[str, float]) -> dict[str, float]:
    """``{reason: n}`` from a step's counters."""
    return {k.removeprefix("dropped_"): v for k, v in counts.items() if k.startswith("dropped_")}
