"""Labels → TRL preference JSONL (``neo prefs export``, the export button, each DPO round).

One ``neo.schemas.PreferencePair`` per line: ``prompt``, ``chosen``, ``rejected`` and metadata columns.

- ``conversational`` (default): ``prompt`` is the list of chat turns (system prompt included) and
  ``chosen``/``rejected`` are one-turn assistant lists, TRL's conversational format, templated by the trainer.
- ``text``: plain strings; ``prompt`` is the last user turn only (earlier turns and the system prompt
  are dropped), for trainers that bring their own template.

Ties and both-bad labels carry no preference and are left out unless asked for; kept, they export A as
``chosen`` and B as ``rejected`` with ``choice`` saying what they are. When an annotator rewrote the better
answer, the rewrite is ``chosen`` (``edited: true``) unless ``use_edits`` is off.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from neo.schemas import PreferencePair, PreferenceRecord, PromptMessage
from neo_ui.store import PreferenceStore

log = logging.getLogger(__name__)

ExportFormat = Literal["conversational", "text"]


@dataclass
class ExportReport:
    """What an export wrote, and how many labels it left out and why."""

    path: Path
    rows: int = 0
    labels: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    until_ts: float = 0.0  # labels created up to this unix time were read
    since_round: int = 0  # the last round's number when the export read "since the last round"
    marker: dict | None = None

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        text = f"wrote {self.rows} pairs from {self.labels} labels to {self.path} (left out: {skipped})"
        return text + (f"; marked DPO round {self.marker['round']}" if self.marker else "")


def to_pair(record: PreferenceRecord, fmt: ExportFormat = "conversational", use_edits: bool = True) -> PreferencePair:
    """One label as a TRL row (A is ``chosen`` for ties and both-bad)."""
    chosen, rejected = record.chosen or record.answer_a, record.rejected or record.answer_b
    edited = use_edits and record.edited is not None and record.chosen is not None
    chosen_text = record.edited if edited else chosen.text
    if fmt == "conversational":
        prompt: str | list[PromptMessage] = list(record.prompt)
        good: str | list[PromptMessage] = [PromptMessage(role="assistant", content=chosen_text or "")]
        bad: str | list[PromptMessage] = [PromptMessage(role="assistant", content=rejected.text)]
    else:
        prompt = next(m.content for m in reversed(record.prompt) if m.role == "user")
        good, bad = chosen_text or "", rejected.text
    return PreferencePair(prompt=prompt, chosen=good, rejected=bad, id=record.id, prompt_id=record.prompt_id,
                          annotator=record.annotator, choice=record.choice, chosen_model=chosen.model_version,
                          rejected_model=rejected.model_version, edited=edited, created=record.created)


def to_pairs(records: Iterable[PreferenceRecord], keep_ties: bool = False, keep_both_bad: bool = False,
             fmt: ExportFormat = "conversational", use_edits: bool = True) -> tuple[list[PreferencePair], Counter[str]]:
    """The rows to write and, by reason, the labels left out."""
    rows, skipped = [], Counter[str]()
    for record in records:
        if record.choice == "tie" and not keep_ties:
            skipped["ties"] += 1
        elif record.choice == "both_bad" and not keep_both_bad:
            skipped["both_bad"] += 1
        else:
            rows.append(to_pair(record, fmt, use_edits))
    return rows, skipped


def write_jsonl(rows: list[PreferencePair], path: Path) -> Path:
    """Write rows as JSONL through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.model_dump(mode="json"), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def export(store: PreferenceStore, path: Path, *, keep_ties: bool = False, keep_both_bad: bool = False,
           fmt: ExportFormat = "conversational", use_edits: bool = True, since_last_round: bool = False,
           mark_round: bool = False, job: str | None = None) -> ExportReport:
    """Write the labels (all, or those since the last DPO round) as TRL JSONL to ``path``.

    With ``mark_round`` the export becomes a DPO round: the marker ``{prefix}prefs:last_round`` moves to the
    moment the export started, so "labels since the last round" counts exactly the labels not in this file.
    """
    cutoff = time.time()
    last = store.last_round()
    since = last.get("at_ts") if since_last_round else None
    records = list(store.iter_labels(since_ts=since, until_ts=cutoff))
    rows, skipped = to_pairs(records, keep_ties, keep_both_bad, fmt, use_edits)
    report = ExportReport(path=write_jsonl(rows, path), rows=len(rows), labels=len(records), skipped=skipped,
                          until_ts=cutoff, since_round=int(last.get("round", 0)))
    if mark_round:
        report.marker = store.mark_round(labels=len(records), path=str(report.path), job=job, at_ts=cutoff,
                                         expect_round=report.since_round)
    log.info("preference export: %s", report.summary())
    return report
