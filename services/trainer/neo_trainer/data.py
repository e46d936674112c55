"""Training data for the quick single-process pretrain: documents → token stream → packed rows.

Documents are tokenized as ``<s> text </s>`` and concatenated, so packed rows carry document
boundaries as EOS (the MAP-Neo/LLaMA convention); rows are ``seq_len + 1`` tokens (inputs + shifted
targets). A deterministic held-out share of rows is kept for validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from neo.textio import iter_texts
from neo.tokenizer import NeoTokenizer


@dataclass
class PackedData:
    train: torch.Tensor  # (N, seq_len + 1) int64
    val: torch.Tensor  # (M, seq_len + 1) int64
    tokens: int  # tokens in the stream before packing

    def batch(self, step: int, batch_size: int, seed: int) -> torch.Tensor:
        """Rows for one step: an epoch-wise permutation fixed by (seed, epoch), so resume is exact."""
        n = self.train.shape[0]
        start = step * batch_size
        rows = []
        for i in range(start, start + batch_size):
            epoch, idx = divmod(i, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
            rows.append(order[idx])
        return self.train[torch.stack(rows)]


def pack_documents(
    tokenizer: NeoTokenizer, files: Sequence[Path], seq_len: int, val_fraction: float = 0.02,
    max_tokens: int | None = None,
) -> PackedData:
    stream: list[int] = []
    for path in files:
        for text in iter_texts(path):
            if text.strip():
                stream.extend(tokenizer.encode(text, add_bos=True, add_eos=True))
            if max_tokens and len(stream) >= max_tokens:
                break
    n_rows = len(stream) // (seq_len + 1)
    if n_rows < 2:
        raise ValueError(
            f"{len(stream)} tokens from {len(files)} file(s) fill fewer than 2 rows of {seq_len + 1}: "
            "give more data or a shorter --seq-len"
        )
    rows = torch.tensor(stream[: n_rows * (seq_len + 1)], dtype=torch.long).view(n_rows, seq_len + 1)
    n_val = max(1, round(n_rows * val_fraction))
    return PackedData(train=rows[n_val:], val=rows[:n_val], tokens=len(stream))
