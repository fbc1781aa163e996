"""A task as the local scheduler keeps it, and the states it passes through.

A Task is in the custody of one owner at a time, and only that owner
changes its state:

    WAITING            core/scheduler.py: its arguments are not all ready,
                       or it is between owners
    QUEUED             core/queues.py: ready, in the queue of its resource shape
    RUNNING, ASSIGNED  core/workers.py: on a worker (ASSIGNED: prefetched
                       behind the worker's current task; a pipelined one,
                       core/feed.py, still `missing` the arguments the
                       tasks before it there are making)
    SPILLED            core/spill.py: a peer runs it for us

When it ends it leaves the scheduler's task table (state None); its returns
hold the outcome.
"""
from __future__ import annotations

from enum import IntEnum

from .. import ids
from .. import protocol as p
from . import resources as rs


class TaskState(IntEnum):
    WAITING = 0
    QUEUED = 1
    RUNNING = 2
    ASSIGNED = 3   # prefetched: sent to a busy worker, starts when its task ends
    SPILLED = 4    # forwarded to a peer (task.node), which runs it for us


class Task:
    __slots__ = ("spec", "owner", "demand", "shape", "state", "missing", "worker",
                 "attempts", "seq", "blocked", "cancelled", "returns", "children",
                 "node", "remote_owner", "since", "tried", "gpus")

    def __init__(self, spec: p.Submit, owner: bytes, demand: dict, seq: int):
        self.spec = spec
        self.owner = owner
        self.demand = demand
        self.shape = rs.shape(demand)
        self.state: TaskState | None = TaskState.WAITING
        self.missing: set[bytes] = set()        # arguments not ready yet
        self.worker: str | None = None          # RUNNING / ASSIGNED: on this worker
        self.attempts = 0
        self.seq = seq                          # submission order (FIFO per shape)
        self.blocked = False                    # RUNNING: blocked in get/wait
        self.cancelled = False                  # a cancel was asked while it ran
        self.returns = ids.return_ids(spec.task_id, spec.num_returns)
        self.children: set[bytes] = set()       # tasks it submitted, not ended
        self.node: bytes | None = None          # SPILLED: the peer running it
        self.remote_owner: bytes | None = None  # forwarded to us by this node
        self.since = 0.0                        # SPILLED: when it was forwarded
        self.tried: tuple = ()                  # the peers it was ever forwarded to
        self.gpus: list[int] | None = None      # RUNNING with a GPU demand: its GPU ids

    @property
    def name(self) -> str:
        return self.spec.name

    def may_retry(self) -> bool:
        """Has it attempts left (and was it not cancelled)?"""
        limit = self.spec.max_retries
        return not self.cancelled and (limit < 0 or self.attempts <= limit)


class Functions:
    """Function code by id, as submitters sent it; each receiver (a worker,
    a peer) is sent a function's code once, with the first task that needs it."""
    __slots__ = ("code",)

    def __init__(self):
        self.code: dict[bytes, bytes] = {}

    def __contains__(self, fn_id: bytes) -> bool:
        return fn_id in self.code

    def add(self, fn_id: bytes, blob: bytes) -> None:
        """Keep a function's code. An id is the hash of its code (protocol.decode
        refuses code that does not match): a second copy never replaces the first."""
        self.code.setdefault(fn_id, blob)

    def for_receiver(self, known: set[bytes], fn_id: bytes) -> bytes:
        """The code to send along to a receiver that knows `known` (b"" if it has it)."""
        if fn_id in known:
            return b""
        known.add(fn_id)
        return self.code[fn_id]
