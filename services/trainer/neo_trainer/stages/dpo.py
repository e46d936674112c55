"""DPO recipe: sigmoid DPO on TRL-format preference rows against a frozen reference model.

TRL JSONL (``neo prefs export``: ``prompt``, ``chosen``, ``rejected``, each text or messages) → chat
template ids as TRL's ``DPOTrainer`` makes them, targets only on the completion, the prompt's turns are
context (``sft_data.encode_preference``; tests/services/trainer/test_trl_parity.py) → policy log-probs of
chosen and rejected in one forward (``losses.sequence_logps``) → ``losses.dpo_loss`` against the
reference log-probs, computed once up front (the reference is frozen, default: the starting model,
i.e. the SFT checkpoint) → AdamW on the DeepSpeed engine (``engine.AlignEngine``; with several processes
each takes its share of every global batch of pairs) → metrics (``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``) → HF export with ``stage="dpo"``.

    python -m neo_trainer.stages.dpo CONFIG [--set k=v]     # what the trainer worker runs for kind=dpo
    torchrun --nproc_per_node 2 -m neo_trainer.stages.dpo CONFIG     # = neo train dpo CONFIG --nproc 2
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from neo.hf import load_hf
from neo.model import NeoModel
from neo_trainer import distributed
from neo_trainer.config import DPOConfig, load_stage_config
from neo_trainer.engine import AlignEngine
from neo_trainer.losses import dpo_loss, sequence_logps
from neo_trainer.metrics import MetricsLogger
from neo_trainer.modeling import CausalLM
from neo_trainer.sft_data import Example, encode_preference, load_preferences, pack
from neo_trainer.stages.sft import (
    build_engine,
    checkpoint_info,
    load_policy,
    shuffled_batches,
    stage_args,
    warmup_lr,
)

log = logging.getLogger(__name__)


def _pair_batch(pairs: list[tuple[Example, Example]], seq_len: int, pad_id: int):
    """Chosen rows then rejected rows, one example per row (no packing), padded to the longest."""
    examples = [c for c, _ in pairs] + [r for _, r in pairs]
    width = min(seq_len, max(len(e.input_ids) for e in examples))
    return pack(examples, width, pad_id, packing=False)


def pair_logps(model: NeoModel | AlignEngine, pairs: list[tuple[Example, Example]], seq_len: int,
               pad_id: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed completion log-probs under ``model`` (a NeoModel or the engine), (N,) each."""
    b = _pair_batch(pairs, seq_len, pad_id)
    if device is not None:
        b = b.to(device)
    logps = sequence_logps(model(b.input_ids, b.positions), b.targets)
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def reference_logps(model: NeoModel | AlignEngine, pairs: list[tuple[Example, Example]], seq_len: int,
                    pad_id: int, batch: int = 8,
                    device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    was = model.training
    model.train(False)
    parts = [pair_logps(model, pairs[i:i + batch], seq_len, pad_id, device) for i in range(0, len(pairs), batch)]
    model.train(was)
    return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])


@torch.no_grad()
def evaluate_margin(model: NeoModel | AlignEngine, pairs: list[tuple[Example, Example]],
                    ref: tuple[torch.Tensor, torch.Tensor], seq_len: int, pad_id: int, beta: float,
                    device: torch.device | None = None) -> dict[str, float]:
    """DPO loss and reward statistics over all ``pairs`` (the numbers TRL logs, for a whole set)."""
    chosen, rejected = reference_logps(model, pairs, seq_len, pad_id, device=device)
    return {k: float(v) for k, v in dpo_loss(chosen, rejected, ref[0], ref[1], beta).items()}


def run_dpo(cfg: DPOConfig, threads: int = 0) -> Path:
    """Train the policy on the preference pairs; returns the HF export directory."""
    env = distributed.setup(threads)
    torch.manual_seed(cfg.train.seed)
    rng = random.Random(cfg.train.seed)
    rows = load_preferences(cfg.data.preferences)
    if not rows:
        raise ValueError(f"no preference pairs in {', '.join(map(str, cfg.data.preferences))}")
    model, tokenizer, base = load_policy(cfg.base_model)
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len: {cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    encoded = [encode_preference(tokenizer, row, cfg.seq_len, cfg.completion_end, cfg.truncation_mode) for row in rows]
    dropped = sum(pair is None for pair in encoded)
    if dropped:  # truncation_mode keep_start, as TRL: a prompt filling seq_len leaves no completion to score
        log.warning("%d of %d preference rows dropped: their prompt alone fills seq_len=%d (truncation_mode "
                    "keep_start; keep_end keeps them, cutting the prompt's start)", dropped, len(rows), cfg.seq_len)
        rows = [row for row, pair in zip(rows, encoded, strict=True) if pair is not None]
        if not rows:
            raise ValueError(f"every preference row's prompt fills seq_len={cfg.seq_len}: raise seq_len or use "
                             "truncation_mode: keep_end")
    pairs = [pair for pair in encoded if pair is not None]
    # an optional per-row ``weight`` column (TRL ignores it): human vs reward-model pairs in an iterative round
    weights = torch.tensor([float(row.get("weight", 1.0)) for row in rows], device=env.device)
    if bool((weights < 0).any()):
        raise ValueError("preference rows: weight must be >= 0")
    weighted = bool((weights != 1).any())
    t = cfg.train
    per_rank = t.micro_batch_size
    if len(pairs) < per_rank * env.world_size:
        per_rank = max(1, len(pairs) // env.world_size)  # a few labels: smaller steps rather than none
        if len(pairs) < env.world_size:
            raise ValueError(f"{len(pairs)} preference pairs cannot be shared by {env.world_size} processes")
    reference = load_hf(cfg.reference_model or cfg.base_model, dtype=torch.float32).to(env.device)
    reference.requires_grad_(False)
    ref = reference_logps(reference, pairs, cfg.seq_len, tokenizer.pad_id, device=env.device)
    del reference
    global_batch = per_rank * env.world_size
    per_epoch = math.ceil(len(pairs) / global_batch)
    total = t.steps or per_epoch * t.epochs
    policy = build_engine(model, CausalLM(model, fused_loss=False), t.model_copy(update={"micro_batch_size": per_rank}),
                          cfg.distributed, env)
    if env.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.json").write_text(json.dumps(cfg.dump(), indent=2) + "\n")
        log.info("DPO: %d pairs, %d steps of %d pairs, beta %.3g", len(pairs), total, global_batch, t.beta)
    metrics = MetricsLogger(cfg.run_dir, total_steps=total, start_step=0, log_every=cfg.metrics.log_every,
                            tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress, enabled=env.is_main)
    batches = shuffled_batches(len(pairs), global_batch, rng)
    record: dict[str, Any] = {}
    seen = 0
    try:
        for step in range(total):
            t0 = time.perf_counter()
            batch = next(batches)
            idx = policy.share(batch)
            chosen, rejected = pair_logps(policy, [pairs[i] for i in idx], cfg.seq_len, tokenizer.pad_id, env.device)
            out = dpo_loss(chosen, rejected, ref[0][idx], ref[1][idx], t.beta,
                           weights=weights[idx] if weighted else None)
            lr = warmup_lr(t, step)
            _, norm = policy.step(out["loss"], lr)
            stats = {k: distributed.all_reduce_mean(v.detach()) for k, v in out.items()}
            stats["logps/chosen"] = distributed.all_reduce_mean(chosen.detach().mean())
            stats["logps/rejected"] = distributed.all_reduce_mean(rejected.detach().mean())
            tokens = sum(len(e.input_ids) for i in batch for e in pairs[i])
            seen += tokens
            dt = time.perf_counter() - t0
            record = {"step": step + 1, "phase": "dpo", **stats, "grad_norm": norm, "lr": lr, "tokens": seen,
                      "pairs_per_s": len(batch) / dt, "tokens_per_s": tokens / dt, "step_time_s": dt,
                      "time": time.time()}
            metrics.log(record, force=step + 1 == total)
    finally:
        metrics.close()
    final = evaluate_margin(policy, pairs, ref, cfg.seq_len, tokenizer.pad_id, t.beta, device=env.device)
    if env.is_main:
        (cfg.run_dir / "dpo_eval.json").write_text(json.dumps(final, indent=2) + "\n")
    parent = cfg.parent or (base.name if base else str(cfg.base_model))
    info = checkpoint_info(model, name=cfg.name, stage="dpo", base=base, parent=parent, train_config=cfg.dump(),
                           data={"preferences": [str(Path(p).resolve()) for p in cfg.data.preferences],
                                 "pairs": len(pairs)},
                           metrics=final)
    return policy.export(cfg.export_dir, tokenizer, info)


def main(argv: list[str] | None = None) -> int:
    """``python -m neo_trainer.stages.dpo CONFIG``: a short run that starts over when repeated."""
    from neo_trainer.settings import TrainerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, overrides = stage_args("dpo", argv)
    cfg = load_stage_config(DPOConfig, config, overrides)
    settings = TrainerSettings()
    main_rank = distributed.setup().is_main
    if cfg.register_export and cfg.parent is None:  # the UI's job: which registered version it started from
        from neo.registry import ModelRegistry

        base = ModelRegistry.from_url(settings.redis_url, settings.redis_prefix).version_of(cfg.base_model)
        cfg = cfg.model_copy(update={"parent": base.ref if base else None})
    out = run_dpo(cfg, threads=settings.threads)
    if not main_rank:
        return 0
    print(f"exported {out}")
    if cfg.register_export:
        from neo.registry import ModelRegistry

        version = ModelRegistry.from_url(settings.redis_url, settings.redis_prefix).register_next(out, cfg.base_model)
        if version is not None:
            print(f"registered {version.ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
