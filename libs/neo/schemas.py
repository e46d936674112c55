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


# --- tokenized shards (written by dataproc, read by the trainer; see neo.shards) ------------------
MANIFEST_JSON = "manifest.json"


class ShardFileInfo(BaseModel):
    """One token file of a shard directory."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="path relative to the manifest's directory")
    source: str = Field(description="the data source whose documents it holds (one source per file)")
    tokens: int = Field(ge=0)
    sha256: str


class SourceCounts(BaseModel):
    """Per-source totals, for the trainer's data mixture."""

    model_config = ConfigDict(extra="forbid")

    documents: int = Field(default=0, ge=0)
    tokens: int = Field(default=0, ge=0)
    files: int = Field(default=0, ge=0)


class ShardManifest(BaseModel):
    """``manifest.json`` beside tokenized shards: flat little-endian token files, documents as
    ``<s> text </s>``; the job's config and report are kept for provenance."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    job: str = Field(description="dataproc job name")
    dtype: Literal["uint16", "uint32"]
    vocab_size: int = Field(gt=0)
    tokenizer_sha256: str = Field(
        description="neo.tokenizer.tokenizer_digest: sha256 of tokenizer.model (else tokenizer.json)")
    tokenizer_path: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    tokens_per_shard: int = Field(gt=0, description="every file has this many tokens but its source's last")
    sources: dict[str, SourceCounts] = Field(default_factory=dict)
    files: list[ShardFileInfo] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict, description="the dataproc job config")
    report: dict[str, Any] = Field(default_factory=dict, description="per-stage kept/dropped counts")
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def total_tokens(self) -> int:
        return sum(f.tokens for f in self.files)


# --- preferences (written by the UI's labeling app, read by `neo train dpo`; see neo_ui.store) --------
#: what an annotator picked: answer A better, B better, a tie, or both bad
PreferenceChoice = Literal["a", "b", "tie", "both_bad"]


class PromptMessage(BaseModel):
    """One chat turn of a labeled prompt (OpenAI/TRL conversational shape)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class PreferenceAnswer(BaseModel):
    """One of the two answers shown to an annotator, with where it came from."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="'{pair_id}:{0|1}': the same answer keeps its id for every annotator")
    text: str
    model: str = Field(description="served model name (/v1/models id)")
    model_version: str = Field(description="'name:version' as serving reported it (registry version or 'local')")
    finish_reason: str | None = None


class PreferenceRecord(BaseModel):
    """One stored label (Redis ``{prefix}prefs:label:{id}``), written once and never changed."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    id: str = Field(description="label id (the task id: one per annotator and prompt)")
    prompt_id: str
    pair_id: str = Field(description="the answer pair: every annotator of a prompt sees the same pair")
    prompt: list[PromptMessage] = Field(description="the conversation up to the user turn answered")
    source: str = Field(default="upload", description="where the prompt came from: upload | chat | cli")
    annotator: str
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    answer_a: PreferenceAnswer = Field(description="the answer shown as A (order was random, models blinded)")
    answer_b: PreferenceAnswer
    sampling: dict[str, Any] = Field(default_factory=dict, description="temperature, top_p, max_tokens, seeds")
    choice: PreferenceChoice
    comment: str = ""
    edited: str | None = Field(default=None, description="the annotator's rewrite of the better answer")
    time_spent_s: float = Field(ge=0, description="seconds from showing the pair to the label")

    @property
    def chosen(self) -> PreferenceAnswer | None:
        return {"a": self.answer_a, "b": self.answer_b}.get(self.choice)

    @property
    def rejected(self) -> PreferenceAnswer | None:
        return {"a": self.answer_b, "b": self.answer_a}.get(self.choice)


class PreferencePair(BaseModel):
    """A row of the TRL preference JSONL (``neo prefs export``): ``prompt``, ``chosen``, ``rejected``,
    conversational (lists of messages) or standard (strings), plus metadata columns TRL ignores."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[PromptMessage]
    chosen: str | list[PromptMessage]
    rejected: str | list[PromptMessage]
    schema_version: Literal[1] = 1
    id: str = Field(description="the PreferenceRecord id")
    prompt_id: str
    annotator: str
    choice: PreferenceChoice = Field(description="ties and both-bad rows appear only when asked for")
    chosen_model: str
    rejected_model: str
    edited: bool = Field(default=False, description="chosen is the annotator's rewrite")
    created: str
