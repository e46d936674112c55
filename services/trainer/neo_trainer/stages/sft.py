"""SFT recipe: MAP-Neo's two phases (instruction data, then multi-turn chat) from an HF checkpoint.

HF directory → ``NeoModel`` (``neo.hf.load_hf``) in ``CausalLM`` (``modeling``; packed rows keep their
conversations apart with document masks; the loss, fused with the LM head, counts assistant tokens
only) → AdamW on the DeepSpeed engine (``engine.AlignEngine``: ZeRO 0-3, clipping, bf16 on GPU, one or
more processes, each taking its share of every global batch) → ``metrics`` log → HF export with
``stage="sft"`` and the starting model as ``parent``.

    python -m neo_trainer.stages.sft CONFIG [--set k=v]     # what the trainer worker runs for kind=sft
    torchrun --nproc_per_node 2 -m neo_trainer.stages.sft CONFIG     # = neo train sft CONFIG --nproc 2
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from neo.hf import load_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo
from neo.tokenizer import NeoTokenizer
from neo_trainer import distributed
from neo_trainer.config import AlignTrainSection, DistributedSection, SFTConfig, load_stage_config
from neo_trainer.engine import AlignEngine
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


def warmup_lr(t: AlignTrainSection, step: int) -> float:
    """Linear warmup over ``warmup_steps``, then constant."""
    return t.lr * min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else t.lr


def build_engine(model: NeoModel, module: torch.nn.Module, t: AlignTrainSection, dist: DistributedSection,
                 env: distributed.DistEnv) -> AlignEngine:
    return AlignEngine.build(module, model, micro_batch_size=t.micro_batch_size, lr=t.lr, betas=t.betas,
                             weight_decay=t.weight_decay, grad_clip=t.grad_clip, zero_stage=dist.zero_stage,
                             precision=dist.precision, env=env)


def checkpoint_info(model: NeoModel, *, name: str, stage: str, base: NeoCheckpointInfo | None, parent: str | None,
                    train_config: dict[str, Any], data: dict[str, Any],
                    metrics: dict[str, float]) -> NeoCheckpointInfo:
    return NeoCheckpointInfo(
        name=name, preset=base.preset if base else model.config.name, model=model.config.to_dict(), stage=stage,
        parent=parent, tokenizer_sha256=base.tokenizer_sha256 if base else None, train_config=train_config,
        data=data, metrics={k: float(v) for k, v in metrics.items()})


def _batches(examples: list[Example], cfg: SFTConfig, pad_id: int, rng: random.Random, rows: int):
    """Endless shuffled packed global batches of ``rows`` rows (the same on every rank: same seed)."""
    while True:
        order = examples[:]
        rng.shuffle(order)
        packed = pack(order, cfg.seq_len, pad_id, cfg.packing)
        n = packed.input_ids.shape[0]
        if n < rows:
            raise ValueError(f"{len(examples)} conversations pack into {n} rows of {cfg.seq_len} tokens, fewer "
                             f"than one global batch ({rows} rows): lower train.micro_batch_size")
        for i in range(0, n - rows + 1, rows):
            yield packed.rows(slice(i, i + rows))


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
    env = distributed.setup(threads)
    torch.manual_seed(cfg.train.seed)
    rng = random.Random(cfg.train.seed)
    model, tokenizer, base = load_policy(cfg.base_model)
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len: {cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    phases = [(p, load_sft_examples(p.data, tokenizer, cfg.seq_len, cfg.completion_end)) for p in cfg.phases]
    policy = build_engine(model, CausalLM(model), cfg.train, cfg.distributed, env)
    total = sum(p.steps for p in cfg.phases)
    if env.is_main:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "config.json").write_text(json.dumps(cfg.dump(), indent=2) + "\n")
    metrics = MetricsLogger(cfg.run_dir, total_steps=total, start_step=0, log_every=cfg.metrics.log_every,
                            tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress, enabled=env.is_main)
    step, record = 0, {}
    counts: dict[str, Any] = {}
    global_rows = cfg.train.micro_batch_size * env.world_size
    try:
        for phase, examples in phases:
            if env.is_main:
                log.info("SFT phase %s: %d conversations, %d steps", phase.name, len(examples), phase.steps)
            counts[phase.name] = {"conversations": len(examples), "steps": phase.steps}
            batches = _batches(examples, cfg, tokenizer.pad_id, rng, global_rows)
            for _ in range(phase.steps):
                t0 = time.perf_counter()
                batch = next(batches)
                b = batch.rows(slice(env.rank * cfg.train.micro_batch_size,
                                     (env.rank + 1) * cfg.train.micro_batch_size)).to(env.device)
                lr = warmup_lr(cfg.train, step)
                loss, norm = policy.step(policy(b.input_ids, b.positions, b.doc_ids, b.targets), lr)
                step += 1
                dt = time.perf_counter() - t0
                trained = int((batch.targets != IGNORE_INDEX).sum())
                record = {"step": step, "phase": phase.name, "loss": loss, "grad_norm": norm, "lr": lr,
                          "tokens": trained, "tokens_per_s": trained / dt, "step_time_s": dt, "time": time.time()}
                metrics.log(record, force=step == total)
    finally:
        metrics.close()
    parent = base.name if base else str(cfg.base_model)
    info = checkpoint_info(model, name=cfg.name, stage="sft", base=base, parent=parent, train_config=cfg.dump(),
                           data={"phases": counts}, metrics={k: record[k] for k in ("loss",) if k in record})
    return policy.export(cfg.export_dir, tokenizer, info)


def main(argv: list[str] | None = None) -> int:
    """``python -m neo_trainer.stages.sft CONFIG [--set k=v]``: a short run that starts over when repeated."""
    return stage_main("sft", SFTConfig, run_sft, argv)


def stage_main(stage: str, config_cls: type, run: Callable[..., Path], argv: list[str] | None) -> int:
    """``python -m neo_trainer.stages.<stage> CONFIG [--set k=v]``: load the config, run, say where it exported."""
    from neo_trainer.settings import TrainerSettings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, overrides = stage_args(stage, argv)
    out = run(load_stage_config(config_cls, config, overrides), threads=TrainerSettings().threads)
    if distributed.setup().is_main:
        print(f"exported {out}")
    return 0


def shuffled_batches(n: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    """Batches of ``size`` indices into ``n`` items, forever: each pass over the items in a new shuffled
    order, a batch running on into the next pass (as DPO's and the reward model's loops take pairs)."""
    order: list[int] = []
    while True:
        while len(order) < size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[:size], order[size:]
        yield batch


def stage_args(stage: str, argv: list[str] | None) -> tuple[Path, list[str]]:
    """CONFIG and ``--set`` overrides of ``python -m neo_trainer.stages.<stage>``."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"neo_trainer.stages.{stage}",
                                     description=f"{stage.upper()} run (starts over when repeated)")
    parser.add_argument("config", type=Path, help="YAML/JSON config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return args.config, args.overrides


if __name__ == "__main__":
    raise SystemExit(main())
