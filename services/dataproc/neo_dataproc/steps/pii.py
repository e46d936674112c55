"""PII masking (emails, phone numbers, public IP addresses, Chinese resident ID numbers) and the
URL blocklist filter.

Masks are fixed placeholders (``<EMAIL>``, ``<PHONE>``, ``<IP>``, ``<ID_CARD>``), counted per kind as
``masked_<kind>``. As datatrove's ``PIIFormatter`` does, only globally routable IPs are masked
(``127.0.0.1`` or ``192.168.0.1`` in documentation are not personal). ID numbers must pass the
GB 11643-1999 check digit, so 18-digit order numbers are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from neo_dataproc.document import Document
from neo_dataproc.steps.base import Filter, FilterResult, Step

EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
IPV4_RE = re.compile(
    r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.]\d)")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}"  # mainland mobile: 1[3-9]x xxxx xxxx
    # international: +44 20 7946 0958, +86 (21) 5403 8888
    r"|\+\d{1,3}[-. ]?(?:\(\d{1,4}\)[-. ]?)?\d{1,4}(?:[-. ]\d{1,6}){1,5}"
    r"|\(0\d{1,3}\)[-. ]?\d{3,4}[-. ]?\d{4}"  # area code in brackets: (010) 6552 9988, (02) 2345-6789
    r"|0\d{2,3}-\d{7,8}"  # mainland landline with area code: 010-12345678
    r"|09\d{2}-\d{3}-\d{3}"  # Taiwan mobile: 0912-345-678
    r"|[48]00-\d{3}-\d{4}"  # mainland 400/800 service numbers
    r"|(?:\+1[-. ]?)?\(?[2-9]\d{2}\)?[-. ][2-9]\d{2}[-. ]\d{4}"  # NANP: (555) 234-5678
    r")(?![\w])"
)
# IPv6 candidates (full, "::"-compressed, with an embedded IPv4 tail); ipaddress decides, and only
# global addresses are masked (no ::1, fe80::, documentation 2001:db8::).
IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:])")
ID_CARD_RE = re.compile(r"(?<!\d)[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\d)")
_DIGIT_RE = re.compile(r"\d")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def id_card_valid(number: str) -> bool:
    """GB 11643-1999 (ISO 7064 MOD 11-2) check digit of an 18-character resident ID."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == number[17].upper()


def _phone_digits_ok(text: str) -> bool:
    """8 to 15 digits (E.164's maximum): not a date, a version or a short code."""
    return 8 <= sum(c.isdigit() for c in text) <= 15


# ours: a dotted quad that numbers a heading ("5.4.5.1. Enabling Multi-Arch" at a line's start, then ". ")
# or follows "Section"/"Chapter"/"§"/"第" is a section number, not an address (held-out tune half: Debian
# Administrator's Handbook headings masked as <IP> in clean documents)
_SECTION_WORD_RE = re.compile(r"(?:[Ss]ection|[Cc]hapter|§|第)\s*$")
_HEADING_END_RE = re.compile(r"\.(?:\s|$)")


def _section_number(text: str, m: re.Match[str]) -> bool:
    before = text[: m.start()]
    if _SECTION_WORD_RE.search(before[-12:]):
        return True
    return not before[before.rfind("\n") + 1:].strip() and bool(_HEADING_END_RE.match(text, m.end()))


def _is_public_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_global
    except ValueError:
        return False


class PiiStep(Step):
    """Mask PII in place; counters ``masked_email``, ``masked_phone``, ``masked_ip``, ``masked_id_card``."""

    name = "pii"
    family = "pii"

    def __init__(self, email: bool = True, phone: bool = True, ip: bool = True, id_card: bool = True,
                 placeholders: dict[str, str] | None = None) -> None:
        super().__init__()
        self.kinds = {k for k, on in (("email", email), ("phone", phone), ("ip", ip), ("id_card", id_card)) if on}
        self.placeholders = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>", "id_card": "<ID_CARD>",
                             **(placeholders or {})}

    def mask(self, text: str) -> str:
        add = self.stats.add
        if "email" in self.kinds and "@" in text:
            text, n = EMAIL_RE.subn(self.placeholders["email"], text)
            if n:
                add("masked_email", n)
        if not _DIGIT_RE.search(text):
            return text
        if "id_card" in self.kinds:
            text = self._sub(ID_CARD_RE, text, "id_card", id_card_valid)
        if "ip" in self.kinds:
            text = self._sub(IPV4_RE, text, "ip", _is_public_ip, skip=_section_number)
            if ":" in text:
                text = self._sub(IPV6_RE, text, "ip", _is_public_ip)
        if "phone" in self.kinds:
            text = self._sub(PHONE_RE, text, "phone", _phone_digits_ok)
        return text

    def _sub(self, pattern: re.Pattern[str], text: str, kind: str, check: object,
             skip: Callable[[str, re.Match[str]], bool] | None = None) -> str:
        count = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal count
            if check is not None and not check(m.group(0)):  # type: ignore[operator]
                return m.group(0)
            if skip is not None and skip(text, m):
                return m.group(0)
            count += 1
            return self.placeholders[kind]

        out = pattern.sub(repl, text)
        if count:
            self.stats.add(f"masked_{kind}", count)
        return out

    def apply(self, doc: Document) -> Document | str:
        doc.text = self.mask(doc.text)
        return doc


def _normalize_entry(entry: str) -> str:
    entry = entry.strip().lower()
    for prefix in ("https://", "http://"):
        entry = entry.removeprefix(prefix)
    return entry.removeprefix("www.").rstrip("/")


class UrlBlocklistFilter(Filter):
    """Drop documents whose URL is on a blocklist (``url_blocklisted``). An entry is a domain
    (``example.com`` also blocks its subdomains) or a URL prefix (``example.com/ads``), as the
    UT1 lists MAP-Neo's Matrix pipeline uses; ``files`` hold one entry per line, ``#`` comments.
    ``words`` block a URL containing any of them (``url_blocked_word``), as Matrix's
    ``bad_url_words.py`` ``STRICT_BAD_URL_WORDS``."""

    name = "url_blocklist"
    family = "url"

    def __init__(self, domains: list[str] | tuple[str, ...] = (), files: list[str] | tuple[str, ...] = (),
                 words: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        entries = [_normalize_entry(d) for d in domains]
        for f in files:
            path = Path(f)
            if not path.is_file():
                raise ValueError(f"url blocklist file not found: {path}")
            entries += [_normalize_entry(ln) for ln in path.read_text(encoding="utf-8").splitlines()
                        if ln.strip() and not ln.lstrip().startswith("#")]
        self.domains = frozenset(e for e in entries if "/" not in e)
        self.prefixes = tuple(sorted(e for e in entries if "/" in e))
        self.words = tuple(sorted({w.strip().lower() for w in words if w.strip()}))

    def filter(self, doc: Document) -> FilterResult:
        if not doc.url or not (self.domains or self.prefixes or self.words):
            return True
        if self.words:
            low = doc.url.lower()
            if any(w in low for w in self.words):
                return False, "url_blocked_word"
        parts = urlsplit(doc.url if "//" in doc.url else f"//{doc.url}")
        host = (parts.hostname or "").removeprefix("www.")
        labels = host.split(".")
        if any(".".join(labels[i:]) in self.domains for i in range(len(labels))):
            return False, "url_blocklisted"
        if self.prefixes and f"{host}{parts.path}".startswith(self.prefixes):
            return False, "url_blocklisted"
        return True
