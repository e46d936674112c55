"""Input: expand the config's inputs into files, plan them into shards of documents, read a shard.

Formats by extension (``.gz``/``.zst`` stripped first): ``.jsonl``/``.json``/``.ndjson`` are JSON
lines with a ``text`` (or ``html``) field, one document each; ``.html``/``.htm`` a page; source-code
extensions a code file; anything else one plain-text document. A JSONL file is split into line
ranges, single-document files are grouped, ``docs_per_shard`` documents per shard.

Record formats read like JSONL (one document per record, the same fields): ``.parquet`` (pyarrow,
row ranges), ``.arrow`` (Arrow IPC streams: the files of a Hugging Face ``datasets``
``save_to_disk`` directory, whose ``state.json``/``dataset_info.json`` are skipped) and
``.warc``/``.warc.gz`` (warcio: ``response`` records with an HTML or text payload, and WET
``conversion`` records; the URL is ``WARC-Target-URI``, the id ``WARC-Record-ID``).

Planning counts each JSONL file's lines with the same reader the shards use, so a broken
compressed stream is cut at the same line in both; such a file, a binary or an empty file is an
error in the plan (reported, the job goes on). Inside a shard, an invalid JSON line or a record
without text is an error with its file and line, and the shard goes on.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from neo_dataproc.config import InputSpec, JobConfig
from neo_dataproc.document import Document, make_uid

log = logging.getLogger(__name__)

JSONL_EXT = {".jsonl", ".json", ".ndjson"}
HTML_EXT = {".html", ".htm", ".xhtml"}
CODE_EXT = {".py", ".js", ".ts", ".tsx", ".jsx", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".hpp", ".java",
            ".kt", ".scala", ".rb", ".php", ".cs", ".swift", ".sh", ".bash", ".lua", ".pl", ".r", ".sql",
            ".m", ".jl", ".hs", ".ml", ".ex", ".exs", ".erl", ".clj", ".dart", ".zig", ".f90", ".toml"}
READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)  # gzip.BadGzipFile is an OSError
BINARY_PROBE = 8192
RECORD_FORMATS = {"parquet", "arrow", "warc"}  # several documents a file, read by record index
HF_DATASET_META = {"state.json", "dataset_info.json", "dataset_dict.json"}


@dataclass
class Segment:
    path: str
    start: int  # first line (JSONL) or 0
    stop: int  # one past the last line, or 1
    fmt: str  # jsonl | html | text | code
    source: str | None


@dataclass
class ShardPlan:
    shard: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(s.stop - s.start for s in self.segments)


@dataclass
class Plan:
    shards: list[ShardPlan]
    errors: list[dict[str, Any]]
    files: int

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "errors": self.errors, "shards": [asdict(s) for s in self.shards]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        shards = [ShardPlan(s["shard"], [Segment(**seg) for seg in s["segments"]]) for s in data["shards"]]
        return cls(shards=shards, errors=data["errors"], files=data["files"])


def file_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".warc":
        return "warc"
    if ext in (".parquet", ".arrow"):
        return ext[1:]
    if ext in JSONL_EXT:
        return "jsonl"
    if ext in HTML_EXT:
        return "html"
    return "code" if ext in CODE_EXT else "text"


def open_binary(path: Path) -> IO[bytes]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(zstandard.open(path, "rb"))  # type: ignore[arg-type]  # adds readline
    return open(path, "rb")  # noqa: SIM115 (returned to the caller)


def expand_inputs(config: JobConfig) -> tuple[list[tuple[Path, InputSpec]], list[dict[str, Any]]]:
    """Files of every input, sorted and without repeats; an input matching nothing is an error."""
    seen: set[Path] = set()
    files: list[tuple[Path, InputSpec]] = []
    errors: list[dict[str, Any]] = []
    for spec in config.inputs:
        root = config.resolve(spec.path)
        if root.is_dir():
            matches = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                             and not (p.name in HF_DATASET_META and (p.parent / "state.json").exists()
                                      or p.name == "dataset_dict.json"))
        else:
            matches = sorted(Path(p) for p in glob.glob(str(root), recursive=True) if Path(p).is_file())
        if not matches:
            errors.append({"file": spec.path, "error": "input matches no file"})
        for p in matches:
            p = p.resolve()
            if p not in seen:
                seen.add(p)
                files.append((p, spec))
    return files, errors


#: the longest line (one JSONL record, one text file) read into memory: a longer one is cut to this, reported as
#: too long and skipped, so a one-line gzip bomb costs this much memory, not its decompressed size
MAX_LINE_BYTES = 64 << 20


def too_long(line: bytes) -> bool:
    """A line ``iter_lines`` cut at ``MAX_LINE_BYTES`` (it has no newline at its end)."""
    return len(line) >= MAX_LINE_BYTES and not line.endswith(b"\n")


def _gzip_lines(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a gzip file (multi-member too), every complete line before a break included."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending, skipping = b"", False  # skipping: the rest of a line already cut at MAX_LINE_BYTES
    with open(path, "rb") as f:
        while block := f.read(chunk):
            while block:
                data = d.decompress(block, MAX_LINE_BYTES)
                block = d.unconsumed_tail
                if d.eof and d.unused_data:  # next member of a concatenated gzip
                    block = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                if not data:
                    continue
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not skipping:
                        yield line + b"\n"
                    skipping = False
                if len(pending) >= MAX_LINE_BYTES:
                    if not skipping:
                        yield pending[:MAX_LINE_BYTES]
                    pending, skipping = b"", True
    if not d.eof:
        raise EOFError("compressed file ended before the end-of-stream marker was reached")
    if pending and not skipping:
        yield pending


def iter_lines(path: Path) -> Iterator[bytes]:
    """Raw lines of a possibly compressed file; a broken stream raises one of ``READ_ERRORS``
    after the complete lines before the break. A line longer than ``MAX_LINE_BYTES`` comes as its first
    ``MAX_LINE_BYTES`` without a newline (see ``too_long``); the rest of it is skipped unread into memory."""
    if path.name.lower().endswith(".gz"):
        yield from _gzip_lines(path)
        return
    with open_binary(path) as f:
        while line := f.readline(MAX_LINE_BYTES):
            yield line
            if too_long(line):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass


def _warc_document(record: Any) -> dict[str, Any] | None:
    """A WARC record as a JSONL-like record, or None for records that are not documents."""
    rtype = record.rec_type
    if rtype not in ("response", "conversion", "resource"):
        return None
    ctype = ""
    if rtype == "response":
        if record.http_headers is None or not (record.http_headers.get_statuscode() or "").startswith("2"):
            return None
        ctype = (record.http_headers.get_header("Content-Type") or "").lower()
    else:
        ctype = (record.rec_headers.get_header("Content-Type") or "text/plain").lower()
    if not ctype.startswith(("text/", "application/xhtml")):
        return None
    data = record.content_stream().read(MAX_LINE_BYTES + 1)
    if len(data) > MAX_LINE_BYTES:
        return {"_error": f"WARC record larger than {MAX_LINE_BYTES} bytes, skipped"}
    text = _decode(data)
    rec: dict[str, Any] = {"html" if "html" in ctype else "text": text}
    if uri := record.rec_headers.get_header("WARC-Target-URI"):
        rec["url"] = uri
    if rid := record.rec_headers.get_header("WARC-Record-ID"):
        rec["id"] = rid
    return rec


def iter_records(path: Path, fmt: str, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Records ``start``..``stop`` of a Parquet, Arrow (HF ``save_to_disk``) or WARC file, as dicts."""
    if fmt == "warc":
        from warcio.archiveiterator import ArchiveIterator

        i = 0
        with open(path, "rb") as f:
            for record in ArchiveIterator(f):
                if stop is not None and i >= stop:
                    return
                if i < start:  # still skipping: only the record's type decides whether it counts
                    if record.rec_type in ("response", "conversion", "resource") and _warc_document(record) is not None:
                        i += 1
                    continue
                rec = _warc_document(record)
                if rec is not None:
                    i += 1
                    yield rec
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    else:
        import pyarrow as pa

        batches = iter(pa.ipc.open_stream(pa.memory_map(str(path))))
    offset = 0
    for batch in batches:
        n = batch.num_rows
        if stop is not None and offset >= stop:
            return
        if offset + n > start:
            lo, hi = max(0, start - offset), n if stop is None else min(n, stop - offset)
            yield from batch.slice(lo, hi - lo).to_pylist()
        offset += n


def count_records(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "arrow":
        import pyarrow as pa

        return sum(b.num_rows for b in pa.ipc.open_stream(pa.memory_map(str(path))))
    return sum(1 for _ in iter_records(path, fmt))


def count_documents(path: Path, fmt: str) -> tuple[int, str | None]:
    """(documents, error or None) of one file, as the shard reader will see it."""
    if fmt in RECORD_FORMATS:
        try:
            n = count_records(path, fmt)
        except Exception as exc:  # noqa: BLE001 (pyarrow / warcio raise their own types on a broken file)
            return 0, f"unreadable {fmt} file ({type(exc).__name__}: {exc})"
        return (n, None) if n else (0, f"no documents in this {fmt} file")
    n, head, error = 0, b"", None
    try:
        for n, line in enumerate(iter_lines(path), 1):  # noqa: B007 (n is the count)
            if len(head) < BINARY_PROBE:
                head += line[:BINARY_PROBE]
            elif fmt != "jsonl":
                break  # one document: the probe is enough
    except READ_ERRORS as exc:
        error = f"{type(exc).__name__}: {exc}"
    if b"\x00" in head:
        return 0, "binary file (NUL bytes), skipped"
    if error and (n == 0 or fmt != "jsonl"):
        return 0, f"unreadable ({error})"
    if n == 0:
        return 0, "empty file"
    if fmt != "jsonl":
        return 1, None
    if error:
        return n, f"broken compressed stream after {n} lines ({error}); rest skipped"
    return n, None


def plan_shards(config: JobConfig) -> Plan:
    """Split the input into shards of about ``docs_per_shard`` documents (deterministic)."""
    files, errors = expand_inputs(config)
    per = config.docs_per_shard
    shards: list[ShardPlan] = [ShardPlan(0)]
    for path, spec in files:
        fmt = file_format(path, spec.format)
        n, error = count_documents(path, fmt)
        if error:
            errors.append({"file": str(path), "error": error})
            log.warning("%s: %s", path, error)
        start = 0
        while start < n:
            if shards[-1].size >= per:
                shards.append(ShardPlan(len(shards)))
            take = min(n - start, per - shards[-1].size)
            shards[-1].segments.append(Segment(str(path), start, start + take, fmt, spec.source))
            start += take
    if not shards[-1].segments:
        shards.pop()
    return Plan(shards=shards, errors=errors, files=len(files))


def _decode(data: bytes) -> str:
    """UTF-8; else GB18030 when that reads as Chinese (the legacy encoding of Chinese pages); else
    cp1252 (Western pages), with Latin-1 for the few bytes cp1252 leaves undefined."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
        non_ascii = [c for c in text if ord(c) > 127]
        if non_ascii and sum(1 for c in non_ascii if "\u4e00" <= c <= "\u9fff") / len(non_ascii) > 0.8:
            return text
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_UNSAFE_SOURCE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_SOURCE_LEN = 64


def safe_source(name: str) -> str:
    """A source name fit to be a file name: it names token files (``tokenize/<shard>/<source>.bin``) and
    mixture weights, so ``"../../x"`` must not leave the job directory. Other characters become ``_``."""
    cleaned = _UNSAFE_SOURCE.sub("_", name).strip("._")[:MAX_SOURCE_LEN]
    return cleaned or "default"


def _source_of(spec_source: str | None, record: dict[str, Any] | None, path: Path) -> str:
    if spec_source:
        return safe_source(spec_source)
    if record and isinstance(record.get("source"), str) and record["source"]:
        return safe_source(record["source"])
    return safe_source(path.name.split(".")[0])


class ShardReader:
    """Documents of one planned shard; bad records are appended to ``errors`` and counted in ``stats``."""

    def __init__(self, plan: ShardPlan, max_errors_per_file: int = 20) -> None:
        from neo_dataproc.stats import StepStats

        self.plan = plan
        self.max_errors_per_file = max_errors_per_file
        self.errors: list[dict[str, Any]] = []
        self.stats = StepStats()

    def _error(self, path: str, line: int | None, error: str) -> None:
        self.errors.append({"file": path, "line": line, "error": error})

    def __iter__(self) -> Iterator[Document]:
        index = 0
        for seg in self.plan.segments:
            path = Path(seg.path)
            if seg.fmt in RECORD_FORMATS:
                yield from self._records(seg, path, index)
                index += seg.stop - seg.start
                continue
            if seg.fmt != "jsonl":
                yield from self._single(seg, path, index)
                index += 1
                continue
            file_errors = 0
            lines = iter_lines(path)
            try:
                for lineno, raw in enumerate(lines):
                    if lineno < seg.start:
                        continue
                    uid = make_uid(self.plan.shard, index)
                    index += 1
                    self.stats.add("seen")
                    doc, error = self._parse(raw, seg, path, uid, lineno)
                    if doc is not None:
                        self.stats.add("kept")
                        yield doc
                    else:
                        self.stats.drop(error or "read_error")
                        file_errors += 1
                        if file_errors >= self.max_errors_per_file and lineno + 1 < seg.stop:
                            skipped = seg.stop - lineno - 1
                            self._error(seg.path, lineno + 1,
                                        f"{file_errors} bad lines: the {skipped} lines after it skipped")
                            self.stats.add("seen", skipped)  # counted, so the report adds up
                            self.stats.drop("read_skipped_after_errors", skipped)
                            index += skipped
                            break
                    if lineno + 1 >= seg.stop:  # stop before reading on: a broken tail is the plan's error
                        break
            except READ_ERRORS as exc:  # the plan counted these lines: the file changed since?
                self._error(seg.path, None, f"read failed ({type(exc).__name__}: {exc})")
            finally:
                lines.close()  # type: ignore[attr-defined]

    def _parse(self, raw: bytes, seg: Segment, path: Path, uid: int, lineno: int) -> tuple[Document | None, str | None]:
        if too_long(raw):
            self._error(seg.path, lineno + 1, f"line longer than {MAX_LINE_BYTES} bytes, skipped")
            return None, "read_line_too_long"
        if not raw.strip():
            self._error(seg.path, lineno + 1, "empty line")
            return None, "read_empty_line"
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, or nested too deep
            self._error(seg.path, lineno + 1, f"invalid JSON ({getattr(exc, 'msg', None) or type(exc).__name__})")
            return None, "read_invalid_json"
        if not isinstance(record, dict):
            self._error(seg.path, lineno + 1, "not a JSON object")
            return None, "read_invalid_json"
        return self._from_record(record, seg, path, uid, lineno)

    def _records(self, seg: Segment, path: Path, index: int) -> Iterator[Document]:
        """A Parquet / Arrow / WARC segment; an unreadable rest is one error, its records counted as dropped."""
        done = 0
        try:
            for i, record in enumerate(iter_records(path, seg.fmt, seg.start, seg.stop)):
                done += 1
                self.stats.add("seen")
                uid = make_uid(self.plan.shard, index + i)
                if "_error" in record:
                    self._error(seg.path, seg.start + i + 1, record["_error"])
                    self.stats.drop("read_too_large")
                    continue
                doc, error = self._from_record(record, seg, path, uid, seg.start + i)
                if doc is not None:
                    self.stats.add("kept")
                    yield doc
                else:
                    self.stats.drop(error or "read_error")
        except Exception as exc:  # noqa: BLE001 (pyarrow / warcio errors on a file that changed since planning)
            self._error(seg.path, None, f"read failed ({type(exc).__name__}: {exc})")
        missing = seg.stop - seg.start - done
        if missing > 0:
            self.stats.add("seen", missing)
            self.stats.drop("read_error", missing)

    def _from_record(self, record: dict[str, Any], seg: Segment, path: Path, uid: int,
                     lineno: int) -> tuple[Document | None, str | None]:
        kind = "text"
        text = record.get("text")
        if not isinstance(text, str) and isinstance(record.get("html"), str):
            text, kind = record["html"], "html"
        if not isinstance(text, str):
            self._error(seg.path, lineno + 1, "no string 'text' (or 'html') field")
            return None, "read_no_text"
        if record.get("lang") == "code" or record.get("type") == "code":
            kind = "code"
        meta: dict[str, Any] = {"path": path.name, ("line" if seg.fmt == "jsonl" else "record"): lineno + 1}
        if "id" in record and record["id"] is not None:
            rid = record["id"]
            meta["id"] = rid if isinstance(rid, str | int | float) else str(rid)  # Parquet ids may be bytes, dates …
        if isinstance(record.get("meta"), dict):
            meta["meta"] = record["meta"]
        url = record.get("url") if isinstance(record.get("url"), str) else None
        return Document(uid=uid, text=text, source=_source_of(seg.source, record, path), kind=kind, url=url,
                        meta=meta), None

    def _single(self, seg: Segment, path: Path, index: int) -> Iterator[Document]:
        uid = make_uid(self.plan.shard, index)
        self.stats.add("seen")
        try:
            with open_binary(path) as f:
                data = f.read(MAX_LINE_BYTES + 1)
            if len(data) > MAX_LINE_BYTES:
                self._error(seg.path, None, f"larger than {MAX_LINE_BYTES} bytes (decompressed), skipped")
                self.stats.drop("read_too_large")
                return
            text = _decode(data)
        except READ_ERRORS as exc:
            self._error(seg.path, None, f"unreadable ({type(exc).__name__}: {exc})")
            self.stats.drop("read_error")
            return
        self.stats.add("kept")
        yield Document(uid=uid, text=text, source=_source_of(seg.source, None, path), kind=seg.fmt,  # type: ignore[arg-type]
                       meta={"path": path.name})
