"""Helpers shared by the trainer tests: reading run logs, running `neo train` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from neo_trainer.distributed import clean_launcher_env

REPO = Path(__file__).resolve().parents[3]


def losses(run_dir: Path) -> dict[int, float]:
    """step → training loss from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows}


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def trainer_env(**extra: str) -> dict[str, str]:
    """Environment for trainer subprocesses: no launcher variables inherited from this process."""
    env = clean_launcher_env()
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def neo(*args: str, timeout: int = 240, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``neo ARGS`` in a subprocess with the trainer's environment."""
    return subprocess.run([sys.executable, "-m", "neo.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=trainer_env(), cwd=cwd)


def neo_train(*args: str, timeout: int = 240, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return neo("train", *args, timeout=timeout, cwd=cwd)


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg, indent=2))
    return path

