"""The lesson's examples print the lesson's results and timings (examples/run_all.py checks them)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_matches_the_lesson(script):
    out = subprocess.run([sys.executable, str(EXAMPLES / "run_all.py"), script[:2]],
                         capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout
