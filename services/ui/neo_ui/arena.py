"""The arena, without Gradio: which versions battle, a blind battle on a typed (or queued) prompt, and the
leaderboard over every label whose two answers came from two different versions.

A battle is an ordinary preference label (``Labeler.battle`` then ``Labeler.submit``) with ``source="arena"``
and a prompt of its own (``arena-<id>``, never queued for labeling): it counts as a DPO pair in the next
export and as a battle on the leaderboard (``leaderboard.battles_from_labels``). Each answer's
``model_version`` is the served version's ref (``name:vN``, or ``name:local`` off the registry).

A version's parent comes from the model registry (Redis, the trainer writes it) or, for a version the
registry does not know, from serving's ``/v1/models`` card (``parent``, read from the checkpoint's neo.json).
The default match-up is the newest served version against its parent (a DPO round's new version against the
one it was trained from), else the first two served models.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from neo.registry import ModelRegistry
from neo.schemas import PreferenceRecord
from neo_ui.client import ServedModel, ServingClient, ServingUnavailable
from neo_ui.leaderboard import Standing, battles_from_labels, leaderboard
from neo_ui.prompts import Prompt, make_prompt

log = logging.getLogger(__name__)

ARENA_SOURCE = "arena"


@dataclass(frozen=True)
class Contender:
    """A served model as the arena sees it: its served id, its version ref, its parent ref (if known)."""

    model: ServedModel
    parent: str | None = None

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def ref(self) -> str:
        return self.model.ref


def _version_number(ref: str) -> int:
    version = ref.rpartition(":")[2]
    return int(version[1:]) if version[:1] == "v" and version[1:].isdigit() else -1


class Arena:
    """Contenders from serving and the registry; the leaderboard from the store's labels."""

    def __init__(self, client: ServingClient, registry: ModelRegistry):
        self.client, self.registry = client, registry

    def parents(self) -> dict[str, str | None]:
        """Every registered version's parent, by ref."""
        try:
            return {v.ref: v.parent for v in self.registry.list()}
        except Exception as exc:  # noqa: BLE001 — a registry read failure only loses parent links
            log.warning("model registry unreadable: %s", exc)
            return {}

    def contenders(self) -> list[Contender]:
        """What serving serves now, with parents (registry first, then serving's card)."""
        registered = self.parents()
        return [Contender(model, registered.get(model.ref) or model.parent) for model in self.client.models()]

    def default_matchup(self, contenders: list[Contender] | None = None) -> tuple[str, str] | None:
        """Served ids of (newest version, its parent) when both are served, else the first two; None if <2."""
        contenders = self.contenders() if contenders is None else contenders
        if len(contenders) < 2:
            return None
        by_ref = {c.ref: c for c in contenders}
        children = [c for c in contenders if c.parent in by_ref and c.parent != c.ref]
        if children:
            child = max(children, key=lambda c: (_version_number(c.ref), c.ref))
            return child.id, by_ref[child.parent].id  # type: ignore[index]
        return contenders[0].id, contenders[1].id

    def pick(self, first: str, second: str) -> list[ServedModel]:
        """The two served models named (by served id); ServingUnavailable naming what is served otherwise."""
        served = {c.id: c for c in self.contenders()}
        missing = [m for m in (first, second) if m not in served]
        if missing:
            raise ServingUnavailable(f"Serving does not serve {', '.join(repr(m) for m in missing)} (it serves: "
                                     f"{', '.join(sorted(served)) or 'nothing'}).")
        return [served[first].model, served[second].model]

    def board(self, labels: Iterable[PreferenceRecord], rounds: int = 200) -> list[Standing]:
        parents = {k: v for k, v in self.parents().items() if v}
        try:
            parents |= {c.ref: c.parent for c in self.contenders() if c.parent and c.ref not in parents}
        except ServingUnavailable:
            pass
        return leaderboard(battles_from_labels(labels), parents=parents, rounds=rounds)


def arena_prompt(text: str, system: str = "") -> Prompt:
    """A typed prompt as a battle's own prompt (a fresh id: every battle samples its own pair)."""
    row: dict[str, Any] = {"prompt": text}
    if system.strip():
        row["system"] = system
    prompt = make_prompt(row, ARENA_SOURCE)
    return prompt.model_copy(update={"id": f"arena-{uuid.uuid4().hex[:16]}"})


def standings_rows(board: list[Standing]) -> list[dict[str, Any]]:
    """The leaderboard as table rows."""
    rows = []
    for rank, s in enumerate(board, 1):
        vs = "" if s.vs_parent is None else \
            f"{s.vs_parent[0]:.0%} [{s.vs_parent[1]:.0%}, {s.vs_parent[2]:.0%}] (n={s.vs_parent[3]})"
        rows.append({"rank": rank, "version": s.version, "rating": round(s.rating),
                     "95% CI": f"[{round(s.low)}, {round(s.high)}]", "battles": s.battles,
                     "win rate": f"{s.win_rate:.0%}", "parent": s.parent or "", "vs parent": vs})
    return rows


def reveal(record: PreferenceRecord) -> str:
    """After the vote: which version wrote which answer."""
    return (f"A was **{record.answer_a.model_version}**, B was **{record.answer_b.model_version}** "
            f"(you picked {record.choice.replace('_', ' ')}).")
