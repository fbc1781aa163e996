"""What comes out of the node's state machines, for the node loop to carry out.

Each effect is one I/O action. Its outcome, if it matters, comes back later
as an event (a spawned worker says Hello; a killed one is a WorkerExited).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Send:
    """Send a protocol message to a local client (driver or worker)."""
    to: bytes
    msg: object


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    worker_id: str


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Ask an idle worker to exit (graceful)."""
    worker_id: str


@dataclass(frozen=True, slots=True)
class KillWorker:
    """SIGKILL a worker (force-cancel)."""
    worker_id: str


@dataclass(frozen=True, slots=True)
class InterruptWorker:
    """Interrupt `task_id` on a worker (non-force cancel), if it still runs it."""
    worker_id: str
    task_id: bytes


@dataclass(frozen=True, slots=True)
class DeleteObject:
    """Remove an object's store file."""
    oid: bytes


@dataclass(frozen=True, slots=True)
class WatchClient:
    """Start watching a driver's process so its death becomes ClientGone."""
    client: bytes
    pid: int


@dataclass(frozen=True, slots=True)
class StopNode:
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    text: str
