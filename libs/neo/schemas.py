"""File contracts between services, as versioned pydantic models.

Every file one service writes and another reads is described here (see docs/architecture.md):
``neo.json`` beside an exported checkpoint now; the shard manifest and preference rows join as
their services land. Each carries ``schema_version`` so readers can refuse what they don't know.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NEO_JSON = "neo.json"


class NeoCheckpointInfo(BaseModel):
    """``neo.json``: where a model version came from (written by export, read by serving and UI)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    name: str = Field(description="model name shown by serving's /v1/models")
    preset: str = Field(description="ModelConfig preset the model was built from")
    model: dict[str, Any] = Field(description="the full ModelConfig as a dict")
    stage: Literal["random", "pretrain", "sft", "dpo", "imported"] = "random"
    parent: str | None = Field(default=None, description="version this one was trained from")
    tokenizer_sha256: str | None = None
    data: dict[str, Any] = Field(default_factory=dict, description="manifest hashes, token counts")
    metrics: dict[str, float] = Field(default_factory=dict)
    train_config: dict[str, Any] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def write(self, directory: Path) -> Path:
        path = Path(directory) / NEO_JSON
        path.write_text(json.dumps(self.model_dump(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> NeoCheckpointInfo | None:
        path = Path(directory) / NEO_JSON
        if not path.exists():
            return None
        return cls.model_validate_json(path.read_text())
