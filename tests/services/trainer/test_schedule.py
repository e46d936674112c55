import pytest

from neo_trainer.schedule import PAPER_DECAY_FRACTION, LRSchedule


def test_paper_split_is_the_default():
    assert PAPER_DECAY_FRACTION == pytest.approx(778 / (3726 + 778))
    s = LRSchedule(peak_lr=1.0, total_steps=1000, warmup_steps=10)
    assert s.decay_start == 1000 - round(PAPER_DECAY_FRACTION * 1000) == 827


def test_wsd_warms_up_holds_then_decays_to_the_floor():
    s = LRSchedule(peak_lr=2.0, total_steps=100, warmup_steps=10, decay_fraction=0.2, min_lr_ratio=0.1)
    lrs = [s(i) for i in range(100)]
    assert lrs[0] == pytest.approx(0.2) and lrs[9] == pytest.approx(2.0)
    assert all(lr == 2.0 for lr in lrs[10:80])  # stable phase
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:], strict=False))  # decay phase, strictly down
    assert lrs[-1] == pytest.approx(0.2)


def test_cosine_and_constant():
    cos = LRSchedule(peak_lr=1.0, total_steps=100, warmup_steps=0, kind="cosine", min_lr_ratio=0.0)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    assert LRSchedule(1.0, 10, kind="constant")(9) == 1.0


def test_bad_schedule():
    with pytest.raises(ValueError, match="warmup_steps"):
        LRSchedule(1.0, total_steps=10, warmup_steps=11)
