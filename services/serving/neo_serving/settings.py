"""The serving service's one settings object (env prefix ``NEO_``), built by ``neo serve``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from neo.settings import NeoSettings

# Shared by every checkout on the machine, so CI's clean clones reuse it (a vLLM venv is ~3.5 GB).
DEFAULT_VLLM_VENV = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neo" / "vllm-venv"


class ServingSettings(NeoSettings):
    """Everything ``build_app`` needs. CLI flags override these; env vars (``NEO_SERVE_PORT`` …) set them."""

    models: list[str] = Field(
        default_factory=list,
        description="what to serve: a checkpoint DIR, NAME=DIR, a NAME registered in the model registry (its "
                    "latest version, followed by reloads) or a ref NAME:vN (that version, pinned)")
    serve_host: str = Field(default="127.0.0.1", description="address to listen on")
    serve_port: int = Field(default=8000, description="port to listen on (vLLM's default)")
    engine: Literal["torch", "gateway", "vllm"] = Field(
        default="torch", description="torch: generate in this process; gateway: forward to --upstream servers; "
                                     "vllm: start and supervise vLLM replicas of each version and forward to them")
    upstreams: list[str] = Field(
        default_factory=list, description="NAME=URL of an OpenAI-compatible server (repeat for replicas)")
    upstream_api_key: str | None = Field(default=None, description="Bearer key sent to upstream servers")
    api_keys: list[str] = Field(
        default_factory=list, description="accepted Bearer keys; empty = no auth (/health and /metrics stay open)")
    admin_keys: list[str] = Field(
        default_factory=list, description="Bearer keys of the admin routes (/v1/admin/*; API keys do not open "
                                          "them); empty = admin routes only while listening on loopback")
    model_roots: list[Path] = Field(
        default_factory=list, description="directories a reload `path` may lie in, besides NEO_HOME/models and "
                                          "the folders of the checkpoints served at start")

    # --- torch engine ------------------------------------------------------------------------------
    max_batch_size: int | None = Field(
        default=None, ge=1, description="KV-cache rows: requests decoded together (unset: as many as "
                                        "NEO_KV_CACHE_GB holds, at most 128; at most 16 with batch_invariant)")
    kv_cache_gb: float = Field(
        default=1.0, gt=0, description="memory for the KV-cache rows when max_batch_size is unset (one row holds "
                                       "max_model_len positions; the default matches NEO_VLLM_KV_CACHE_GB)")
    max_model_len: int | None = Field(
        default=None, ge=2, description="context length served (default: the model's max_seq_len)")
    max_prefill_tokens: int = Field(
        default=2048, ge=1, description="prompt tokens (padded to the longest prompt) prefilled in one forward "
                                     "between two decode steps (bounds ITL spikes); a longer prompt is "
                                     "prefilled in chunks of this size (NEO_CHUNKED_PREFILL)")
    chunked_prefill: bool = Field(
        default=True, description="prefill a prompt longer than max_prefill_tokens in chunks, decoding the "
                                  "running requests between them (vLLM's chunked prefill); off: one forward, "
                                  "during which every other stream waits. Always off with batch_invariant")
    batch_invariant: bool = Field(
        default=False,
        description="pad every decode step to one shape so a request's logits are bitwise independent of "
                    "its batch-mates (exact concurrent == sequential; costs attention over the whole cache)")
    max_waiting: int = Field(
        default=1024, ge=1, description="sequences queued for a KV-cache row before new requests get a 503 "
                                        "(engine_overloaded) instead of an ever longer wait")
    prefix_cache: bool = Field(
        default=True, description="reuse the keys/values of prompt blocks seen before (vLLM's automatic prefix "
                                  "caching); always off with batch_invariant, whose bitwise guarantee it would break")
    prefix_cache_mb: float = Field(
        default=512.0, ge=0, description="memory the prefix cache may fill (MiB); least recently used blocks that "
                                         "no running request holds are evicted beyond it")
    prefix_cache_block_size: int = Field(
        default=16, ge=1, description="tokens per prefix-cache block (vLLM's default block size): only full "
                                      "blocks are cached and reused")
    engine_restart_backoff_s: float = Field(
        default=1.0, gt=0, description="delay before a torch engine that died is restarted (its requests get a "
                                       "503 error); doubles while it keeps dying, up to 60 s")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="weights dtype (auto: the checkpoint's)")
    device: str = Field(default="cpu", description="torch device of the engine")
    threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = torch's default in the API "
                                                      "process, all cores but one in an engine process")
    engine_process: bool = Field(
        default=True, description="run the torch engine's model loop in a process of its own (vLLM's engine-core "
                                  "split), so HTTP/SSE work does not share its GIL; off: a thread of the API process")

    # --- gateway ----------------------------------------------------------------------------------
    health_interval_s: float = Field(default=5.0, gt=0, description="seconds between upstream health checks")
    unhealthy_after: int = Field(
        default=3, ge=1, description="consecutive failed health checks before a replica that was up is marked down")
    upstream_timeout_s: float = Field(default=600.0, gt=0, description="read timeout of an upstream request")
    relay: bool = Field(
        default=True, description="forward chat/completions requests to upstream replicas as they came and their "
                                  "responses back untouched, when the replicas serve the model under the same "
                                  "name (off: re-tokenize and generate token by token through the gateway)")

    # --- vllm engine (managed replicas) -------------------------------------------------------------
    vllm_python: Path = Field(
        default=DEFAULT_VLLM_VENV / "bin" / "python",
        description="Python of the venv vLLM is installed in (`neo serve install-vllm` builds it)")
    vllm_replicas: int = Field(default=1, ge=1, description="vLLM processes started per served model version")
    vllm_args: list[str] = Field(
        default_factory=list, description="extra `vllm serve` arguments for every replica, e.g. "
                                          "--gpu-memory-utilization=0.45 (one list item per argument)")
    vllm_devices: list[str] = Field(
        default_factory=list, description="CUDA_VISIBLE_DEVICES of each replica in turn, e.g. 0 1 (empty: inherit)")
    vllm_start_timeout_s: float = Field(
        default=600.0, gt=0, description="seconds a replica may take to answer /health before its start fails")
    vllm_kv_cache_gb: float = Field(
        default=1.0, gt=0, description="KV cache per replica on CPU (VLLM_CPU_KVCACHE_SPACE); GPUs ignore it")

    # --- versions ---------------------------------------------------------------------------------
    watch_registry: bool = Field(
        default=False, description="poll the Redis model registry and switch to newly registered versions")
    watch_interval_s: float = Field(default=10.0, gt=0, description="seconds between registry polls")

    # --- request limits ---------------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=4_000_000, ge=1024, description="largest request body accepted (413 beyond): a huge prompt "
                                                "would hold the event loop while it is parsed and tokenized")
    max_n: int = Field(default=16, ge=1, description="largest n (choices per prompt) accepted")
    max_choices: int = Field(
        default=256, ge=1, description="largest number of sequences (prompts x n) one request may ask for")
    max_logprobs: int = Field(default=20, ge=0, description="largest logprobs/top_logprobs accepted (vLLM: 20)")

    @field_validator("upstreams")
    @classmethod
    def _upstreams_are_pairs(cls, value: list[str]) -> list[str]:
        for item in value:
            name, sep, url = item.partition("=")
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream {item!r} is not NAME=http(s)://host:port")
        return value
