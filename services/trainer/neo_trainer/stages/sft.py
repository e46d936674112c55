"""SFT recipe: MAP-Neo's two phases (instruction data, then multi-turn chat) from an HF checkpoint.

HF directory → ``NeoModel`` (``neo.hf.load_hf``) in ``CausalLM`` (``modeling``; packed rows keep their
conversations apart with document masks) → assistant-only cross-entropy (``losses.sft_loss``) → AdamW
in one process (fp32 on CPU; alignment runs here are small, so no DeepSpeed engine) → ``metrics`` log →
HF export (``checkpoint.export``) with ``stage="sft"`` and the starting model as ``parent``.

    python -m neo_trainer.stages.sft CONFIG      # what the trainer worker runs for kind=sft
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from neo.hf import load_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo
from neo.tokenizer import NeoTokenizer
from neo_trainer import checkpoint
from neo_trainer.config import AlignTrainSection, SFTConfig, load_stage_config
from neo_trainer.losses import IGNORE_INDEX, sft_loss
from neo_trainer.metrics import MetricsLogger
from neo_trainer.modeling import CausalLM
from neo_trainer.sft_data import Example, load_sft_examples, pack

log = logging.getLogger(__name__)


def load_policy(path: Path) -> tuple[NeoModel, NeoTokenizer, NeoCheckpointInfo | None]:
    """Model (fp32, train mode), its tokenizer and its ``neo.json`` from an HF directory."""
    model = load_hf(path, dtype=torch.float32)
    model.train()
    return model, NeoTokenizer.load(path), NeoCheckpointInfo.read(Path(path))


def make_optimizer(model: torch.nn.Module, t: AlignTrainSection) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=t.lr, betas=t.betas)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, t: AlignTrainSection,
                   step: int) -> float:
    for group in optimizer.param_groups:
        group["lr"] = t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def export_model(model: NeoModel, out: Path, tokenizer: NeoTokenizer, *, name: str, stage: str,
                 base: NeoCheckpointInfo | None, parent: str | None, train_config: dict[str, Any],
                 data: dict[str, Any], metrics: dict[str, float]) -> Path:
    info = NeoCheckpointInfo(
        name=name, preset=base.preset if base else model.config.name, model=model.config.to_dict(), stage=stage,
        parent=parent, tokenizer_sha256=base.tokenizer_sha256 if base else None, train_config=train_config,
        data=data, metrics={k: float(v) for k, v in metrics.items()})
    return checkpoint.export(model, out, zero_stage=0, rank=0, tokenizer=tokenizer, info=info, dtype=torch.float32)


def _batches(examples: list[Example], cfg: SFTConfig, pad_id: int, rng: random.Random):
    """Endless shuffled packed batches of ``micro_batch_size`` rows."""
    while True:
        order = examples[:]
        rng.shuffle(order)
        packed = pack(order, cfg.seq_len, pad_id, cfg.packing)
        n, mb = packed.input_ids.shape[0], cfg.train.micro_batch_size
        for i in range(0, max(n - mb, 0) + 1, mb):
            sl = slice(i, i + mb)
            yield type(packed)(packed.input_ids[sl], packed.targets[sl], packed.positions[sl], packed.doc_ids[sl])


@torch.no_grad()
def assistant_loss(module: CausalLM, examples: list[Example], seq_len: int, pad_id: int) -> float:
    """Mean assistant-token loss over ``examples`` (packed, in order): the SFT objective, for evaluation."""
    was = module.training
    module.eval()
    b = pack(examples, seq_len, pad_id, True)
    logits = module(b.input_ids, b.positions, b.doc_ids)
    module.train(was)
    return float(sft_loss(logits, b.targets))


def run_sft(cfg: SFTConfig, threads: int = 0) -> Path:
    """Train the configured phases one after another; returns the HF export directory."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.train.seed)
    rng = random.Random(cfg.train.seed)
    model, tokenizer, base = load_policy(cfg.base_model)
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len: {cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    module = CausalLM(model)
    optimizer = make_optimizer(model, cfg.train)
    phases = [(p, load_sft_examples(p.data, tokenizer, cfg.seq_len)) for p in cfg.phases]
    total = sum(p.steps for p in cfg.phases)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(cfg.dump(), indent=2) + "\n")
    metrics = MetricsLogger(cfg.run_dir, total_steps=total, start_step=0, log_every=cfg.metrics.log_every,
                            tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress)
    step, record = 0, {}
    counts: dict[str, Any] = {}
    try:
        for phase, examples in phases:
            log.info("SFT phase %s: %d conversations, %d steps", phase.name, len(examples), phase.steps)
            counts[phase.name] = {"conversations": len(examples), "steps": phase.steps}
            batches = _batches(examples, cfg, tokenizer.pad_id, rng)
            for _ in range(phase.steps):
                t0 = time.perf_counter()
                b = next(batches)
                loss = sft_loss(module(b.input_ids, b.positions, b.doc_ids), b.targets)
                loss.backward()
                norm = optimizer_step(model, optimizer, cfg.train, step)
                step += 1
                dt = time.perf_counter() - t0
                trained = int((b.targets != IGNORE_INDEX).sum())
                record = {"step": step, "phase": phase.name, "loss": float(loss.detach()), "grad_norm": norm,
                          "lr": optimizer.param_groups[0]["lr"], "tokens": trained, "tokens_per_s": trained / dt,
                          "step_time_s": dt, "time": time.time()}
                metrics.log(record, force=step == total)
    finally:
        metrics.close()
    parent = base.name if base else str(cfg.base_model)
    return export_model(model, cfg.export_dir, tokenizer, name=cfg.name, stage="sft", base=base, parent=parent,
                        train_config=cfg.dump(), data={"phases": counts},
                        metrics={k: record[k] for k in ("loss",) if k in record})


def main(argv: list[str] | None = None) -> int:
    """``python -m neo_trainer.stages.sft CONFIG``: a short run that starts over when repeated."""
    from neo_trainer.settings import TrainerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = list(argv if argv is not None else sys.argv[1:])
    if len(args) != 1:
        raise SystemExit(f"usage: python -m neo_trainer.stages.sft CONFIG (got {args}; SFT runs do not resume)")
    cfg = load_stage_config(SFTConfig, Path(args[0]))
    print(f"exported {run_sft(cfg, threads=TrainerSettings().threads)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
