"""Test helpers: a live server in a thread, and random tiny checkpoints."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import torch
import uvicorn

from neo.config import ModelConfig
from neo.hf import export_hf
from neo.model import NeoModel
from neo.net import free_port
from neo.tokenizer import NeoTokenizer
from neo_serving.app import build_app
from neo_serving.settings import ServingSettings

VOCAB_SIZE = 800
MAX_SEQ_LEN = 256
# a request of this many tokens runs for seconds even in an idle engine process: a client that hangs up after a
# few chunks always interrupts it (at 256 it could finish first)
LONG_SEQ_LEN = 8192
REDIS_URL = "redis://127.0.0.1:6379/0"


class LiveServer:
    """``build_app(settings)`` served by uvicorn in a thread; a context manager."""

    def __init__(self, settings: ServingSettings, start_timeout_s: float = 60.0):
        self.port = free_port()
        self.start_timeout_s = start_timeout_s
        self.settings = settings.model_copy(update={"serve_port": self.port})
        self.app = build_app(self.settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def models(self):
        return self.app.state.services.models

    def client(self, api_key: str = "unused", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60, **kw)

    def running(self) -> int:
        return sum(m.engine.stats().running + m.engine.stats().waiting for _, m in self.models.items())


def export_random_model(out: Path, tokenizer: NeoTokenizer, seed: int, max_seq_len: int = MAX_SEQ_LEN) -> Path:
    torch.manual_seed(seed)
    model = NeoModel(ModelConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len))
    return export_hf(model, out, tokenizer=tokenizer)


DASHBOARD = Path(__file__).resolve().parents[3] / "monitoring" / "grafana" / "dashboards" / "neo-serving.json"


def dashboard_series() -> set[str]:
    """Series names the Grafana serving dashboard queries, without the engine prefix (``${prefix}:``)."""
    import re

    return set(re.findall(r"\$\{prefix\}:([a-z0-9_]+)", DASHBOARD.read_text()))


def missing_dashboard_series(exposition: str, prefix: str) -> list[str]:
    """Dashboard series that a Prometheus exposition does not have under ``prefix``."""
    names = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}
    return sorted(s for s in dashboard_series() if f"{prefix}:{s}" not in names)
