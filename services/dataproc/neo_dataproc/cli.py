"""``neo data``: run a cleaning job, watch it, read its report, start workers.

Mounted by ``neo.cli`` through the ``neo.cli`` entry point (``data = "neo_dataproc.cli:app"``);
also runnable as ``python -m neo_dataproc.cli``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from neo_dataproc.settings import DataprocSettings

console = Console()
log = logging.getLogger("neo_dataproc")

app = typer.Typer(
    help="Clean, language-tag, deduplicate and tokenize documents (Celery + Redis, or in process).",
    no_args_is_help=True, pretty_exceptions_show_locals=False,
)

HomeOpt = Annotated[Path | None, typer.Option(help="workspace (default: $NEO_HOME or ./.neo)")]


def _settings(home: Path | None) -> DataprocSettings:
    return DataprocSettings(**({"home": home} if home else {}))


@app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="job config, YAML or JSON (see neo_dataproc/config.py)")],
    eager: Annotated[bool, typer.Option("--eager",
                                        help="run in this process, no worker needed (small inputs)")] = False,
    workers: Annotated[int, typer.Option(
        "--workers", "-w",
        help="start N local `celery worker` processes for this run; 0 (default) uses workers already "
             "running (`neo data worker`)")] = 0,
    fresh: Annotated[bool, typer.Option(help="delete the job's previous outputs first (default: resume)")] = False,
    home: HomeOpt = None,
) -> None:
    """Run a job: outputs in NEO_HOME/data/<name>/ (clean docs, shards/ + manifest.json, report.json).

    A re-run resumes: finished shards are skipped. Without --eager or --workers, tasks go to the
    `dataproc` queue and wait for running workers.
    """
    from neo_dataproc.config import ConfigError, load_config
    from neo_dataproc.executors import CeleryExecutor, EagerExecutor, JobFailed, LocalWorkers
    from neo_dataproc.jobstore import JobStore
    from neo_dataproc.report import render_report
    from neo_dataproc.runner import JobConflict, run_job

    if eager and workers:
        console.print("[red]error:[/red] --eager and --workers exclude each other")
        raise typer.Exit(2)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    settings = _settings(home)
    store = JobStore.from_settings(settings, cfg.name)
    executor = EagerExecutor(store) if eager else CeleryExecutor(settings, store)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        try:
            if workers:
                with LocalWorkers(settings, workers):
                    report = run_job(cfg, settings, executor, store=store, fresh=fresh, progress=progress)
            else:
                report = run_job(cfg, settings, executor, store=store, fresh=fresh, progress=progress)
        except (JobConflict, JobFailed, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    render_report(report, console)
    console.print(f"outputs: {settings.job_dir(cfg.name).resolve()}")


@app.command("status")
def status(
    job: Annotated[str, typer.Argument(help="job name")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    home: HomeOpt = None,
) -> None:
    """Progress of a job: units done / total per phase, docs/s, live drop counts (from Redis)."""
    from neo_dataproc.jobstore import JobStore
    from neo_dataproc.stats import drop_reasons

    settings = _settings(home)
    st = JobStore.from_settings(settings, job).status()
    if st is None:
        console.print(f"no job {job!r} in Redis (prefix {settings.job_prefix!r}); finished long ago? "
                      "try `neo data report`")
        raise typer.Exit(1)
    if as_json:
        print(json.dumps(st, indent=1))
        return
    console.print(f"job [bold]{job}[/bold]: {st['state']} (phase {st['phase'] or '-'}), {st['elapsed_s']}s, "
                  f"{st['docs_read']:,} docs read, {st['docs_per_s']:,} docs/s")
    if st["error"]:
        console.print(f"[red]{st['error']}[/red]")
    phases = Table("phase", "done", "running", "total")
    for phase, c in st["phases"].items():
        phases.add_row(phase, str(c["done"]), str(c["running"]), str(c["total"]))
    console.print(phases)
    drops = Table("stage", "seen", "kept", "dropped", "reasons")
    for stage, c in st["stages"].items():
        reasons = ", ".join(f"{r} {int(n):,}" for r, n in sorted(drop_reasons(c).items(), key=lambda kv: -kv[1]))
        drops.add_row(stage, f"{int(c.get('seen', 0)):,}", f"{int(c.get('kept', 0)):,}",
                      f"{int(c.get('dropped', 0)):,}", reasons)
    console.print(drops)


@app.command("report")
def report(
    job: Annotated[str, typer.Argument(help="job name")],
    as_json: Annotated[bool, typer.Option("--json", help="print report.json as is")] = False,
    home: HomeOpt = None,
) -> None:
    """The final report of a job: per-stage and per-rule kept/dropped, errors, per-source tokens."""
    from neo_dataproc.report import render_report

    path = _settings(home).job_dir(job) / "report.json"
    if not path.exists():
        console.print(f"no report at {path}: the job has not finished (see `neo data status {job}`)")
        raise typer.Exit(1)
    data = json.loads(path.read_text())
    if as_json:
        print(json.dumps(data, indent=1, ensure_ascii=False))
    else:
        render_report(data, console)


@app.command("worker")
def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="processes (default: CPU cores)")] = 0,
    pool: Annotated[str, typer.Option(
        help="Celery pool: prefork (processes) or solo (one, in this process)")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "info",
    home: HomeOpt = None,
) -> None:
    """Start a Celery worker on the `dataproc` queue (settings from NEO_* env; replaces this process)."""
    from neo_dataproc.executors import settings_env, worker_command

    settings = _settings(home)
    cmd = worker_command(settings, f"neo-dataproc-{os.getpid()}", pool=pool,
                         concurrency=concurrency or os.cpu_count() or 1, loglevel=loglevel)
    cmd += ["-O", "fair"] if pool == "prefork" else []
    os.execve(sys.executable, cmd, settings_env(settings))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()
