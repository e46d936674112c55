"""Chinese quality rules after MAP-Neo (arXiv:2405.19327 §3.2) and its released Matrix pipeline
(``Matrix/chinese_data_clean_pipeline/filter/filter.py``: ``unify_format``, ``self_defined_rules``,
``duplicates_rules``), plus Traditional → Simplified conversion with OpenCC.

Rules run cheapest first (the jieba word split last), so a document failing several rules is
reported under the first cheap one; the set of kept documents is the same as in Matrix's order.
Matrix's duplicate 5–10-gram rule counts *distinct characters* inside repeated n-grams (a quirk
bounded by the alphabet); here it is the share of characters covered by repeated character
n-grams, with Matrix's 0.6 threshold. The character statistics (unique share, entropy, n-gram
repetition) are taken with whitespace runs collapsed to one space, so indentation in rendered
pages does not count as repetition.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from neo_dataproc.document import Document
from neo_dataproc.steps.base import Filter, FilterResult, Step
from neo_dataproc.steps.code import prose_view

log = logging.getLogger(__name__)

_SENTENCE_SPLIT_RE = re.compile(r'[.!…?;"。！？；]+')
_BRACKET_RE = re.compile(r"【(.*?)】")
_NON_WORD_RE = re.compile(r"[^\w\s]")
_WS_RE = re.compile(r"\s+")
_HASH_RUN_RE = re.compile(r"#+")
_LATIN_RE = re.compile(r"[A-Za-z]{2}")
_LATIN_WORD_RE = re.compile(r"[A-Za-z0-9_]+|\S| ")
_ELLIPSIS_RE = re.compile(r"…+|\.{2,}")
_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~…，。！？；：、“”‘’（）《》【】—·「」『』〈〉")
READMORE = ("readmore", "展开", "更多", "。。。")  # Matrix rule 8
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "※", "·", "➢", "\u2023", "\u25b6", "\u25c0", "\u25e6", "\u2013")
_MIX = np.uint64(0x9E3779B97F4A7C15)


@lru_cache(maxsize=1)
def _segmenter() -> Callable[[str, bool], list[str]]:
    """jieba word segmentation: jieba-rs (``rjieba``: jieba's algorithm and dictionary in Rust, ~30×
    faster, identical words with the HMM off) when installed, else the Python ``jieba``."""
    try:
        import rjieba

        return lambda text, hmm: rjieba.cut(text, hmm)
    except ImportError:
        import jieba

        log.info("rjieba not installed: using the (slower) Python jieba")
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        return lambda text, hmm: jieba.lcut(text, HMM=hmm)


def char_entropy(text: str | list[str]) -> float:
    """Shannon entropy (nats, as Matrix's ``math.log``) of the character (or unit) unigram distribution."""
    counts = Counter(text)
    total = len(text)
    return -sum(c / total * math.log(c / total) for c in counts.values())


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


def _char_ngrams(cps: np.ndarray, n: int) -> np.ndarray:
    h = cps[: len(cps) - n + 1].copy()
    for k in range(1, n):
        h = h * _MIX + cps[k : len(cps) - n + 1 + k]
    return h


def top_char_ngram_frac(cps: np.ndarray, n: int) -> float:
    """Matrix rules 1–3: characters in the repeats (count − 1) of the most frequent n-gram."""
    if len(cps) < n:
        return 0.0
    _, counts = np.unique(_char_ngrams(cps, n), return_counts=True)
    return (int(counts.max()) - 1) * n / len(cps)


def dup_char_ngram_frac(cps: np.ndarray, n: int) -> float:
    """Share of characters covered by repeated (not first) occurrences of character n-grams."""
    if len(cps) < n:
        return 0.0
    grams = _char_ngrams(cps, n)
    _, first, inverse = np.unique(grams, return_index=True, return_inverse=True)
    starts = (first[inverse] < np.arange(len(grams))).astype(np.int32)
    if not starts.any():
        return 0.0
    covered = np.convolve(starts, np.ones(n, dtype=np.int32))[: len(cps)] > 0
    return float(covered.sum()) / len(cps)


class ZhQualityFilter(Filter):
    """MAP-Neo / Matrix Chinese rules; reasons ``zh_too_short`` … ``zh_dup_10_gram``."""

    name = "zh_quality"
    family = "zh"
    langs = frozenset({"zh"})

    def __init__(
        self,
        min_chars: int = 50,  # Matrix rule 2: 50 ≤ characters ≤ 10,000
        max_chars: int | None = 10_000,
        min_sentences: int = 2,  # Matrix rule 1: more than one sentence
        max_bracket_ratio: float = 0.1,  # Matrix unify_format: characters inside 【】 ≤ 10 %
        min_mean_word_length: float = 1.3,  # Matrix rule 3: jieba mean word length in [1.3, 10]
        max_mean_word_length: float = 10,
        max_hash_ratio: float = 0.1,  # Matrix rule 4: runs of "#" per character ≤ 0.1
        max_ellipsis_ratio: float = 0.1,  # Matrix rule 5: ellipses per character ≤ 0.1
        max_digit_ratio: float = 0.3,  # Matrix rule 7: digits over non-punctuation characters ≤ 0.3
        max_readmore_lines_ratio: float = 0.3,  # Matrix rule 8: lines ending in "展开/更多/readmore" ≤ 30 %
        max_bullet_lines_ratio: float = 0.9,  # Matrix rule 9: lines starting with a bullet ≤ 90 %
        min_punctuation_ratio: float = 0.0,  # Matrix rule 10: some punctuation (ratio > 0)
        min_unique_char_ratio: float = 0.1,  # Matrix rule 11: unique characters > 10 %
        min_char_entropy: float = 3.0,  # Matrix rule 12: unigram entropy ≥ 3 (nats)
        top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16)),  # Matrix duplicates_rules 1–3
        dup_n_grams: tuple[tuple[int, float], ...] = tuple((n, 0.6) for n in range(5, 11)),  # duplicates_rules 4–9
        word_sample_chars: int | None = None,  # segment only the first N characters (None: all)
        jieba_hmm: bool = True,  # jieba's HMM for unknown words (Matrix: default on)
    ) -> None:
        super().__init__()
        self.min_chars, self.max_chars, self.min_sentences = min_chars, max_chars, min_sentences
        self.max_bracket_ratio = max_bracket_ratio
        self.min_mean_word_length, self.max_mean_word_length = min_mean_word_length, max_mean_word_length
        self.max_hash_ratio, self.max_ellipsis_ratio = max_hash_ratio, max_ellipsis_ratio
        self.max_digit_ratio = max_digit_ratio
        self.max_readmore_lines_ratio, self.max_bullet_lines_ratio = max_readmore_lines_ratio, max_bullet_lines_ratio
        self.min_punctuation_ratio = min_punctuation_ratio
        self.min_unique_char_ratio, self.min_char_entropy = min_unique_char_ratio, min_char_entropy
        self.top_n_grams = tuple((int(n), float(f)) for n, f in top_n_grams)
        self.dup_n_grams = tuple((int(n), float(f)) for n, f in dup_n_grams)
        self.word_sample_chars, self.jieba_hmm = word_sample_chars, jieba_hmm

    def mean_word_length(self, text: str) -> float:
        if self.word_sample_chars:
            text = text[: self.word_sample_chars]
        words = [w for w in _segmenter()(_NON_WORD_RE.sub("", text), self.jieba_hmm) if w.strip()]
        return sum(map(len, words)) / len(words) if words else 0.0

    def filter(self, doc: Document) -> FilterResult:
        text = prose_view(doc.text)  # fenced code blocks are not prose
        n = len(text)
        if n < self.min_chars:
            return False, "zh_too_short"
        if self.max_chars is not None and n > self.max_chars:
            return False, "zh_too_long"
        if sum(len(m) for m in _BRACKET_RE.findall(text)) / n > self.max_bracket_ratio:
            return False, "zh_bracket_ratio"
        if sum(1 for s in _SENTENCE_SPLIT_RE.split(text) if s.strip()) < self.min_sentences:
            return False, "zh_too_few_sentences"
        if len(_HASH_RUN_RE.findall(text)) / n > self.max_hash_ratio:
            return False, "zh_hash_ratio"
        if len(_ELLIPSIS_RE.findall(text)) / n > self.max_ellipsis_ratio:
            return False, "zh_ellipsis_ratio"
        chars = [c for c in _NON_WORD_RE.sub("", text) if not c.isspace()]
        if chars and sum(1 for c in chars if c.isdigit()) / len(chars) > self.max_digit_ratio:
            return False, "zh_digit_ratio"
        lines = text.splitlines() or [""]
        if sum(1 for ln in lines if ln.rstrip().endswith(READMORE)) / len(lines) > self.max_readmore_lines_ratio:
            return False, "zh_readmore_lines"
        if sum(1 for ln in lines if ln.startswith(BULLETS)) / len(lines) > self.max_bullet_lines_ratio:
            return False, "zh_bullet_lines"
        if sum(1 for c in text if c in _PUNCTUATION) / n <= self.min_punctuation_ratio:
            return False, "zh_no_punctuation"
        compact = _WS_RE.sub(" ", text)  # layout whitespace is not repetition (groff/HTML indentation)
        # Matrix counts characters; in a mixed EN/ZH page an English word counts as one unit (26 letters
        # would otherwise make any English paragraph "repetitive")
        units: str | list[str] = _LATIN_WORD_RE.findall(compact) if _LATIN_RE.search(compact) else compact
        if len(units) and len(set(units)) / len(units) <= self.min_unique_char_ratio:
            return False, "zh_unique_chars"
        if char_entropy(units) < self.min_char_entropy:
            return False, "zh_char_entropy"
        cps = _codepoints(compact)
        for k, frac in self.top_n_grams:
            if top_char_ngram_frac(cps, k) > frac:
                return False, f"zh_top_{k}_gram"
        covered = 1.0
        for k, frac in sorted(self.dup_n_grams):
            if covered <= frac:  # characters covered by repeated k-grams only shrink as k grows
                continue
            covered = dup_char_ngram_frac(cps, k)
            if covered > frac:
                return False, f"zh_dup_{k}_gram"
        mean = self.mean_word_length(text)
        if not self.min_mean_word_length <= mean <= self.max_mean_word_length:
            return False, "zh_mean_word_length"
        return True


class OpenCCStep(Step):
    """Traditional → Simplified Chinese (OpenCC ``t2s``; the job default is ``tw2sp``); counters ``converted``,
    ``chars_only``.

    Phrase conversion is for Traditional text only: ``tw2sp`` maps Taiwan vocabulary to the
    mainland's (軟體 → 软件) and on text already written in Simplified script it rewrites mainland
    words that read as Taiwan ones (文件 → 文档, 程序 → 进程). So a document is converted with the
    configured config only when it has more Traditional-only characters (ones OpenCC ``t2s``
    changes) than Simplified-only ones (ones ``s2t`` changes); a Simplified document with a few
    Traditional characters has those characters converted (``t2s``), its words left as written.
    """

    name = "opencc"
    family = "opencc"
    langs = frozenset({"zh"})

    def __init__(self, config: str = "t2s") -> None:
        super().__init__()
        import opencc

        self.config = config
        self._converter = opencc.OpenCC(config)
        self._t2s = opencc.OpenCC("t2s")
        self._s2t = opencc.OpenCC("s2t")

    @staticmethod
    def _changed(a: str, b: str) -> int:
        return sum(x != y for x, y in zip(a, b, strict=False)) if len(a) == len(b) else abs(len(a) - len(b)) + 1

    def apply(self, doc: Document) -> Document | str:
        chars_only = self._t2s.convert(doc.text)
        traditional = self._changed(doc.text, chars_only)
        if not traditional:
            return doc
        if self.config != "t2s" and traditional > self._changed(doc.text, self._s2t.convert(doc.text)):
            converted = self._converter.convert(doc.text)
        else:
            converted = chars_only
            self.stats.add("chars_only")
        if converted != doc.text:
            doc.text = converted
            self.stats.add("converted")
        return doc
