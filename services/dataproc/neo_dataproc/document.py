"""The unit of data: a small slotted ``Document`` passed from step to step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DocKind = Literal["text", "html", "code"]


@dataclass(slots=True)
class Document:
    """One document on its way through the pipeline.

    ``uid`` is the document's position in the job's input, ``shard << 32 | index`` (index counts
    every record of the shard, dropped or not), so sorting by uid is input order: dedup keeps the
    smallest uid of a cluster, i.e. the first occurrence, whatever ran where.
    """

    uid: int
    text: str
    source: str
    kind: DocKind = "text"  # how extraction treats ``text``: raw HTML, plain text or source code
    lang: str = ""  # "en" | "zh" | "code" | "other" once language id has run
    lang_score: float = 0.0
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the input record's id, path, line …

    def to_record(self) -> dict[str, Any]:
        """The JSON line written for a cleaned document."""
        return {
            "uid": self.uid, "text": self.text, "source": self.source, "lang": self.lang,
            "lang_score": round(self.lang_score, 4), "url": self.url, "meta": self.meta,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Document:
        return cls(
            uid=rec["uid"], text=rec["text"], source=rec["source"], lang=rec.get("lang", ""),
            lang_score=rec.get("lang_score", 0.0), url=rec.get("url"), meta=rec.get("meta") or {},
        )


def make_uid(shard: int, index: int) -> int:
    return (shard << 32) | index

