"""What goes into the node's state machines.

The node loop turns every I/O outcome into one of these: a decoded message
from a local client (or a client's several in a row), a worker process that
exited, the worker fork server (zygote) that started, died or could not
start, a client process that went away, a timer tick, a send to a peer that
failed, a message refused before it could be decoded or from a peer that
failed the handshake (`MessageRejected`). Small frozen records; no behaviour.
"""
from __future__ import annotations

from ..structs import struct


@struct(frozen=True)
class ClientMessage:
    """A decoded protocol message from a local driver or worker."""
    client: bytes
    msg: object


@struct(frozen=True)
class ClientMessages:
    """A local client's messages in a row (its frames, and the messages of a
    Batch), in order: the scheduler handles them all, then schedules once."""
    client: bytes
    msgs: tuple


@struct(frozen=True)
class WorkerExited:
    """A worker process ended (crash, kill, or a stop we asked for)."""
    worker_id: str
    exitcode: int | None   # negative: killed by that signal


@struct(frozen=True)
class ZygoteStarted:
    """A worker fork server (new, or the spare) is the one that forks workers
    now; `restart`: it replaces one that died."""
    pid: int
    restart: bool


@struct(frozen=True)
class ZygoteDied:
    """A worker fork server died. Each of the `workers` it had forked (or was
    asked to) was killed and comes next as a WorkerExited; the next spawn makes
    the spare fork, or starts a new one not before `restart_in` seconds (a
    backoff if it keeps failing). `spare`: it was the spare (no workers)."""
    exitcode: int | None   # negative: killed by that signal
    workers: int
    restart_in: float
    spare: bool = False


@struct(frozen=True)
class ZygoteStartFailed:
    """No worker fork server could be started (`reason`); tried again in
    `retry_in` seconds, while the spawns asked for wait."""
    reason: str
    retry_in: float


@struct(frozen=True)
class ClientGone:
    """A driver's process is gone (its pid exited), without saying goodbye."""
    client: bytes


@struct(frozen=True)
class Tick:
    """Periodic housekeeping: idle workers, timeouts."""


@struct(frozen=True)
class ObjectSpilled:
    """The spiller made a durable copy of a store object on disk."""
    oid: bytes


@struct(frozen=True)
class SpillFailed:
    """The spiller could not copy a store object to disk (a full disk, EIO...)."""
    oid: bytes
    error: str


@struct(frozen=True)
class ObjectRestored:
    """The spiller copied a spilled object back into the store."""
    oid: bytes


@struct(frozen=True)
class RestoreFailed:
    """The spiller could not copy a spilled object back. `lost`: its spill
    file cannot be read (else the store had no room: it stays on disk)."""
    oid: bytes
    error: str
    lost: bool


@struct(frozen=True)
class MessageRejected:
    """The shell refused a message: `what` is "malformed" (it failed
    protocol.decode) or "unauthenticated" (refused at the CURVE/ZAP
    handshake); the core refuses well-formed ones that make no sense itself
    ("nonsense"). `source` names the sender as the shell knows it (an
    address, a client or node id): warned of once, then only counted."""
    source: str
    what: str      # "malformed" | "unauthenticated" | "nonsense"
    reason: str


# -- between nodes ------------------------------------------------------------------

@struct(frozen=True)
class PeerMessage:
    """A decoded protocol message from another node."""
    node_id: bytes
    msg: object


@struct(frozen=True)
class PeerUnreachable:
    """No socket to a peer's address could be made (e.g. the address is
    malformed): the `dropped` messages queued for it are lost."""
    address: str
    dropped: int
    reason: str


@struct(frozen=True)
class PeerSendBlocked:
    """A peer's socket refused a send at its high-water mark (the peer is down
    or far behind): the `dropped` messages queued for it are lost."""
    address: str
    dropped: int


@struct(frozen=True)
class ChunkArrived:
    """The shell wrote a chunk of a pulled object at its offset."""
    holder: bytes
    oid: bytes
    offset: int
    length: int


@struct(frozen=True)
class ChunkFailed:
    """A holder answered a chunk request with an error (or could not be asked)."""
    holder: bytes
    oid: bytes
    error: str


@struct(frozen=True)
class ObjectFetched:
    """(fabric -> scheduler) A pulled object is sealed in our store."""
    oid: bytes


@struct(frozen=True)
class FetchFailed:
    """(fabric -> scheduler) No holder could serve the object."""
    oid: bytes
    reason: str


@struct(frozen=True)
class PeerUp:
    """(fabric -> scheduler) A peer joined, or its gossiped view changed."""
    node_id: bytes
    address: str
    info: dict


@struct(frozen=True)
class PeerSuspect:
    """(fabric -> scheduler) A peer has not been heard of for a while: send it
    nothing new until it is heard again (a PeerUp) or declared dead."""
    node_id: bytes


@struct(frozen=True)
class PeerDown:
    """(fabric -> scheduler) A peer died or left."""
    node_id: bytes
    reason: str


@struct(frozen=True)
class DeclaredDead:
    """(fabric -> scheduler) A peer's gossip holds this node DEAD (`dead`), or
    no longer does. While it does, that peer has dropped every task we had sent
    it and refuses new ones, and it took back the tasks it sent us and forgot
    our copies; we may still hear it while it cannot hear us (a one-way cut)."""
    node_id: bytes
    dead: bool


@struct(frozen=True)
class WorkerOutput:
    """Lines workers printed, read from their log files (node/logmon.py): runs
    of (job, name, pid, stream, lines, dropped), in the order they were printed
    on each stream (see core/logroute.py)."""
    runs: tuple
