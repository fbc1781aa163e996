"""What comes out of the node's state machines, for the node loop to carry out.

Each effect is one I/O action. Its outcome, if it matters, comes back later
as an event (a spawned worker says Hello; a killed one is a WorkerExited).
A state machine collects its effects in an `Outbox` while it handles an
event, and returns them in order.
"""
from __future__ import annotations

from ..structs import struct


@struct(frozen=True)
class Send:
    """Send a protocol message to a local client (driver or worker)."""
    to: bytes
    msg: object


@struct(frozen=True)
class SpawnWorker:
    worker_id: str


@struct(frozen=True)
class StopWorker:
    """Ask an idle worker to exit (graceful)."""
    worker_id: str


@struct(frozen=True)
class KillWorker:
    """SIGKILL a worker (force-cancel)."""
    worker_id: str


@struct(frozen=True)
class InterruptWorker:
    """Interrupt `task_id` on a worker (non-force cancel), if it still runs it."""
    worker_id: str
    task_id: bytes


@struct(frozen=True)
class DeleteObject:
    """Remove an object's store file. `spilled`: a durable copy of it is on
    this node's disk now (the node still holds it: the GCS keeps its `loc`)."""
    oid: bytes
    spilled: bool = False


@struct(frozen=True)
class SpillObject:
    """Copy a store object to the node's spill dir, durably (off the loop);
    the outcome comes back as ObjectSpilled or SpillFailed."""
    oid: bytes
    size: int


@struct(frozen=True)
class RestoreObject:
    """Copy a spilled object back into the store (off the loop); the outcome
    comes back as ObjectRestored or RestoreFailed."""
    oid: bytes
    size: int


@struct(frozen=True)
class DeleteSpilled:
    """Remove an object's spill file (after the copies asked before it)."""
    oid: bytes


@struct(frozen=True)
class WatchClient:
    """Start watching a driver's process so its death becomes ClientGone."""
    client: bytes
    pid: int


@struct(frozen=True)
class StopNode:
    reason: str


@struct(frozen=True)
class Log:
    level: str
    text: str


# -- between nodes ------------------------------------------------------------------

@struct(frozen=True)
class PeerSend:
    """Send a protocol message to another node's scheduler socket."""
    address: str
    msg: object


@struct(frozen=True)
class JoinSend:
    """Send a message to a node known only by an address we were given (a
    join): from a socket of its own, so that the same node reached later by
    its advertised address is never two connections with one identity."""
    address: str
    msg: object


@struct(frozen=True)
class ForgetPeer:
    """A peer died or left: close the sockets to it (a later contact reopens them)."""
    node_id: bytes
    address: str


@struct(frozen=True)
class Fetch:
    """(scheduler -> fabric) Pull a STORE object held elsewhere into our store."""
    oid: bytes
    size: int
    holders: tuple


@struct(frozen=True)
class CancelFetch:
    """(scheduler -> fabric) Nobody needs the object being pulled any more."""
    oid: bytes


@struct(frozen=True)
class Publish:
    """(scheduler -> fabric) Write an entry of our GCS shard (value None: delete).

    "loc": a STORE object is now in our store (value: its size); "obj": an
    object we own is sealed in a store (value: size, creating task, the node
    that made it)."""
    table: str
    key: bytes
    value: object


@struct(frozen=True)
class FreeCopies:
    """(scheduler -> fabric) We owned this object and freed it: other nodes'
    copies go too (`holders`: the ones we know of; the GCS may know more)."""
    oid: bytes
    holders: tuple


@struct(frozen=True)
class RequestChunk:
    """Ask a holder's object socket for bytes [offset, offset+length) of oid."""
    holder: bytes
    object_address: str
    oid: bytes
    offset: int
    length: int
    size: int       # the object's whole size (the shell sizes its file)


@struct(frozen=True)
class SealPull:
    """Every chunk of a pulled object is written: make it a store object."""
    oid: bytes


@struct(frozen=True)
class AbortPull:
    """Drop a pull's partial file."""
    oid: bytes


@struct(frozen=True)
class Nonsense:
    """(scheduler -> fabric) A well-formed message that makes no sense was
    refused (nothing changed): counted, and warned of once per sender."""
    source: str
    reason: str


class Outbox:
    """The effects one `handle()` call produces, in order. The scheduler shares
    one with the owners it composes, so their effects keep the order in which
    they were decided."""
    __slots__ = ("effects",)

    def __init__(self):
        self.effects: list = []

    def emit(self, effect) -> None:
        self.effects.append(effect)

    def send(self, to: bytes, msg) -> None:
        """A message to a local client."""
        self.effects.append(Send(to, msg))

    def peer(self, address: str, msg) -> None:
        """A message to another node."""
        self.effects.append(PeerSend(address, msg))

    def log(self, level: str, text: str) -> None:
        self.effects.append(Log(level, text))

    def nonsense(self, source: str, reason: str) -> None:
        """Refuse a message that makes no sense (see `Nonsense`)."""
        self.effects.append(Nonsense(source, reason))

    def take(self) -> list:
        out, self.effects = self.effects, []
        return out
