"""Browser tests (Debian's Chromium via playwright) of the chat app's version picker, "send this exchange to
labeling" and conversation export, against ``neo serve`` following the model registry (two versions of one
model: ``chat`` at its latest, v2, and ``chat:v1`` pinned beside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from neo.net import free_port, wait_http
from neo.registry import ModelRegistry
from neo_ui.prompts import PromptQueue

from .conftest import LiveUI, make_settings, stop
from .test_ui_arena_browser import screenshot, sign_in
from .test_ui_browser import send, wait_for

pytestmark = pytest.mark.slow


def serve_registry(models: list[str], prefix: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``neo serve --model NAME ...`` on the registry under ``prefix``, its watcher polling every 0.5 s."""
    port = free_port()
    cmd = [sys.executable, "-m", "neo.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
           "--log-level", "warning", *[a for m in models for a in ("--model", m)]]
    env = {**os.environ, "NEO_REDIS_PREFIX": prefix, "NEO_WATCH_REGISTRY": "true", "NEO_WATCH_INTERVAL_S": "0.5",
           "OMP_NUM_THREADS": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
    except BaseException:
        stop(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture
def versions_served(checkpoints, rds, redis_prefix, tmp_path) -> Iterator[str]:
    registry = ModelRegistry(rds, redis_prefix)
    registry.register("chat", checkpoints["tiny"], stage="sft")
    registry.register("chat", checkpoints["tiny2"], stage="dpo", parent="chat:v1")
    proc, url = serve_registry(["chat", "chat:v1"], redis_prefix, tmp_path / "serve.log")
    try:
        yield url
    finally:
        stop(proc)


def picker_options(page) -> list[str]:
    """The picker's options as the user sees them (Gradio's dropdown list, opened by a click)."""
    page.locator("#model-picker input").click()
    options = page.locator('[data-testid="dropdown-option"]')
    options.first.wait_for()
    return [options.nth(i).get_attribute("aria-label") for i in range(options.count())]


def download(page, button: str) -> tuple[str, str]:
    """Click an export button; (suggested file name, the file's text)."""
    with page.expect_download() as info:
        page.locator(button).click()
    file = info.value
    return file.suggested_filename, Path(file.path()).read_text(encoding="utf-8")


def test_picker_labeling_and_export_in_the_browser(page, versions_served, tmp_path, redis_prefix, rds):
    settings = make_settings(tmp_path / "home", redis_prefix, versions_served, max_tokens=24)
    with LiveUI(settings) as ui:
        page.goto(f"{ui.url}/chat/")
        page.wait_for_selector("#models-status :text('2 model(s) served')")
        # the picker shows each served version's stage and parent (serving's cards, from the registry)
        assert picker_options(page) == ["chat · v2 · dpo · from chat:v1", "chat:v1 · sft"]
        screenshot(page, "chat-versions", tmp_path)
        page.locator('[data-testid="dropdown-option"][aria-label="chat:v1 · sft"]').click()
        assert page.locator("#model-picker input").input_value() == "chat:v1 · sft"

        send(page, "写一首诗 about the sea")
        log_key = f"{redis_prefix}chat:log"
        wait_for(lambda: rds.llen(log_key) == 1, what="the first answer")
        first = json.loads(rds.lindex(log_key, 0))
        assert first["model"] == "chat:v1"  # the picked version answered
        send(page, "And one in English?")
        wait_for(lambda: rds.llen(log_key) == 2, what="the second answer")
        second = json.loads(rds.lindex(log_key, 0))

        # export: the conversation as an OpenAI request body and as Markdown, downloaded by the browser
        name, text = download(page, "#export-json")
        body = json.loads(text)
        assert name.startswith("neo-chat-") and name.endswith(".json")
        assert body == {"model": "chat:v1", "messages": [*second["messages"],
                                                         {"role": "assistant", "content": second["answer"]}]}
        assert body["messages"][:3] == [*first["messages"], {"role": "assistant", "content": first["answer"]}]
        name, text = download(page, "#export-md")
        assert name.endswith(".md") and text.startswith("# Neo chat\n\n## System\n\n")
        assert "## User\n\n写一首诗 about the sea\n\n## Assistant (chat:v1)\n\n" in text
        assert text.rstrip().endswith(second["answer"].strip())

        # send this exchange to labeling: the prompt (system, history, last user turn) is queued once
        page.locator("#to-labeling").click()
        page.wait_for_selector("#chat-status :text('Sent to labeling')")
        queue = PromptQueue(rds, redis_prefix)
        [pid] = rds.zrange(queue.key("queue"), 0, -1)
        prompt = queue.get(pid)
        assert [m.model_dump() for m in prompt.messages] == second["messages"] and prompt.source == "chat"
        page.locator("#to-labeling").click()
        page.wait_for_selector("#chat-status :text('Already in the labeling queue')")
        assert rds.zcard(queue.key("queue")) == 1

        # ... and the labeling app serves it as the next pair
        sign_in(page, ui.url, "alice")
        page.locator("#next-pair").click()
        page.wait_for_selector("#prompt :text('And one in English?')")
        assert "写一首诗 about the sea" in page.locator("#prompt").inner_text()
        wait_for(lambda: page.locator("#answer-a").inner_text().strip(), what="answer A")
