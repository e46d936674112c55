"""neo_trainer.metrics: the peak table, MFU arithmetic, resumed logs."""

from __future__ import annotations

import json

import pytest

from neo.config import ModelConfig
from neo_trainer.metrics import cpu_peak_flops_estimate, mfu, peak_for_name, read_jsonl, truncate_jsonl


@pytest.mark.parametrize(("name", "bf16", "peak"), [
    ("NVIDIA H100 80GB HBM3", True, 989.4e12),
    ("NVIDIA H100 PCIe", True, 756e12),
    ("NVIDIA H200", True, 989.4e12),
    ("NVIDIA A100-SXM4-80GB", True, 312e12),
    ("NVIDIA A100-SXM4-80GB", False, 19.5e12),
    ("NVIDIA L4", True, 121e12),
    ("Some Future GPU", True, None),
])
def test_peak_table(name, bf16, peak):
    assert peak_for_name(name, bf16) == peak


def test_mfu_of_neo_250m_on_h100():
    cfg = ModelConfig.from_name("neo-250m")
    per_token = cfg.flops_per_token(4096)
    # the tokens/s that would be exactly 50% MFU on one H100 SXM
    tps = 0.5 * 989.4e12 / per_token
    assert mfu(per_token, tps, 989.4e12, 1) == pytest.approx(0.5)
    assert mfu(per_token, 2 * tps, 989.4e12, 2) == pytest.approx(0.5)
    assert mfu(per_token, tps, None, 1) is None


def test_cpu_estimate_is_plausible():
    peak = cpu_peak_flops_estimate(threads=2)
    assert peak is None or 1e9 < peak < 1e13


def test_truncate_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 11)))
    truncate_jsonl(path, 6)
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3, 4, 5, 6]
