"""Training losses: next-token cross-entropy (pretraining, SFT), sigmoid DPO, the Bradley-Terry reward loss.

``linear_cross_entropy`` is the one the trainer uses for pretraining and SFT: it fuses the LM head
with the loss and walks the rows in chunks, so the (tokens × vocab) logits never exist at once and
their gradient is formed in place (the idea of Liger-Kernel's fused linear cross-entropy, written
for plain torch). Same result as ``cross_entropy(hidden @ weight.T, targets)`` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets with this id add nothing to the loss (HF convention)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of logits (B, T, V) against targets (B, T), computed in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


#: logits elements per chunk of ``linear_cross_entropy``, by device. CPU: 16 MiB in fp32 (~512 rows at a
#: vocabulary of 8000; fastest in bench/train). GPU: 256 MiB (1024 rows at MAP-Neo's 64000), matmuls big
#: enough to keep the device busy. Smaller chunks hold less memory; larger ones make bigger matmuls.
LOSS_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` (fp32 softmax) against ``targets``, chunk by chunk.

    hidden (..., d), weight (V, d), targets (...) with ``IGNORE_INDEX`` for positions without a loss.
    When a gradient is wanted, each chunk's gradient w.r.t. hidden and weight is computed right after
    its loss (softmax − one-hot, then two matmuls) and kept for backward; the logits are dropped.
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    elements = LOSS_CHUNK_ELEMENTS.get(hidden.device.type, LOSS_CHUNK_ELEMENTS["cuda"])
    rows = chunk_rows or max(1, elements // weight.shape[0])
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, rows)
    return _chunked_loss(hidden, weight, targets, rows, None)


def _chunked_loss(hidden, weight, targets, rows, grads):
    """Sum of chunk losses / number of counted targets; fills ``grads`` = (d hidden, d weight) if given.

    The gradient of a chunk's logits is G = diag(s)·(P − onehot) with P the softmax and s = keep / (n·Σexp)
    per row. G is never formed: the two matmuls run on the unnormalised exp(logits − max) and the row
    scale is applied on their small side (rows × d), the one-hot part as a gather / index_add of rows.
    That leaves three passes over each (rows × V) block besides the matmuls: max, subtract + exp, sum.
    """
    counted = targets != IGNORE_INDEX
    n = counted.sum().clamp(min=1)
    acc = torch.promote_types(hidden.dtype, torch.float32)  # bf16/fp16 → fp32; fp64 stays fp64
    total = torch.zeros((), dtype=acc, device=hidden.device)
    buffer = torch.empty(min(rows, hidden.shape[0]), weight.shape[0], dtype=hidden.dtype, device=hidden.device)
    for start in range(0, hidden.shape[0], rows):
        h, t, keep = hidden[start:start + rows], targets[start:start + rows], counted[start:start + rows]
        safe = torch.where(keep, t, torch.zeros_like(t))
        logits = torch.mm(h, weight.t(), out=buffer[:len(h)]).to(acc)  # (rows, V), one buffer for all chunks
        picked = logits.gather(1, safe[:, None]).squeeze(1)
        peak = logits.amax(dim=-1, keepdim=True)
        e = logits.sub_(peak).exp_()  # in place: one pass gives both the log-sum-exp and the softmax
        norm = e.sum(dim=-1)
        total += ((peak.squeeze(1) + norm.log() - picked) * keep).sum()
        if grads is not None:
            scale = keep.to(acc) / n  # d loss / d logits = scale · (exp / Σexp − one_hot)
            e, row_scale, scale = e.to(h.dtype), (scale / norm).to(h.dtype)[:, None], scale.to(h.dtype)[:, None]
            d_hidden = grads[0][start:start + rows]
            torch.mm(e, weight, out=d_hidden).mul_(row_scale).sub_(weight[safe] * scale)
            h_scaled = h * row_scale
            if grads[1].dtype == h.dtype:  # as (hᵀ·e)ᵀ: BLAS reads e row-major, ~25% faster on CPU than eᵀ·h
                grads[1].t().addmm_(h_scaled.t(), e)
            else:  # bf16 matmul, fp32 accumulation across chunks
                grads[1].add_((e.t() @ h_scaled).to(grads[1].dtype))
            grads[1].index_add_(0, safe, (h * scale).to(grads[1].dtype), alpha=-1)
    return total / n


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, rows):
        grad_dtype = torch.promote_types(weight.dtype, torch.float32)
        grads = (torch.empty_like(hidden), torch.zeros(weight.shape, dtype=grad_dtype, device=weight.device))
        loss = _chunked_loss(hidden, weight, targets, rows, grads)
        ctx.save_for_backward(grads[0], grads[1])
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        d_hidden, d_weight = ctx.saved_tensors
        return d_hidden * grad_loss.to(d_hidden.dtype), (d_weight * grad_loss).to(ctx.weight_dtype), None, None


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
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al.; TRL's ``loss_type="sigmoid"`` without label smoothing).

    loss = mean(-logsigmoid(β·((π_c − π_r) − (ref_c − ref_r)))); rewards are β·(π − ref), detached.
    Returns ``loss`` plus TRL's logged ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``
    and ``rewards/margins`` (batch means). ``weights`` (N,), when given, make the loss a weighted mean
    (``neo align round --pairs both``: human labels mixed in with a weight).
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = -F.logsigmoid(beta * logits)
    loss = losses.mean() if weights is None else (losses * weights).sum() / weights.sum().clamp(min=1e-12)
    chosen = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return {"loss": loss, "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/accuracies": (chosen > rejected).float().mean(), "rewards/margins": (chosen - rejected).mean()}


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                center_coefficient: float | None = None) -> dict[str, torch.Tensor]:
    """Bradley-Terry reward-model loss (TRL's ``RewardTrainer``): mean(-logsigmoid(r_c − r_r [− margin])), plus
    ``center_coefficient · mean((r_c + r_r)²)`` when given. Returns ``loss`` and TRL's logged ``accuracy``,
    ``margin`` and the mean ``rewards/chosen`` / ``rewards/rejected`` (detached)."""
    diff = chosen - rejected
    loss = -F.logsigmoid(diff - margin if margin is not None else diff).mean()
    if center_coefficient is not None:
        loss = loss + center_coefficient * torch.mean((chosen + rejected) ** 2)
    diff = diff.detach()
    return {"loss": loss, "accuracy": (diff > 0).float().mean(), "margin": diff.mean(),
            "rewards/chosen": chosen.detach().mean(), "rewards/rejected": rejected.detach().mean()}
