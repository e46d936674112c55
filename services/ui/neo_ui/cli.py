"""``neo ui`` (both web apps in one process) and ``neo prefs`` (the preference store from the shell).

Flags override the ``NEO_`` environment (``UISettings``). Examples::

    neo ui --api-url http://127.0.0.1:8000 --port 7860                  # chat at /chat, labeling at /label
    neo ui --users-file accounts.txt --admin alice --label-model chat   # NAME:PASSWORD lines; chat + labeling log in
    neo prefs import prompts.jsonl                                      # queue prompts for labeling
    neo prefs export .neo/data/prefs/prefs.jsonl [--keep-ties] [--keep-both-bad] [--since-last-round] [--json]
    neo prefs mark-round --until TS --labels N --path P --expect-round R   # after a round trained (align does it)
    neo prefs stats

``app`` is mounted as ``neo ui`` and ``prefs_app`` as ``neo prefs`` (entry points ``neo.cli``); both also
run as ``python -m neo_ui.cli [prefs] ...``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from neo_ui.settings import UISettings

log = logging.getLogger(__name__)
_F = UISettings.model_fields
SHUTDOWN_GRACE_S = 3  # seconds in-flight requests get on SIGTERM before open streams are cut

app = typer.Typer(help="The chat and preference-labeling web apps (talk to serving over its OpenAI API). With "
                       "accounts (--user, --users-file, NEO_UI_USERS) both sit behind one login; without, both are "
                       "open (loopback demos). Passwords and keys given as flags show in `ps`: give them in files "
                       "(--users-file, --api-key-file) or the environment (NEO_UI_USERS, NEO_API_KEY) instead.",
                  pretty_exceptions_show_locals=False)
prefs_app = typer.Typer(help="Preference labels: export TRL JSONL for DPO, queue prompts, stats.",
                        no_args_is_help=True, pretty_exceptions_show_locals=False)


def _help(field: str, text: str | None = None) -> str:
    default = _F[field].default if _F[field].default_factory is None else "none"
    return f"{text or _F[field].description} (default: {default}; env NEO_{field.upper()})"


def _settings(**given: Any) -> UISettings:
    from pydantic import ValidationError

    try:
        return UISettings(**{k: v for k, v in given.items() if v not in (None, [])})
    except ValidationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _secrets(path: Path) -> list[str]:
    from neo.settings import read_secrets

    try:
        return read_secrets(path)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.callback(invoke_without_command=True)
def ui(
    ctx: typer.Context,
    api_url: Annotated[str | None, typer.Option(help=_help("api_url"))] = None,
    api_key: Annotated[str | None, typer.Option(help=_help(
        "api_key", "Bearer key for serving; visible in `ps`: prefer --api-key-file or the env"))] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        help="file holding the Bearer key for serving (first line; keeps it out of `ps`, as env NEO_API_KEY does)")]
        = None,
    host: Annotated[str | None, typer.Option(help=_help("ui_host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("ui_port"))] = None,
    user: Annotated[list[str] | None, typer.Option(help=_help(
        "ui_users", "NAME:PASSWORD account for /chat and /label (repeat); visible in `ps`: prefer --users-file or "
                    "the env"))] = None,
    users_file: Annotated[Path | None, typer.Option(
        help="file of NAME:PASSWORD accounts, one per line, # comments (added to --user; keeps passwords out of "
             "`ps`, as env NEO_UI_USERS='[\"alice:pw\"]' does)")] = None,
    admin: Annotated[list[str] | None, typer.Option(help=_help(
        "ui_admins", "account allowed to start DPO rounds (repeat; must be one of the accounts)"))] = None,
    label_model: Annotated[list[str] | None,
                           typer.Option(help=_help("label_models", "model to label (repeat)"))] = None,
    redis_url: Annotated[str | None, typer.Option(help=_help("redis_url"))] = None,
    redis_prefix: Annotated[str | None, typer.Option(help=_help("redis_prefix"))] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Start the chat app (/chat) and the labeling app (/label) in one process."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from neo_ui.server import build_app

    if api_key is not None and api_key_file is not None:
        typer.echo("error: give --api-key or --api-key-file, not both", err=True)
        raise typer.Exit(2)
    if api_key_file is not None:
        api_key = _secrets(api_key_file)[0]
    if users_file is not None:
        user = [*(user or []), *_secrets(users_file)]
    settings = _settings(api_url=api_url, api_key=api_key, ui_host=host, ui_port=port, ui_users=user,
                         ui_admins=admin, label_models=label_model, redis_url=redis_url, redis_prefix=redis_prefix)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Browsers keep event streams open: without a bound, a graceful shutdown would wait for them forever.
    uvicorn.run(build_app(settings), host=settings.ui_host, port=settings.ui_port, log_level=log_level,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


def _store(settings: UISettings) -> Any:
    import redis

    from neo_ui.store import PreferenceStore

    return PreferenceStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings.redis_prefix)


@prefs_app.command("export")
def prefs_export(
    out: Annotated[Path | None,
                   typer.Argument(help="JSONL to write [default: $NEO_HOME/data/prefs/prefs.jsonl]")] = None,
    keep_ties: Annotated[bool, typer.Option("--keep-ties/--drop-ties", help="keep ties (A as chosen)")] = False,
    keep_both_bad: Annotated[bool, typer.Option("--keep-both-bad/--drop-both-bad",
                                                help="keep both-bad labels (A as chosen)")] = False,
    fmt: Annotated[str, typer.Option("--format", help="conversational (message lists) | text (strings)")]
        = "conversational",
    use_edits: Annotated[bool, typer.Option("--edits/--no-edits", help="an annotator's rewrite is 'chosen'")] = True,
    since_last_round: Annotated[bool, typer.Option(help="only labels since the last DPO round")] = False,
    mark_round: Annotated[bool, typer.Option(help="record this export as a DPO round (moves the marker)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON (path, rows, labels, skipped, "
                                                         "until_ts, since_round, marker)")] = False,
) -> None:
    """Write TRL preference JSONL (prompt, chosen, rejected + metadata) for `neo train dpo`."""
    from neo_ui.export import export
    from neo_ui.store import RoundMoved

    if fmt not in ("conversational", "text"):
        typer.echo(f"error: --format must be conversational or text, got {fmt!r}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    try:
        report = export(_store(settings), out or settings.prefs_dir / "prefs.jsonl", keep_ties=keep_ties,
                        keep_both_bad=keep_both_bad, fmt=fmt, use_edits=use_edits,  # type: ignore[arg-type]
                        since_last_round=since_last_round, mark_round=mark_round)
    except RoundMoved as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps({"path": str(report.path), "rows": report.rows, "labels": report.labels,
                               "skipped": dict(report.skipped), "until_ts": report.until_ts,
                               "since_round": report.since_round, "marker": report.marker}))
    else:
        typer.echo(report.summary())


@prefs_app.command("mark-round")
def prefs_mark_round(
    until: Annotated[float, typer.Option("--until", help="unix time the round's export read labels up to "
                                                         "(`neo prefs export --json`: until_ts)")],
    labels: Annotated[int, typer.Option(help="labels the round took")],
    path: Annotated[str, typer.Option(help="the JSONL the round trained on")],
    expect_round: Annotated[int, typer.Option(help="the round the export started from (its since_round); refused "
                                                   "if another round was marked since")],
    job: Annotated[str, typer.Option(help="the job or run that trained the round")] = "",
) -> None:
    """Move the round marker after a DPO round trained (`neo align round --from-redis` calls this only once its
    new version is registered, so a failed round leaves its labels for the next one)."""
    from neo_ui.store import RoundMoved

    try:
        marker = _store(_settings()).mark_round(labels=labels, path=path, job=job or None, at_ts=until,
                                                expect_round=expect_round)
    except RoundMoved as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(marker))


@prefs_app.command("import")
def prefs_import(
    files: Annotated[list[Path], typer.Argument(help="JSONL files: {\"prompt\": ...} or {\"messages\": [...]}")],
    source: Annotated[str | None, typer.Option(help="where the prompts come from, as the labeling app shows it "
                                                    "(default: each file's name without suffix, e.g. 'seed')")] = None,
) -> None:
    """Queue prompts for labeling."""
    import redis

    from neo_ui.prompts import PromptQueue

    settings = _settings()
    queue = PromptQueue(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings.redis_prefix)
    failed = False
    for path in files:
        report = queue.add_jsonl(path.read_text(encoding="utf-8"), source=source or path.name.split(".")[0])
        typer.echo(f"{path}: {report.summary()}")
        failed |= bool(report.errors)
    if failed:
        raise typer.Exit(1)


@prefs_app.command("stats")
def prefs_stats(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Labels per annotator and model version, win rates, agreement, labels since the last DPO round."""
    from dataclasses import asdict

    from neo_ui.render import markdown_table
    from neo_ui.stats import compute, summary_markdown

    store = _store(_settings())
    stats = compute(store.iter_labels(), store.last_round())
    if as_json:
        typer.echo(json.dumps(asdict(stats), indent=2, ensure_ascii=False))
        return
    typer.echo(summary_markdown(stats))
    for title, rows in (("per annotator", stats.annotators), ("per model version", stats.models),
                        ("match-ups", stats.matchups), ("agreement", stats.agreement_pairs)):
        typer.echo(f"\n{title}\n{markdown_table(rows)}")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["prefs"]:
        sys.argv.pop(1)
        prefs_app()
    else:
        app()
