"""Settings shared by every service: one pydantic-settings base, env prefix ``NEO_``.

Each service subclasses ``NeoSettings`` once (``DataprocSettings``, ``ServingSettings`` …), builds it
at its entry point and passes it down; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NeoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEO_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".neo"), description="workspace: data/, tokenizers/, runs/, models/")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="broker and store")
    redis_prefix: str = Field(default="neo:", description="prefix of every Redis key Neo writes")

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def tokenizers_dir(self) -> Path:
        return self.home / "tokenizers"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def read_secrets(path: Path) -> list[str]:
    """The secrets in a file, one per line (blank lines and ``#`` comments skipped).

    Keys and passwords given on a command line show in ``ps`` to every user of the machine; a file (or the
    ``NEO_*`` environment) keeps them out. Raises ``ValueError`` naming the file when it is unreadable or
    holds none.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        mode = Path(path).stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read secrets from {path}: {exc}") from exc
    secrets = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not secrets:
        raise ValueError(f"{path} holds no secret (one per line; blank lines and # comments are skipped)")
    if mode & stat.S_IROTH:
        logging.getLogger(__name__).warning("%s is readable by every user of this machine: chmod 600 it", path)
    return secrets
