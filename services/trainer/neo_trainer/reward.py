"""Reward models: a Neo backbone with a scalar head, scoring whole conversations (TRL's ``RewardTrainer`` shape).

``RewardModel`` = ``NeoModel.hidden_states`` → ``score`` (Linear d_model → 1, no bias) at the last token of each
row: HF's ``LlamaForSequenceClassification`` with ``num_labels=1`` (the score of the last non-pad token), which
is what the export (``neo.hf.export_reward_hf``) is loaded as. A conversation is tokenized as TRL's
``RewardTrainer`` does for conversational rows: the chat template over prompt + completion
(``encode_chat(..., add_generation_prompt=False)``: ``...<|im_start|>assistant\\nreply<|im_end|>\\n``), so the
reward is read at the template's final ``\\n``. A text prompt / completion is one user / assistant message (as in
DPO). A conversation longer than ``seq_len`` keeps its end (TRL drops such rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neo.hf import is_reward_hf, load_hf, load_reward_hf
from neo.model import NeoModel
from neo.tokenizer import NeoTokenizer
from neo_trainer.sft_data import _as_messages


class RewardModel(nn.Module):
    """Backbone + scalar head; ``forward(input_ids, lengths)`` → one reward per row (B,)."""

    def __init__(self, backbone: NeoModel, score: torch.Tensor | None = None):
        super().__init__()
        backbone.lm_head = nn.Identity()  # unused (hidden states only); a tied head keeps the embedding
        self.backbone = backbone
        d = backbone.config.d_model
        self.score = nn.Linear(d, 1, bias=False)
        with torch.no_grad():
            if score is None:  # HF's init of the head: normal(0, initializer_range)
                self.score.weight.normal_(0.0, backbone.config.init_std)
            else:
                self.score.weight.copy_(score.reshape(1, d))
        self.score.to(next(backbone.parameters()).dtype)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) right-padded, lengths (B,) → rewards (B,) in fp32 (the score at token length-1)."""
        hidden = self.backbone.hidden_states(input_ids)
        last = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), lengths - 1]
        return self.score(last).squeeze(-1).float()

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> RewardModel:
        """A reward directory (its head), or a chat model (a new head, seeded by the caller's RNG)."""
        if is_reward_hf(path):
            backbone, score = load_reward_hf(path, device=device, dtype=dtype)
            return cls(backbone, score)
        return cls(load_hf(path, device=device, dtype=dtype))


def encode_conversation_ids(tokenizer: NeoTokenizer, prompt: Any, completion: Any, seq_len: int) -> list[int]:
    """Ids of prompt + completion through the chat template, as TRL's ``RewardTrainer`` makes them (their last
    ``seq_len``; 0: all)."""
    ids = tokenizer.encode_chat(_as_messages(prompt, "user") + _as_messages(completion, "assistant"),
                                add_generation_prompt=False)
    return ids[-seq_len:] if seq_len else ids


def encode_reward_pair(tokenizer: NeoTokenizer, row: dict[str, Any], seq_len: int,
                       long_pairs: str = "keep_end") -> tuple[list[int], list[int]] | None:
    """(chosen ids, rejected ids) of a TRL preference row; longer than ``seq_len``: their last ``seq_len`` tokens
    (``keep_end``), or None (``drop``, as TRL's ``RewardTrainer`` filters such pairs out)."""
    unlimited = 0 if long_pairs == "drop" else seq_len
    pair = (encode_conversation_ids(tokenizer, row["prompt"], row["chosen"], unlimited),
            encode_conversation_ids(tokenizer, row["prompt"], row["rejected"], unlimited))
    if long_pairs == "drop" and max(map(len, pair)) > seq_len:
        return None
    return pair


def batch(rows: Sequence[Sequence[int]], pad_id: int,
          device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids and lengths (B,) (TRL's ``DataCollatorForPreference`` pads on the right)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return (ids.to(device), lengths.to(device)) if device is not None else (ids, lengths)


@torch.no_grad()
def score_ids(model: Any, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8,
              device: torch.device | None = None) -> torch.Tensor:
    """Rewards (N,) of tokenized conversations, in batches (``model``: a RewardModel or its engine)."""
    was = model.training
    model.train(False)
    out = [model(*batch(rows[i:i + batch_size], pad_id, device)) for i in range(0, len(rows), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0)


class RewardScorer:
    """A loaded reward model that scores (prompt, completion) conversations: the round's ranker."""

    def __init__(self, path: Path, device: torch.device | str = "cpu", seq_len: int | None = None):
        self.path = Path(path)
        self.device = torch.device(device)
        self.model = RewardModel.load(self.path, device=self.device, dtype=torch.float32).eval()
        self.tokenizer = NeoTokenizer.load(self.path)
        self.seq_len = seq_len or self.model.config.max_seq_len

    def score(self, prompt: Any, completions: Sequence[Any]) -> list[float]:
        rows = [encode_conversation_ids(self.tokenizer, prompt, c, self.seq_len) for c in completions]
        return score_ids(self.model, rows, self.tokenizer.pad_id, device=self.device).tolist()
