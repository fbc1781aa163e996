"""Is a process still running? One answer for the node's client and process shells.

`os.kill(pid, 0)` alone is not enough: a child that exited but was not yet
reaped (a zombie) still has its pid. Linux's /proc/{pid}/stat names its state.
"""
from __future__ import annotations

import os


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
