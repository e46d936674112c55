"""Where answers come from: a model directory loaded in process, or an OpenAI-compatible API.

Both score a continuation the same way: tokenize ``context + continuation`` once and sum the
log-probabilities of the tokens that start at or after the context's end (the API reports each
token's ``text_offset`` with ``echo``; lm-eval's ``local-completions`` does the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch


class Backend(Protocol):
    name: str

    def loglikelihood(self, context: str, continuation: str) -> float: ...

    def generate(self, prompt: str, max_tokens: int, stop: Sequence[str]) -> str: ...


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [i for s in stop if (i := text.find(s)) >= 0]
    return text[: min(cuts)] if cuts else text


class ModelBackend:
    """An HF checkpoint directory run with ``neo.model`` on this process (greedy decoding)."""

    def __init__(self, model_dir: Path, device: str = "cpu", name: str | None = None):
        from neo.hf import load_hf
        from neo.tokenizer import NeoTokenizer

        self.name = name or str(model_dir)
        self.model = load_hf(model_dir, device=device)
        self.tokenizer = NeoTokenizer.load(model_dir)
        self.device = device

    def _split(self, context: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of the whole text (with BOS) and the index of the first continuation token."""
        tok = self.tokenizer
        ids = tok.encode(context + continuation, add_bos=True)
        offsets = tok.char_offsets(ids)  # the API's text_offset rule: tokens starting at/after the context end
        start = next((k for k, off in enumerate(offsets) if k > 0 and off >= len(context)), len(ids))
        limit = self.model.config.max_seq_len
        if len(ids) > limit:  # keep the end: drop the oldest context tokens
            drop = len(ids) - limit
            ids, start = ids[drop:], max(1, start - drop)
        return ids, start

    @torch.inference_mode()
    def loglikelihood(self, context: str, continuation: str) -> float:
        ids, start = self._split(context, continuation)
        tokens = torch.tensor([ids], device=self.device)
        logprobs = self.model(tokens)[0].float().log_softmax(-1)  # (T, V)
        targets = tokens[0, start:]
        return float(logprobs[start - 1 : -1].gather(-1, targets[:, None]).sum())

    def generate(self, prompt: str, max_tokens: int, stop: Sequence[str]) -> str:
        from neo.generate import SamplingParams, stream_generate

        tok = self.tokenizer
        ids = tok.encode(prompt, add_bos=True)[-(self.model.config.max_seq_len - max_tokens) :]
        params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, stop_ids=(tok.eos_id, tok.im_end_id))
        out: list[int] = []
        for token in stream_generate(self.model, ids, params):
            out.append(token)
            text = tok.decode(out)
            if any(s in text for s in stop):
                break
        return _cut_at_stop(tok.decode(out), stop)


class APIBackend:
    """Any OpenAI-compatible ``/v1/completions`` server: Neo's serving, vLLM, …"""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0):
        from openai import OpenAI

        self.name = f"{model}@{base_url}"
        self.model = model
        self.client = OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout, max_retries=1)

    def loglikelihood(self, context: str, continuation: str) -> float:
        out = self.client.completions.create(model=self.model, prompt=context + continuation, max_tokens=1,
                                             echo=True, logprobs=1, temperature=0.0)
        lp = out.choices[0].logprobs
        picked = [p for off, p in zip(lp.text_offset, lp.token_logprobs, strict=False)
                  if off >= len(context) and off < len(context + continuation) and p is not None]
        if not picked:
            raise ValueError(f"{self.name}: no continuation tokens found for {continuation!r}")
        return float(sum(picked))

    def generate(self, prompt: str, max_tokens: int, stop: Sequence[str]) -> str:
        out = self.client.completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0.0, stop=list(stop)[:4] or None)
        return _cut_at_stop(out.choices[0].text, stop)
