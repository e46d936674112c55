"""The job config: one YAML/JSON file → ``JobConfig``, validated once (a bad field is an error naming it).

Every rule family is a section whose keys are the step's keyword arguments (``en_quality.gopher_quality:
{min_doc_words: 100}``); a section set to ``null`` switches the step off. The steps are built once
at validation, so an unknown threshold fails when the config is loaded, not in a worker.

Example::

    name: sample
    inputs:
      - {path: data/sample/*.jsonl.gz}
      - {path: data/sample/raw/*.html.gz, source: web}
    docs_per_shard: 2000
    zh_quality: {matrix: {max_chars: 20000}}
    dedup: {num_bands: 20, rows_per_band: 10}
    tokenize: {tokenizer: .neo/tokenizers/neo}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from neo.shards import DEFAULT_TOKENS_PER_SHARD

InputFormat = Literal["auto", "jsonl", "html", "text", "code"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Section):
    path: str = Field(description="a file, a directory (read recursively) or a glob; relative to the config file")
    source: str | None = Field(default=None, description="source name (default: the record's 'source', else the file stem)")
    format: InputFormat = Field(default="auto", description="auto: from the extension (.jsonl, .html, .py …)")


class LangIdSection(_Section):
    keep: list[str] = ["en", "zh", "code"]
    min_scores: dict[str, float] = Field(default_factory=dict, description="per-language threshold overrides")
    max_chars: int = 2000
    code_min_score: float = 0.5


class EnQualitySection(_Section):
    """English rules; each value is the keyword arguments of the step (null: off)."""

    gopher_repetition: dict[str, Any] | None = Field(default_factory=dict)
    gopher_quality: dict[str, Any] | None = Field(default_factory=dict)
    c4: dict[str, Any] | None = Field(default_factory=dict)


class ZhQualitySection(_Section):
    matrix: dict[str, Any] | None = Field(default_factory=dict, description="ZhQualityFilter keywords")
    opencc: str | None = Field(default="tw2sp", description="OpenCC conversion config (tw2sp: Traditional → Simplified with Taiwan phrases, 軟體 → 软件; t2s: characters only); null: keep Traditional")


class UrlBlocklistSection(_Section):
    domains: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="one domain or URL prefix a line")


class PiiSection(_Section):
    email: bool = True
    phone: bool = True
    ip: bool = True
    id_card: bool = True


class DedupSection(_Section):
    exact: bool = True
    fuzzy: bool = True
    num_bands: int = Field(default=20, ge=1)
    rows_per_band: int = Field(default=10, ge=1)
    en_ngram: int = Field(default=5, ge=1, description="word n-grams for English and code")
    zh_ngram: int = Field(default=5, ge=1, description="character n-grams for Chinese")
    min_similarity: float = Field(default=0.7, ge=0, le=1, description="signature agreement for a candidate pair")
    seed: int = 1
    bands_per_task: int = Field(default=5, ge=1)


class TokenizeSection(_Section):
    tokenizer: str | None = Field(default=None, description="tokenizer directory; null: stop at clean documents")
    tokens_per_shard: int = Field(default=DEFAULT_TOKENS_PER_SHARD, ge=1)
    add_bos: bool = True  # documents as <s> text </s>, the trainer's convention
    add_eos: bool = True


class JobConfig(_Section):
    name: str = Field(description="job name: outputs go to NEO_HOME/data/<name>/")
    inputs: list[InputSpec] = Field(min_length=1)
    docs_per_shard: int = Field(default=2000, ge=1, description="documents per pass-1 task")
    extract: dict[str, Any] | None = Field(default_factory=dict, description="ExtractStep keywords")
    langid: LangIdSection | None = Field(default_factory=LangIdSection)
    url_blocklist: UrlBlocklistSection | None = Field(default_factory=UrlBlocklistSection)
    en_quality: EnQualitySection | None = Field(default_factory=EnQualitySection)
    zh_quality: ZhQualitySection | None = Field(default_factory=ZhQualitySection)
    code_quality: dict[str, Any] | None = Field(default_factory=dict, description="CodeQualityFilter keywords")
    pii: PiiSection | None = Field(default_factory=PiiSection)
    dedup: DedupSection | None = Field(default_factory=DedupSection)
    tokenize: TokenizeSection = Field(default_factory=TokenizeSection)
    max_errors_per_file: int = Field(default=20, ge=1, description="then the rest of the file is skipped")
    slow_down_s: float = Field(default=0.0, ge=0, description="pause per document (tests and demos only)")
    base_dir: str = Field(default=".", description="where relative paths resolve (set by load_config)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names a directory)")
        return v

    @model_validator(mode="after")
    def _steps_build(self) -> JobConfig:
        from neo_dataproc.pipeline import build_steps

        build_steps(self)  # raises ConfigError naming the section on a bad keyword or value
        if self.tokenize.tokenizer:
            path = self.resolve(self.tokenize.tokenizer)
            if not any((path / name).is_file() for name in ("tokenizer.model", "tokenizer.json")):
                raise ValueError(f"tokenize.tokenizer: no tokenizer.model or tokenizer.json in {path} "
                                 "(train one with `neo tokenizer train`)")
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def fingerprint(self) -> str:
        """Hash of everything that changes outputs (resume refuses a job dir made by another config)."""
        import hashlib

        data = self.model_dump(exclude={"slow_down_s"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A job config that does not validate; the message names the field."""


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid job config {origin}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], base_dir: Path | str = ".", origin: str = "") -> JobConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid job config {origin}: expected a mapping at the top level")
    data = {**data, "base_dir": str(Path(base_dir).resolve())}
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None


def load_config(path: Path | str) -> JobConfig:
    """Read a YAML or JSON job config; relative input paths resolve against its directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job config not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"job config {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    return parse_config(data, base_dir=path.parent, origin=str(path))
