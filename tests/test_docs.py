"""Docs generated from code stay in step with it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_settings_reference_is_up_to_date():
    """docs/settings.md lists every NEO_* variable of every settings class (scripts/settings_reference.py)."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_reference.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
