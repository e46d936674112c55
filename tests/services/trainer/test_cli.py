"""`neo train` commands through Typer's runner (in process): config errors, the flag forms, scaling fit."""

from __future__ import annotations

import json

import numpy as np
import yaml
from typer.testing import CliRunner

from neo_trainer.cli import app

runner = CliRunner()


def test_bad_config_file_exits_2_naming_the_field(make_config, tmp_path):
    cfg = make_config()
    cfg["train"]["lr"] = "fast"
    cfg["metrics"]["every"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["pretrain", str(path)])
    assert result.exit_code == 2
    assert "train.lr: Input should be a valid number" in result.output
    assert "metrics.every: Extra inputs are not permitted" in result.output


def test_set_override_is_validated_too(make_config, tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(make_config()))
    result = runner.invoke(app, ["pretrain", str(path), "--set", "distributed.zero_stage=7"])
    assert result.exit_code == 2 and "distributed.zero_stage" in result.output
    result = runner.invoke(app, ["pretrain", str(path), "--steps", "5"])
    assert result.exit_code == 2 and "--steps belong to the quick form" in result.output


def test_text_files_need_a_tokenizer(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello")
    result = runner.invoke(app, ["pretrain", str(text)])
    assert result.exit_code == 2 and "--tokenizer" in result.output


def test_scaling_fit_command(tmp_path):
    rng = np.random.default_rng(1)
    points = [{"params": n, "tokens": d, "loss": (1.7 + 400 / n**0.34 + 410 / d**0.28) * (1 + rng.normal(0, 1e-3))}
              for n in (3e5, 1e6, 3e6) for d in (1e6, 1e7, 1e8)]
    (tmp_path / "points.json").write_text(json.dumps(points))
    result = runner.invoke(app, ["scaling", "fit", str(tmp_path / "points.json"), "--holdout", "2",
                                 "--plot", str(tmp_path / "fit.png"), "--out", str(tmp_path / "fit.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "fit.json").read_text())
    assert report["chinchilla"]["heldout_mean_rel_error"] < 0.02 and "d" in report["neo"]["params"]
    assert (tmp_path / "fit.png").stat().st_size > 1000


def test_bundled_example_configs_validate():
    from pathlib import Path

    from neo_trainer.config import load_config

    configs = sorted((Path(__file__).resolve().parents[3] / "services/trainer/neo_trainer/configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.name == path.stem
