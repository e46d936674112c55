"""The training-side wrapper around an unchanged ``NeoModel``: the loss inside the forward.

``CausalLM(model)(input_ids, positions, doc_ids)`` returns logits like ``NeoModel``; given ``targets``
it returns the mean next-token loss instead, through ``losses.linear_cross_entropy`` (the LM head fused
with the loss, so the full logits are never stored). The loss lives inside this module's forward so
that DeepSpeed ZeRO-3, which gathers a parameter only while its module runs, has the LM head weight at
hand: it is registered here as an external parameter of the wrapper.

Document masks and activation checkpointing are ``NeoModel``'s own (``doc_ids``,
``activation_checkpointing``), so the export is the same model as the one trained.
"""

from __future__ import annotations

import torch
from torch import nn

from neo.model import NeoModel
from neo_trainer.losses import cross_entropy, linear_cross_entropy


class CausalLM(nn.Module):
    """``forward(input_ids, positions, doc_ids, targets=None)`` → logits (B, T, V), or the loss given targets."""

    def __init__(self, model: NeoModel, activation_checkpointing: bool = False, fused_loss: bool = True):
        super().__init__()
        self.model = model
        self.fused_loss = fused_loss
        model.activation_checkpointing = activation_checkpointing
        if fused_loss:  # ZeRO-3 gathers it for this module's forward; a plain dict entry otherwise
            import deepspeed

            deepspeed.zero.register_external_parameter(self, model.lm_head.weight)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if targets is None:
            return self.model(input_ids, positions, doc_ids=doc_ids)
        hidden = self.model.hidden_states(input_ids, positions, doc_ids=doc_ids)
        if self.fused_loss:
            return linear_cross_entropy(hidden, self.model.lm_head.weight, targets)
        return cross_entropy(self.model.lm_head(hidden), targets)


def compile_blocks(model: NeoModel) -> None:
    """``torch.compile`` each transformer block in place (parameter names unchanged, so checkpoints and the
    HF export are unaffected). Inductor fuses the norms, RoPE and SwiGLU's elementwise work."""
    for block in model.layers:
        block.compile()
