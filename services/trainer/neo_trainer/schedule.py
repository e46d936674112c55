"""Learning-rate schedules.

MAP-Neo trains in two phases: a long *fundamental* phase at a stable learning rate, then a *decay*
phase on higher-quality data while the rate decays (paper §6; 3,726B then 778B tokens ≈ 83% / 17%).
That is a warmup-stable-decay (WSD) schedule whose decay starts where the decay phase starts.

``map-neo`` is the schedule MAP-Neo's released pretraining scripts run (Megatron-LM-NEO ``neo/scripts``):

- fundamental phase (``pretrain_7b.sh``, ``pretrain_2b.sh``): linear warmup over 2000 steps to 2e-4, then
  cosine decay to ``--min-lr 2e-5`` over the run (``--lr-decay-style cosine``);
- decay phase (``pretrain_7b_phase2.sh``, started with ``--finetune`` from the fundamental checkpoint, so its
  step count restarts): no warmup, the LR goes back to 2e-4 and halves every ``h`` steps,
  ``lr = max(2e-5, 2e-4 · 0.5^(k / h))`` with ``h = T/2 + 1`` for decay step ``k`` of ``T``
  (Megatron-LM-NEO's ``wsd`` style with ``--lr_stable_steps 0 --wsd_half_life -1``,
  megatron/optimizer_param_scheduler.py). It ends near 2e-4 · 0.25 = 5e-5, above the 2e-5 floor.

Where the sources disagree: Neo's ``wsd`` (and the docstring above) reads the paper's fundamental phase as a
stable LR and its decay as one continuous anneal; the released scripts decay the fundamental LR by cosine and
restart at the peak for the decay phase. The paper's own text was not available to settle it; the MAP-Neo run
configs (``configs/neo-7b-*.yaml``, ``neo-2b-*.yaml``) follow the scripts, ``wsd`` stays the default elsewhere.
Warmup here reaches the peak at step ``warmup_steps - 1`` (Neo's convention); Megatron starts warmup at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: Fundamental : decay token split of MAP-Neo 7B (paper §6: 3,726B and 778B tokens).
PAPER_FUNDAMENTAL_TOKENS = 3726e9
PAPER_DECAY_TOKENS = 778e9
PAPER_DECAY_FRACTION = PAPER_DECAY_TOKENS / (PAPER_FUNDAMENTAL_TOKENS + PAPER_DECAY_TOKENS)  # ≈ 0.173
#: Peak LR, LR floor and warmup of MAP-Neo's pretraining scripts (Megatron-LM-NEO neo/scripts/pretrain_7b.sh,
#: pretrain_2b.sh and pretrain_7b_phase2.sh: --lr 2e-4 --min-lr 2e-5 --lr-warmup-iters 2000).
PAPER_PEAK_LR = 2e-4
PAPER_MIN_LR = 2e-5
PAPER_WARMUP_STEPS = 2000

ScheduleKind = Literal["wsd", "cosine", "constant", "map-neo"]


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate at each optimizer step (0-based): linear warmup, then WSD, cosine, constant or map-neo."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: ScheduleKind = "wsd"
    decay_fraction: float = PAPER_DECAY_FRACTION  # WSD: share of steps spent decaying
    min_lr_ratio: float = 0.1  # final lr = peak · min_lr_ratio
    decay_steps: int | None = None  # WSD: explicit decay length (a run that starts in the decay phase)

    def __post_init__(self) -> None:
        if self.total_steps <= 0 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({self.warmup_steps}) <= total_steps ({self.total_steps})")
        if not 0 <= self.decay_fraction <= 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("decay_fraction and min_lr_ratio must be in [0, 1]")
        if self.decay_steps is not None and not 0 <= self.decay_steps <= self.total_steps:
            raise ValueError(f"decay_steps ({self.decay_steps}) must be in [0, total_steps={self.total_steps}]")

    @property
    def decay_start(self) -> int:
        """First step of the decay phase (WSD); the phase switch of a two-phase run."""
        if self.decay_steps is not None:
            return self.total_steps - self.decay_steps
        return self.total_steps - round(self.decay_fraction * self.total_steps)

    @property
    def half_life(self) -> float:
        """map-neo's decay phase: Megatron-LM-NEO's default half-life, half the decay phase's steps plus one."""
        return 0.5 * (self.total_steps - self.decay_start) + 1

    def phase(self, step: int) -> str:
        """``fundamental`` before ``decay_start``, ``decay`` from it on (the data mixture follows)."""
        return "decay" if step >= self.decay_start else "fundamental"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        floor = self.peak_lr * self.min_lr_ratio
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "cosine" or (self.kind == "map-neo" and step < self.decay_start):
            end = self.total_steps if self.kind == "cosine" else self.decay_start
            span = max(1, end - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return floor + (self.peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "map-neo":  # decay phase: back to the peak, halving every half_life steps
            return max(floor, self.peak_lr * 0.5 ** ((step - self.decay_start) / self.half_life))
        if step < self.decay_start:
            return self.peak_lr
        span = max(1, self.total_steps - self.decay_start)
        progress = min(1.0, (step - self.decay_start + 1) / span)
        return self.peak_lr + (floor - self.peak_lr) * progress  # linear decay to the floor
