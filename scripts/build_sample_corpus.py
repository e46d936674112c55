#!/usr/bin/env python3
"""Build the small, real, bilingual (English + Chinese + code) sample corpus under ``data/sample/``.

Sources (all read from disk; this script never calls apt, it only reads what the packages ship):

* ``debian-reference``  Debian Reference manual, English and Simplified Chinese HTML
  (packages ``debian-reference-en`` and ``debian-reference-zh-cn``), split into h1/h2/h3-level
  sections keyed by the DocBook section id, so EN<->ZH parallel pairs can be built later from
  ``meta.section``.
* ``fortunes``          fortune cookies: English (``fortunes`` + ``fortunes-min``) and Chinese
  (``fortunes-zh``: Tang poems, Song ci, ...), grouped ``--fortunes-per-doc`` per document.
* ``manpages``          Chinese man pages (``manpages-zh``) rendered with groff, plus the English
  man page of the same name and section where one is installed (``manpages``, ``coreutils``, ...).
* ``python-stdlib``     a deterministic sample of the running interpreter's standard-library source.

Output (deterministic: sorted inputs, seeded sampling, gzip with mtime=0, no timestamps anywhere)::

    data/sample/<source>.<lang>.jsonl.gz      one JSON object per line:
        {"id", "text", "source", "lang", "license", "meta"}
    data/sample/raw/debian-reference-<lang>-<page>.html.gz   a few original HTML pages
    data/sample/MANIFEST.json                 per file: docs, text bytes, file bytes, sha256
    data/README.md                            provenance, licenses, versions, rebuild command

Rebuild (after ``apt-get install -y debian-reference-en debian-reference-zh-cn fortunes fortunes-zh
manpages-zh manpages groff-base``)::

    python scripts/build_sample_corpus.py

Standard library only; needs the ``groff`` binary (package ``groff-base``) for the man pages.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import html.parser
import io
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import unicodedata
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------------

CJK_RE = re.compile(
    "[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u31a0-\u31bf\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]"
)
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
OVERSTRIKE_RE = re.compile(r"([^\x08\n])\x08([^\x08\n])")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # keeps \t \n \f \r (handled separately)


class BuildError(RuntimeError):
    pass


def need_path(path: Path, package: str, what: str) -> Path:
    if not path.exists():
        raise BuildError(
            f"{what} not found at {path}: install the Debian package `{package}` "
            f"(apt-get install -y {package}) or pass the right path on the command line"
        )
    return path


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def strip_terminal_codes(text: str) -> str:
    """Remove ANSI escape sequences, nroff overstrike (bold ``X\\bX``, underline ``_\\bX``) and stray C0
    controls other than tab/newline/form feed."""
    text = ANSI_RE.sub("", text)

    def _over(m: re.Match[str]) -> str:
        a, b = m.group(1), m.group(2)
        return a if b == "_" else b

    while "\x08" in text:
        new = OVERSTRIKE_RE.sub(_over, text)
        if new == text:
            break
        text = new
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return CONTROL_RE.sub("", text)


def tidy_lines(text: str) -> str:
    """Strip trailing spaces per line, collapse 3+ newlines to 2, strip leading/trailing blank lines
    (leading indentation of the first line is kept)."""
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def cjk_share(text: str) -> float:
    """CJK characters / (CJK characters + ASCII letters)."""
    cjk = len(CJK_RE.findall(text))
    letters = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return cjk / (cjk + letters) if cjk + letters else 0.0


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def write_gzip(path: Path, data: bytes) -> None:
    """gzip with mtime=0 and no embedded file name, so identical input gives identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Doc:
    id: str
    text: str
    source: str
    lang: str
    license: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        rec = {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "lang": self.lang,
            "license": self.license,
            "meta": {k: self.meta[k] for k in sorted(self.meta)},
        }
        return json.dumps(rec, ensure_ascii=False)

    @property
    def nbytes(self) -> int:
        return utf8_len(self.text)


def take_budget(docs: list[Doc], max_bytes: int, seed: int, key: str) -> list[Doc]:
    """Deterministic sample: shuffle (seeded by ``seed`` and ``key``) and keep docs while they fit in
    ``max_bytes`` of UTF-8 text (0 = keep all). Result is sorted by id."""
    if max_bytes <= 0:
        return sorted(docs, key=lambda d: d.id)
    order = sorted(docs, key=lambda d: d.id)
    random.Random(f"{seed}:{key}").shuffle(order)
    chosen, total = [], 0
    for d in order:
        if total + d.nbytes > max_bytes:
            continue
        chosen.append(d)
        total += d.nbytes
    return sorted(chosen, key=lambda d: d.id)


# --------------------------------------------------------------------------------------------------
# Debian package metadata (read from dpkg's database with the standard library; optional)
# --------------------------------------------------------------------------------------------------


class Dpkg:
    INDEXED_MARKERS = ("/man/", "/usr/share/games/fortunes/")  # man pages may be symlinks elsewhere

    def __init__(self, status: Path, info_dir: Path):
        self.versions: dict[str, str] = {}
        if status.exists():
            pkg = None
            for line in status.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Package: "):
                    pkg = line.split(":", 1)[1].strip()
                elif line.startswith("Version: ") and pkg:
                    self.versions[pkg] = line.split(":", 1)[1].strip()
                elif not line.strip():
                    pkg = None
        self._info_dir = info_dir
        self._owner: dict[str, str] | None = None

    def version(self, pkg: str) -> str:
        return self.versions.get(pkg, "unknown")

    def owner(self, path: Path) -> str:
        """Package owning ``path`` (following symlinks), from /var/lib/dpkg/info/*.list."""
        if self._owner is None:
            self._owner = {}
            for lst in sorted(glob.glob(str(self._info_dir / "*.list"))):
                pkg = Path(lst).name[: -len(".list")].split(":")[0]
                try:
                    lines = Path(lst).read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
                for p in lines:
                    if any(m in p for m in self.INDEXED_MARKERS):
                        self._owner.setdefault(p, pkg)
        for cand in (str(path), os.path.realpath(path)):
            if cand in self._owner:
                return self._owner[cand]
        return "unknown"


SPDX_FROM_DEP5 = {  # DEP-5 short names -> SPDX ids, for the ones that occur here
    "GPL-2": "GPL-2.0-only",
    "GPL-2+": "GPL-2.0-or-later",
    "GPL-2.0+": "GPL-2.0-or-later",
    "GPL-3": "GPL-3.0-only",
    "GPL-3+": "GPL-3.0-or-later",
    "GPL-3.0+": "GPL-3.0-or-later",
    "LGPL-2.1+": "LGPL-2.1-or-later",
    "LGPL-2+": "LGPL-2.0-or-later",
    "BSD-3-clause": "BSD-3-Clause",
    "BSD-2-clause": "BSD-2-Clause",
    "GFDL-NIV-1.3+": "GFDL-1.3-no-invariants-or-later",
    "MIT/X11": "MIT",
    "GPL-1+ or Artistic": "GPL-1.0-or-later OR Artistic-1.0-Perl",
}


def dep5_main_license(copyright_file: Path) -> str | None:
    """The License of the ``Files: *`` paragraph of a machine-readable debian/copyright, if any."""
    if not copyright_file.exists():
        return None
    text = copyright_file.read_text(encoding="utf-8", errors="replace")
    if "copyright-format" not in text.split("\n", 1)[0]:
        return None
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"^Files:\s*\*\s*$", para, re.M):
            m = re.search(r"^License:\s*(\S.*)$", para, re.M)
            if m:
                lic = m.group(1).strip()
                return SPDX_FROM_DEP5.get(lic, lic)
    return None


# --------------------------------------------------------------------------------------------------
# debian-reference: DocBook XHTML -> sections
# --------------------------------------------------------------------------------------------------

SKIP_DIV_CLASSES = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "footnotes"}
BLOCK_TAGS = {
    "p", "div", "ul", "ol", "dl", "dt", "dd", "li", "table", "thead", "tbody", "tr", "pre",
    "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
}  # fmt: skip
WS_RE = re.compile(r"\s+")
CJK_NL_RE = re.compile(rf"({CJK_RE.pattern})[ \t]*\n\s*(?={CJK_RE.pattern})")


def collapse_inline(text: str) -> str:
    # a source line break between two CJK characters is not a space in Chinese
    text = CJK_NL_RE.sub(r"\1", text)
    return WS_RE.sub(" ", text).strip()


class DocBookSections(html.parser.HTMLParser):
    """Linearise a DocBook-XSL XHTML page into text blocks, each tagged with the id of the innermost
    enclosing h1/h2/h3 section (the ``<a id=...>`` inside the heading). h4+ stay inside their h3."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.page = page
        self.section = page  # text before the first heading belongs to the page itself
        self.level = 0
        self.titles: dict[str, str] = {}
        self.levels: dict[str, int] = {page: 0}
        self.order: list[str] = [page]
        self.blocks: dict[str, list[tuple[str, str]]] = {page: []}  # sec -> [(kind, text)]
        self.buf: list[str] = []
        self.prefix = ""
        self.pending_kind = "p"
        self.div_depth = 0
        self.skip_at: int | None = None
        self.in_head = False
        self.pre_depth = 0
        self.row_depth = 0
        self.cell_index = 0
        self.list_stack: list[str] = []
        self.heading: str | None = None  # tag name while inside h1/h2/h3
        self.heading_id: str | None = None

    # -- helpers
    def _flush(self) -> None:
        raw = "".join(self.buf)
        self.buf = []
        if self.pending_kind == "pre":
            text = raw.strip("\n").rstrip()
        else:
            text = collapse_inline(raw)
        if not text:
            return  # keep a pending list-item prefix/kind for the first non-empty block inside it
        kind = "li" if self.prefix and self.pending_kind == "p" else self.pending_kind
        self.blocks[self.section].append((kind, self.prefix + text))
        self.prefix = ""
        self.pending_kind = "p"

    def _start_section(self, sec_id: str, level: int) -> None:
        if sec_id in self.blocks:  # should not happen (ids are unique per page)
            sec_id = f"{sec_id}~{len(self.order)}"
        self.section, self.level = sec_id, level
        self.levels[sec_id] = level
        self.order.append(sec_id)
        self.blocks[sec_id] = []

    @property
    def skipping(self) -> bool:
        return self.skip_at is not None or self.in_head

    # -- parser callbacks
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "head":
            self.in_head = True
        if tag == "div":
            self.div_depth += 1
            classes = set((a.get("class") or "").split())
            if self.skip_at is None and classes & SKIP_DIV_CLASSES:
                self.skip_at = self.div_depth
        if self.skipping:
            return
        if tag in ("h1", "h2", "h3"):
            self._flush()
            self.heading = tag
            self.heading_id = None
            return
        if tag == "a" and self.heading and self.heading_id is None and a.get("id"):
            self.heading_id = a["id"]
            self._start_section(a["id"], int(self.heading[1]))
            return
        if tag in ("img", "col", "colgroup"):
            return
        if tag == "br":
            self.buf.append("\n" if self.pre_depth else " ")
            return
        if self.row_depth and tag in ("td", "th"):
            if "".join(self.buf).strip():
                self.buf.append(" | ")
            return
        if self.row_depth and tag in BLOCK_TAGS and tag != "tr":
            self.buf.append(" ")
            return
        if tag in BLOCK_TAGS:
            self._flush()
            if tag in ("ul", "ol"):
                self.list_stack.append(tag)
            elif tag == "li":
                self.prefix = "  " * max(0, len(self.list_stack) - 1) + "- "
                self.pending_kind = "li"
            elif tag in ("dt", "dd"):
                self.prefix = "" if tag == "dt" else "  "
                self.pending_kind = "li"
            elif tag == "tr":
                self.row_depth += 1
                self.pending_kind = "tr"
            elif tag == "pre":
                self.pre_depth += 1
                self.pending_kind = "pre"

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "img", "col", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "head":
            self.in_head = False
            return
        if tag == "div":
            if self.skip_at is not None and self.div_depth == self.skip_at:
                self.skip_at = None
                self.div_depth -= 1
                return
            self.div_depth -= 1
        if self.skipping:
            return
        if tag in ("h1", "h2", "h3") and self.heading == tag:
            title = collapse_inline("".join(self.buf))
            self.buf = []
            if self.heading_id is None:  # heading without an anchor: keep it as text
                if title:
                    self.blocks[self.section].append(("h", title))
            else:
                self.titles[self.section] = title
            self.heading = None
            return
        if tag == "tr" and self.row_depth:
            self.row_depth -= 1
            self.pending_kind = "tr"
            self._flush()
            return
        if self.row_depth and tag in BLOCK_TAGS:
            return
        if tag in BLOCK_TAGS:
            if tag == "pre":
                self.pending_kind = "pre"
                self._flush()
                self.pre_depth = max(0, self.pre_depth - 1)
                return
            if tag in ("li", "dt", "dd"):
                self.pending_kind = "li"
            self._flush()
            if tag in ("ul", "ol") and self.list_stack:
                self.list_stack.pop()

    def handle_data(self, data):
        if self.skipping:
            return
        self.buf.append(data)

    def close(self):
        super().close()
        self._flush()

    def sections(self) -> list[tuple[str, int, str, str]]:
        """[(section_id, level, title, text)] for sections with a non-empty body."""
        out = []
        for sec in self.order:
            blocks = self.blocks[sec]
            if not blocks:
                continue
            parts: list[str] = []
            title = self.titles.get(sec, "")
            if title:
                parts.append(title)
                parts.append("\n\n")
            prev = None
            for kind, text in blocks:
                if prev is not None:
                    parts.append("\n" if kind == prev and kind in ("li", "tr") else "\n\n")
                parts.append(text)
                prev = kind
            out.append((sec, self.levels.get(sec, 0), title, "".join(parts)))
        return out


DEBREF_LANGS = {"en": ("en", "debian-reference-en"), "zh": ("zh-cn", "debian-reference-zh-cn")}


def debref_pages(debref_dir: Path, suffix: str, package: str) -> list[Path]:
    need_path(debref_dir, package, "Debian Reference HTML directory")
    pages = sorted(debref_dir.glob(f"*.{suffix}.html"))
    if not pages:
        raise BuildError(
            f"no *.{suffix}.html pages in {debref_dir}: install the Debian package `{package}` "
            f"(apt-get install -y {package})"
        )
    return pages


def build_debian_reference(args, dpkg: Dpkg) -> dict[str, list[Doc]]:
    per_lang: dict[str, dict[str, Doc]] = {}
    for lang, (suffix, package) in DEBREF_LANGS.items():
        docs: dict[str, Doc] = {}
        for page in debref_pages(args.debref_dir, suffix, package):
            stem = page.name[: -len(f".{suffix}.html")]
            if stem == "index":  # the title page: table of contents, list of tables, legal notice
                continue
            parser = DocBookSections(stem)
            parser.feed(page.read_text(encoding="utf-8"))
            parser.close()
            for sec, level, title, text in parser.sections():
                text = tidy_lines(nfc(text))
                if not text:
                    continue
                docs[sec] = Doc(
                    id=f"debian-reference/{lang}/{sec}",
                    text=text,
                    source="debian-reference",
                    lang=lang,
                    license="GPL-2.0-or-later",
                    meta={
                        "section": sec,
                        "level": level,
                        "title": nfc(title),
                        "page": f"{stem}.{suffix}.html",
                        "package": package,
                        "package_version": dpkg.version(package),
                    },
                )
        per_lang[lang] = docs
    shared = sorted(set(per_lang["en"]) & set(per_lang["zh"]))
    if args.debref_max_sections > 0:
        rng = random.Random(f"{args.seed}:debian-reference")
        keep = set(rng.sample(shared, min(args.debref_max_sections, len(shared))))
        for lang in per_lang:
            per_lang[lang] = {k: v for k, v in per_lang[lang].items() if k in keep}
    return {lang: sorted(d.values(), key=lambda d: d.id) for lang, d in per_lang.items()}


def copy_raw_debref(args, out_dir: Path) -> list[Path]:
    written = []
    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for old in raw_dir.glob("debian-reference-*.html.gz"):
        old.unlink()
    for stem in [s for s in args.raw_pages.split(",") if s]:
        for _lang, (suffix, package) in DEBREF_LANGS.items():
            src = need_path(args.debref_dir / f"{stem}.{suffix}.html", package, "Debian Reference page")
            dst = raw_dir / f"debian-reference-{suffix}-{stem}.html.gz"
            write_gzip(dst, src.read_bytes())
            written.append(dst)
    return sorted(written)


# --------------------------------------------------------------------------------------------------
# fortunes
# --------------------------------------------------------------------------------------------------

FORTUNE_ZH_FILES = ("chinese", "song100", "tang300")


def read_fortunes(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = strip_terminal_codes(text)
    out = []
    for chunk in re.split(r"\n%\n", "\n" + text + "\n"):
        chunk = tidy_lines(nfc(chunk))
        if chunk.strip():
            out.append(chunk)
    return out


def build_fortunes(args, dpkg: Dpkg) -> dict[str, list[Doc]]:
    d = args.fortunes_dir
    need_path(d / "cookie", "fortunes", "English fortune file")
    need_path(d / "tang300", "fortunes-zh", "Chinese fortune file")
    all_files = sorted(
        p for p in d.iterdir()
        if p.is_file() and not p.is_symlink() and "." not in p.name and (d / f"{p.name}.dat").exists()
    )  # fmt: skip
    licenses = {
        "fortunes": "BSD-3-Clause",
        "fortunes-min": "BSD-3-Clause",
        "fortunes-zh": "GPL-3.0-or-later",
    }
    result: dict[str, list[Doc]] = {}
    for lang in ("en", "zh"):
        docs = []
        for f in all_files:
            is_zh = f.name in FORTUNE_ZH_FILES
            if is_zh != (lang == "zh"):
                continue
            owner = dpkg.owner(f)
            if owner == "unknown":
                owner = "fortunes-zh" if is_zh else "fortunes"
            items = read_fortunes(f)
            n = args.fortunes_per_doc
            for start in range(0, len(items), n):
                group = items[start : start + n]
                docs.append(
                    Doc(
                        id=f"fortunes/{lang}/{f.name}/{start // n:04d}",
                        text="\n\n".join(group),
                        source="fortunes",
                        lang=lang,
                        license=licenses.get(owner, "BSD-3-Clause"),
                        meta={
                            "file": f.name,
                            "first_fortune": start,
                            "n_fortunes": len(group),
                            "package": owner,
                            "package_version": dpkg.version(owner),
                        },
                    )
                )
        cap = args.fortunes_en_max_bytes if lang == "en" else args.fortunes_zh_max_bytes
        result[lang] = take_budget(docs, cap, args.seed, f"fortunes.{lang}")
    return result


# --------------------------------------------------------------------------------------------------
# man pages
# --------------------------------------------------------------------------------------------------

MANPAGES_ZH_LICENSE_EXCEPTIONS = {  # from /usr/share/doc/manpages-zh/copyright
    "man1/kill.1": "GPL-2.0-only",
    "man6/intro.6": "GPL-2.0-or-later",
    "man7/epoll.7": "GPL-2.0-or-later",
}
GROFF_PRELUDE = b".ad l\n.nh\n"  # left-adjust (no justification padding), no hyphenation


def read_man_source(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    for enc in ("utf-8", "gb18030"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def is_so_redirect(src: str) -> bool:
    lines = [ln for ln in src.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    return len(lines) <= 2 and any(ln.startswith(".so ") for ln in lines)


def render_man(path: Path, groff: str) -> str:
    src = read_man_source(path)
    if is_so_redirect(src):
        return ""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": "0",
        "GROFF_SGR": "",
    }
    proc = subprocess.run(
        [groff, "-k", "-Kutf-8", "-t", "-mandoc", "-Tutf8", "-P-cbou", "-rHY=0"],
        input=GROFF_PRELUDE + src.encode("utf-8"),
        capture_output=True,
        env=env,
        timeout=120,
    )
    if proc.returncode != 0:
        return ""
    text = strip_terminal_codes(proc.stdout.decode("utf-8", errors="replace"))
    return tidy_lines(nfc(text))


def man_pages_under(root: Path) -> list[Path]:
    out = []
    for sec_dir in sorted(root.glob("man[1-8]")):
        for p in sorted(sec_dir.iterdir()):
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def man_key(path: Path) -> str:
    """'man1/ls.1' for .../man1/ls.1.gz."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return f"{path.parent.name}/{name}"


def build_manpages(args, dpkg: Dpkg) -> dict[str, list[Doc]]:
    groff = shutil.which("groff")
    if not groff:
        raise BuildError(
            "groff not found: install the Debian package `groff-base` (apt-get install -y groff-base)"
        )
    zh_root = need_path(args.man_dir / "zh_CN", "manpages-zh", "Chinese man page directory")
    need_path(args.man_dir / "man2" / "open.2.gz", "manpages", "English man page open(2)")
    zh_pages = man_pages_under(zh_root)
    en_for: dict[str, Path] = {}
    for p in zh_pages:
        cand = args.man_dir / p.parent.name / p.name
        if cand.is_file():
            en_for[man_key(p)] = cand
    # paired pages first (EN counterpart exists), each group in a seeded order
    rng = random.Random(f"{args.seed}:manpages")
    paired = [p for p in zh_pages if man_key(p) in en_for]
    unpaired = [p for p in zh_pages if man_key(p) not in en_for]
    rng.shuffle(paired)
    rng.shuffle(unpaired)
    order = paired + unpaired

    license_cache: dict[str, str] = {}

    def pkg_license(pkg: str) -> str:
        if pkg not in license_cache:
            lic = dep5_main_license(Path("/usr/share/doc") / pkg / "copyright")
            license_cache[pkg] = lic or f"LicenseRef-Debian-{pkg}"
        return license_cache[pkg]

    def make_doc(path: Path, lang: str, text: str) -> Doc:
        key = man_key(path)
        pkg = dpkg.owner(path)
        if lang == "zh":
            lic = (
                MANPAGES_ZH_LICENSE_EXCEPTIONS.get(key, "GFDL-1.2-or-later")
                if pkg == "manpages-zh"
                else pkg_license(pkg)
            )
        else:
            lic = pkg_license(pkg)
        name, _, sect = key.split("/", 1)[1].rpartition(".")
        return Doc(
            id=f"manpages/{lang}/{key}",
            text=text,
            source="manpages",
            lang=lang,
            license=lic,
            meta={
                "page": key,
                "name": name,
                "man_section": sect,
                "package": pkg,
                "package_version": dpkg.version(pkg),
                "paired": key in en_for,
            },
        )

    zh_docs: list[Doc] = []
    en_docs: list[Doc] = []
    zh_total = en_total = 0
    batch = max(8, 4 * (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for i in range(0, len(order), batch):
            chunk = order[i : i + batch]
            texts = list(pool.map(lambda p: render_man(p, groff), chunk))
            en_paths = [en_for.get(man_key(p)) for p in chunk]
            en_texts = list(pool.map(lambda p: render_man(p, groff) if p else "", en_paths))
            for p, t, ep, et in zip(chunk, texts, en_paths, en_texts, strict=True):
                if not t or utf8_len(t) > args.man_max_page_bytes:
                    continue
                if cjk_share(t) < args.man_zh_min_cjk:
                    continue  # an untranslated (English) page shipped under zh_CN
                if utf8_len(et) > args.man_max_page_bytes:
                    et = ""
                if args.man_zh_max_bytes and zh_total + utf8_len(t) > args.man_zh_max_bytes:
                    continue
                zh_docs.append(make_doc(p, "zh", t))
                zh_total += utf8_len(t)
                if ep is not None and et:
                    if args.man_en_max_bytes and en_total + utf8_len(et) > args.man_en_max_bytes:
                        continue
                    en_docs.append(make_doc(ep, "en", et))
                    en_total += utf8_len(et)
            if args.man_zh_max_bytes and zh_total >= args.man_zh_max_bytes * 0.995:
                break
    return {
        "en": sorted(en_docs, key=lambda d: d.id),
        "zh": sorted(zh_docs, key=lambda d: d.id),
    }


# --------------------------------------------------------------------------------------------------
# python stdlib source
# --------------------------------------------------------------------------------------------------

STDLIB_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__", "_bundled"}


def build_python_stdlib(args) -> list[Doc]:
    root = need_path(args.stdlib_dir, "python3", "Python standard library directory")
    cands = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if set(rel.parts[:-1]) & STDLIB_SKIP_DIRS or rel.name.startswith("test_"):
            continue  # (lib2to3's test data lives in lib2to3/tests/)
        size = p.stat().st_size
        if not (args.code_min_file_bytes <= size <= args.code_max_file_bytes):
            continue
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        text = text.replace("\r\n", "\n")
        if not text.strip() or nfc(text) != text:
            continue  # not NFC (e.g. re/_casefix.py): normalising would change the program, so skip it
        if "generated from" in text[:300] and "with gencodec.py" in text[:300]:
            continue  # encodings/cp*.py etc.: machine-generated charmap tables, not much code
        cands.append(
            Doc(
                id=f"python-stdlib/{rel.as_posix()}",
                text=text,
                source="python-stdlib",
                lang="code",
                license="PSF-2.0",
                meta={
                    "path": rel.as_posix(),
                    "language": "python",
                    "python_version": platform.python_version(),
                },
            )
        )
    if not cands:
        raise BuildError(f"no usable .py files under {root}")
    return take_budget(cands, args.code_max_bytes, args.seed, "python-stdlib")


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def write_jsonl(path: Path, docs: Iterable[Doc]) -> tuple[int, int]:
    lines, nbytes = [], 0
    for d in docs:
        if not d.text.strip():
            continue
        lines.append(d.to_json())
        nbytes += d.nbytes
    write_gzip(path, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    return len(lines), nbytes


def char_profile(docs: list[Doc]) -> tuple[float, float]:
    """(share of CJK chars, share of ASCII letters) among non-space chars."""
    cjk = ascii_letters = total = 0
    for d in docs:
        for ch in d.text:
            if ch.isspace():
                continue
            total += 1
            if CJK_RE.match(ch):
                cjk += 1
            elif ch.isascii() and ch.isalpha():
                ascii_letters += 1
    return (cjk / total if total else 0.0, ascii_letters / total if total else 0.0)


SOURCE_INFO = {
    "debian-reference": (
        "Debian Reference (Osamu Aoki), system administration guide; DocBook HTML split into "
        "h1/h2/h3 sections. `meta.section` is the DocBook section id shared by the EN and ZH files.",
        "GPL-2.0-or-later",
    ),
    "fortunes": (
        "fortune(6) cookie files; EN: fortunes + fortunes-min, ZH: fortunes-zh (Tang 300, Song ci 100, "
        "`chinese`: misc. quotes, jokes, Debian texts). `--fortunes-per-doc` fortunes per document, "
        "ANSI colour codes and overstrike removed.",
        "EN: BSD-3-Clause (package; the quotes themselves are mostly short citations/folklore); "
        "ZH: GPL-3.0-or-later",
    ),
    "manpages": (
        "ZH: /usr/share/man/zh_CN (manpages-zh, plus the zh_CN pages of passwd, login, man-db, ...) "
        "rendered with groff (-mandoc -Tutf8, left-adjusted, no hyphenation), untranslated pages "
        "(CJK share < `--man-zh-min-cjk`) dropped; "
        "EN: the installed English page with the same name/section (manpages, coreutils, systemd, ...). "
        "`meta.page` (e.g. `man1/ls.1`) pairs them; `meta.package` is the owning Debian package.",
        "ZH: GFDL-1.2-or-later (kill.1 GPL-2.0-only, epoll.7/intro.6 GPL-2.0-or-later); EN: per "
        "owning package, `license` = its debian/copyright `Files: *` license",
    ),
    "python-stdlib": (
        "CPython standard-library `.py` source of the building interpreter (tests, idlelib, "
        "site-packages, gencodec charmap tables and non-NFC files excluded; 1-60 KB files), seeded "
        "sample, text identical to the source file.",
        "PSF-2.0",
    ),
}


def render_readme(manifest: dict, argv: list[str]) -> str:
    files = manifest["files"]
    total_text = sum(f["text_bytes"] for f in files.values())
    rows = []
    for name, f in files.items():
        rows.append(
            f"| `sample/{name}` | {f['source']} | {f['lang']} | {f['docs']:,} | {f['text_bytes']:,} | "
            f"{100 * f['text_bytes'] / total_text:.1f}% | {f['file_bytes']:,} |"
        )
    raw_rows = [f"| `sample/{n}` | {r['file_bytes']:,} |" for n, r in manifest["raw"].items()]
    pkgs = [f"| `{p}` | {v} |" for p, v in manifest["debian_packages"].items()]
    srcs = [f"| {s} | {desc} | {lic} |" for s, (desc, lic) in SOURCE_INFO.items()]
    lang = manifest["bytes_by_lang"]
    lang_line = ", ".join(f"{k}: {v:,} ({100 * v / total_text:.1f}%)" for k, v in lang.items())
    cmd = "python scripts/build_sample_corpus.py" + ("" if not argv else " " + " ".join(argv))
    return f"""# data/

A small, real, bilingual sample corpus for developing and testing the Neo data pipeline, tokenizer and
training loop end to end. It is **generated** -- do not edit by hand; rebuild with the command below.

Everything comes from Debian packages (installed on the build machine) and from the Python standard
library of the interpreter that runs the script, so the corpus is freely redistributable under the
licenses listed per record (`license` field) and below.

## Layout

* `sample/<source>.<lang>.jsonl.gz` -- gzip'd JSON Lines, one document per line:
  `{{"id", "text", "source", "lang", "license", "meta"}}`. `id` is `<source>/<lang>/<stable id>`;
  `lang` is `en`, `zh` or `code`; `text` is NFC-normalised UTF-8 with the original line structure
  (newlines, indentation) kept.
* `sample/raw/debian-reference-<lang>-<page>.html.gz` -- a few original Debian Reference HTML pages,
  untouched, as input for the HTML-extraction/cleaning stage.
* `sample/MANIFEST.json` -- per file: number of documents, bytes of text, file size and sha256; plus
  package versions and the build settings.

## Files

| file | source | lang | docs | text bytes | share | file bytes |
|---|---|---|---:|---:|---:|---:|
{chr(10).join(rows)}

Text bytes by language: {lang_line}.

| raw file | file bytes |
|---|---:|
{chr(10).join(raw_rows)}

## Sources and licenses

| source | what | license |
|---|---|---|
{chr(10).join(srcs)}

See `/usr/share/doc/<package>/copyright` on a Debian system for the full license texts and authors.

## Package versions used

| Debian package | version |
|---|---|
{chr(10).join(pkgs)}

Python: {manifest["build"]["python"]} (standard library at `{manifest["build"]["stdlib"]}` on the build
machine); groff: {manifest["build"]["groff"]}; zlib: {manifest["build"]["zlib"]}.

## Rebuild

```sh
apt-get install -y debian-reference-en debian-reference-zh-cn fortunes fortunes-zh manpages-zh manpages groff-base
{cmd}
```

The build is deterministic (sorted inputs, seed {manifest["build"]["seed"]}, gzip `mtime=0`): with the same
package versions, Python, groff and zlib it reproduces the files byte for byte (compare the sha256 in
`sample/MANIFEST.json`). The English man pages are looked up among *all* installed man pages, so a
machine with a different set of installed packages may pair fewer or more of them.
"""


def groff_version() -> str:
    groff = shutil.which("groff")
    if not groff:
        return "n/a"
    out = subprocess.run([groff, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    mb = 1_000_000
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "sample", help="output directory")
    ap.add_argument("--readme", type=Path, default=REPO_ROOT / "data" / "README.md", help="README to write")
    ap.add_argument("--seed", type=int, default=20240529, help="seed for all sampling")
    ap.add_argument("--debref-dir", type=Path, default=Path("/usr/share/debian-reference"))
    ap.add_argument("--fortunes-dir", type=Path, default=Path("/usr/share/games/fortunes"))
    ap.add_argument("--man-dir", type=Path, default=Path("/usr/share/man"))
    ap.add_argument("--stdlib-dir", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--dpkg-status", type=Path, default=Path("/var/lib/dpkg/status"))
    ap.add_argument("--dpkg-info", type=Path, default=Path("/var/lib/dpkg/info"))
    ap.add_argument("--debref-max-sections", type=int, default=0, help="max shared sections (0 = all)")
    ap.add_argument("--raw-pages", default="pr01,ch03,ch08", help="Debian Reference pages kept as raw HTML")
    ap.add_argument("--fortunes-per-doc", type=int, default=20)
    ap.add_argument("--fortunes-en-max-bytes", type=int, default=int(2.6 * mb), help="0 = no cap")
    ap.add_argument("--fortunes-zh-max-bytes", type=int, default=int(2.2 * mb), help="0 = no cap")
    ap.add_argument("--man-zh-max-bytes", type=int, default=int(3.6 * mb), help="0 = no cap")
    ap.add_argument("--man-en-max-bytes", type=int, default=int(4.0 * mb), help="0 = no cap")
    ap.add_argument("--man-max-page-bytes", type=int, default=150_000, help="skip longer rendered pages")
    ap.add_argument(
        "--man-zh-min-cjk",
        type=float,
        default=0.05,
        help="skip zh pages with CJK/(CJK+ASCII letters) below this",
    )
    ap.add_argument("--code-max-bytes", type=int, default=int(3.1 * mb), help="0 = no cap")
    ap.add_argument("--code-min-file-bytes", type=int, default=1_000)
    ap.add_argument("--code-max-file-bytes", type=int, default=60_000)
    return ap.parse_args(argv)


def preflight(args: argparse.Namespace) -> None:
    """Fail before writing anything if an input is missing, naming the package that provides it."""
    for _lang, (suffix, package) in DEBREF_LANGS.items():
        debref_pages(args.debref_dir, suffix, package)
    need_path(args.fortunes_dir / "cookie", "fortunes", "English fortune file")
    need_path(args.fortunes_dir / "tang300", "fortunes-zh", "Chinese fortune file")
    need_path(args.man_dir / "zh_CN", "manpages-zh", "Chinese man page directory")
    need_path(args.man_dir / "man2" / "open.2.gz", "manpages", "English man page open(2)")
    if not shutil.which("groff"):
        raise BuildError(
            "groff not found: install the Debian package `groff-base` (apt-get install -y groff-base)"
        )
    need_path(args.stdlib_dir, "python3", "Python standard library directory")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    dpkg = Dpkg(args.dpkg_status, args.dpkg_info)

    def progress(name: str, docs: list[Doc]) -> None:
        print(f"  {name:<34} {len(docs):>6} docs {sum(d.nbytes for d in docs):>12,} bytes", flush=True)

    outputs: dict[str, tuple[str, str, list[Doc]]] = {}
    try:
        preflight(args)
        print("debian-reference ...", flush=True)
        for lang, docs in build_debian_reference(args, dpkg).items():
            outputs[f"debian-reference.{lang}.jsonl.gz"] = ("debian-reference", lang, docs)
            progress(f"debian-reference.{lang}", docs)
        raw_files = copy_raw_debref(args, out)
        print(f"  raw HTML pages: {len(raw_files)}", flush=True)
        print("fortunes ...", flush=True)
        for lang, docs in build_fortunes(args, dpkg).items():
            outputs[f"fortunes.{lang}.jsonl.gz"] = ("fortunes", lang, docs)
            progress(f"fortunes.{lang}", docs)
        print("manpages (groff) ...", flush=True)
        for lang, docs in build_manpages(args, dpkg).items():
            outputs[f"manpages.{lang}.jsonl.gz"] = ("manpages", lang, docs)
            progress(f"manpages.{lang}", docs)
        print("python-stdlib ...", flush=True)
        docs = build_python_stdlib(args)
        outputs["python-stdlib.code.jsonl.gz"] = ("python-stdlib", "code", docs)
        progress("python-stdlib.code", docs)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for old in out.glob("*.jsonl.gz"):
        if old.name not in outputs:
            old.unlink()
    files: dict[str, dict] = {}
    bytes_by_lang: dict[str, int] = {}
    for name in sorted(outputs):
        source, lang, docs = outputs[name]
        path = out / name
        n, nbytes = write_jsonl(path, docs)
        cjk, ascii_letters = char_profile(docs)
        files[name] = {
            "source": source,
            "lang": lang,
            "docs": n,
            "text_bytes": nbytes,
            "file_bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "cjk_char_ratio": round(cjk, 4),
            "ascii_letter_ratio": round(ascii_letters, 4),
            "licenses": sorted({d.license for d in docs}),
        }
        bytes_by_lang[lang] = bytes_by_lang.get(lang, 0) + nbytes
    raw = {
        p.relative_to(out).as_posix(): {"file_bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in raw_files
    }
    packages = [
        "debian-reference-en", "debian-reference-zh-cn", "debian-reference-common", "fortunes",
        "fortunes-min", "fortunes-zh", "manpages-zh", "manpages", "groff-base",
    ]  # fmt: skip
    manifest = {
        "files": files,
        "raw": raw,
        "bytes_by_lang": dict(sorted(bytes_by_lang.items())),
        "debian_packages": {p: dpkg.version(p) for p in packages},
        "build": {
            "seed": args.seed,
            "python": platform.python_version(),
            "stdlib": str(args.stdlib_dir),
            "groff": groff_version(),
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
            "argv": argv,
        },
    }
    (out / "MANIFEST.json").write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    args.readme.parent.mkdir(parents=True, exist_ok=True)
    args.readme.write_text(render_readme(manifest, argv), encoding="utf-8")

    total_text = sum(f["text_bytes"] for f in files.values())
    total_file = sum(f["file_bytes"] for f in files.values()) + sum(r["file_bytes"] for r in raw.values())
    print()
    print(f"{'file':<34} {'docs':>7} {'text bytes':>12} {'share':>6} {'gz bytes':>10}  sha256")
    for name, f in files.items():
        print(
            f"{name:<34} {f['docs']:>7,} {f['text_bytes']:>12,} {100 * f['text_bytes'] / total_text:>5.1f}% "
            f"{f['file_bytes']:>10,}  {f['sha256'][:16]}"
        )
    print(
        f"{'raw/*.html.gz':<34} {len(raw):>7} {'':>12} {'':>6} {sum(r['file_bytes'] for r in raw.values()):>10,}"
    )
    print(
        f"{'total':<34} {sum(f['docs'] for f in files.values()):>7,} {total_text:>12,} {'':>6} {total_file:>10,}"
    )
    print(
        "by lang: " + ", ".join(f"{k} {v:,} ({100 * v / total_text:.1f}%)" for k, v in bytes_by_lang.items())
    )
    print(f"wrote {out}/MANIFEST.json and {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
