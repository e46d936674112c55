"""Checkpoints for exact resume, and Hugging Face exports that serving can load.

A DeepSpeed checkpoint ``<run_dir>/checkpoints/<tag>/`` holds model and optimizer state (partitioned
per rank under ZeRO) plus our client state under named keys, torchtitan style::

    step      optimizer steps done
    schedule  the LRSchedule in force (the scheduler: LR is a pure function of it and the step)
    data      the data position (``DataState``: next step, rows consumed per source)
    phase     fundamental | decay

and one ``rng_rank{r}.pt`` per rank (torch, numpy and Python generators). Tags are ``step_00000123``;
the checkpoint at the end of the fundamental phase is also kept as ``fundamental_end`` (never pruned),
the starting point of a separate decay run (``train.init_from``).
"""

from __future__ import annotations

import logging
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neo.hf import export_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo
from neo_trainer import distributed

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
PHASE_TAG = "fundamental_end"
_MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's model file inside a tag directory


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every generator's state in types ``torch.load(weights_only=True)`` reads (no pickled numpy arrays)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine: Any, directory: Path, step: int, client_state: dict[str, Any], *, rank: int, keep: int,
         tag: str | None = None) -> Path:
    """Save on every rank (collective), then prune old ``step_*`` tags to the last ``keep``."""
    tag = tag or step_tag(step)
    engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step, **client_state})
    torch.save(rng_state(), Path(directory) / tag / f"rng_rank{rank}.pt")
    distributed.barrier()
    if rank == 0:
        tags = sorted(p for p in Path(directory).glob("step_*") if p.is_dir())
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s saved (step %d)", Path(directory) / tag, step)
    distributed.barrier()
    return Path(directory) / tag


def find(path: Path) -> tuple[Path, str] | None:
    """(DeepSpeed load dir, tag) for a checkpoints directory (its ``latest``) or one tag directory."""
    path = Path(path)
    if (path / "latest").is_file():
        return path, (path / "latest").read_text().strip()
    if (path / _MODEL_STATES).is_file():
        return path.parent, path.name
    return None


def load(engine: Any, path: Path, *, rank: int, load_optimizer: bool = True) -> dict[str, Any]:
    """Load a checkpoint into ``engine`` (collective); returns the client state (step, schedule, data)."""
    found = find(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint (expected a 'latest' file or a tag directory)")
    load_dir, tag = found
    loaded, client = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=load_optimizer,
                                            load_lr_scheduler_states=False)
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {load_dir / tag}")
    rng = load_dir / tag / f"rng_rank{rank}.pt"
    if rng.exists():
        try:  # weights_only: a checkpoint directory is data, never code to run
            set_rng_state(torch.load(rng, weights_only=True))
        except (pickle.UnpicklingError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            log.warning("%s: RNG state not restored (%s); resuming with fresh generators", rng, exc)
    log.info("loaded checkpoint %s (step %d)", load_dir / tag, client["step"])
    return client


def export(model: NeoModel, out_dir: Path, *, zero_stage: int, rank: int, tokenizer: Any,
           info: NeoCheckpointInfo, dtype: torch.dtype) -> Path:
    """Write an HF directory from rank 0 (collective under ZeRO-3, which gathers the weights first)."""
    with distributed.full_parameters(model, zero_stage):
        if rank == 0:
            export_hf(model, out_dir, tokenizer=tokenizer, info=info, dtype=dtype)
    distributed.barrier()
    return Path(out_dir)
