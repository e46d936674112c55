"""``neo serve``: flags, defaults in --help, a real process, and ``neo serve register``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from neo.net import free_port, wait_http
from neo.registry import ModelRegistry
from neo_serving.cli import app

from .helpers import REDIS_URL


def test_help_explains_defaults():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--model", "--upstream", "--api-key", "--engine", "(default: 8000; env NEO_SERVE_PORT)",
                 "as many as NEO_KV_CACHE_GB holds", "env NEO_MAX_BATCH_SIZE)", "register"):
        assert text in result.output, text


def test_refuses_to_start_without_a_model_or_with_bad_flags():
    result = CliRunner().invoke(app, [], env={"NEO_MODELS": "[]"})
    assert result.exit_code == 2 and "nothing to serve" in result.output
    result = CliRunner().invoke(app, ["--model", "x", "--engine", "gateway", "--upstream", "x=ftp://nope"])
    assert result.exit_code == 2 and "NAME=http(s)://host:port" in result.output


def test_register_adds_a_version(checkpoint, redis_prefix):
    env = {"NEO_REDIS_URL": REDIS_URL, "NEO_REDIS_PREFIX": redis_prefix}
    result = CliRunner().invoke(app, ["register", "chat", str(checkpoint), "--stage", "dpo"], env=env)
    assert result.exit_code == 0, result.output
    assert "registered chat:v1" in result.output
    latest = ModelRegistry.from_url(REDIS_URL, redis_prefix).latest("chat")
    assert latest is not None and latest.stage == "dpo" and latest.path == str(checkpoint.resolve())


def test_key_files_must_hold_keys(tmp_path):
    empty = tmp_path / "keys"
    empty.write_text("# no keys yet\n\n")
    result = CliRunner().invoke(app, ["--model", "x", "--api-key-file", str(empty)])
    assert result.exit_code == 2 and "holds no secret" in result.output
    result = CliRunner().invoke(app, ["--model", "x", "--admin-key-file", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "cannot read secrets" in result.output


@pytest.mark.slow
def test_neo_serve_runs_as_a_process_with_keys_from_files(checkpoint, tmp_path):
    """Keys given in files work and stay out of the process list (`ps` shows every argv to every user)."""
    port = free_port()
    (tmp_path / "api-keys").write_text("# inference keys\nsk-file-one\nsk-file-two\n")
    (tmp_path / "admin-keys").write_text("sk-file-admin\n")
    for f in ("api-keys", "admin-keys"):
        (tmp_path / f).chmod(0o600)
    proc = subprocess.Popen([sys.executable, "-m", "neo.cli", "serve", "--model", f"demo={checkpoint}",
                             "--port", str(port), "--max-batch-size", "2", "--log-level", "warning",
                             "--api-key-file", str(tmp_path / "api-keys"),
                             "--admin-key-file", str(tmp_path / "admin-keys")])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout_s=90)
        assert b"sk-file" not in open(f"/proc/{proc.pid}/cmdline", "rb").read()
        (engine,) = engine_processes(proc.pid)  # the model loop runs in a child of its own
        body = {"model": "demo", "prompt": "Hi", "max_tokens": 3}
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 401
        r = httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer sk-file-two"})
        assert r.status_code == 200 and r.json()["model"] == "demo"
        reload = {"model": "demo", "path": str(checkpoint)}
        assert httpx.post(f"{url}/v1/admin/reload", json=reload,
                          headers={"Authorization": "Bearer sk-file-one"}).status_code == 401
        assert httpx.post(f"{url}/v1/admin/reload", json=reload, timeout=60,
                          headers={"Authorization": "Bearer sk-file-admin"}).status_code == 200
        wait_gone(engine, 30)  # the old version's engine process stops once it has no requests
        (engine,) = engine_processes(proc.pid)  # the reloaded version's
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    wait_gone(engine, 30)  # a stopped server leaves no engine process behind


def engine_processes(pid: int) -> list[int]:
    """Children of ``pid`` that are multiprocessing spawn children (engine processes; not the resource tracker)."""
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children |= {int(c) for c in (task / "children").read_text().split()}
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def wait_gone(pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and b"Z" not in Path(f"/proc/{pid}/stat").read_bytes().split()[2:3]:
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.1)


def test_a_killed_server_takes_its_engine_process_with_it(checkpoint):
    """SIGKILL of `neo serve` (no shutdown hook runs): the engine process sees its pipe close and exits, so no
    orphan holds the weights and the cores."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "neo.cli", "serve", "--model", f"demo={checkpoint}",
                             "--port", str(port), "--max-batch-size", "2", "--log-level", "warning"])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout_s=90)
        (engine,) = engine_processes(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    wait_gone(engine, 30)


def test_a_model_that_is_not_a_checkpoint_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["--model", f"x={tmp_path}"], env={"NEO_REDIS_URL": REDIS_URL})
    assert result.exit_code == 2 and "is not a checkpoint directory (no config.json)" in result.output
    result = CliRunner().invoke(app, ["--model", str(tmp_path / "missing")], env={
        "NEO_REDIS_URL": REDIS_URL, "NEO_REDIS_PREFIX": "neo-test-none:"})
    assert result.exit_code == 2 and "neither a directory nor a model in the registry" in result.output
