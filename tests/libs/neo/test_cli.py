"""The `neo` command, run as a real subprocess (entry points and all)."""

import subprocess
import sys

from neo.config import ModelConfig


def neo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neo.cli", *args], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


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


def test_unknown_preset_is_a_clear_error():
    out = neo("model", "info", "gpt-5")
    assert out.returncode != 0
    assert "unknown preset 'gpt-5'" in out.stderr + out.stdout
