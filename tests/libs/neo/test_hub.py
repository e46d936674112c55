"""`neo model push/pull`: argument checks and the unreachable-hub error (no network: the hub is a closed port
on 127.0.0.1)."""

import subprocess
import sys

import pytest
import torch

from neo.config import ModelConfig
from neo.hf import export_hf
from neo.model import NeoModel
from neo.net import free_port


def neo(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neo.cli", "model", *args], capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": "/tmp", **env})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = NeoModel(ModelConfig.from_name("tiny", vocab_size=300, max_seq_len=64))
    return export_hf(model, tmp_path_factory.mktemp("hub") / "tiny")


def one_error_line(out: subprocess.CompletedProcess) -> str:
    text = (out.stdout + out.stderr).strip()
    assert "Traceback" not in text and text.startswith("error:"), text
    return " ".join(text.split())  # rich may wrap the one line


def test_push_and_pull_name_an_unreachable_hub(checkpoint, tmp_path):
    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = neo("push", str(checkpoint), "--repo", "neo-org/tiny", "--endpoint", hub)
    assert out.returncode == 1 and f"the hub at {hub} cannot be reached" in one_error_line(out)
    out = neo("pull", "neo-org/tiny", "--out", str(tmp_path / "pulled"), NEO_HUB_ENDPOINT=hub)  # from the env
    assert out.returncode == 1 and f"the hub at {hub} cannot be reached" in one_error_line(out)
    assert not (tmp_path / "pulled" / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (("push", "CKPT", "--repo", "no-slash"), "'no-slash' is not a hub repository id"),
    (("push", "CKPT", "--repo", "a/b/c"), "'a/b/c' is not a hub repository id"),
    (("push", "CKPT", "--repo", "org/x", "--endpoint", "ftp://hub"), "'ftp://hub' is not a hub endpoint"),
    (("pull", "org/../x"), "'org/../x' is not a hub repository id"),
    (("pull", "org/x", "--endpoint", "localhost:8080"), "'localhost:8080' is not a hub endpoint"),
])
def test_bad_arguments_are_one_line_errors(checkpoint, args, message):
    out = neo(*(str(checkpoint) if a == "CKPT" else a for a in args))
    assert out.returncode == 2 and message in one_error_line(out)


def test_push_refuses_what_is_not_a_checkpoint(tmp_path, checkpoint):
    (tmp_path / "config.json").write_text("{}")
    out = neo("push", str(tmp_path), "--repo", "org/x", "--endpoint", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "has no model.safetensors" in one_error_line(out)
    missing = tmp_path / "token"
    out = neo("push", str(checkpoint), "--repo", "org/x", NEO_HUB_TOKEN_FILE=str(missing))
    assert out.returncode == 2 and f"cannot read secrets from {missing}" in one_error_line(out)
