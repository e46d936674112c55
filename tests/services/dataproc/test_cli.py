"""``neo data`` commands through Typer's runner: run --eager, status, report, --help."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from neo_dataproc.cli import app

from .conftest import write_jsonl
from .corpus import EN_DOCS, ZH_DOCS

runner = CliRunner()


def env(settings) -> dict[str, str]:
    return {"NEO_HOME": str(settings.home), "NEO_REDIS_URL": settings.redis_url,
            "NEO_REDIS_PREFIX": settings.redis_prefix}


def test_run_eager_status_report(tmp_path, settings):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": t} for t in EN_DOCS + ZH_DOCS] + [{"text": EN_DOCS[0]}])
    cfg = tmp_path / "job.yaml"
    cfg.write_text("name: cli\ninputs: [{path: in}]\ndocs_per_shard: 4\n")
    result = runner.invoke(app, ["run", str(cfg), "--eager"], env=env(settings))
    assert result.exit_code == 0, result.output
    assert "dedup_exact" in result.output and "final 7" in result.output
    status = runner.invoke(app, ["status", "cli", "--json"], env=env(settings))
    assert status.exit_code == 0, status.output
    st = json.loads(status.output)
    assert st["state"] == "done" and st["phases"]["clean"] == {"done": 2, "running": 0, "total": 2}
    assert st["stages"]["dedup"]["dropped_dedup_exact"] == 1
    human = runner.invoke(app, ["status", "cli"], env=env(settings))
    assert "docs/s" in human.output and "dedup_exact 1" in human.output
    report = runner.invoke(app, ["report", "cli", "--json"], env=env(settings))
    assert json.loads(report.output)["documents"]["final"] == 7
    table = runner.invoke(app, ["report", "cli"], env=env(settings))
    assert "gopher_quality" in table.output and "zh_quality" in table.output


def test_bad_config_and_unknown_job(tmp_path, settings):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("name: bad\ninputs: [{path: in}]\ndedup: {num_bands: 0}\n")
    result = runner.invoke(app, ["run", str(cfg), "--eager"], env=env(settings))
    assert result.exit_code == 2 and "dedup.num_bands" in result.output
    assert runner.invoke(app, ["run", str(cfg), "--eager", "--workers", "2"], env=env(settings)).exit_code == 2
    missing = runner.invoke(app, ["report", "nope"], env=env(settings))
    assert missing.exit_code == 1 and "no report" in missing.output
    assert runner.invoke(app, ["status", "nope"], env=env(settings)).exit_code == 1


def test_help_explains_defaults():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for text in ("--eager", "--workers", "resume", "dataproc"):
        assert text in result.output
    assert "dataproc" in runner.invoke(app, ["worker", "--help"]).output
