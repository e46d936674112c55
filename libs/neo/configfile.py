"""Run/job config files, read the same way by every service: YAML or JSON in, a pydantic model out, and
errors that name each bad field in one message (``train.lr: Input should be greater than 0``).

``neo data run job.yaml`` (dataproc) and ``neo train pretrain|sft|dpo|rm run.yaml`` (trainer) both read their
files with ``read_config_file`` and validate with ``validate``; each service keeps only its own schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be read or does not validate; the message names the file or every bad field."""


def format_validation_error(exc: ValidationError, title: str) -> str:
    """``title:`` then one ``section.key: message`` line per error."""
    lines = [f"{title}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def validate(cls: type[M], data: Any, title: str) -> M:
    """``cls.model_validate(data)``, a ``ConfigError`` titled ``title`` on failure (a non-mapping included)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{title}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, title)) from None


def read_config_file(path: Path | str, what: str = "config") -> dict[str, Any]:
    """A YAML or JSON file (JSON is read as JSON when the suffix says so, else as YAML, JSON's superset) as a
    mapping. A missing file is ``FileNotFoundError`` (the CLI prints it as one line); bad syntax or a top level
    that is not a mapping is ``ConfigError`` naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, f"{what} not found", str(path))
    text = path.read_text(encoding="utf-8")
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
