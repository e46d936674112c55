"""`neo train` commands through Typer's runner (in process): config errors, the flag forms, scaling fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from neo_trainer.cli import app
from neo_trainer.distributed import TorchrunReportFilter

from .helpers import neo_train

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


@pytest.mark.slow
def test_a_failing_multiprocess_run_says_why_once_without_torchruns_traceback(make_config, tmp_path):
    """`--nproc 2` with a wrong manifest: each rank's one-line error, said once, then one summary line; not
    torchrun's ChildFailedError traceback and failure box."""
    cfg = make_config(data={"manifest": str(tmp_path / "missing")})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = neo_train("pretrain", str(path), "--nproc", "2", timeout=180)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: no manifest.json in") and len(errors) == 2, proc.stderr[-3000:]
    assert errors[1] == "error: neo_trainer.launch failed (rank 0, exit code 2); its processes' messages are above"
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr and "=====" not in proc.stderr


def test_the_torchrun_filter_keeps_a_training_process_traceback():
    """A bug in a training process prints its own traceback: that one is the message and must pass."""
    report = TorchrunReportFilter()
    bug = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n', "    boom()\n",
           "NameError: name 'boom' is not defined\n"]
    assert [out for line in bug for out in report.feed(line)] == bug and report.failure == ""


def test_packaged_run_configs_are_taken_by_name(make_config, shard_dir, tmp_path):
    """`neo train pretrain demo-pretrain` is the trainer's own config for `neo up` (the stack only sets paths
    and the step budget); an unknown name lists the packaged ones."""
    from neo_trainer.config import load_config, packaged_configs

    names = packaged_configs()
    assert {"demo-pretrain", "sft-demo", "neo-7b-fundamental", "map-neo-sft"} <= set(names)
    cfg = load_config(Path("demo-pretrain"), [f"data.manifest={shard_dir}", f"run_dir={tmp_path / 'run'}"])
    assert (cfg.name, cfg.model.preset, cfg.data.seq_len, cfg.train.steps) == ("demo-pretrain", "tiny", 256, 300)
    result = runner.invoke(app, ["pretrain", "demo-pretrain", "--set", f"data.manifest={shard_dir}", "--set",
                                 f"run_dir={tmp_path / 'run'}", "--set", "train.steps=2", "--set",
                                 "train.warmup_steps=1", "--set", f"checkpoint.export_dir={tmp_path / 'out'}",
                                 "--set", "data.seq_len=64", "--set", "metrics.eval_every=2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "config.json").is_file()
    result = runner.invoke(app, ["sft", "no-such-recipe"])
    assert result.exit_code != 0 and "packaged config named 'no-such-recipe'" in result.output
