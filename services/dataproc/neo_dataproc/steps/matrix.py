"""MAP-Neo's Matrix stages (github.com/multimodal-art-projection/MAP-NEO, ``Matrix/``) as Neo steps.

* ``paragraph_hashes`` / ``drop_paragraphs``: paragraph-level exact dedup across the corpus
  (``Matrix/english_data_clean_pipeline/dedup/Paragraph_Deduplication/paragraph.py``: split on
  ``\\n``, hash each line, keep its first occurrence by (document id, position), rejoin, drop
  documents under ``min_len=20`` characters). The corpus-wide part lives in the job directory, as
  the document dedup does: pass 1 writes each shard's line hashes, the ``dedup_paragraphs`` phase
  (units = hash partitions) finds every line's first occurrence among the documents the document
  dedup kept, and the tokenize pass strips the later ones (``pipeline.py``).
* ``ZhSimilarLineDedup``: Chinese similar-sentence dedup inside a document
  (``Matrix/chinese_data_clean_pipeline/deduplication/simlar_line_dedup/edit_distance_dedup.py``).
* ``MatrixEnglishFilter``: Matrix's English rule set
  (``Matrix/english_data_clean_pipeline/filter/util_with_try.py`` and ``filter/filter.py``'s
  argument defaults): Gopher, CCNet length, C4, "pretrainer's guide" and RefinedWeb rules.
* ``SensitiveWordsFilter``: the bad-word hook of Matrix's filters (Chinese
  ``Matrix/chinese_data_clean_pipeline/filter/filter.py`` ``linewise_filter`` rule 5; English
  ``util_with_try.py`` ``self_defined_rules``), with configurable lists per language and a small
  default list of obvious gambling / spam terms (``wordlists.py``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

import xxhash

from neo_dataproc.document import Document
from neo_dataproc.steps.base import Filter, FilterResult, Step
from neo_dataproc.steps.code import prose_view
from neo_dataproc.steps.en_quality import split_words
from neo_dataproc.steps.wordlists import DEFAULT_SENSITIVE_WORDS

_FENCE_RE = re.compile(r"^\s*(?:```|~~~)")

# --- paragraph dedup --------------------------------------------------------------------------------
# Matrix paragraph.py: paragraph_dedup(..., min_len=20): documents shorter than this after dedup go.
PARAGRAPH_MIN_DOC_CHARS = 20


def paragraph_hashes(text: str, min_line_chars: int = 0) -> list[tuple[int, int]]:
    """``(line index, 64-bit hash)`` of each line paragraph dedup may remove: lines split on ``\\n``
    (Matrix), whitespace-stripped; blank lines, lines under ``min_line_chars`` and lines inside or
    opening/closing a fenced code block are never removed (they carry layout and code)."""
    out = []
    in_fence = False
    for i, line in enumerate(text.split("\n")):
        if _FENCE_RE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        s = line.strip()
        if not s or len(s) < min_line_chars:
            continue
        out.append((i, xxhash.xxh3_64_intdigest(s.encode())))
    return out


def drop_paragraphs(text: str, lines: set[int]) -> str:
    """``text`` without the lines at these indices (the rest rejoined with ``\\n``, as Matrix)."""
    return "\n".join(line for i, line in enumerate(text.split("\n")) if i not in lines)


# --- Chinese similar-line dedup ---------------------------------------------------------------------
# edit_distance_dedup.py: split_text's sentence ends ('[' and '【' start a sentence instead).
_SPLIT_SIGNS = frozenset(["[", ".", "!", "?", "。", "！", "？", "\\", "…", "【", "]", "】"])
_OPENERS = frozenset(["[", "【"])


def split_sentences(text: str) -> list[str]:
    """Matrix's ``split_text``: ends after . ! ? 。！？\\ … ] 】, starts before [ 【; nothing is lost
    (``"".join`` gives ``text`` back)."""
    out, begin = [], 0
    for i, ch in enumerate(text):
        if ch in _SPLIT_SIGNS:
            if ch not in _OPENERS:
                out.append(text[begin : i + 1])
                begin = i + 1
            else:
                if begin < i:
                    out.append(text[begin:i])
                begin = i
    if begin < len(text):
        out.append(text[begin:])
    return out


def _char_overlap(a: str, b: str) -> float:
    """Matrix's ``compute_simlaritry_word_freq``: multiset intersection / union of characters."""
    ca, cb = Counter(a), Counter(b)
    inter = sum((ca & cb).values())
    union = sum((ca | cb).values())
    return inter / union if union else 1.0


class ZhSimilarLineDedup(Step):
    """Remove sentences that repeat an earlier one of the same document up to a few edits
    (``similar_line_removed`` counts them); a modifier, it never drops a document."""

    name = "zh_similar_lines"
    family = "zh_similar"
    langs = frozenset({"zh"})

    def __init__(
        self,
        proportion: float = 0.1,  # similar_line_dedup.py: propertion = 0.1 (edit distance ≤ 0.1 × longer length)
        max_length_diff: float = 0.3,  # edit_distance_dedup.py: lengths differ by < max(0.3, proportion)
        # edit_distance_dedup.py: character-multiset overlap ≥ 1/3 before the edit distance
        min_char_overlap: float = 1 / 3,
        exact_below_chars: int = 15,  # edit_distance_dedup.py: sentences of ≤ 15 characters must match exactly
        max_sentences: int = 2000,  # Neo: O(n²) pairs; longer documents are left as they are
    ) -> None:
        super().__init__()
        from rapidfuzz.distance import Levenshtein

        self._distance = Levenshtein.distance
        self.proportion, self.max_length_diff = proportion, max(max_length_diff, proportion)
        self.min_char_overlap, self.exact_below_chars = min_char_overlap, exact_below_chars
        self.max_sentences = max_sentences

    def dedup(self, text: str) -> tuple[str, int]:
        sents = split_sentences(text)
        if len(sents) < 2 or len(sents) > self.max_sentences:
            return text, 0
        keys = [s.strip() for s in sents]
        removed: set[int] = set()
        for i in range(len(sents)):
            if i in removed or not keys[i]:
                continue
            a = keys[i]
            for j in range(i + 1, len(sents)):
                b = keys[j]
                if j in removed or not b:
                    continue
                la, lb = len(a), len(b)
                if abs(la - lb) / max(la, lb) >= self.max_length_diff:
                    continue
                if min(la, lb) <= self.exact_below_chars:
                    if a == b:
                        removed.add(j)
                    continue
                if _char_overlap(a, b) < self.min_char_overlap:
                    continue
                limit = int(self.proportion * max(la, lb))
                if self._distance(a, b, score_cutoff=limit) <= limit:
                    removed.add(j)
        if not removed:
            return text, 0
        return "".join(s for k, s in enumerate(sents) if k not in removed), len(removed)

    def apply(self, doc: Document) -> Document | str:
        text, n = self.dedup(doc.text)
        if n:
            self.stats.add("similar_line_removed", n)
            doc.text = text
        return doc


# --- Matrix's English rule set ----------------------------------------------------------------------
# The argument defaults of Matrix/english_data_clean_pipeline/filter/filter.py (= util_with_try.py).
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "※", "·", "➢",
            "\u2022", "\u2023", "\u25B6", "\u25C0", "\u25E6", "\u25A0", "\u25A1", "\u25AA", "\u25AB", "\u2013")
_SENT_SPLIT_RE = re.compile(r"[.!…?;\"]+")
_STOP_CLEAN_RE = re.compile(r"[^\w\s'\\]")
_ELLIPSIS_RE = re.compile(r"…+|\.{2,}")
# en_gopher_stopwords.json is Gopher's eight stop words
GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


def _top_ngram_chars(text: str, n: int) -> int:
    """util_with_try.py ``count_ngram_duplicates`` for n ≤ 4: (count of the most frequent character
    n-gram − 1) × n."""
    if len(text) < n:
        return 0
    counts = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    return (counts.most_common(1)[0][1] - 1) * n


def _dupe_ngram_chars(text: str, n: int) -> int:
    """util_with_try.py ``count_ngram_duplicates`` for n ≥ 5: the number of *distinct characters* in
    repeated character n-grams (Matrix's quirk: bounded by the alphabet, so weak on long documents)."""
    counts = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    chars: set[str] = set()
    for gram, c in counts.items():
        if c > 1:
            chars.update(gram)
    return len(chars)


class MatrixEnglishFilter(Filter):
    """Matrix's English rules in its order; reasons ``matrix_en_<rule>``."""

    name = "matrix_en"
    family = "matrix_en"
    langs = frozenset({"en"})

    def __init__(
        self,
        min_mean_word_length: float = 3,  # filter.py: threshold_rps_doc_mean_word_length_1 = 3
        max_mean_word_length: float = 10,  # filter.py: threshold_rps_doc_mean_word_length_2 = 10
        # filter.py: threshold_rps_doc_frac_lines_end_with_ellipsis = 0.2 (util_with_try.py divides by characters)
        max_ellipsis_ratio: float = 0.2,
        max_bullet_lines_ratio: float = 0.9,  # filter.py: threshold_rps_lines_start_with_bulletpoint = 0.9
        max_no_alpha_words: float = 0.4,  # filter.py: no_alph_words_th = 0.4 (util_with_try.py divides by characters)
        min_stop_words: int = 2,  # util_with_try.py gopher_rules_pass rule 6: ≥ 2 distinct stop words
        max_symbol_word_ratio: float = 0.5,  # filter.py: frac_symbol_words = 0.5 ('#', '...', '…' per word)
        min_words: int = 50,  # filter.py: min_word_count = 50
        max_words: int = 10_000,  # filter.py: max_word_count = 10000
        min_chars: int = 200,  # filter.py: ccnt_min_length_th = 200 (CCNet rule 2)
        max_curly_ratio: float = 0.025,  # filter.py: threshold_curly_braces = 0.025
        max_lorem_ratio: float = 3e-8,  # filter.py: threshold_lorem_ipsum = 3e-8
        max_sentences: int = 7500,  # filter.py: threshold_sentence_count = 7500
        max_all_caps_words: float = 0.1,  # filter.py: threshold_frac_all_caps_words = 0.1
        min_unique_words: float = 0.1,  # filter.py: lower_threshold_frac_unique_words = 0.1
        # filter.py: lower_threshold_doc_unigram_entropy = 3 (the upper bound 6 is not applied)
        min_unigram_entropy: float = 3,
        # filter.py: threshold_frac_chars_top{2,3,4}gram
        max_top_ngram_chars: tuple[float, float, float] = (0.20, 0.18, 0.16),
        # filter.py: threshold_frac_chars_dupe{5..10}gram
        max_dupe_ngram_chars: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10),
    ) -> None:
        super().__init__()
        self.min_mean_word_length, self.max_mean_word_length = min_mean_word_length, max_mean_word_length
        self.max_ellipsis_ratio, self.max_bullet_lines_ratio = max_ellipsis_ratio, max_bullet_lines_ratio
        self.max_no_alpha_words, self.min_stop_words = max_no_alpha_words, min_stop_words
        self.max_symbol_word_ratio, self.min_words, self.max_words = max_symbol_word_ratio, min_words, max_words
        self.min_chars, self.max_curly_ratio, self.max_lorem_ratio = min_chars, max_curly_ratio, max_lorem_ratio
        self.max_sentences, self.max_all_caps_words = max_sentences, max_all_caps_words
        self.min_unique_words, self.min_unigram_entropy = min_unique_words, min_unigram_entropy
        self.max_top_ngram_chars, self.max_dupe_ngram_chars = tuple(max_top_ngram_chars), tuple(max_dupe_ngram_chars)

    def filter(self, doc: Document) -> FilterResult:
        text = prose_view(doc.text)
        if not text:
            return False, "matrix_en_empty"
        # gopher_rules_pass
        norm = unicodedata.normalize("NFKC", text)
        words = split_words(norm)
        n_words = len(words)
        if not n_words:
            return False, "matrix_en_empty"
        mean = sum(map(len, words)) / n_words
        if mean < self.min_mean_word_length or mean > self.max_mean_word_length:
            return False, "matrix_en_mean_word_length"
        if len(_ELLIPSIS_RE.findall(text)) / len(text) > self.max_ellipsis_ratio:
            return False, "matrix_en_ellipsis"
        lines = text.splitlines()
        if lines and sum(1 for ln in lines if ln.startswith(_BULLETS)) / len(lines) > self.max_bullet_lines_ratio:
            return False, "matrix_en_bullet_lines"
        spaced = text.split()
        if sum(1 for w in spaced if not any(c.isalpha() for c in w)) / len(text) >= self.max_no_alpha_words:
            return False, "matrix_en_no_alpha_words"
        if len(GOPHER_STOP_WORDS.intersection(_STOP_CLEAN_RE.sub("", text).lower().split())) < self.min_stop_words:
            return False, "matrix_en_few_stop_words"
        if (text.count("#") + text.count("...") + text.count("…")) / n_words >= self.max_symbol_word_ratio:
            return False, "matrix_en_symbols"
        if n_words < self.min_words or n_words > self.max_words:
            return False, "matrix_en_word_count"
        # ccnet_rules_pass (the language score is the langid step's)
        if len(text) < self.min_chars:
            return False, "matrix_en_short"
        # c4_rules_pass
        if (text.count("{") + text.count("}")) / len(text) >= self.max_curly_ratio:
            return False, "matrix_en_curly_braces"
        if text.lower().count("lorem ipsum") / len(text) >= self.max_lorem_ratio:
            return False, "matrix_en_lorem_ipsum"
        if len(_SENT_SPLIT_RE.split(norm)) >= self.max_sentences:
            return False, "matrix_en_sentences"
        # pretrainer_rules_pass
        if sum(1 for w in spaced if w.isalpha() and w.isupper()) / len(spaced) > self.max_all_caps_words:
            return False, "matrix_en_all_caps"
        if len(set(spaced)) / len(spaced) < self.min_unique_words:
            return False, "matrix_en_unique_words"
        # refinedweb_rules_pass
        counts = Counter(spaced)
        total = len(spaced)
        entropy = -sum(c / total * math.log(c / total) for c in counts.values())
        if entropy < self.min_unigram_entropy:
            return False, "matrix_en_unigram_entropy"
        for n, limit in zip((2, 3, 4), self.max_top_ngram_chars, strict=False):
            if _top_ngram_chars(text, n) / len(text) > limit:
                return False, f"matrix_en_top_{n}gram"
        for n, limit in zip(range(5, 11), self.max_dupe_ngram_chars, strict=False):
            if _dupe_ngram_chars(text, n) / len(text) > limit:
                return False, f"matrix_en_dupe_{n}gram"
        return True


# --- sensitive words --------------------------------------------------------------------------------
_CJK_RE = re.compile("[\u3400-\u9fff]")


def _compile(words: list[str]) -> re.Pattern[str] | None:
    words = sorted({w.strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    if not words:
        return None
    # Chinese terms match as substrings (no spaces between words); others on word boundaries
    parts = [re.escape(w) if _CJK_RE.search(w) else rf"(?<!\w){re.escape(w)}(?!\w)" for w in words]
    return re.compile("|".join(parts), re.IGNORECASE)


class SensitiveWordsFilter(Step):
    """Drop a document when too many of its lines hold a sensitive word (``sensitive_words``), and
    optionally remove the remaining hit lines from kept documents (Matrix's Chinese linewise rule).

    ``words`` / ``files`` are per language (``{"zh": [...], "en": [...], "*": [...]}``; ``*`` applies to
    every language; a file holds one term a line, ``#`` comments); ``defaults`` adds Neo's starting
    list (``wordlists.DEFAULT_SENSITIVE_WORDS``: obvious gambling, spam and adult terms).
    """

    name = "sensitive_words"
    family = "sensitive"

    def __init__(
        self,
        words: dict[str, list[str]] | None = None,
        files: dict[str, list[str]] | None = None,
        defaults: bool = True,
        # Neo: a spam page repeats its terms on most lines; an article that mentions one does not
        max_hit_lines_ratio: float = 0.3,
        min_hits: int = 2,  # Neo: ... and one hit is not enough to drop a document of several lines
        # Matrix chinese filter.py linewise_filter rule 5: lines with a bad word are removed
        remove_lines: bool = False,
    ) -> None:
        super().__init__()
        merged: dict[str, list[str]] = {}
        if defaults:
            for lang, ws in DEFAULT_SENSITIVE_WORDS.items():
                merged.setdefault(lang, []).extend(ws)
        for lang, ws in (words or {}).items():
            merged.setdefault(lang, []).extend(ws)
        for lang, paths in (files or {}).items():
            for f in paths:
                path = Path(f)
                if not path.is_file():
                    raise ValueError(f"sensitive word file not found: {path}")
                merged.setdefault(lang, []).extend(
                    ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#"))
        common = merged.pop("*", [])
        self.patterns = {lang: _compile(ws + common) for lang, ws in merged.items()}
        self.default_pattern = _compile(common)
        self.max_hit_lines_ratio, self.min_hits, self.remove_lines = max_hit_lines_ratio, min_hits, remove_lines

    def apply(self, doc: Document) -> Document | str:
        pattern = self.patterns.get(doc.lang, self.default_pattern)
        if pattern is None:
            return doc
        lines = doc.text.split("\n")
        hit = [i for i, ln in enumerate(lines) if ln.strip() and pattern.search(ln)]
        if not hit:
            return doc
        n_lines = sum(1 for ln in lines if ln.strip())
        if len(hit) >= self.min_hits and len(hit) / n_lines > self.max_hit_lines_ratio or len(hit) == n_lines:
            return "sensitive_words"
        if self.remove_lines:
            gone = set(hit)
            doc.text = "\n".join(ln for i, ln in enumerate(lines) if i not in gone)
            self.stats.add("line_removed_sensitive_words", len(hit))
        return doc
