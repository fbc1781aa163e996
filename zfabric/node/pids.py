"""Is a process still running, and waiting for it to end: one answer for the
node's client and process shells.

`os.kill(pid, 0)` alone is not enough: a child that exited but was not yet
reaped (a zombie) still has its pid. Linux's /proc/{pid}/stat names its state.
"""
from __future__ import annotations

import os
import select


def alive(pid: int) -> bool:
    """Is `pid` running (it exists, and is not a zombie)? A pid we may not signal
    (another user's) counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def wait_for_exit(pid: int, timeout: float) -> bool | None:
    """Wait at most `timeout` seconds for `pid` to exit, woken by its exit through
    a pidfd (no polling; it is not reaped). True: it exited; False: it lives on;
    None: no pidfd for it (reaped already, or none on this kernel)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
