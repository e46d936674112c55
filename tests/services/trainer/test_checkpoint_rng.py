"""The RNG state saved with each checkpoint loads with ``torch.load(weights_only=True)`` (no pickled code)."""

from __future__ import annotations

import random

import numpy as np
import torch

from neo_trainer.checkpoint import rng_state, set_rng_state


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # a cached Gaussian in numpy's state too
    torch.save(rng_state(), tmp_path / "rng.pt")
    want = draws()
    draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == want
