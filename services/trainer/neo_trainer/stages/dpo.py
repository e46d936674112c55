"""DPO recipe: sigmoid DPO on TRL-format preference rows against a frozen reference model.

TRL JSONL (``neo prefs export``: ``prompt``, ``chosen``, ``rejected``, each text or messages) → chat
template ids, targets only on the completion (``sft_data.encode_preference``) → policy log-probs of
chosen and rejected in one forward (``losses.sequence_logps``) → ``losses.dpo_loss`` against the
reference log-probs, computed once up front (the reference is frozen, default: the starting model,
i.e. the SFT checkpoint) → AdamW → metrics (``rewards/chosen``, ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``) → HF export with ``stage="dpo"``.

    python -m neo_trainer.stages.dpo CONFIG      # what the trainer worker runs for kind=dpo
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from neo.hf import load_hf
from neo.model import NeoModel
from neo_trainer.config import DPOConfig, load_stage_config
from neo_trainer.losses import dpo_loss, sequence_logps
from neo_trainer.metrics import MetricsLogger
from neo_trainer.sft_data import Example, encode_preference, load_preferences, pack
from neo_trainer.stages.sft import export_model, load_policy, make_optimizer, optimizer_step

log = logging.getLogger(__name__)


def _pair_batch(pairs: list[tuple[Example, Example]], seq_len: int, pad_id: int):
    """Chosen rows then rejected rows, one example per row (no packing), padded to the longest."""
    examples = [c for c, _ in pairs] + [r for _, r in pairs]
    width = min(seq_len, max(len(e.input_ids) for e in examples))
    return pack(examples, width, pad_id, packing=False)


def pair_logps(model: NeoModel, pairs: list[tuple[Example, Example]], seq_len: int,
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed completion log-probs under ``model``, (N,) each."""
    b = _pair_batch(pairs, seq_len, pad_id)
    logps = sequence_logps(model(b.input_ids, b.positions), b.targets)
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def reference_logps(model: NeoModel, pairs: list[tuple[Example, Example]], seq_len: int, pad_id: int,
                    batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    was = model.training
    model.eval()
    parts = [pair_logps(model, pairs[i:i + batch], seq_len, pad_id) for i in range(0, len(pairs), batch)]
    model.train(was)
    return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])


@torch.no_grad()
def evaluate_margin(model: NeoModel, pairs: list[tuple[Example, Example]], ref: tuple[torch.Tensor, torch.Tensor],
                    seq_len: int, pad_id: int, beta: float) -> dict[str, float]:
    """DPO loss and reward statistics over all ``pairs`` (the numbers TRL logs, for a whole set)."""
    chosen, rejected = reference_logps(model, pairs, seq_len, pad_id)
    return {k: float(v) for k, v in dpo_loss(chosen, rejected, ref[0], ref[1], beta).items()}


def run_dpo(cfg: DPOConfig, threads: int = 0) -> Path:
    """Train the policy on the preference pairs; returns the HF export directory."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    rng = random.Random(cfg.train.seed)
    rows = load_preferences(cfg.data.preferences)
    if not rows:
        raise ValueError(f"no preference pairs in {', '.join(map(str, cfg.data.preferences))}")
    model, tokenizer, base = load_policy(cfg.base_model)
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len: {cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    pairs = [encode_preference(tokenizer, row, cfg.seq_len) for row in rows]
    reference = load_hf(cfg.reference_model or cfg.base_model, dtype=torch.float32)
    reference.requires_grad_(False)
    ref = reference_logps(reference, pairs, cfg.seq_len, tokenizer.pad_id)
    del reference
    t = cfg.train
    per_epoch = math.ceil(len(pairs) / t.micro_batch_size)
    total = t.steps or per_epoch * t.epochs
    optimizer = make_optimizer(model, t)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(cfg.dump(), indent=2) + "\n")
    log.info("DPO: %d pairs, %d steps, beta %.3g", len(pairs), total, t.beta)
    metrics = MetricsLogger(cfg.run_dir, total_steps=total, start_step=0, log_every=cfg.metrics.log_every,
                            tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress)
    order: list[int] = []
    record: dict[str, Any] = {}
    seen = 0
    try:
        for step in range(total):
            t0 = time.perf_counter()
            if len(order) < t.micro_batch_size:
                fresh = list(range(len(pairs)))
                rng.shuffle(fresh)
                order += fresh
            idx, order = order[:t.micro_batch_size], order[t.micro_batch_size:]
            seen += sum(len(e.input_ids) for i in idx for e in pairs[i])
            chosen, rejected = pair_logps(model, [pairs[i] for i in idx], cfg.seq_len, tokenizer.pad_id)
            out = dpo_loss(chosen, rejected, ref[0][idx], ref[1][idx], t.beta)
            out["loss"].backward()
            norm = optimizer_step(model, optimizer, t, step)
            dt = time.perf_counter() - t0
            record = {"step": step + 1, "phase": "dpo", **{k: float(v.detach()) for k, v in out.items()},
                      "logps/chosen": float(chosen.detach().mean()), "logps/rejected": float(rejected.detach().mean()),
                      "grad_norm": norm, "lr": optimizer.param_groups[0]["lr"], "tokens": seen,
                      "pairs_per_s": len(idx) / dt, "tokens_per_s": sum(len(e.input_ids) for i in idx
                                                                        for e in pairs[i]) / dt, "step_time_s": dt, "time": time.time()}
            metrics.log(record, force=step + 1 == total)
    finally:
        metrics.close()
    final = evaluate_margin(model, pairs, ref, cfg.seq_len, tokenizer.pad_id, t.beta)
    (cfg.run_dir / "dpo_eval.json").write_text(json.dumps(final, indent=2) + "\n")
    parent = cfg.parent or (base.name if base else str(cfg.base_model))
    return export_model(model, cfg.export_dir, tokenizer, name=cfg.name, stage="dpo", base=base, parent=parent,
                        train_config=cfg.dump(),
                        data={"preferences": [str(Path(p).resolve()) for p in cfg.data.preferences],
                              "pairs": len(pairs)},
                        metrics={k: v for k, v in final.items()})


def main(argv: list[str] | None = None) -> int:
    """``python -m neo_trainer.stages.dpo CONFIG``: a short run that starts over when repeated."""
    from neo_trainer.settings import TrainerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = list(argv if argv is not None else sys.argv[1:])
    if len(args) != 1:
        raise SystemExit(f"usage: python -m neo_trainer.stages.dpo CONFIG (got {args}; DPO runs do not resume)")
    cfg = load_stage_config(DPOConfig, Path(args[0]))
    settings = TrainerSettings()
    if cfg.register_export and cfg.parent is None:  # the UI's job: which registered version it started from
        from neo.registry import ModelRegistry
        from neo_trainer.align import version_of

        base = version_of(ModelRegistry.from_url(settings.redis_url, settings.redis_prefix), cfg.base_model)
        cfg = cfg.model_copy(update={"parent": base.ref if base else None})
    out = run_dpo(cfg, threads=settings.threads)
    print(f"exported {out}")
    if cfg.register_export:
        from neo.registry import ModelRegistry
        from neo_trainer.align import register_next

        version = register_next(ModelRegistry.from_url(settings.redis_url, settings.redis_prefix), out,
                                cfg.base_model)
        if version is not None:
            print(f"registered {version.ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
