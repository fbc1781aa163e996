"""What goes into the node's state machines.

The node loop turns every I/O outcome into one of these: a decoded message
from a local client, a worker process that exited, a client process that
went away, a timer tick. Small frozen records; no behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A decoded protocol message from a local driver or worker."""
    client: bytes
    msg: object


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """A worker process ended (crash, kill, or a stop we asked for)."""
    worker_id: str
    exitcode: int | None   # negative: killed by that signal


@dataclass(frozen=True, slots=True)
class WorkerSpawnFailed:
    worker_id: str
    error: str


@dataclass(frozen=True, slots=True)
class ClientGone:
    """A driver's process is gone (its pid exited), without saying goodbye."""
    client: bytes


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic housekeeping: idle workers, timeouts."""
