"""Extraction: main text out of HTML, mojibake repaired, control characters out, Unicode NFKC where safe.

HTML goes through trafilatura (main content, tables kept, comments dropped) under a per-document
time limit: a page that makes the extractor raise is dropped as ``extract_error``, one that runs
past ``timeout_s`` as ``extract_timeout`` (SIGALRM in the main thread, which is where Celery's
prefork/solo pools and the eager executor run tasks; elsewhere only ``max_bytes`` guards).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from neo_dataproc.document import Document
from neo_dataproc.steps.base import RULE_ERRORS, Step

log = logging.getLogger(__name__)

# C0/C1 controls except tab and newline; zero-width space and BOM; CR handled apart.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_CR_RE = re.compile("\r\n?")
# UTF-8 read as Latin-1/cp1252 leaves a lead byte (Â-ô) before a continuation byte (U+0080-U+00BF or
# its cp1252 glyph): a cheap test before ftfy's thorough (and ~100× slower) badness check.
_MOJIBAKE_HINT_RE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
# Full-width punctuation and the ideographic space are how Chinese is written: NFKC would turn
# "，。？" neighbours like "，" (U+FF0C) into ASCII ",", so they are shielded from it.
_PROTECTED = [chr(c) for c in (*range(0xFF01, 0xFF10), *range(0xFF1A, 0xFF21), *range(0xFF3B, 0xFF41),
                               *range(0xFF5B, 0xFF66), 0x3000)]
_SHIELD = str.maketrans({ch: chr(0xF0000 + i) for i, ch in enumerate(_PROTECTED)})  # plane-15 private use
_UNSHIELD = str.maketrans({chr(0xF0000 + i): ch for i, ch in enumerate(_PROTECTED)})


_PARA_SPLIT_RE = re.compile(r"(\n[ \t]*\n)")
_CJK_CHAR_RE = re.compile("[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")
_NOT_WRAPPED_START = (" ", "\t", "-", "*", "•", "#", ">", "|", "+", "$")
_NOT_WRAPPED_END = (";", "{", "}", "(", "\\", ":")
_SENTENCE_END = (".", "!", "?", "。", "！", "？", '"', "”")


_BLANK_RUN_RE = re.compile(r"\n(?:[ \t]*\n)+")


def _single_spaced(text: str, min_breaks: int = 3) -> str | None:
    """A double-spaced text (a blank line after every line, ≥ ``min_breaks`` times, never a bare
    line break) with one blank line read as a line break and two or more as a paragraph break;
    None for any other text."""
    seps = _BLANK_RUN_RE.findall(text.strip("\n"))
    if len(seps) < min_breaks or "\n" in _BLANK_RUN_RE.sub("", text.strip("\n")):
        return None
    return _BLANK_RUN_RE.sub(lambda m: "\n" if m.group(0).count("\n") == 2 else "\n\n", text)


def unwrap(text: str, min_width: int = 30, max_width: int = 100) -> str:
    """Join hard-wrapped paragraphs (``_unwrap``). A double-spaced copy of a hard-wrapped text (a
    blank line after every line) is read single-spaced first, so it unwraps as the original does;
    when nothing is joined the text is left as it was."""
    single = _single_spaced(text) if "\n" in text else None
    if single is not None:
        joined = _unwrap(single, min_width, max_width)
        return joined if joined != single else text
    return _unwrap(text, min_width, max_width)


def _unwrap(text: str, min_width: int = 30, max_width: int = 100) -> str:
    """Join hard-wrapped paragraphs (plain-text files filled to a fixed width, as ``fmt``/``textwrap``
    or a 38-character Chinese fill make them) into one line each, so line rules (C4's terminal
    punctuation) judge sentences, not wrap points. A paragraph is wrapped when all its lines but the
    last are 60–100 % of its widest line, most do not end a sentence, and none looks like a list,
    a table, a quote or code."""
    if "\n" not in text:
        return text
    parts = _PARA_SPLIT_RE.split(text)
    changed = False
    for i in range(0, len(parts), 2):
        lines = parts[i].split("\n")
        tail = ""
        if lines[-1] == "":  # the text's final newline
            lines, tail = lines[:-1], "\n"
        if len(lines) < 2:
            continue
        widths = [len(ln) for ln in lines[:-1]]
        width = max(widths)
        if not min_width <= width <= max_width or min(widths) < 0.6 * width:
            continue
        if any(ln.startswith(_NOT_WRAPPED_START) for ln in lines[1:]) or any(
                ln.rstrip().endswith(_NOT_WRAPPED_END) for ln in lines[:-1]):
            continue
        if sum(1 for ln in lines[:-1] if ln.rstrip().endswith(_SENTENCE_END)) * 2 > len(lines) - 1:
            continue  # one sentence a line, written so: not a fill
        out = lines[0].rstrip()
        for ln in lines[1:]:
            ln = ln.strip()
            cjk = out and ln and _CJK_CHAR_RE.match(out[-1]) and _CJK_CHAR_RE.match(ln[0])
            out += ("" if cjk else " ") + ln
        parts[i] = out + tail
        changed = True
    return "".join(parts) if changed else text


class ExtractTimeout(BaseException):
    """Raised by the alarm; a BaseException so an extractor's ``except Exception`` cannot swallow it."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``ExtractTimeout`` in this block after ``seconds`` (main thread only, else no limit)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum: int, frame: object) -> None:
        raise ExtractTimeout

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def trafilatura_extract(html: str) -> str | None:
    import trafilatura

    return trafilatura.extract(
        html, include_comments=False, include_tables=True, include_images=False, deduplicate=False,
        favor_recall=True,
    )


_TABLE_ROW_RE = re.compile(r"^\|(.*)\|$", re.MULTILINE)
# a table cell that holds paragraphs or headings: the table lays the page out, it is not data
_LAYOUT_CELL_RE = re.compile(r"<t[dh]\b[^>]*>\s*(?:<(?!/)[^>]*>\s*)*<(?:p|h[1-6]|pre|blockquote)\b", re.I)
_TABLE_TAG_RE = re.compile(r"<(/?)(?:table|tbody|thead|tfoot|tr|td|th)\b", re.I)


def unlayout_tables(html: str) -> str:
    """A page laid out with a table (cells holding ``<p>``/``<h1>``…) has its table tags made ``<div>``s
    before extraction: trafilatura renders a table cell as one line, which joins the heading and every
    paragraph of the page's main text into one (held-out tune half: such pages lost their paragraph
    breaks, so C4 read them as one sentence-poor line and their re-templated copies did not match)."""
    if "<t" not in html or not _LAYOUT_CELL_RE.search(html):
        return html
    return _TABLE_TAG_RE.sub(r"<\1div", html)


def untable_layout(text: str, min_cell: int = 100) -> str:
    """Rows of a layout table (trafilatura renders tables as ``| cell | cell |``) holding a long cell
    become one line per cell: a page laid out in a table is prose, not a data table."""
    if "|" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        cells = [c.strip() for c in m.group(1).split(" | ")]
        if max(map(len, cells)) < min_cell:
            return m.group(0)
        return "\n".join(c for c in cells if c)

    return _TABLE_ROW_RE.sub(repl, text)


def nfkc_safe(text: str) -> str:
    """NFKC except full-width CJK punctuation and the ideographic space (kept as written)."""
    if text.isascii() or unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text.translate(_SHIELD)).translate(_UNSHIELD)


class ExtractStep(Step):
    """Turn raw input into clean text; drops: ``extract_timeout``, ``extract_error``,
    ``extract_too_large``, ``extract_empty``, ``extract_lossy_encoding``.

    Counters: ``html_extracted``, ``fixed_mojibake``, ``nfkc_changed``, ``removed_control_chars``.
    """

    name = "extract"
    family = "extract"

    def __init__(
        self,
        timeout_s: float = 5.0,  # trafilatura takes ~10-50 ms a page; 100× that is a pathological page
        max_bytes: int = 5_000_000,  # larger raw documents are dropped before parsing (CCNet-scale pages are < 1 MB)
        fix_mojibake: bool = True,
        nfkc: bool = True,
        min_chars: int = 1,
        html_extractor: Callable[[str], str | None] | None = None,
        unwrap_lines: bool = True,  # join hard-wrapped paragraphs of plain-text files (see ``unwrap``)
        max_replacement_chars: int | None = 0,  # U+FFFD left after repair: bytes were lost in decoding (None: keep)
    ) -> None:
        super().__init__()
        self.max_replacement_chars = max_replacement_chars
        self.unwrap_lines = unwrap_lines
        self.timeout_s, self.max_bytes, self.min_chars = timeout_s, max_bytes, min_chars
        self.fix_mojibake, self.nfkc = fix_mojibake, nfkc
        self.html_extractor = html_extractor or trafilatura_extract
        logging.getLogger("trafilatura").setLevel(logging.ERROR)
        logging.getLogger("htmldate").setLevel(logging.ERROR)

    def apply(self, doc: Document) -> Document | str:
        text = doc.text
        if len(text) > self.max_bytes:  # chars ≤ bytes: a cheap, conservative check
            return "extract_too_large"
        if doc.kind == "html":
            try:
                with time_limit(self.timeout_s):
                    extracted = self.html_extractor(unlayout_tables(text))
            except ExtractTimeout:
                log.warning("extract: document %d (%s) timed out after %.1fs", doc.uid, doc.meta.get("path"),
                            self.timeout_s)
                return "extract_timeout"
            except (*RULE_ERRORS, AssertionError, OSError) as exc:
                log.warning("extract: document %d (%s) crashed the extractor: %s: %s", doc.uid,
                            doc.meta.get("path"), type(exc).__name__, exc)
                return "extract_error"
            text = untable_layout(extracted or "")
            self.stats.add("html_extracted")
        text = self.clean_text(text, code=doc.kind == "code")
        if doc.kind == "text" and self.unwrap_lines:
            unwrapped = unwrap(text)
            if unwrapped != text:
                text = unwrapped
                self.stats.add("unwrapped_lines")
        if len(text.strip()) < self.min_chars:
            return "extract_empty"
        if self.max_replacement_chars is not None and text.count("\ufffd") > self.max_replacement_chars:
            return "extract_lossy_encoding"  # mojibake that cannot be repaired: the original bytes are gone
        doc.text = text
        return doc

    def clean_text(self, text: str, code: bool = False) -> str:
        if "\r" in text:
            text = _CR_RE.sub("\n", text)
        if self.fix_mojibake and not text.isascii() and _MOJIBAKE_HINT_RE.search(text):
            from ftfy import badness, fix_encoding

            if badness.is_bad(text):
                fixed = fix_encoding(text)
                if fixed != text:
                    text = fixed
                    self.stats.add("fixed_mojibake")
        if _CONTROL_RE.search(text):
            text = _CONTROL_RE.sub("", text)
            self.stats.add("removed_control_chars")
        if self.nfkc and not code:  # NFKC would rewrite code (e.g. superscripts, ligatures in strings)
            normalized = nfkc_safe(text)
            if normalized != text:
                text = normalized
                self.stats.add("nfkc_changed")
        return text
