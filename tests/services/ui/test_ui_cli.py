"""``neo ui`` / ``neo prefs`` as Typer apps (the lead mounts them as entry points) and as ``python -m``."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from neo_ui.cli import app, prefs_app


def test_ui_rejects_bad_settings_before_starting():
    result = CliRunner().invoke(app, ["--api-url", "ftp://nowhere", "--port", "1"])
    assert result.exit_code == 2 and "must start with http://" in result.output
    result = CliRunner().invoke(app, ["--user", "alice-without-password"])
    assert result.exit_code == 2 and "NAME:PASSWORD" in result.output


def test_help_texts_name_the_settings():
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--api-url" in text and "NEO_API_URL" in text and "--label-model" in text
    assert "export" in CliRunner().invoke(prefs_app, ["--help"]).output


def test_module_entry_dispatches_prefs():
    result = subprocess.run([sys.executable, "-m", "neo_ui.cli", "prefs", "export", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--keep-ties" in result.stdout


def test_mounted_like_the_neo_command():
    """``neo.cli`` adds each entry point's Typer app under its name: ``neo ui`` and ``neo prefs``."""
    import typer

    root = typer.Typer()
    root.add_typer(app, name="ui")
    root.add_typer(prefs_app, name="prefs")
    result = CliRunner().invoke(root, ["ui", "--api-url", "ftp://x"])
    assert result.exit_code == 2 and "must start with http://" in result.output
    assert "--since-last-round" in CliRunner().invoke(root, ["prefs", "export", "--help"],
                                                      env={"COLUMNS": "200"}).output
