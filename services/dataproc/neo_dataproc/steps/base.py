"""The shared step base: every step counts what it saw, kept and dropped (and why) and its time.

A step is called on one document and returns it (possibly changed) or ``None`` when dropped.
Subclasses implement one method and never touch the counters themselves:

* filters: ``filter(doc) -> True | (False, "reason")``;
* modifiers: ``apply(doc) -> doc | "reason"`` (a string drops the document with that reason).

Reasons are stable snake_case prefixed by the step's family (``gopher_short_doc``, ``zh_…``):
reports and tests key on them. ``langs`` limits a step to documents of those languages; others
pass through uncounted. An exception inside a rule drops the document as ``<family>_error``
(logged, at most a few times per step), never the worker.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

from neo_dataproc.document import Document
from neo_dataproc.stats import StepStats

log = logging.getLogger(__name__)

FilterResult = bool | tuple[bool, str]

# What a buggy rule may raise on a strange document; anything else (MemoryError, our own
# time limits, KeyboardInterrupt) propagates.
RULE_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RuntimeError, UnicodeError,
               AttributeError, RecursionError)


class Step:
    """Base of every step; ``name`` keys the stats, ``family`` prefixes drop reasons."""

    name: ClassVar[str] = "step"
    family: ClassVar[str] = "step"
    langs: ClassVar[frozenset[str] | None] = None  # None: every document

    def __init__(self) -> None:
        self.stats = StepStats()
        self._errors_logged = 0

    def apply(self, doc: Document) -> Document | str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, doc: Document) -> Document | str:
        return self.apply(doc)

    def __call__(self, doc: Document) -> Document | None:
        if self.langs is not None and doc.lang not in self.langs:
            return doc
        stats = self.stats
        stats.counts["seen"] += 1
        t0 = time.perf_counter()
        try:
            out = self._run(doc)
        except RULE_ERRORS as exc:
            if self._errors_logged < 5:
                log.warning("%s: document %d failed (%s: %s); dropped", self.name, doc.uid, type(exc).__name__, exc)
                self._errors_logged += 1
            out = f"{self.family}_error"
        stats.time_s += time.perf_counter() - t0
        if isinstance(out, str):
            stats.drop(out)
            self.last_drop = out
            return None
        stats.counts["kept"] += 1
        return out

    def close(self) -> None:
        """Called once at the end of a shard."""


class Filter(Step):
    """A step that keeps or drops: implement ``filter(doc) -> True | (False, "reason")``."""

    def filter(self, doc: Document) -> FilterResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, doc: Document) -> Document | str:
        result = self.filter(doc)
        if result is True:
            return doc
        if result is False:
            return f"{self.family}_unspecified"
        return result[1]
