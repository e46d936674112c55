"""Quick pretraining on one process: the demo's path (DeepSpeed runs arrive with the trainer issue).

Recipe: packed rows → NeoModel → next-token cross-entropy → AdamW with a WSD schedule, gradient
clipping, validation loss at intervals, JSONL metrics, an HF export at the end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from neo.config import ModelConfig
from neo.hf import export_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo
from neo.tokenizer import NeoTokenizer
from neo_trainer.config import PretrainConfig
from neo_trainer.data import PackedData, pack_documents
from neo_trainer.schedule import LRSchedule

log = logging.getLogger(__name__)


def lm_loss(model: NeoModel, rows: torch.Tensor) -> torch.Tensor:
    logits = model(rows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model: NeoModel, data: PackedData, batch_size: int) -> float:
    model.eval()
    losses = [lm_loss(model, data.val[i : i + batch_size]).item() for i in range(0, len(data.val), batch_size)]
    model.train()
    return sum(losses) / len(losses)


def run_pretrain(cfg: PretrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    tokenizer = NeoTokenizer.load(cfg.tokenizer)
    mcfg = ModelConfig.from_name(cfg.preset, **({"vocab_size": tokenizer.vocab_size} | cfg.model_overrides))
    if cfg.seq_len > mcfg.max_seq_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={mcfg.max_seq_len}")
    data = pack_documents(tokenizer, cfg.data, cfg.seq_len, max_tokens=cfg.max_tokens)
    log.info("data: %s tokens → %d train rows, %d val rows of %d", f"{data.tokens:,}", len(data.train),
             len(data.val), cfg.seq_len + 1)

    model = NeoModel(mcfg).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
    schedule = LRSchedule(cfg.lr, cfg.steps, cfg.warmup_steps, cfg.schedule)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    metrics_path = cfg.run_dir / "metrics.jsonl"
    tokens_per_step = cfg.batch_size * cfg.seq_len
    flops_per_step = mcfg.flops_per_token(cfg.seq_len) * tokens_per_step
    val_loss = math.nan
    with open(metrics_path, "w") as mlog, Progress(
        TextColumn("pretrain {task.completed}/{task.total}"), BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f} val {task.fields[val]:.3f} {task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
    ) as progress:
        task = progress.add_task("pretrain", total=cfg.steps, loss=math.nan, val=math.nan, tps=0.0)
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            lr = schedule(step)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = lm_loss(model, data.batch(step, cfg.batch_size, cfg.seed))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            opt.step()
            dt = time.perf_counter() - t0
            last = step == cfg.steps - 1
            if (step + 1) % cfg.eval_every == 0 or last:
                val_loss = evaluate(model, data, cfg.batch_size)
            record = {"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": tokens_per_step / dt, "flops_per_s": flops_per_step / dt,
                      "tokens": (step + 1) * tokens_per_step}
            if (step + 1) % cfg.eval_every == 0 or last:
                record["val_loss"] = val_loss
            if (step + 1) % cfg.log_every == 0 or last or "val_loss" in record:
                mlog.write(json.dumps(record) + "\n")
                mlog.flush()
            progress.update(task, advance=1, loss=record["loss"], val=val_loss, tps=record["tokens_per_s"])
    info = NeoCheckpointInfo(
        name=cfg.export_dir.name, preset=cfg.preset, model=mcfg.to_dict(), stage="pretrain",
        metrics={"val_loss": val_loss, "train_loss": record["loss"], "tokens": float(record["tokens"])},
        train_config=json.loads(cfg.model_dump_json()),
    )
    return export_hf(model, cfg.export_dir, tokenizer=tokenizer, info=info)
