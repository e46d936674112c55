"""The training-side forward around an unchanged ``NeoModel``: document masks, activation checkpointing.

``neo.model`` stays free of training concerns (no ZeRO, no recompute, no loss). This wrapper walks the
model's own parts (embedding → blocks → norm → head) and adds two things a pretraining run may ask for:

* ``doc_ids`` (B, T): attention stays inside a document, as a block-diagonal causal mask
  (B, 1, T, T), while ``positions`` restart at every document start;
* activation checkpointing: each block's activations are recomputed in backward instead of stored.

Without either, the result equals ``NeoModel.forward`` (tested), so the export is the same model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from neo.model import NeoModel


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids (B, T) → bool mask (B, 1, T, T): query t sees key s iff s ≤ t and both are in one document."""
    T = doc_ids.shape[1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal)[:, None]


class CausalLM(nn.Module):
    """``NeoModel`` as trained: ``forward(input_ids, positions, doc_ids) -> logits`` (B, T, vocab)."""

    def __init__(self, model: NeoModel, activation_checkpointing: bool = False):
        super().__init__()
        self.model = model
        self.activation_checkpointing = activation_checkpointing

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        m = self.model
        B, T = input_ids.shape
        if T > m.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={m.config.max_seq_len}")
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        mask = document_causal_mask(doc_ids) if doc_ids is not None else None
        cos, sin = m.rope(positions)  # (B, 1, T, hd) each
        x = m.embed(input_ids)  # (B, T, d)
        for block in m.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, None, None, 0, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, None, None, 0, mask)
        return m.lm_head(m.norm(x))
