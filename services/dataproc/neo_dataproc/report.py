"""The job report (per-stage and per-rule kept/dropped, errors, per-source counts) and the final
per-source token shards with their manifest.

Stats add up: each unit's stats file → ``merge`` → ``report.json``; ``render_report`` prints the
same numbers as a table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from neo.schemas import ShardManifest, SourceCounts
from neo.shards import ShardWriter, dtype_for_vocab, numpy_dtype, write_manifest
from neo.tokenizer import tokenizer_digest
from neo_dataproc.config import JobConfig
from neo_dataproc.jobdir import JobDir, load_tokenizer
from neo_dataproc.readers import Plan
from neo_dataproc.stats import drop_reasons, merge

MAX_ERRORS_LISTED = 200
MAX_EXAMPLES = 5  # dropped documents listed per drop reason


def collect(jd: JobDir, phase: str, units: list[int]) -> list[dict[str, Any]]:
    return [jd.read_stats(phase, u) for u in units if jd.is_done(phase, u)]


def build_report(jd: JobDir, config: JobConfig, plan: Plan) -> dict[str, Any]:
    shards = [s.shard for s in plan.shards]
    clean = collect(jd, "clean", shards)
    cluster = collect(jd, "dedup_cluster", [0])
    tokenized = collect(jd, "tokenize", shards)
    stages = merge([s["steps"] for s in clean] + [s["steps"] for s in cluster] + [s["steps"] for s in tokenized])
    errors = list(plan.errors) + [e for s in clean for e in s.get("errors", [])]
    sources: dict[str, dict[str, int]] = {}
    for s in tokenized:
        for src, c in s.get("sources", {}).items():
            acc = sources.setdefault(src, {"documents": 0, "tokens": 0})
            acc["documents"] += c["documents"]
            acc["tokens"] += c["tokens"]
    read = stages.get("read", {})
    examples: dict[str, list[dict[str, Any]]] = {}
    for s in clean:
        for reason, docs in s.get("examples", {}).items():
            got = examples.setdefault(reason, [])
            got += docs[: max(0, MAX_EXAMPLES - len(got))]
    return {
        "job": config.name,
        "config_fingerprint": config.fingerprint(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": {"files": plan.files, "shards": len(plan.shards), "records": int(read.get("seen", 0))},
        "documents": {
            "read": int(read.get("kept", 0)),
            "after_cleaning": sum(int(s.get("docs_out", 0)) for s in clean),
            "final": sum(c["documents"] for c in sources.values()),
        },
        "stages": stages,
        "sources": dict(sorted(sources.items())),
        "error_count": len(errors),
        "errors": errors[:MAX_ERRORS_LISTED],
        "examples": dict(sorted(examples.items())),  # the first dropped documents of each drop reason
        "elapsed_s": {"clean": round(sum(s.get("elapsed_s", 0) for s in clean), 2),
                      "tokenize": round(sum(s.get("elapsed_s", 0) for s in tokenized), 2)},
    }


def write_shards(jd: JobDir, config: JobConfig, plan: Plan, report: dict[str, Any]) -> ShardManifest:
    """Concatenate each source's per-shard token files, in shard order, into fixed-size shards."""
    tk = config.tokenize
    tok_path = config.resolve(tk.tokenizer or "")
    tok = load_tokenizer(str(tok_path))
    dtype = dtype_for_vocab(tok.vocab_size)
    np_dtype = numpy_dtype(dtype)
    files = []
    sources: dict[str, SourceCounts] = {}
    for source, counts in sorted(report["sources"].items()):
        writer = ShardWriter(jd.shards / source, dtype, tk.tokens_per_shard, source=source, relative_to=jd.shards)
        for s in plan.shards:
            path = jd.tokens(s.shard, source)
            if path.exists():
                writer.add(np.fromfile(path, dtype=np_dtype))
        written = writer.close()
        files += written
        sources[source] = SourceCounts(documents=counts["documents"], tokens=counts["tokens"], files=len(written))
    manifest = ShardManifest(
        job=config.name, dtype=dtype, vocab_size=tok.vocab_size, tokenizer_sha256=tokenizer_digest(tok_path),
        tokenizer_path=str(tok_path), bos_id=tok.bos_id if tk.add_bos else None,
        eos_id=tok.eos_id if tk.add_eos else None, tokens_per_shard=tk.tokens_per_shard, sources=sources,
        files=files, config=config.model_dump(), report=report,
    )
    write_manifest(jd.shards, manifest)
    return manifest


# --- rendering --------------------------------------------------------------------------------------
def _fmt(n: float) -> str:
    return f"{int(n):,}"


def report_table(report: dict[str, Any], title: str | None = None) -> Table:
    """Per stage: seen / kept / dropped, then one row per drop reason."""
    table = Table("stage / rule", "seen", "kept", "dropped", "%", "time s",
                  title=title or f"job {report.get('job', '?')}")
    for stage, counts in report.get("stages", {}).items():
        seen = counts.get("seen", 0)
        pct = f"{100 * counts.get('dropped', 0) / seen:.1f}" if seen else ""
        table.add_row(f"[bold]{stage}[/bold]", _fmt(seen), _fmt(counts.get("kept", 0)), _fmt(counts.get("dropped", 0)),
                      pct, f"{counts.get('time_s', 0):.1f}" if "time_s" in counts else "")
        for reason, n in sorted(drop_reasons(counts).items(), key=lambda kv: -kv[1]):
            table.add_row(f"  {reason}", "", "", _fmt(n), f"{100 * n / seen:.1f}" if seen else "", "")
        extras = {k: v for k, v in counts.items()
                  if k not in ("seen", "kept", "dropped", "time_s") and not k.startswith("dropped_")}
        for key, n in sorted(extras.items()):
            table.add_row(f"  [dim]· {key}[/dim]", f"[dim]{_fmt(n)}[/dim]", "", "", "", "")
    return table


def render_report(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(report_table(report))
    docs = report.get("documents", {})
    console.print(f"documents: read {_fmt(docs.get('read', 0))} → cleaned {_fmt(docs.get('after_cleaning', 0))} "
                  f"→ final {_fmt(docs.get('final', 0))}")
    if report.get("sources"):
        src = Table("source", "documents", "tokens", title="per source")
        for name, c in report["sources"].items():
            src.add_row(name, _fmt(c["documents"]), _fmt(c["tokens"]))
        console.print(src)
    if report.get("error_count"):
        console.print(f"[yellow]{report['error_count']} input error(s)[/yellow], first ones:")
        for e in report.get("errors", [])[:10]:
            where = f"{e['file']}:{e['line']}" if e.get("line") else e["file"]
            console.print(f"  {where}: {e['error']}")
