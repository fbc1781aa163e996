"""A fake worker process: what a worker does with the messages its node sends it.

`FakeWorker` is the one stand-in for a worker process that the tests use: the
simulator (`sim.FabricSim`) drives it on its virtual clock, the scheduler's
unit harness and its stateful model (tests/harness) by direct calls. It knows
no time and no transport; whoever drives it decides when a message arrives,
when it is read and when a task ends.

What it does, as node/worker.py does:

- `take(execute)`: an Execute starts at once if the worker is idle, else it
  waits in `local` behind the current one (a prefetched task);
- `revoke(task_id)`: a Revoke drops an Execute that has not started and the
  worker answers Revoked; one already started (or unknown) gets no answer;
- `has_code(execute)`: the function's code came with this Execute or an
  earlier one (the node sends it once per worker);
- `finish(report)` ends the current task, `start_next()` starts the next local one;
- a task pipelined behind the tasks making its arguments (their states say
  PENDING) starts only if this worker made them all: `finish` remembers the
  inline returns of each task it reports OK. Otherwise the worker gives the task
  back: `start_next` (and `take`) skip it and leave a Revoked in `given_back`,
  which whoever drives the worker sends after the report before it;
- messages may wait in `inbox` (`deliver`) until the worker reads them (`read`).

Every message a worker sends (Hello, TaskDone, Blocked, Unblocked, Revoked)
is built here, by the methods below.
"""
from __future__ import annotations

from collections import deque

from .. import ids, records
from .. import protocol as p
from ..exceptions import TaskCancelledError
from ..protocol import ObjectState, TaskStatus

INLINE = int(ObjectState.INLINE)
PENDING = int(ObjectState.PENDING)


class FakeWorker:
    def __init__(self, wid: str):
        self.wid = wid
        self.client = wid.encode()
        self.alive = True
        self.current: p.Execute | None = None   # the task it executes
        self.local: deque[p.Execute] = deque()  # received, not started (prefetched)
        self.inbox: deque = deque()             # delivered, not read yet
        self.known_fns: set[bytes] = set()      # functions whose code it was sent
        self.made: set[bytes] = set()           # inline returns of tasks it reported OK
        self.given_back: list[p.Revoked] = []   # pipelined tasks it could not start

    @property
    def current_id(self) -> bytes | None:
        return None if self.current is None else self.current.task_id

    @property
    def local_ids(self) -> list[bytes]:
        return [ex.task_id for ex in self.local]

    # -- what it does with what it reads ------------------------------------------------

    def has_code(self, ex: p.Execute) -> bool:
        """Does the worker have the code of `ex`'s function (sent now or before)?"""
        return bool(ex.fn_blob) or ex.fn_id in self.known_fns

    def knows(self, fn_id: bytes) -> bool:
        """Was the worker sent the code of `fn_id` before?"""
        return fn_id in self.known_fns

    def take(self, ex: p.Execute) -> bool:
        """An Execute arrives: True if it starts now (the worker was idle), False
        if it waits in `local` behind the task running or those waiting already
        (or was given back: see `start_next`)."""
        if ex.fn_blob:
            self.known_fns.add(ex.fn_id)
        self.local.append(ex)
        if self.current is None and len(self.local) == 1:
            return self.start_next() is ex
        return False

    def revoke(self, task_id: bytes) -> p.Revoked | None:
        """A Revoke arrives: an Execute not started yet is dropped, and the worker
        says so; one it started (or never got) is not its business any more."""
        for ex in self.local:
            if ex.task_id == task_id:
                self.local.remove(ex)
                return p.Revoked(task_id)
        return None

    def receive(self, msg) -> list:
        """Read one message; returns what the worker answers at once. Replies to
        what a task asked for (ObjectReady, PutReply, Reply) and Welcome need
        nothing from the worker itself."""
        kind = type(msg)
        if kind is p.Execute:
            self.take(msg)
        elif kind is p.Revoke:
            revoked = self.revoke(msg.task_id)
            return [] if revoked is None else [revoked]
        return []

    def deliver(self, msg) -> None:
        """A message arrives and waits until the worker reads it."""
        self.inbox.append(msg)

    def read(self) -> list:
        """Read the oldest message delivered; returns what the worker answers."""
        return self.receive(self.inbox.popleft())

    def finish(self, report: p.TaskDone | None = None) -> p.Execute:
        """The current task ends, reported by `report` (built with `done` / `failed`
        / `cancelled`; None: as if OK); the worker is between tasks until
        `start_next`."""
        ex, self.current = self.current, None
        assert ex is not None, f"{self.wid} runs nothing"
        if report is None:
            self.made.update(ids.return_ids(ex.task_id, ex.num_returns))
        elif report.status == TaskStatus.OK:   # (inline ones only, as node/worker.py)
            self.made.update(oid for oid, state in zip(ids.return_ids(ex.task_id, ex.num_returns),
                                                       report.states) if state == INLINE)
        return ex

    def start_next(self) -> p.Execute | None:
        """Between tasks: start the next Execute waiting in `local`, if any. One
        whose PENDING arguments this worker did not make is given back instead
        (a Revoked in `given_back`), and the next one tried."""
        while self.current is None and self.local:
            ex = self.local.popleft()
            if all(oid in self.made for oid, state in zip(ex.dep_ids, ex.dep_states)
                   if state == PENDING):
                self.current = ex
            else:
                self.given_back.append(p.Revoked(ex.task_id))
        return self.current

    def take_given_back(self) -> list[p.Revoked]:
        """The Revoked messages of tasks given back since last asked."""
        out, self.given_back = self.given_back, []
        return out

    # -- what it sends ----------------------------------------------------------------------

    def hello(self, pid: int = 1000) -> p.Hello:
        return p.Hello("worker", pid, self.wid)

    def blocked(self) -> p.Blocked:
        """The current task waits in get/wait."""
        return p.Blocked(self.current.task_id)

    def unblocked(self) -> p.Unblocked:
        return p.Unblocked(self.current.task_id)

    @staticmethod
    def done(task_id: bytes, *, payloads=(), states=None, sizes=None, contained=None,
             start: float = 1.0, end: float = 2.0, fetched: float | None = None,
             stored: float | None = None) -> p.TaskDone:
        """Task `task_id` returned: one (state, size, payload, contained ids) per return;
        by default each INLINE, its size that of its payload, holding no refs; its
        arguments fetched at `start` and results stored at `end` unless told."""
        payloads = list(payloads)
        states = [INLINE] * len(payloads) if states is None else list(states)
        sizes = [len(b) for b in payloads] if sizes is None else list(sizes)
        contained = [[] for _ in payloads] if contained is None else list(contained)
        return p.TaskDone(task_id, int(TaskStatus.OK), False, states, sizes, contained,
                          start, end, start if fetched is None else fetched,
                          end if stored is None else stored, payloads)

    @staticmethod
    def failed(task_id: bytes, record: bytes, *, retryable: bool = False,
               status: int = int(TaskStatus.ERROR), start: float = 1.0,
               end: float = 2.0) -> p.TaskDone:
        """Task `task_id` raised (or ended with another status than OK): `record`
        is its error record."""
        return p.TaskDone(task_id, int(status), retryable, [], [], [], start, end, start, end,
                          [record])

    @staticmethod
    def cancelled(task_id: bytes, record: bytes | None = None, *, start: float = 1.0,
                  end: float = 2.0) -> p.TaskDone:
        """Task `task_id` stopped on an interrupt (the node had cancelled it)."""
        if record is None:
            record = records.system_error_record(TaskCancelledError, "cancelled", "f")
        return FakeWorker.failed(task_id, record, status=int(TaskStatus.CANCELLED),
                                 start=start, end=end)
