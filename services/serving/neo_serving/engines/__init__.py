"""Engines behind one interface (``base.Engine``): ``torch`` generates in a child process (or on a thread of
this one with ``engine_process=False``), ``gateway`` forwards to upstream OpenAI-compatible servers, ``vllm``
starts vLLM replicas and forwards to them. ``build_engine`` is the only place that picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from neo_serving.engines.base import Engine, ModelInfo
from neo_serving.tokens import ServedTokenizer

if TYPE_CHECKING:
    from neo_serving.settings import ServingSettings


def build_engine(info: ModelInfo, tokenizer: ServedTokenizer, settings: ServingSettings) -> Engine:
    """A not-yet-started engine for one model version, of the kind ``settings.engine`` names."""
    if settings.engine == "vllm":
        from neo_serving.engines.vllm import build_vllm_engine

        return build_vllm_engine(info, tokenizer, settings)
    if settings.engine == "gateway":
        from neo_serving.engines.upstream import build_upstream_engine

        return build_upstream_engine(info, tokenizer, settings)
    if settings.engine_process:  # the torch engine's loop in a process of its own (engine_process.py)
        from neo_serving.engines.engine_process import ProcessEngine
        from neo_serving.engines.torch_engine import torch_engine_kwargs

        return ProcessEngine(info, tokenizer, threads=settings.threads, **torch_engine_kwargs(settings))
    from neo_serving.engines.torch_engine import build_torch_engine

    return build_torch_engine(info, tokenizer, settings)
