"""neo_trainer.scaling: both laws fitted to synthetic points with known parameters; run-directory points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neo.config import ModelConfig
from neo.schemas import NeoCheckpointInfo
from neo_trainer.scaling import Point, fit, fit_report, load_points


def _points(d_coef: float, noise: float = 0.001, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    E, A, alpha, B, beta = 1.7, 400.0, 0.34, 410.0, 0.28  # Chinchilla's published fit (Hoffmann et al. 2022)
    out = []
    for n in (3e5, 1e6, 3e6, 1e7):
        for d in (1e6, 1e7, 1e8, 1e9):
            loss = E + A / n**alpha + B / d**beta - d_coef * np.log(d)
            out.append(Point(n, d, float(loss * (1 + rng.normal(0, noise)))))
    return out


def test_chinchilla_fit_recovers_its_parameters():
    params = fit("chinchilla", _points(0.0, noise=0.0))
    assert params["alpha"] == pytest.approx(0.34, abs=0.02)
    assert params["beta"] == pytest.approx(0.28, abs=0.02)
    assert params["E"] == pytest.approx(1.7, rel=0.05)


def test_neo_law_wins_when_loss_keeps_falling_with_log_d(tmp_path):
    report = fit_report(_points(0.03, noise=0.0005), holdout=3, plot=tmp_path / "fit.png")
    neo, chin = report["neo"], report["chinchilla"]
    assert report["fit_points"] == 13 and report["held_out"] == 3
    assert neo["heldout_mean_rel_error"] < 0.01
    assert neo["heldout_mean_rel_error"] < chin["heldout_mean_rel_error"] / 2
    assert neo["params"]["objective"] <= chin["params"]["objective"]  # NEO nests Chinchilla (d = 0)
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_too_few_points_is_an_error():
    with pytest.raises(ValueError, match="fewer than 6"):
        fit_report(_points(0.0)[:7], holdout=2)


def test_points_from_run_dirs_and_files(tmp_path):
    cfg = ModelConfig.from_name("tiny", vocab_size=2000)
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"run_dir": str(run), "checkpoint": {}}))
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "tokens": 640, "loss": 6.0, "val_loss": 6.1}) + "\n"
        + json.dumps({"step": 10, "tokens": 1280, "loss": 5.0}) + "\n"
        + json.dumps({"step": 10, "tokens": 1280, "loss": 5.0, "val_loss": 5.5}) + "\n")
    NeoCheckpointInfo(name="run", preset="tiny", model=cfg.to_dict()).write(run / "hf")
    points_file = tmp_path / "points.json"
    points_file.write_text(json.dumps([{"params": 1e6, "tokens": 1e7, "loss": 4.0}]))
    points = load_points([run, points_file])
    assert points[0] == Point(float(cfg.num_params()), 1280.0, 5.5, str(run))
    assert points[1] == Point(1e6, 1e7, 4.0)
    assert load_points([run], non_embedding=True)[0].params == cfg.num_params(include_embedding=False)
