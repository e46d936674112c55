"""``neo model push`` / ``neo model pull``: checkpoint directories to and from a Hugging Face-compatible hub.

The endpoint is ``NEO_HUB_ENDPOINT`` (``--endpoint``; a mirror or a self-hosted hub speaks the same API, as
``HF_ENDPOINT`` does for ``huggingface_hub``), the token ``NEO_HUB_TOKEN_FILE`` (one line) or ``NEO_HUB_TOKEN``.
A pulled checkpoint is checked the way ``load_hf`` will read it (config, weights, tokenizer) before it is
reported; nothing pulled is executed (a ``tokenization_*.py`` beside a released tokenizer is never imported).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field

from neo.settings import NeoSettings, read_secrets

#: ``owner/name`` as the Hub accepts it (huggingface_hub's validate_repo_id: letters, digits, ``-_.``).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
#: huggingface_hub's default endpoint (huggingface_hub/constants.py ENDPOINT).
DEFAULT_ENDPOINT = "https://huggingface.co"


class HubError(Exception):
    """A push or pull that could not be done; the message is one line for the CLI."""


class HubSettings(NeoSettings):
    """Where ``neo model push/pull`` go."""

    hub_endpoint: str = Field(default=DEFAULT_ENDPOINT, description="Hugging Face-compatible hub for neo model "
                              "push/pull (a mirror or self-hosted hub; like HF_ENDPOINT)")
    hub_token_file: Path | None = Field(default=None, description="file holding the hub token (one line); "
                                        "keeps it out of ps and shell history")
    hub_token: str | None = Field(default=None, description="hub token, when no hub_token_file")

    def token(self) -> str | None:
        if self.hub_token_file is not None:
            try:
                return read_secrets(self.hub_token_file)[0]
            except ValueError as exc:
                raise HubError(str(exc)) from exc
        return self.hub_token or None


def check_repo_id(repo: str) -> str:
    if not REPO_ID.fullmatch(repo) or ".." in repo or repo.endswith(".git"):
        raise HubError(f"{repo!r} is not a hub repository id (expected OWNER/NAME: letters, digits, '-', '_', '.')")
    return repo


def check_endpoint(endpoint: str) -> str:
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise HubError(f"{endpoint!r} is not a hub endpoint (expected an http(s):// URL)")
    return endpoint.rstrip("/")


def _unreachable(endpoint: str, exc: Exception) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(exc, RepositoryNotFoundError):
        return HubError(f"the hub at {endpoint} has no repository you can read by that name (or the token is wrong)")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return HubError(f"the hub at {endpoint} refused: HTTP {exc.response.status_code} "
                        f"{str(exc).splitlines()[0]}")
    root = exc  # huggingface_hub wraps the network error (LocalEntryNotFoundError ← ConnectError): name the root
    while (inner := root.__cause__ or root.__context__) is not None and len(str(inner)) > 0:
        root = inner
    cause = str(root).splitlines()[0] if str(root) else ""
    return HubError(f"the hub at {endpoint} cannot be reached ({type(root).__name__}: {cause})")


def _check_checkpoint(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise HubError(f"{path} is not a checkpoint directory (no config.json)")
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        raise HubError(f"{path} has no model.safetensors or model.safetensors.index.json")


def push(path: str | Path, repo: str, endpoint: str, token: str | None, private: bool = False) -> str:
    """Upload a checkpoint directory (weights, configs, tokenizer, neo.json, README.md model card) to ``repo``,
    creating it if needed; returns the repository's URL."""
    from huggingface_hub import HfApi

    path, repo, endpoint = Path(path), check_repo_id(repo), check_endpoint(endpoint)
    _check_checkpoint(path)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(path), repo_id=repo, repo_type="model",
                          commit_message=f"neo model push {path.name}", ignore_patterns=[".*"])
    except Exception as exc:  # network, HTTP and auth errors: one line for the CLI
        raise _unreachable(endpoint, exc) from exc
    return str(url)


def pull(repo: str, out: str | Path, endpoint: str, token: str | None, revision: str | None = None) -> Path:
    """Download ``repo`` (safetensors, JSON configs, tokenizer files, README; no pickles, no code) into ``out``."""
    from huggingface_hub import snapshot_download

    repo, endpoint, out = check_repo_id(repo), check_endpoint(endpoint), Path(out)
    try:
        snapshot_download(repo_id=repo, revision=revision, local_dir=str(out), endpoint=endpoint, token=token,
                          allow_patterns=["*.safetensors", "*.json", "tokenizer.model", "*.md", "*.txt"])
    except Exception as exc:
        raise _unreachable(endpoint, exc) from exc
    _check_checkpoint(out)
    json.loads((out / "config.json").read_text())  # a readable config, or the error says which file
    return out
