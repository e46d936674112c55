"""One config object per training run, validated once (bad field → error naming it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field("tiny", description="neo.config preset")
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="ModelConfig overrides")
    tokenizer: Path = Field(description="tokenizer directory")
    data: list[Path] = Field(min_length=1, description="text/JSONL(.gz) files")
    seq_len: int = Field(256, gt=0)
    batch_size: int = Field(16, gt=0)
    steps: int = Field(300, gt=0)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    weight_decay: float = Field(0.1, ge=0)  # AdamW decay as LLaMA/MAP-Neo
    betas: tuple[float, float] = (0.9, 0.95)  # LLaMA/MAP-Neo AdamW betas
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    max_tokens: int | None = Field(None, description="read at most this many tokens of data")
    run_dir: Path = Field(Path(".neo/runs/pretrain"), description="logs go here")
    export_dir: Path = Field(Path(".neo/models/pretrain"), description="final HF checkpoint")
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(100, gt=0)

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})")
        return self
