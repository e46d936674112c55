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

Profiles: ``profile: matrix`` (top level) fills every section MAP-Neo's Matrix pipeline defines with
Matrix's settings (``PROFILES``), under the keys the config sets itself; ``profile: matrix`` inside
one section (``en_quality: {profile: matrix}``, ``dedup: {profile: matrix}``) does it for that
section only. ``profile: default`` (or none) is Neo's Gopher/C4 rules and MinHash settings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neo.configfile import ConfigError, read_config_file, validate
from neo.shards import DEFAULT_TOKENS_PER_SHARD
from neo_dataproc.steps.build import build_steps

InputFormat = Literal["auto", "jsonl", "html", "text", "code", "warc", "parquet", "arrow"]
ProfileName = Literal["default", "matrix"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Section):
    path: str = Field(description="a file, a directory (read recursively) or a glob; relative to the config file")
    source: str | None = Field(default=None,
                               description="source name (default: the record's 'source', else the file stem)")
    format: InputFormat = Field(
        default="auto", description="auto: from the extension (.jsonl, .html, .py, .parquet, .arrow, .warc[.gz] …)")


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
    matrix: dict[str, Any] | None = Field(
        default=None, description="MatrixEnglishFilter keywords (MAP-Neo's English rule set; the matrix profile)")


class ZhQualitySection(_Section):
    matrix: dict[str, Any] | None = Field(default_factory=dict, description="ZhQualityFilter keywords")
    similar_lines: dict[str, Any] | None = Field(
        default=None, description="ZhSimilarLineDedup keywords (Matrix's within-document similar-sentence dedup)")
    opencc: str | None = Field(
        default="tw2sp", description="OpenCC conversion config (tw2sp: Traditional → Simplified with Taiwan phrases, "
                                     "軟體 → 软件; t2s: characters only); null: keep Traditional")


class UrlBlocklistSection(_Section):
    domains: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list, description="one domain or URL prefix a line")
    words: list[str] = Field(default_factory=list,
                             description="substrings of a URL that block it (Matrix's bad_url_words)")


class SensitiveWordsSection(_Section):
    words: dict[str, list[str]] = Field(default_factory=dict, description="terms per language ('*': every language)")
    files: dict[str, list[str]] = Field(default_factory=dict, description="term files per language, one a line")
    defaults: bool = Field(default=True, description="add Neo's starting list of gambling/spam/adult terms")
    max_hit_lines_ratio: float = Field(default=0.3, ge=0, le=1)
    min_hits: int = Field(default=2, ge=1)
    remove_lines: bool = False


class ParagraphDedupSection(_Section):
    """Corpus-wide exact dedup of lines (Matrix's paragraph dedup), after the document dedup."""

    min_doc_chars: int = Field(default=20, ge=0,
                               description="documents shorter after it are dropped (Matrix: min_len=20)")
    min_line_chars: int = Field(default=0, ge=0, description="shorter lines are never removed (Matrix: 0)")
    langs: list[str] = Field(default_factory=lambda: ["en", "zh"],
                             description="documents it applies to (code is left alone)")
    partitions: int = Field(default=4, ge=1, description="units of the dedup_paragraphs phase (hash ranges)")


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
    en_shingle: Literal["word", "char"] = Field(
        default="word", description="English/code shingles: word n-grams or character n-grams (Matrix)")
    # Verified second pass (ours, issue #19): 5-gram Jaccard punishes scattered word edits (8 % of words
    # replaced leaves J ≈ 0.5), below the 20 × 10 S-curve and the 0.7 check. A permissive banding of
    # the same signatures finds candidates down to ``verify_min_similarity``; a pair is linked only if
    # the exact Jaccard of its shingle sets reaches ``verify_min_jaccard`` and their sizes are within
    # ``verify_min_size_ratio``. Only long documents in ``verify_langs``: in short ones (and in
    # Chinese character 5-grams, and code) shared boilerplate alone reaches J ≈ 0.5 between distinct
    # documents (measured on bench/dataproc's synthetic corpus; README, seventh session).
    verify_rows_per_band: int = Field(default=4, ge=0,
                                      description="rows per band of the permissive banding (0: no second pass)")
    verify_min_similarity: float = Field(default=0.4, ge=0, le=1,
                                         description="signature agreement for a second-pass candidate")
    verify_min_jaccard: float = Field(default=0.47, ge=0, le=1,
                                      description="exact shingle Jaccard a second-pass pair must reach")
    verify_min_size_ratio: float = Field(default=0.9, ge=0, le=1,
                                         description="smaller / larger shingle count of a second-pass pair")
    verify_min_shingles: int = Field(default=100, ge=1, description="documents with fewer shingles are left out")
    verify_langs: list[str] = Field(default_factory=lambda: ["en"], description="languages the second pass checks")


class TokenizeSection(_Section):
    tokenizer: str | None = Field(default=None, description="tokenizer directory; null: stop at clean documents")
    tokens_per_shard: int = Field(default=DEFAULT_TOKENS_PER_SHARD, ge=1)
    add_bos: bool = True  # documents as <s> text </s>, the trainer's convention
    add_eos: bool = True


class JobConfig(_Section):
    name: str = Field(description="job name: outputs go to NEO_HOME/data/<name>/")
    profile: ProfileName = Field(default="default",
                                 description="default: Neo's rules; matrix: MAP-Neo's Matrix settings")
    inputs: list[InputSpec] = Field(min_length=1)
    docs_per_shard: int = Field(default=2000, ge=1, description="documents per pass-1 task")
    extract: dict[str, Any] | None = Field(default_factory=dict, description="ExtractStep keywords")
    langid: LangIdSection | None = Field(default_factory=LangIdSection)
    url_blocklist: UrlBlocklistSection | None = Field(default_factory=UrlBlocklistSection)
    sensitive_words: SensitiveWordsSection | None = Field(default_factory=SensitiveWordsSection)
    en_quality: EnQualitySection | None = Field(default_factory=EnQualitySection)
    zh_quality: ZhQualitySection | None = Field(default_factory=ZhQualitySection)
    code_quality: dict[str, Any] | None = Field(default_factory=dict, description="CodeQualityFilter keywords")
    pii: PiiSection | None = Field(default_factory=PiiSection)
    dedup: DedupSection | None = Field(default_factory=DedupSection)
    paragraph_dedup: ParagraphDedupSection | None = Field(
        default_factory=ParagraphDedupSection, description="Matrix's corpus-wide paragraph (line) dedup")
    tokenize: TokenizeSection = Field(default_factory=TokenizeSection)
    max_errors_per_file: int = Field(default=20, ge=1, description="then the rest of the file is skipped")
    slow_down_s: float = Field(default=0.0, ge=0, description="pause per document (tests and demos only)")
    base_dir: str = Field(default=".", description="where relative paths resolve (set by load_config)")

    @model_validator(mode="before")
    @classmethod
    def _profiles(cls, data: Any) -> Any:
        return apply_profiles(data) if isinstance(data, dict) else data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("letters, digits, '.', '_' and '-' only (it names a directory)")
        return v

    @model_validator(mode="after")
    def _steps_build(self) -> JobConfig:
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


# MAP-Neo's Matrix pipeline (github.com/multimodal-art-projection/MAP-NEO, Matrix/): each value is
# the section's keys under the matrix profile (the thresholds themselves are the steps' named
# defaults, each citing its Matrix file).
PROFILES: dict[str, dict[str, dict[str, Any] | None]] = {
    "default": {},
    "matrix": {
        # english_data_clean_pipeline/filter/util_with_try.py: Gopher + CCNet + C4 + pretrainer + RefinedWeb
        # document rules replace Neo's Gopher/C4 steps (C4's line removal included)
        "en_quality": {"gopher_repetition": None, "gopher_quality": None, "c4": None, "matrix": {}},
        # chinese_data_clean_pipeline/deduplication/simlar_line_dedup/: similar sentences inside a document
        "zh_quality": {"similar_lines": {}},
        # english_data_clean_pipeline/dedup/Minhash_Lsh_Deduplication/minhashLsh.py: width = 13 (character
        # shingles of the normalized text), bands = 9, r = 13 (117 of n_perm = 128 used), no signature check
        "dedup": {"num_bands": 9, "rows_per_band": 13, "en_ngram": 13, "zh_ngram": 13, "en_shingle": "char",
                  "min_similarity": 0.0, "bands_per_task": 3, "verify_rows_per_band": 0},
        # chinese_data_clean_pipeline/filter/filter.py linewise_filter rule 5: lines with a bad word go
        "sensitive_words": {"remove_lines": True},
    },
}


def apply_profiles(data: dict[str, Any]) -> dict[str, Any]:
    """Expand ``profile`` (per section first, then top level) into the sections' keys; explicit keys win."""
    data = dict(data)
    own: set[str] = set()
    for section, value in list(data.items()):
        if isinstance(value, dict) and "profile" in value:
            value = dict(value)
            name = value.pop("profile")
            if name not in PROFILES:
                raise ValueError(f"{section}.profile: unknown profile {name!r} (expected one of {sorted(PROFILES)})")
            preset = PROFILES[name].get(section) or {}
            data[section] = {**preset, **value}
            own.add(section)
    top = data.get("profile") or "default"
    for section, preset in PROFILES.get(top, {}).items():
        if section in own:
            continue
        if section not in data:
            data[section] = dict(preset) if preset is not None else None
        elif isinstance(data[section], dict) and preset is not None:
            data[section] = {**preset, **data[section]}
    return data


def parse_config(data: dict[str, Any], base_dir: Path | str = ".", origin: str = "") -> JobConfig:
    title = f"invalid job config {origin}".rstrip()
    if not isinstance(data, dict):
        raise ConfigError(f"{title}: expected a mapping at the top level")
    return validate(JobConfig, {**data, "base_dir": str(Path(base_dir).resolve())}, title)


def load_config(path: Path | str) -> JobConfig:
    """Read a YAML or JSON job config; relative input paths resolve against its directory."""
    path = Path(path)
    data = read_config_file(path, "job config")
    return parse_config(data, base_dir=path.parent, origin=str(path))
