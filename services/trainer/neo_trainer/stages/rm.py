"""Reward-model recipe: a Bradley-Terry reward model on TRL preference pairs (``neo train rm``).

TRL JSONL (``neo prefs export``: ``prompt``, ``chosen``, ``rejected``) → a seeded held-out share of the pairs
(``data.eval_fraction``, or ``data.eval_preferences``) → chosen and rejected conversations through the chat
template as TRL's ``RewardTrainer`` tokenizes them (``reward.encode_reward_pair``) → ``RewardModel`` (the
starting model's backbone + a scalar head, or a reward model's own head) scores chosen and rejected rows in one
forward → ``losses.reward_loss`` (−log σ(r_c − r_r)) → AdamW on the DeepSpeed engine (``engine.AlignEngine``;
several processes each take their share of every global batch) → held-out loss / accuracy / margin before and
after training (``rm_eval.json``, also in ``reward_model.json``) → an HF directory that ``transformers`` loads
as ``LlamaForSequenceClassification`` (``num_labels=1``; ``neo.hf.export_reward_hf``).

    python -m neo_trainer.stages.rm CONFIG [--set k=v]
    torchrun --nproc_per_node 2 -m neo_trainer.stages.rm CONFIG     # = neo train rm CONFIG --nproc 2
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

from neo.hf import export_reward_hf
from neo.schemas import NeoCheckpointInfo
from neo.tokenizer import NeoTokenizer
from neo_trainer import distributed
from neo_trainer.config import RewardConfig
from neo_trainer.engine import AlignEngine
from neo_trainer.losses import reward_loss
from neo_trainer.metrics import MetricsLogger
from neo_trainer.reward import RewardModel, batch, encode_reward_pair, score_ids
from neo_trainer.sft_data import load_preferences
from neo_trainer.stages.sft import shuffled_batches, stage_main, warmup_lr

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int]]


def split_rows(rows: list[dict[str, Any]], fraction: float,
               seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out): a seeded ``fraction`` of the rows (at least one when there are two or more)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def pair_rewards(model: Any, pairs: list[Pair], pad_id: int, device: torch.device | None = None):
    """(chosen, rejected) rewards of ``pairs`` in one forward (chosen rows, then rejected rows, as TRL)."""
    ids, lengths = batch([c for c, _ in pairs] + [r for _, r in pairs], pad_id, device)
    rewards = model(ids, lengths)
    return rewards[:len(pairs)], rewards[len(pairs):]


@torch.no_grad()
def evaluate_pairs(model: Any, pairs: list[Pair], pad_id: int, device: torch.device | None = None,
                   center_coefficient: float | None = None) -> dict[str, float]:
    """Loss, accuracy (share of pairs with r_c > r_r), margin and mean rewards over all ``pairs``."""
    if not pairs:
        return {}
    chosen = score_ids(model, [c for c, _ in pairs], pad_id, device=device)
    rejected = score_ids(model, [r for _, r in pairs], pad_id, device=device)
    return {k: float(v) for k, v in reward_loss(chosen, rejected, center_coefficient=center_coefficient).items()}


def run_rm(cfg: RewardConfig, threads: int = 0) -> Path:
    """Train the reward model; returns the HF export directory (``LlamaForSequenceClassification``)."""
    env = distributed.setup(threads)
    torch.manual_seed(cfg.train.seed)
    rng = random.Random(cfg.train.seed)
    rows = load_preferences(cfg.data.preferences)
    if cfg.data.eval_preferences:
        train_rows, eval_rows = rows, load_preferences(cfg.data.eval_preferences)
    else:
        train_rows, eval_rows = split_rows(rows, cfg.data.eval_fraction, cfg.train.seed)
    if not train_rows:
        raise ValueError(f"no preference pairs in {', '.join(map(str, cfg.data.preferences))}")
    rm = RewardModel.load(cfg.base_model, dtype=torch.float32)  # a new head draws from the seeded RNG
    rm.train()
    tokenizer = NeoTokenizer.load(cfg.base_model)
    base = NeoCheckpointInfo.read(Path(cfg.base_model))
    if cfg.seq_len > rm.config.max_seq_len:
        raise ValueError(f"seq_len: {cfg.seq_len} exceeds the model's max_seq_len={rm.config.max_seq_len}")
    pairs, held = ([p for r in part if (p := encode_reward_pair(tokenizer, r, cfg.seq_len, cfg.long_pairs))]
                   for part in (train_rows, eval_rows))
    dropped = len(train_rows) + len(eval_rows) - len(pairs) - len(held)
    if dropped:  # long_pairs: drop, as TRL's RewardTrainer filters them
        log.warning("%d preference pairs dropped: a conversation is longer than seq_len=%d (long_pairs: keep_end "
                    "scores their last seq_len tokens instead)", dropped, cfg.seq_len)
    if not pairs:
        raise ValueError(f"every training pair is longer than seq_len={cfg.seq_len}: raise seq_len or use "
                         "long_pairs: keep_end")
    t = cfg.train
    per_rank = t.micro_batch_size
    if len(pairs) < per_rank * env.world_size:
        per_rank = max(1, len(pairs) // env.world_size)
        if len(pairs) < env.world_size:
            raise ValueError(f"{len(pairs)} preference pairs cannot be shared by {env.world_size} processes")
    global_batch = per_rank * env.world_size
    total = t.steps or math.ceil(len(pairs) / global_batch) * t.epochs
    rm = rm.to(env.device)
    before = evaluate_pairs(rm, held, tokenizer.pad_id, env.device, t.center_rewards_coefficient)
    engine = AlignEngine.build(rm, rm.backbone, micro_batch_size=per_rank, lr=t.lr, betas=t.betas,
                               weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                               zero_stage=cfg.distributed.zero_stage, precision=cfg.distributed.precision, env=env)
    if env.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.json").write_text(json.dumps(cfg.dump(), indent=2) + "\n")
        log.info("reward model: %d pairs (%d held out), %d steps of %d pairs", len(pairs), len(held), total,
                 global_batch)
    metrics = MetricsLogger(cfg.run_dir, total_steps=total, start_step=0, log_every=cfg.metrics.log_every,
                            tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress, enabled=env.is_main)
    batches = shuffled_batches(len(pairs), global_batch, rng)
    seen = 0
    try:
        for step in range(total):
            t0 = time.perf_counter()
            chosen_idx = next(batches)
            idx = engine.share(chosen_idx)
            chosen, rejected = pair_rewards(engine, [pairs[i] for i in idx], tokenizer.pad_id, env.device)
            out = reward_loss(chosen, rejected, center_coefficient=t.center_rewards_coefficient)
            lr = warmup_lr(t, step)
            _, norm = engine.step(out["loss"], lr)
            stats = {k: distributed.all_reduce_mean(v.detach()) for k, v in out.items()}
            tokens = sum(len(x) for i in chosen_idx for x in pairs[i])
            seen += tokens
            dt = time.perf_counter() - t0
            metrics.log({"step": step + 1, "phase": "rm", **stats, "grad_norm": norm, "lr": lr, "tokens": seen,
                         "pairs_per_s": len(chosen_idx) / dt, "tokens_per_s": tokens / dt, "step_time_s": dt,
                         "time": time.time()}, force=step + 1 == total)
    finally:
        metrics.close()
    after = evaluate_pairs(engine, held, tokenizer.pad_id, env.device, t.center_rewards_coefficient)
    trained = evaluate_pairs(engine, pairs, tokenizer.pad_id, env.device, t.center_rewards_coefficient)
    final = {**{f"eval/{k}": v for k, v in after.items()}, **{f"eval_before/{k}": v for k, v in before.items()},
             **{f"train/{k}": v for k, v in trained.items()}, "eval/pairs": float(len(held)),
             "train/pairs": float(len(pairs))}
    if env.is_main:
        (cfg.run_dir / "rm_eval.json").write_text(json.dumps(final, indent=2) + "\n")
        if held:
            log.info("reward model held-out accuracy %.3f (before training %.3f) on %d pairs",
                     after["accuracy"], before["accuracy"], len(held))
    meta = {"name": cfg.name, "stage": "rm", "base_model": str(Path(cfg.base_model).resolve()),
            "parent": base.name if base else str(cfg.base_model), "preset": base.preset if base else rm.config.name,
            "tokenizer_sha256": base.tokenizer_sha256 if base else None, "metrics": final,
            "data": {"preferences": [str(Path(p).resolve()) for p in cfg.data.preferences],
                     "pairs": len(pairs), "held_out": len(held)},
            "train_config": cfg.dump()}
    with distributed.full_parameters(rm, cfg.distributed.zero_stage):
        if env.is_main:
            export_reward_hf(rm.backbone, rm.score.weight, cfg.export_dir, tokenizer=tokenizer, meta=meta,
                             dtype=torch.bfloat16 if engine.bf16 else torch.float32)
    distributed.barrier()
    return Path(cfg.export_dir)


def main(argv: list[str] | None = None) -> int:
    """``python -m neo_trainer.stages.rm CONFIG``: a short run that starts over when repeated."""
    return stage_main("rm", RewardConfig, run_rm, argv)


if __name__ == "__main__":
    raise SystemExit(main())
