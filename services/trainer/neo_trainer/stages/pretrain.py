"""Pretraining recipe: MAP-Neo's fundamental phase, then the decay phase, in one DeepSpeed run.

shards → seeded mixture of packed rows (``data``) → ``CausalLM`` around ``NeoModel`` (``modeling``:
the LM head fused with the cross-entropy) → DeepSpeed engine (``distributed``: ZeRO 0-3, accumulation,
clipping) with AdamW and a WSD schedule (``schedule``). At ``schedule.decay_start`` the data mixture switches to
the decay mixture while the LR decays. Metrics (``metrics``), checkpoints and HF exports
(``checkpoint``) at the configured steps. Every process of the run executes this function.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neo.config import ModelConfig
from neo.hf import load_hf
from neo.model import NeoModel
from neo.schemas import NeoCheckpointInfo
from neo.shards import read_manifest
from neo.tokenizer import NeoTokenizer
from neo_trainer import checkpoint, distributed
from neo_trainer.config import ConfigError, PretrainConfig
from neo_trainer.data import PretrainData, open_sources, resolve_mixture
from neo_trainer.engine import adamw, train_step, use_bf16
from neo_trainer.metrics import MetricsLogger, device_peak_flops, mfu
from neo_trainer.modeling import CausalLM, compile_blocks
from neo_trainer.prepare import prepare_text_shards
from neo_trainer.schedule import LRSchedule

log = logging.getLogger(__name__)


def build_optimizer(module: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.AdamW:
    return adamw(module, lr=cfg.train.lr, betas=cfg.train.betas, weight_decay=cfg.train.weight_decay,
                 eps=cfg.train.eps)


def _load_data(cfg: PretrainConfig, env: distributed.DistEnv) -> tuple[Path, Any, NeoTokenizer]:
    """The shard directory (tokenizing raw text first on rank 0 if that is what was given)."""
    if cfg.data.text_files:
        directory = cfg.run_dir / "data"
        if env.is_main:
            prepare_text_shards(cfg.data.text_files, cfg.data.tokenizer, directory, cfg.data.max_tokens)
        distributed.barrier()
    else:
        directory = cfg.data.manifest
    manifest = read_manifest(directory)
    tok_dir = cfg.data.tokenizer or (Path(manifest.tokenizer_path) if manifest.tokenizer_path else None)
    if tok_dir is None:
        raise ConfigError("data.tokenizer: the manifest names no tokenizer_path; give one")
    return directory, manifest, NeoTokenizer.load(tok_dir)


def _is_hf_start(cfg: PretrainConfig) -> bool:
    """``train.init_from`` names a Hugging Face directory rather than a DeepSpeed checkpoint."""
    path = cfg.train.init_from
    return path is not None and checkpoint.find(path) is None and (Path(path) / "config.json").is_file()


def _hf_start(cfg: PretrainConfig, manifest: Any) -> NeoModel | None:
    """``train.init_from`` naming a Hugging Face directory (a Neo export, or a released checkpoint such as
    MAP-Neo's: sharded, its own tokenizer): the run trains that model (its shape, not ``model.preset``'s) from its
    weights with a fresh optimizer at step 0. None when ``init_from`` is a DeepSpeed checkpoint (or unset)."""
    if not _is_hf_start(cfg):
        return None
    path = cfg.train.init_from
    try:
        model = load_hf(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    if cfg.data.seq_len > model.config.max_seq_len:
        raise ConfigError(f"data.seq_len: {cfg.data.seq_len} exceeds {path}'s max_seq_len={model.config.max_seq_len}")
    if manifest.vocab_size > model.config.vocab_size:
        raise ConfigError(f"train.init_from: {path} has {model.config.vocab_size} embedding rows, below the "
                          f"shards' vocabulary of {manifest.vocab_size}")
    return model.train()


def _model_config(cfg: PretrainConfig, tokenizer: NeoTokenizer, manifest: Any) -> ModelConfig:
    try:
        mcfg = ModelConfig.from_name(cfg.model.preset, **({"vocab_size": tokenizer.vocab_size} | cfg.model.overrides))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None
    if cfg.data.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"data.seq_len: {cfg.data.seq_len} exceeds the model's max_seq_len={mcfg.max_seq_len}")
    if manifest.vocab_size > mcfg.vocab_size:
        raise ConfigError(f"model.overrides.vocab_size: {mcfg.vocab_size} is below the shards' {manifest.vocab_size}")
    return mcfg


def _schedule(cfg: PretrainConfig, total: int, start_step: int) -> LRSchedule:
    t = cfg.train
    decay_steps = round(t.decay_fraction * total)
    if t.start_phase == "decay":  # the decay phase of this budget, starting at the loaded step
        total, decay_steps = start_step + decay_steps, decay_steps
    return LRSchedule(peak_lr=t.lr, total_steps=total, warmup_steps=min(t.warmup_steps, total), kind=t.schedule,
                      min_lr_ratio=t.min_lr_ratio, decay_steps=decay_steps)


def _warn_if_changed(cfg: PretrainConfig) -> None:
    """A resumed run should train what it started with: name the fields that changed since."""
    saved = cfg.run_dir / "config.json"
    if not saved.exists():
        return
    old, new = json.loads(saved.read_text()), cfg.dump()
    changed = [f"{s}.{k}" for s in ("model", "data", "train", "distributed")
               for k in set(old.get(s, {})) | set(new[s]) if old.get(s, {}).get(k) != new[s].get(k)]
    if changed:
        log.warning("resuming with a changed config (%s): the losses will not match the original run",
                    ", ".join(sorted(changed)))


@torch.no_grad()
def evaluate(engine: Any, data: PretrainData, rows: int, size: int, device: torch.device,
             weights: dict[str, float]) -> dict[str, float]:
    """Held-out loss per source and ``val_loss`` weighted by the current phase's mixture."""
    engine.eval()
    out = {}
    for name in data.sources:
        losses = [engine(b.input_ids, b.positions, b.doc_ids, b.targets).item()
                  for b in (b.to(device) for b in data.val_batches(name, rows, size))]
        if losses:
            out[f"val_loss/{name}"] = sum(losses) / len(losses)
    engine.train()
    present = {n: w for n, w in weights.items() if f"val_loss/{n}" in out}
    if present:
        out["val_loss"] = sum(w * out[f"val_loss/{n}"] for n, w in present.items()) / sum(present.values())
    return out


@dataclass
class PretrainRun:
    """What one process of a pretraining run holds once ``setup`` has built it."""

    cfg: PretrainConfig
    env: distributed.DistEnv
    directory: Path  # the shard directory
    manifest: Any
    tokenizer: NeoTokenizer
    mixtures: dict[str, dict[str, float]]  # phase -> source weights
    data: PretrainData
    mcfg: ModelConfig
    model: NeoModel
    engine: Any  # the DeepSpeed engine around CausalLM(model)
    bf16: bool

    def client_state(self, step: int, schedule: LRSchedule) -> dict[str, Any]:
        """What a checkpoint saves besides the engine: schedule, data position, phase."""
        return {"schedule": dataclasses.asdict(schedule), "data": self.data.state.to_dict(),
                "phase": schedule.phase(step)}

    def export(self, out: Path, step: int, record: dict[str, Any]) -> None:
        """A Hugging Face directory of the model at ``step`` (collective: every rank calls it)."""
        cfg = self.cfg
        info = NeoCheckpointInfo(
            name=cfg.name, preset=cfg.model.preset, model=self.mcfg.to_dict(), stage="pretrain",
            tokenizer_sha256=self.manifest.tokenizer_sha256, train_config=cfg.dump(),
            data={"manifest": str(Path(self.directory).resolve()), "job": self.manifest.job, "step": step,
                  "tokens_seen": self.data.tokens_seen(), "mixtures": self.mixtures},
            metrics={k: float(v) for k, v in record.items() if k in ("loss", "val_loss", "tokens")})
        checkpoint.export(self.model, out, zero_stage=cfg.distributed.zero_stage, rank=self.env.rank,
                          tokenizer=self.tokenizer, info=info, dtype=torch.bfloat16 if self.bf16 else torch.float32)


def setup(cfg: PretrainConfig, threads: int = 0) -> PretrainRun:
    """Data (shards, mixtures), model (fresh from the preset, or a Hugging Face ``init_from``) and engine."""
    env = distributed.setup(threads)
    torch.manual_seed(cfg.train.seed)
    directory, manifest, tokenizer = _load_data(cfg, env)
    mcfg = _model_config(cfg, tokenizer, manifest)
    sources = open_sources(directory, manifest, cfg.data.seq_len, cfg.data.val_fraction)
    fundamental = resolve_mixture(cfg.data.fundamental_mixture, sources, "fundamental_mixture")
    decay = (fundamental if cfg.data.decay_mixture is None
             else resolve_mixture(cfg.data.decay_mixture, sources, "decay_mixture"))
    mixtures = {"fundamental": fundamental, "decay": decay}
    t = cfg.train
    data = PretrainData(sources, mixtures, rows_per_step=t.micro_batch_size * t.grad_accum * env.world_size,
                        seed=t.seed, eos_id=manifest.eos_id if manifest.eos_id is not None else tokenizer.eos_id,
                        document_mask=cfg.data.document_mask)

    bf16 = use_bf16(cfg.distributed.precision, env)
    hf_model = _hf_start(cfg, manifest)
    if hf_model is not None:
        mcfg = hf_model.config
        log.info("starting from the weights of %s (%s, %.2fM params; model.preset ignored)", t.init_from,
                 mcfg.attention_kind, mcfg.num_params() / 1e6)
    model = hf_model if hf_model is not None else NeoModel(mcfg)
    module = CausalLM(model, cfg.model.activation_checkpointing, fused_loss=cfg.model.fused_loss)
    if cfg.model.compile:
        compile_blocks(model)
    engine = distributed.initialize(module, build_optimizer(module, cfg), distributed.deepspeed_config(
        micro_batch_size=t.micro_batch_size, grad_accum=t.grad_accum, world_size=env.world_size,
        zero_stage=cfg.distributed.zero_stage, grad_clip=t.grad_clip, bf16=bf16))
    return PretrainRun(cfg=cfg, env=env, directory=directory, manifest=manifest, tokenizer=tokenizer,
                       mixtures=mixtures, data=data, mcfg=mcfg, model=model, engine=engine, bf16=bf16)


def restore(run: PretrainRun, resume: bool, from_hf: bool) -> tuple[int, LRSchedule]:
    """The step to start at and the LR schedule: from the run's own checkpoint (``resume``), from another run's
    DeepSpeed checkpoint (``train.init_from``: a decay run from a fundamental checkpoint), or fresh."""
    cfg, t = run.cfg, run.cfg.train
    ckpt_dir = cfg.run_dir / checkpoint.CHECKPOINTS
    if resume and checkpoint.find(ckpt_dir):
        _warn_if_changed(cfg)
        state = checkpoint.load(run.engine, ckpt_dir, rank=run.env.rank)
        run.data.restore(state["data"])
        return state["step"], LRSchedule(**state["schedule"])
    start_step = 0
    if t.init_from is not None and not from_hf:
        state = checkpoint.load(run.engine, t.init_from, rank=run.env.rank)
        start_step = state["step"]
        run.data.restore(state["data"])
        log.info("starting the %s phase from %s at step %d", t.start_phase, t.init_from, start_step)
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting fresh", ckpt_dir)
    return start_step, _schedule(cfg, cfg.total_steps(run.env.world_size), start_step)


def _announce(run: PretrainRun, schedule: LRSchedule) -> None:
    """Rank 0 writes the run's config.json and logs what it is about to train."""
    cfg = run.cfg
    if not run.env.is_main:
        return
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.json").write_text(json.dumps(cfg.dump(), indent=2) + "\n")
    log.info("%s: %.2fM params, %d steps (decay from %d), %s tokens/step, ZeRO-%d, %d process(es), %s",
             run.mcfg.name, run.mcfg.num_params() / 1e6, schedule.total_steps, schedule.decay_start,
             f"{cfg.tokens_per_step(run.env.world_size):,}", cfg.distributed.zero_stage, run.env.world_size,
             "bf16" if run.bf16 else "fp32")


def _save_hooks(run: PretrainRun, schedule: LRSchedule, done: int, stop: int, record: dict[str, Any]) -> None:
    """After step ``done``: the phase-boundary checkpoint, periodic/final checkpoints, intermediate exports."""
    cfg, ckpt_dir = run.cfg, run.cfg.run_dir / checkpoint.CHECKPOINTS
    if done == schedule.decay_start and done < schedule.total_steps:
        checkpoint.save(run.engine, ckpt_dir, done, run.client_state(done, schedule), rank=run.env.rank,
                        keep=cfg.checkpoint.keep, tag=checkpoint.PHASE_TAG)
    if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == stop:
        checkpoint.save(run.engine, ckpt_dir, done, run.client_state(done, schedule), rank=run.env.rank,
                        keep=cfg.checkpoint.keep)
    if done in cfg.checkpoint.export_at and done != stop:
        run.export(cfg.run_dir / "exports" / checkpoint.step_tag(done), done, record)


def _micro_loss(run: PretrainRun, plan: Any, micro: int) -> torch.Tensor:
    """Forward of this rank's micro batch ``micro`` of the step ``plan``."""
    env = run.env
    batch = run.data.micro_batch(plan, micro, env.rank, env.world_size, run.cfg.train.micro_batch_size)
    batch = batch.to(env.device)
    return run.engine(batch.input_ids, batch.positions, batch.doc_ids, batch.targets)


def train_loop(run: PretrainRun, schedule: LRSchedule, start_step: int, stop: int) -> dict[str, Any]:
    """Steps ``start_step..stop-1``: mixture by phase, one ``train_step`` each, metrics, evals, checkpoints.
    Returns the last step's metrics record (with the last eval's), empty if there was nothing to train."""
    cfg, env, data, t = run.cfg, run.env, run.data, run.cfg.train
    peak = cfg.metrics.peak_flops or device_peak_flops(env.device, run.bf16)[0]
    flops_per_token = run.mcfg.flops_per_token(cfg.data.seq_len)
    tokens_per_step = cfg.tokens_per_step(env.world_size)
    metrics = MetricsLogger(cfg.run_dir, total_steps=stop, start_step=start_step, log_every=cfg.metrics.log_every,
                            tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress, enabled=env.is_main)
    record: dict[str, Any] = {}
    last_val: dict[str, float] = {}
    try:
        for step in range(start_step, stop):
            phase = schedule.phase(step)
            if step == schedule.decay_start and env.is_main:
                log.info("step %d: decay phase — mixture %s, LR decaying from %.3e", step, run.mixtures["decay"],
                         schedule(step))
            lr = schedule(step)
            t0 = time.perf_counter()
            plan = data.plan_step(phase)
            micro_losses = [functools.partial(_micro_loss, run, plan, m) for m in range(t.grad_accum)]
            loss_value, grad_norm = train_step(run.engine, cfg.distributed.zero_stage, lr, micro_losses)
            dt = time.perf_counter() - t0
            done = step + 1
            record = {"step": done, "phase": phase, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                      "tokens": done * tokens_per_step, "tokens_per_s": tokens_per_step / dt, "step_time_s": dt,
                      "time": time.time(),
                      "mfu": mfu(flops_per_token, tokens_per_step / dt, peak, env.world_size),
                      "rows": dict(Counter(name for name, _ in plan))}
            if done % cfg.metrics.eval_every == 0 or done == stop:
                last_val = evaluate(run.engine, data, cfg.metrics.eval_rows, t.micro_batch_size, env.device,
                                    run.mixtures[schedule.phase(step)])
                record |= last_val
            metrics.log(record, force=done == stop or done == schedule.decay_start)
            _save_hooks(run, schedule, done, stop, record)
    finally:
        metrics.close()
    return record | last_val if record else {}


def run_pretrain(cfg: PretrainConfig, *, resume: bool = False, threads: int = 0) -> Path:
    """Train per ``cfg`` on this process's share of the run; returns the final HF export directory."""
    run = setup(cfg, threads)
    start_step, schedule = restore(run, resume, from_hf=_is_hf_start(cfg))
    stop = schedule.decay_start if cfg.train.stop_after == "fundamental" else schedule.total_steps
    _announce(run, schedule)
    record = train_loop(run, schedule, start_step, stop)
    if not record:
        log.warning("nothing to train: the run was already at step %d of %d", start_step, stop)
    run.export(cfg.export_dir, stop, record)
    return cfg.export_dir
