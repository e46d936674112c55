"""Settings shared by every service: one pydantic-settings base, env prefix ``NEO_``.

Each service subclasses ``NeoSettings`` once (``DataprocSettings``, ``ServingSettings`` …), builds it
at its entry point and passes it down; nothing else reads ``os.environ``.
"""

from __future__ import annotations

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
