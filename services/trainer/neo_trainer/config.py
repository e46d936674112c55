"""One config object per training run, validated once; a bad field is an error naming it.

A run is a YAML/JSON file (``neo train pretrain run.yaml``) parsed into ``PretrainConfig``; the CLI can
override any field with ``--set section.key=value`` (the value is parsed as YAML: ``3e-4``, ``true``,
``[10, 20]``). The resolved config is written to ``<run_dir>/config.json`` and echoed into the exported
``neo.json`` (``train_config``). Sections, after torchtitan's nested job config::

    model:        preset, overrides, activation checkpointing
    data:         shard manifest (or raw text files for the demo), tokenizer, context, mixtures per phase
    train:        budget (steps or tokens), batch, optimizer, LR schedule, phases, start-from checkpoint
    distributed:  ZeRO stage, precision
    checkpoint:   save interval, retention, HF exports at chosen steps
    metrics:      logging/eval intervals, TensorBoard, peak FLOPs for MFU
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neo.configfile import ConfigError, validate
from neo.configfile import read_config_file as neo_read_config_file
from neo_trainer.schedule import PAPER_DECAY_FRACTION, ScheduleKind


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSection(Section):
    preset: str = Field("tiny", description="neo.config preset name")
    overrides: dict[str, Any] = Field(default_factory=dict, description="ModelConfig field overrides")
    activation_checkpointing: bool = Field(False, description="recompute each block in backward (saves memory)")
    compile: bool = Field(False, description="torch.compile each block (Inductor): faster steps after a "
                                             "one-time compile of ~20-60 s on CPU; worth it for long runs")
    fused_loss: bool = Field(True, description="LM head fused with the cross-entropy, in chunks: the full "
                                               "(tokens × vocab) logits are never stored")


class DataSection(Section):
    manifest: Path | None = Field(None, description="tokenized shard directory with manifest.json (dataproc)")
    text_files: list[Path] = Field(default_factory=list,
                                   description="raw text/JSONL(.gz) files, tokenized into <run_dir>/data first")
    max_tokens: int | None = Field(None, gt=0, description="text_files: read at most this many tokens per file")
    tokenizer: Path | None = Field(None, description="tokenizer directory (default: the manifest's)")
    seq_len: int = Field(256, gt=0, description="tokens per packed row")
    document_mask: bool = Field(False, description="attention does not cross documents; positions restart")
    fundamental_mixture: dict[str, float] = Field(
        default_factory=dict, description="source → weight in the fundamental phase ({} = by token count)")
    decay_mixture: dict[str, float] | None = Field(
        None, description="source → weight in the decay phase (None = the fundamental mixture)")
    val_fraction: float = Field(0.01, ge=0, lt=0.5, description="share of each source's rows held out")

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if (self.manifest is None) == (not self.text_files):
            raise ValueError("give exactly one of data.manifest (shards) or data.text_files (raw text)")
        if self.text_files and self.tokenizer is None:
            raise ValueError("data.tokenizer is required with data.text_files")
        for name, mix in (("fundamental_mixture", self.fundamental_mixture), ("decay_mixture", self.decay_mixture)):
            for source, weight in (mix or {}).items():
                if not (weight >= 0 and math.isfinite(weight)):
                    raise ValueError(f"data.{name}.{source}: weight must be a finite number >= 0, got {weight}")
            if mix is not None and mix and sum(mix.values()) <= 0:
                raise ValueError(f"data.{name}: weights sum to 0")
        return self


class TrainSection(Section):
    steps: int | None = Field(None, gt=0, description="optimizer steps (or give tokens)")
    tokens: int | None = Field(None, gt=0, description="token budget; steps = ceil(tokens / tokens per step)")
    micro_batch_size: int = Field(8, gt=0, description="rows per process per forward pass")
    grad_accum: int = Field(1, gt=0, description="micro batches per optimizer step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final LR = lr · min_lr_ratio")
    warmup_steps: int = Field(20, ge=0)
    schedule: ScheduleKind = Field("wsd", description="wsd | cosine | constant | map-neo (MAP-Neo's released "
                                   "scripts: cosine fundamental phase, exponential decay phase from the peak)")
    decay_fraction: float = Field(PAPER_DECAY_FRACTION, ge=0, le=1,
                                  description="share of the budget in the decay phase (paper: 778/(3726+778))")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled decay, as LLaMA / MAP-Neo")
    betas: tuple[float, float] = (0.9, 0.95)  # LLaMA / MAP-Neo AdamW betas
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="clip the global grad norm (0 = off)")
    seed: int = Field(0, description="init, data order and mixture sampling")
    start_phase: Literal["fundamental", "decay"] = "fundamental"
    init_from: Path | None = Field(None, description="DeepSpeed checkpoint to start from (required to start "
                                                     "in the decay phase): weights, optimizer, data position")
    stop_after: Literal["end", "fundamental"] = Field("end", description="'fundamental' stops at the phase switch")

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of train.steps or train.tokens")
        if self.steps is not None and self.warmup_steps > self.steps:
            raise ValueError(f"train.warmup_steps ({self.warmup_steps}) exceeds train.steps ({self.steps})")
        if self.start_phase == "decay" and self.init_from is None:
            raise ValueError("train.start_phase=decay needs train.init_from (a fundamental-phase checkpoint)")
        return self


class DistributedSection(Section):
    zero_stage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage 0-3")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")


class CheckpointSection(Section):
    every: int = Field(0, ge=0, description="save a DeepSpeed checkpoint every N steps (0 = only at the end)")
    keep: int = Field(2, gt=0, description="periodic checkpoints kept (the phase-switch one is always kept)")
    export_at: list[int] = Field(default_factory=list, description="steps with an HF export in <run_dir>/exports")
    export_dir: Path | None = Field(None, description="final HF export (default <run_dir>/hf)")

    @model_validator(mode="after")
    def _check(self) -> CheckpointSection:
        if any(s <= 0 for s in self.export_at):
            raise ValueError(f"checkpoint.export_at: steps must be positive, got {self.export_at}")
        return self


class MetricsSection(Section):
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(100, gt=0, description="validation loss every N steps (and at the end)")
    eval_rows: int = Field(16, gt=0, description="held-out rows per source per evaluation")
    tensorboard: bool = Field(True, description="write <run_dir>/tb when tensorboard is installed")
    progress: bool = Field(True, description="console progress bar on rank 0")
    peak_flops: float | None = Field(None, gt=0, description="device peak FLOP/s for MFU (default: table)")


class RunConfig(Section):
    """What every run config has: where it runs and exports, its distribution and checkpoint settings."""

    run_dir: Path
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)

    @property
    def export_dir(self) -> Path:
        return self.checkpoint.export_dir or self.run_dir / "hf"

    def dump(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


class PretrainConfig(RunConfig):
    name: str = Field("pretrain", description="run name; the exported model's name")
    run_dir: Path = Field(Path(".neo/runs/pretrain"), description="config, logs and checkpoints")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    train: TrainSection
    metrics: MetricsSection = Field(default_factory=MetricsSection)

    def tokens_per_step(self, world_size: int) -> int:
        return self.train.micro_batch_size * self.train.grad_accum * world_size * self.data.seq_len

    def total_steps(self, world_size: int) -> int:
        if self.train.steps is not None:
            return self.train.steps
        return math.ceil(self.train.tokens / self.tokens_per_step(world_size))  # type: ignore[operator]


TITLE = "invalid training config"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "data.fundamental_mixture.code=2"]`` applied to a nested dict (copied)."""
    out = json.loads(json.dumps(raw, default=str))
    for item in overrides:
        path, value = _parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def build_config(raw: dict[str, Any], overrides: list[str] | None = None) -> PretrainConfig:
    """Validate a config dict (plus ``--set`` overrides); ``ConfigError`` names each bad field."""
    return validate(PretrainConfig, apply_overrides(raw, overrides or []), TITLE)


#: the run configs that ship with the trainer: MAP-Neo's recipes, the demo's, the sample corpus's
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> dict[str, Path]:
    """Name (file stem) → path of every packaged run config (``configs/*.yaml``, ``configs/align/*.yaml``)."""
    return {p.stem: p for p in sorted(PACKAGED_CONFIGS.glob("*.yaml")) + sorted(PACKAGED_CONFIGS.glob("align/*.yaml"))}


def resolve_config(config: Path | str) -> Path:
    """A run config file as given, or a packaged one by name (``neo train pretrain demo-pretrain``)."""
    path = Path(config)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json"):
        return path
    found = packaged_configs().get(str(config))
    if found is None:
        raise FileNotFoundError(2, f"no run config file or packaged config named {str(config)!r} (packaged: "
                                   f"{', '.join(packaged_configs())})", str(config))
    return found


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON run config as a mapping, by path or packaged name (``resolve_config``); relative paths in it
    are taken as given (from the cwd)."""
    return neo_read_config_file(resolve_config(path), "training config")


def load_config(path: Path, overrides: list[str] | None = None) -> PretrainConfig:
    """Read a YAML or JSON pretraining config."""
    return build_config(read_config_file(path), overrides)


# --- alignment: SFT and DPO runs (``neo train sft`` / ``neo train dpo`` / ``neo align round``) ---------


class AlignTrainSection(Section):
    """Optimizer and batch for SFT/DPO: AdamW on the DeepSpeed engine (see ``distributed`` for ZeRO/precision)."""

    micro_batch_size: int = Field(4, gt=0, description="rows (SFT: packed rows; DPO: pairs) per process per step")
    lr: float = Field(1e-4, gt=0, description="constant LR after warmup")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0, description="clip the global grad norm (0 = off)")
    seed: int = 0


class SFTPhase(Section):
    name: str = Field(description="phase name in logs (e.g. instruction, chat)")
    data: list[Path] = Field(min_length=1, description=(
        "SFT data: JSONL(.gz), Parquet, Arrow or datasets.save_to_disk directories of "
        '{"messages": [...]} or {"prompt", "completion"} rows (TRL\'s shapes)'))
    steps: int = Field(gt=0)


class SFTConfig(RunConfig):
    """Two-phase SFT (MAP-Neo: phase 1 instruction data, phase 2 chat data) from an HF checkpoint."""

    name: str = "sft"
    stage: Literal["sft"] = "sft"
    run_dir: Path = Path(".neo/runs/sft")
    base_model: Path = Field(description="HF directory to start from (its tokenizer is used)")
    seq_len: int = Field(512, gt=0, description="tokens per packed row")
    packing: bool = Field(True, description="pack several conversations per row (attention kept apart)")
    completion_end: Literal["template", "im_end"] = Field(
        "template", description="an assistant turn's targets: 'template' = reply<|im_end|>\\n as the chat "
                                "template renders it (TRL), 'im_end' = reply<|im_end|> (sft_data docstring)")
    phases: list[SFTPhase] = Field(min_length=1)
    train: AlignTrainSection = Field(default_factory=AlignTrainSection)
    metrics: MetricsSection = Field(default_factory=lambda: MetricsSection(tensorboard=False))


class DPODataSection(Section):
    preferences: list[Path] = Field(min_length=1, description="TRL preference rows (neo prefs export): JSONL, "
                                                              "Parquet, Arrow or a datasets.save_to_disk directory")
    format: Literal["conversational", "text"] = "conversational"


class DPOTrainSection(AlignTrainSection):
    lr: float = Field(5e-6, gt=0)
    beta: float = Field(0.1, gt=0, description="DPO temperature β")
    steps: int | None = Field(None, gt=0, description="optimizer steps (default: epochs over the pairs)")
    epochs: int = Field(1, gt=0)


class DPOConfig(RunConfig):
    """Sigmoid DPO against a frozen reference (default: the starting checkpoint). Accepts the UI's job
    config ``{name, stage, run_dir, base_model, data: {preferences, format}, checkpoint: {export_dir}}``."""

    name: str = "dpo"
    stage: Literal["dpo"] = "dpo"
    run_dir: Path = Path(".neo/runs/dpo")
    base_model: Path = Field(description="policy to start from (HF directory)")
    reference_model: Path | None = Field(None, description="frozen reference (default: base_model)")
    parent: str | None = Field(None, description="registry ref of base_model, recorded in neo.json")
    register_export: bool = Field(True, description="job runs (python -m neo_trainer.stages.dpo): register the "
                                                    "export as the next version of base_model's registry name")
    seq_len: int = Field(512, gt=0, description="prompt+completion tokens kept (see truncation_mode)")
    completion_end: Literal["template", "im_end"] = Field(
        "template", description="the scored completion: 'template' = all the chat template renders after the "
                                "prompt, reply<|im_end|>\\n (TRL), 'im_end' = reply<|im_end|> (sft_data docstring)")
    truncation_mode: Literal["keep_start", "keep_end"] = Field(
        "keep_start", description="a pair longer than seq_len: 'keep_start' (TRL's default) cuts the completion's "
                                  "end and drops rows whose prompt fills seq_len; 'keep_end' cuts the prompt's start")
    data: DPODataSection
    train: DPOTrainSection = Field(default_factory=DPOTrainSection)
    metrics: MetricsSection = Field(default_factory=lambda: MetricsSection(tensorboard=False, log_every=1))


def load_stage_config(cls: type[Section], source: Path | dict[str, Any], overrides: list[str] | None = None) -> Any:
    """Validate an SFT/DPO config (a YAML/JSON file or a dict) into ``cls``; ``ConfigError`` names bad fields."""
    raw = source if isinstance(source, dict) else read_config_file(Path(source))
    return validate(cls, apply_overrides(raw, overrides or []), TITLE)


class RewardDataSection(Section):
    preferences: list[Path] = Field(min_length=1, description="TRL preference JSONL (neo prefs export)")
    eval_preferences: list[Path] = Field(default_factory=list,
                                         description="held-out pairs (default: eval_fraction of preferences)")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="share of the pairs held out (seeded) when no "
                                                               "eval_preferences are given")


class RewardTrainSection(AlignTrainSection):
    lr: float = Field(1e-4, gt=0)
    steps: int | None = Field(None, gt=0, description="optimizer steps (default: epochs over the pairs)")
    epochs: int = Field(1, gt=0)
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="TRL's: adds c·mean((r_c + r_r)²), keeping rewards centred on 0")


class RewardConfig(RunConfig):
    """A Bradley-Terry reward model (backbone + scalar head) on TRL preference pairs (``neo train rm``)."""

    name: str = "rm"
    stage: Literal["rm"] = "rm"
    run_dir: Path = Path(".neo/runs/rm")
    base_model: Path = Field(description="HF directory to start from: a chat model (a new head) or a reward model")
    seq_len: int = Field(512, gt=0, description="tokens per scored conversation (see long_pairs)")
    long_pairs: Literal["drop", "keep_end"] = Field(
        "drop", description="a pair with a conversation longer than seq_len: 'drop' it (TRL's RewardTrainer "
                            "filters them out), or 'keep_end': score its last seq_len tokens (the scorer always does)")
    data: RewardDataSection
    train: RewardTrainSection = Field(default_factory=RewardTrainSection)
    metrics: MetricsSection = Field(default_factory=lambda: MetricsSection(tensorboard=False, log_every=1))
