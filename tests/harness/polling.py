"""Polling a condition that another process or thread makes true."""
from __future__ import annotations

import time


def wait_until(condition, what: str, timeout: float = 20.0, interval: float = 0.01) -> None:
    """Return once `condition()` is true; AssertionError naming `what` if it
    is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)
