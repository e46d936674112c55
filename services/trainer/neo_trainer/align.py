"""Iterative DPO: one round = current policy + preferences since the last round → DPO → export → register.

    neo align round --model-name neo-chat --from-redis          # policy: the registry's latest neo-chat
    neo align round --policy .neo/models/sft --prefs prefs.jsonl --model-name neo-chat

A round

1. resolves the policy (an HF directory, or the latest registered version of ``--model-name``);
2. takes the preference rows: a TRL JSONL (``neo prefs export``), or, with ``--from-redis``, exports the
   labels since the last round from the labeling UI's Redis store through ``neo prefs export
   --since-last-round`` (the UI's CLI contract), moving the UI's round marker once there are rows;
3. refuses to run on zero rows (``NoPreferences``), before loading any model;
4. trains DPO with the policy as its own frozen reference (``stages.dpo``), exporting an HF directory with
   ``stage="dpo"`` and ``parent`` = the policy's registry ref;
5. registers the export as the next version of the model name, so serving can switch to it; with
   ``--from-redis`` the UI's round marker moves to the export's cut-off only after success.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from neo.registry import ModelRegistry, ModelVersion
from neo_trainer.config import DPOConfig, load_stage_config

log = logging.getLogger(__name__)


class NoPreferences(ValueError):
    """A round with nothing new to learn from."""


@dataclass
class RoundResult:
    export_dir: Path
    version: ModelVersion | None
    pairs: int
    parent: str | None
    metrics: dict[str, float]


def version_of(registry: ModelRegistry, path: Path) -> ModelVersion | None:
    """The newest registered version whose checkpoint directory is ``path`` (None if none is)."""
    target = str(Path(path).resolve())
    found = [v for v in registry.list() if v.path == target]
    return max(found, key=lambda v: (v.created, v.number)) if found else None


def register_next(registry: ModelRegistry, export_dir: Path, base_model: Path,
                  name: str | None = None) -> ModelVersion | None:
    """Register ``export_dir`` (a DPO export) as the next version of ``name``, by default of the model that
    ``base_model`` is registered as; None when there is no such name (nothing to switch serving on)."""
    base = version_of(registry, base_model)
    name = name or (base.name if base else None)
    if name is None:
        log.info("%s is not a registered version: %s not registered", base_model, export_dir)
        return None
    return registry.register(name, export_dir, stage="dpo", parent=base.ref if base else None)


def count_rows(path: Path) -> int:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file not found: {path}")
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def export_from_redis(out: Path, *, mark_round: bool, env: dict[str, str] | None = None) -> str:
    """Labels since the last round → TRL JSONL at ``out`` through the UI's CLI contract (services never import
    each other): ``neo prefs export OUT --since-last-round [--mark-round]``; returns its summary line."""
    cmd = [sys.executable, "-m", "neo.cli", "prefs", "export", str(out), "--since-last-round",
           *(["--mark-round"] if mark_round else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"`neo prefs export` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def run_round(
    *, run_dir: Path, prefs: Path | None = None, policy: Path | None = None, model_name: str | None = None,
    registry: ModelRegistry | None = None, from_redis: bool = False, env: dict[str, str] | None = None, overrides: list[str] | None = None, export_dir: Path | None = None,
) -> RoundResult:
    """One iterative-DPO round (see the module docstring). ``overrides`` are ``--set`` items for ``DPOConfig``."""
    from neo_trainer.stages.dpo import run_dpo

    parent, known = None, None
    if policy is None:
        if model_name is None or registry is None:
            raise ValueError("give --policy DIR, or --model-name NAME with a registry to take its latest version")
        latest = registry.latest(model_name)
        if latest is None:
            raise ValueError(f"no registered versions of {model_name!r}; give --policy DIR for the first round")
        policy, parent = Path(latest.path), latest.ref
    elif registry is not None:
        known = version_of(registry, policy)
        parent = known.ref if known else str(policy)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if from_redis:
        # count first without moving the UI's round marker, so a refused round loses nothing; then export
        # again marking the round (as the UI's DPO button does when it queues the job) and train on that file
        prefs = run_dir / "prefs.jsonl"
        export_from_redis(prefs, mark_round=False, env=env)
        if count_rows(prefs) > 0:
            log.info("preferences: %s", export_from_redis(prefs, mark_round=True, env=env))
    if prefs is None:
        raise ValueError("give --prefs JSONL or --from-redis")
    n = count_rows(prefs)
    if n == 0:
        raise NoPreferences("no new preferences since the last round: nothing to train on. Label more pairs in "
                            f"the UI (neo ui), then run the round again. (read {prefs})")
    name = model_name or (known.name if known else Path(policy).name)
    raw = {"name": name, "stage": "dpo", "run_dir": str(run_dir), "base_model": str(policy), "parent": parent,
           "register_export": False,
           "data": {"preferences": [str(prefs)], "format": "conversational"},
           "checkpoint": {"export_dir": str(export_dir or run_dir / "hf")},
           "metrics": {"progress": False, "log_every": 1, "tensorboard": False}}
    cfg = load_stage_config(DPOConfig, raw, overrides)
    out = run_dpo(cfg)
    version = registry.register(name, out, stage="dpo", parent=parent) if registry is not None else None
    metrics = json.loads((cfg.run_dir / "dpo_eval.json").read_text())
    log.info("DPO round: %d pairs → %s%s", n, out, f" registered as {version.ref}" if version else "")
    return RoundResult(export_dir=out, version=version, pairs=n, parent=parent, metrics=metrics)
