"""``neo serve``: flags, defaults in --help, a real process, and ``neo serve register``."""

from __future__ import annotations

import subprocess
import sys

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
                 "(default: 16; env NEO_MAX_BATCH_SIZE)", "register"):
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


@pytest.mark.slow
def test_neo_serve_runs_as_a_process(checkpoint):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "neo.cli", "serve", "--model", f"demo={checkpoint}",
                             "--port", str(port), "--max-batch-size", "2", "--log-level", "warning"])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout_s=90)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "demo", "prompt": "Hi", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == "demo"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
