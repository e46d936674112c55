"""Sampling and a small ``generate()`` on top of ``NeoModel``'s KV cache.

``SamplingParams`` and ``sample_next`` are shared with the serving engine, which batches many
requests (each with its own parameters and seed) through the same functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from neo.model import KVCache, NeoModel


@dataclass
class SamplingParams:
    """How to pick the next token. ``temperature == 0`` means greedy (argmax)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # nucleus sampling (Holtzman et al. 2019); 1.0 = off
    min_p: float = 0.0  # drop tokens below min_p · p(most likely token); 0 = off
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019); 1.0 = off
    stop_ids: Sequence[int] = field(default_factory=tuple)  # generation ends after any of these
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (V,), seen (n,) token ids: divide positive / multiply negative logits of seen tokens."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    logits = logits.clone()
    picked = logits[seen]
    logits[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p on one row of logits (V,); masked entries become -inf."""
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
) -> int:
    """Pick one token id from a row of logits (V,)."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = filter_logits(logits, params).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def stream_generate(
    model: NeoModel, prompt_ids: Sequence[int], params: SamplingParams, use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one by one; stops at a stop id (yielded), max_new_tokens or max_seq_len."""
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: give at least one token (e.g. BOS)")
    cfg = model.config
    if len(prompt_ids) >= cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in max_seq_len={cfg.max_seq_len}")
    device = next(model.parameters()).device
    budget = min(params.max_new_tokens, cfg.max_seq_len - len(prompt_ids))
    generator = params.make_generator(device)
    stops = set(params.stop_ids)
    tokens = torch.tensor([list(prompt_ids)], device=device)  # (1, T)
    cache = None
    if use_cache:
        cache = KVCache.empty(cfg, 1, len(prompt_ids) + budget, next(model.parameters()).dtype, device)
    step_ids, positions = tokens, torch.arange(tokens.shape[1], device=device)[None]
    for _ in range(budget):
        if cache is None:
            logits = model(tokens)[0, -1]
        else:
            logits = model(step_ids, positions=positions, cache=cache)[0, -1]
        next_id = sample_next(logits, params, generator, seen=tokens[0])
        yield next_id
        if next_id in stops:
            return
        step = torch.tensor([[next_id]], device=device)
        tokens = torch.cat([tokens, step], dim=1)
        step_ids, positions = step, positions[:, -1:] + 1


def generate(
    model: NeoModel, prompt_ids: Sequence[int], params: SamplingParams | None = None,
    use_cache: bool = True,
) -> list[int]:
    """The new token ids for one prompt (the stop id, if one was hit, is included)."""
    return list(stream_generate(model, prompt_ids, params or SamplingParams(), use_cache))
