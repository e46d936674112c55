"""Training losses. Pretraining uses next-token cross-entropy; SFT and DPO join with the alignment issue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this id add nothing to the loss (HF convention)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T), computed in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


# --- alignment (SFT, DPO) -----------------------------------------------------------------------------


def sft_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SFT loss: mean cross-entropy over the assistant tokens only.

    ``targets`` (B, T) hold the next token at each position where it belongs to an assistant reply (its
    content and closing ``<|im_end|>``) and ``IGNORE_INDEX`` everywhere else (system/user turns, role
    headers, padding, document boundaries of a packed row).
    """
    return cross_entropy(logits, targets)


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed log-probability per row of the target tokens (B,), ignoring ``IGNORE_INDEX``.

    ``targets`` are already next-token aligned with ``logits`` (``targets[:, t]`` is predicted by
    ``logits[:, t]``), i.e. TRL's ``logits[:, :-1]`` / ``labels[:, 1:]`` after its shift. Computed in fp32.
    """
    mask = targets != IGNORE_INDEX
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
) -> dict[str, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al.; TRL's ``loss_type="sigmoid"`` without label smoothing).

    loss = mean(-logsigmoid(β·((π_c − π_r) − (ref_c − ref_r)))); rewards are β·(π − ref), detached.
    Returns ``loss`` plus TRL's logged ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``
    and ``rewards/margins`` (batch means).
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    loss = -F.logsigmoid(beta * logits).mean()
    chosen = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return {"loss": loss, "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(), "rewards/margins": (chosen - rejected).mean()}
