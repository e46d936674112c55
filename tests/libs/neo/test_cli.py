"""The `neo` command, run as a real subprocess (entry points and all)."""

import subprocess
import sys
from pathlib import Path

import pytest

from neo.config import ModelConfig

YOU, NEO = "you> ", "neo> "  # the prompts of `neo chat`


def neo(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``neo ARGS`` with ``stdin`` as its whole input (a pipe: its end is Ctrl-D)."""
    return subprocess.run([sys.executable, "-m", "neo.cli", *args], input=stdin, capture_output=True, text=True,
                          encoding="utf-8", timeout=120,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **(env or {})})


def test_help_lists_library_and_service_commands():
    out = neo("--help")
    assert out.returncode == 0, out.stderr
    for command in ("model", "tokenizer", "chat", "up", "train"):
        assert command in out.stdout


def test_model_info_prints_the_preset_numbers():
    out = neo("model", "info", "neo-7b", "--seq-len", "4096")
    assert out.returncode == 0, out.stderr
    cfg = ModelConfig.from_name("neo-7b")
    assert f"{cfg.num_params():,}" in out.stdout
    assert f"{cfg.flops_per_token(4096):.3e}" in out.stdout
    assert "28 × 3072" in out.stdout and "MHA" in out.stdout


def test_model_info_shows_each_presets_source():
    from neo.config import PRESET_SOURCES, PRESETS

    out = neo("model", "info")
    assert out.returncode == 0, out.stderr
    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        assert name in out.stdout and f"{cfg.num_params():,}" in out.stdout
        assert PRESET_SOURCES[name].ref in out.stdout
    assert "18 × 2048, 8/1 MQA, 16384, 64128, 8192" in out.stdout
    assert out.stdout.count("ours, no source: d_model, n_layers") == 3  # the scaling-law shapes
    one = neo("model", "info", "neo-2b")
    assert one.returncode == 0, one.stderr
    assert "pretrain_2b.sh" in one.stdout and "ours (no source found)" not in one.stdout
    assert "ours (no source found)" in neo("model", "info", "neo-460m").stdout


def test_unknown_preset_is_a_clear_error():
    out = neo("model", "info", "gpt-5")
    assert out.returncode != 0
    assert "unknown preset 'gpt-5'" in out.stderr + out.stdout


def chat(checkpoint: Path, stdin: str) -> subprocess.CompletedProcess:
    """``neo chat`` with greedy decoding, and answers long enough that a second turn already overflows the
    checkpoint's 128-token context (the oldest turns are dropped)."""
    out = neo("chat", str(checkpoint), "--max-new-tokens", "48", "--temperature", "0", stdin=stdin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Neo chat with {checkpoint} — an empty line or Ctrl-D quits.\n")
    assert "Traceback" not in out.stderr
    return out


def answers(stdout: str) -> list[str]:
    """What `neo chat` streamed after each of its prompts, up to the next user prompt."""
    return [part.split(YOU)[0].removesuffix("\n") for part in stdout.split(NEO)[1:]]


def test_chat_streams_an_answer_and_an_empty_line_quits(checkpoint):
    out = chat(checkpoint, "Hello, who are you?\n\nnever read\n")
    assert out.stdout.count(YOU) == 2 and out.stdout.endswith(YOU)  # asked twice; the empty line ended it
    [answer] = answers(out.stdout)
    assert answer.strip()


@pytest.mark.slow
def test_chat_keeps_talking_over_several_turns(checkpoint):
    turns = ["Hello, who are you?", "你好，今天天气怎么样？", "Please tell me a short story about the sea.", "再见"]
    out = chat(checkpoint, "\n".join(turns) + "\n\n")
    assert out.stdout.count(YOU) == len(turns) + 1
    replies = answers(out.stdout)
    assert len(replies) == len(turns) and all(r.strip() for r in replies)


def test_chat_ctrl_d_exits_cleanly(checkpoint):
    out = chat(checkpoint, "你好")  # a last line without a newline, then end of input at the next prompt
    assert out.stdout.count(YOU) == 2 and out.stdout.endswith(YOU)
    [answer] = answers(out.stdout)
    assert answer.strip()


def test_eval_compares_registered_versions_by_name(checkpoint, tmp_path, redis_prefix):
    """`neo eval --model NAME:vN` resolves versions through the registry in Redis and labels them by ref."""
    import json
    import shutil

    import redis

    from neo.registry import ModelRegistry

    registry = ModelRegistry(redis.Redis.from_url("redis://127.0.0.1:6379/0"), redis_prefix)
    second = tmp_path / "v2"
    shutil.copytree(checkpoint, second)
    registry.register("chat", checkpoint, stage="sft")
    registry.register("chat", second, stage="dpo", parent="chat:v1")
    env = {"NEO_REDIS_URL": "redis://127.0.0.1:6379/0", "NEO_REDIS_PREFIX": redis_prefix}
    report = tmp_path / "report.json"
    ok = neo("eval", "--model", "chat:v1", "--model", "chat", "--task", "mmlu", "--limit", "2",
             "--out", str(report), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "chat:v1 (sft)" in ok.stdout and "chat:v2 (dpo)" in ok.stdout
    models = json.loads(report.read_text())
    assert set(models) == {"chat:v1 (sft)", "chat:v2 (dpo)"}
    bad = neo("eval", "--model", "chat:v7", "--task", "mmlu", env=env)
    assert bad.returncode == 2 and "chat:v7" in bad.stdout and "chat:v1, chat:v2" in bad.stdout


@pytest.mark.parametrize("args", [
    ["chat", "/nonexistent"],
    ["tokenizer", "encode", "hello", "--tokenizer", "/nonexistent"],
])
def test_a_bad_path_is_one_line_not_a_traceback(args):
    run = neo(*args)
    assert run.returncode == 2
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line and not line.startswith("INFO")]
    assert errors[0].startswith("error: ") and "/nonexistent" in errors[0], run.stdout + run.stderr
    assert "Traceback" not in run.stderr


def test_model_list_and_chat_by_registered_name(checkpoint, redis_prefix):
    import redis

    from neo.registry import ModelRegistry

    env = {"NEO_REDIS_URL": "redis://127.0.0.1:6379/0", "NEO_REDIS_PREFIX": redis_prefix}
    empty = neo("model", "list", env=env)
    assert empty.returncode == 0 and "no registered models" in empty.stdout
    ModelRegistry(redis.Redis.from_url("redis://127.0.0.1:6379/0"), redis_prefix).register("chat", checkpoint, "sft")
    listed = neo("model", "list", env=env)
    assert listed.returncode == 0 and "chat:v1" in listed.stdout and "sft" in listed.stdout
    out = neo("chat", "chat:v1", "--max-new-tokens", "4", "--temperature", "0", stdin="Hello\n", env=env)
    assert out.returncode == 0 and out.stdout.count(NEO) == 1, out.stdout + out.stderr
