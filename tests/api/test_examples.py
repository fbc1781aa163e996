"""The lesson's examples print the lesson's results and timings (examples/run_all.py checks them)."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_matches_the_lesson(script):
    # run_all kills a hung example's whole process group after --timeout; keep
    # that below the subprocess and pytest timeouts so nothing is orphaned.
    out = subprocess.run([sys.executable, str(EXAMPLES / "run_all.py"), script[:2],
                          "--timeout", "90", "--late", "0.75"],
                         capture_output=True, text=True, timeout=130)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("PASS"), out.stdout
