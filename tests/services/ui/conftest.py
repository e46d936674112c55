"""UI fixtures: the machine's Redis (a unique key prefix per test, deleted afterwards), real serving
(``neo serve`` as a subprocess on 127.0.0.1 with two tiny random models), the UI in a thread or as a
``neo ui`` subprocess, and Debian's Chromium driven by playwright for the browser tests.

The tiny models write gibberish: tests assert on mechanics (streaming, records, counts), never meaning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

from neo.config import ModelConfig
from neo.hf import export_hf
from neo.model import NeoModel
from neo.net import free_port, wait_http
from neo.tokenizer import NeoTokenizer, TokenizerConfig, train_tokenizer
from neo_ui.settings import UISettings

REDIS_URL = "redis://127.0.0.1:6379/0"
VOCAB_SIZE = 600
MAX_SEQ_LEN = 256
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

EN = ["Neo is an open bilingual language model.", "Please write a short poem about the sea.",
      "The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris.",
      "Label the better answer and explain why.", "Hello, how are you today? I am fine, thanks."]
ZH = ["今天天气很好，我们去公园散步吧。", "请写一首关于春天的短诗。", "机器学习是人工智能的一个分支。",
      "你好，世界！很高兴认识你。", "北京是中国的首都。", "这个模型可以用中文和英文回答问题。"]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# --- models and serving ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> NeoTokenizer:
    root = tmp_path_factory.mktemp("ui-tokenizer")
    text = root / "corpus.txt"
    text.write_text("\n".join((EN + ZH) * 40), encoding="utf-8")
    train_tokenizer([text], root / "tok", TokenizerConfig(vocab_size=VOCAB_SIZE, num_threads=2), progress=False)
    return NeoTokenizer.load(root / "tok")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Two random tiny models (seeds 0 and 1) exported as HF directories."""
    root = tmp_path_factory.mktemp("ui-models")
    out = {}
    for seed, name in enumerate(("tiny", "tiny2")):
        torch.manual_seed(seed)
        model = NeoModel(ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=MAX_SEQ_LEN))
        out[name] = export_hf(model, root / name, tokenizer=tokenizer)
    return out


@pytest.fixture(scope="session")
def serving(checkpoints) -> Iterator[str]:
    """``neo serve`` (torch engine) in a subprocess; yields its base URL (without /v1)."""
    port = free_port()
    cmd = [sys.executable, "-m", "neo.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
           "--log-level", "warning", *[a for name, d in checkpoints.items() for a in ("--model", f"{name}={d}")]]
    proc = subprocess.Popen(cmd, env={**os.environ, "NEO_REDIS_PREFIX": f"test-ui-serving-{uuid.uuid4().hex[:6]}:"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


# --- settings (redis_prefix and rds: tests/conftest.py) ---------------------------------------------------
def make_settings(home: Path, prefix: str, api_url: str, **overrides) -> UISettings:
    # seed: chat answers of the random models are the same every run (unseeded, about one answer in 200
    # is empty: EOS first), so tests that need a streamed answer never meet an empty one by chance
    # chat_to_labeling off: the tests count the labeling queue after chatting; the automatic flow (on by default)
    # has its own tests (test_ui_chat, test_ui_gradio::test_chats_join_the_labeling_queue_by_default)
    base = dict(home=home, redis_url=REDIS_URL, redis_prefix=prefix, api_url=api_url, temperature=1.0, seed=0,
                max_tokens=48, label_max_tokens=12, request_timeout_s=30, connect_timeout_s=2, chat_to_labeling=False)
    return UISettings(**(base | overrides))


@pytest.fixture
def settings(tmp_path, redis_prefix, serving) -> UISettings:
    return make_settings(tmp_path / "home", redis_prefix, serving)


# --- the UI ----------------------------------------------------------------------------------------------
class ThreadServer:
    """An ASGI app served by uvicorn in a thread on a free port; a context manager."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class LiveUI(ThreadServer):
    """``build_app(settings)`` (both apps) served in a thread."""

    def __init__(self, settings: UISettings):
        from neo_ui.server import build_app

        super().__init__(build_app(settings))


class UIProcess:
    """``python -m neo_ui.cli`` as a subprocess (so it can be restarted); a context manager."""

    def __init__(self, settings: UISettings, log_path: Path):
        self.settings, self.log_path = settings, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "NEO_HOME": str(s.home), "NEO_REDIS_URL": s.redis_url, "NEO_REDIS_PREFIX": s.redis_prefix,
                "NEO_API_URL": s.api_url, "NEO_TEMPERATURE": str(s.temperature), "NEO_MAX_TOKENS": str(s.max_tokens),
                "NEO_LABEL_MAX_TOKENS": str(s.label_max_tokens),
                "NEO_CHAT_TO_LABELING": str(s.chat_to_labeling).lower(),
                **({"NEO_SEED": str(s.seed)} if s.seed is not None else {})}

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neo_ui.cli", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"], env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/health", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def __enter__(self) -> UIProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def live_ui(settings) -> Iterator[LiveUI]:
    with LiveUI(settings) as ui:
        yield ui


# --- the browser -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium (apt package ``chromium``) through playwright; never a downloaded browser."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (the project's setup installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()
