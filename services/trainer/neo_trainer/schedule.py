"""Learning-rate schedules.

MAP-Neo trains in two phases: a long *fundamental* phase at a stable learning rate, then a *decay*
phase on higher-quality data while the rate decays (paper §6; 3,726B then 778B tokens ≈ 83% / 17%).
That is a warmup-stable-decay (WSD) schedule whose decay starts where the decay phase starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: Fundamental : decay token split of MAP-Neo 7B (paper §6: 3,726B and 778B tokens).
PAPER_FUNDAMENTAL_TOKENS = 3726e9
PAPER_DECAY_TOKENS = 778e9
PAPER_DECAY_FRACTION = PAPER_DECAY_TOKENS / (PAPER_FUNDAMENTAL_TOKENS + PAPER_DECAY_TOKENS)  # ≈ 0.173


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate at each optimizer step (0-based): linear warmup, then WSD, cosine or constant."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: Literal["wsd", "cosine", "constant"] = "wsd"
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

    def phase(self, step: int) -> str:
        """``fundamental`` before ``decay_start``, ``decay`` from it on (the data mixture follows)."""
        return "decay" if step >= self.decay_start else "fundamental"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        floor = self.peak_lr * self.min_lr_ratio
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return floor + (self.peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < self.decay_start:
            return self.peak_lr
        span = max(1, self.total_steps - self.decay_start)
        progress = min(1.0, (step - self.decay_start + 1) / span)
        return self.peak_lr + (floor - self.peak_lr) * progress  # linear decay to the floor
