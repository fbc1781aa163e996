"""node/pids.py: whether a process runs, and waiting for its exit through a pidfd."""
from __future__ import annotations

import subprocess
import sys

import pytest

from zfabric.node import pids

pytestmark = pytest.mark.timeout(30)


def test_wait_for_exit_wakes_on_the_exit_and_leaves_the_child_to_reap():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert pids.wait_for_exit(proc.pid, 20) is True
    assert not pids.alive(proc.pid)                  # a zombie: exited, not reaped
    assert proc.wait() == 0                          # its code is still the caller's


def test_wait_for_exit_times_out_on_a_running_process_and_knows_a_reaped_one():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pids.wait_for_exit(proc.pid, 0.05) is False
        assert pids.alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert pids.wait_for_exit(proc.pid, 1) is None   # reaped: no pidfd to wait on
