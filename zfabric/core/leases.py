"""Worker leases: a driver running tasks one at a time talks to a worker directly.

A sync round trip `zf.get(f.remote())` through the node crosses four hops
(driver -> node -> worker -> node -> driver). A driver that keeps doing that
asks its node for a *lease* (LeaseAsk); the node grants one (LeaseGrant)
only when a worker is idle and nothing is queued: that worker leaves the
pool (not assignable, `WorkerPool.lease`; the lease holds one CPU while no
task of it runs) and the driver sends it eligible tasks itself, one at a
time, as the Execute the node would send; the worker sends its TaskDone
straight back (node/lease.py, node/worker.py). Two hops.

The node's books hear of a direct task through the driver's own channel: a
Submit whose opts name the lease (`"lease": worker id`), then the worker's
TaskDone, forwarded. The driver sends the Submit before anything else it
sends while the task runs (so the node knows the task before any message
that names its returns: a Submit using them, a Cancel, a reference change),
or with the TaskDone when nothing else went first. So the node books the task
as if it had sent it: started on the leased worker (`start`), then ended by
the TaskDone (`Scheduler._on_task_done`): lineage, timeline, stats, objects,
retries, cancel (a Cancel reaches the worker as for any task it runs). The
node does not push a direct task's returns to the driver when the TaskDone
says they are inline values: the driver has them.

A leased worker may speak of a direct task the node has not heard of yet: a
Submit of a nested task, or Blocked (its CPU lent while it waits). Those,
and every message of that worker after them (its channel's order), are held
(`hold`) until the driver's Submit names the task, then handled in order;
holding also recalls the lease, so the driver names the task at once.

A lease ends (LeaseEnd to the driver) when the node recalls it (tasks are
queued and no worker is idle: `recall`), or its worker dies ("died": the
tasks the node knew of are retried or fail as on any worker's death; one
the driver names after that is booked as started and crashed). The driver
answers LeaseReturn after its last notice, or returns the lease itself when
idle; a driver that leaves ends its lease. The node then gives the worker
back to the pool and tells it (LeaseEnd), so it drops the results it kept
(a result holding references is kept until the node has sealed it).

`LeaseBook` is the pure bookkeeping (who holds which worker, in what
state; whether to grant; which to recall), property-tested on its own;
`Leasing` is the scheduler's part (core/scheduler.py composes it, as it does
Feed): it reads and changes the scheduler's pool, tasks and outbox.
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum

from .. import ids, records
from .. import protocol as p
from ..exceptions import WorkerCrashedError
from . import resources as rs

LEASE_CPU = {"CPU": 1.0}   # what a lease holds, and the only demand a direct task may have
RECENT_ENDED = 8           # direct tasks' ids a lease remembers after they ended
MAX_SESSION_DIR = 72       # a longer session dir: no leases (ipc paths must fit 107 bytes)


class LeaseState(IntEnum):
    ACTIVE = 0      # the driver may send the worker tasks
    RECALLED = 1    # the node asked for it back (LeaseEnd "recall" sent)
    DEAD = 2        # its worker died (LeaseEnd "died" sent)


class Lease:
    __slots__ = ("client", "wid", "state", "held", "ended", "how")

    def __init__(self, client: bytes, wid: str):
        self.client = client
        self.wid = wid
        self.state = LeaseState.ACTIVE
        self.held: list | None = None   # the worker's messages held (see `hold`)
        self.ended: deque = deque(maxlen=RECENT_ENDED)   # ids of its direct tasks that ended
        self.how = ""   # how its worker died ("killed by signal 9", "exit code 3")


class LeaseBook:
    """Which driver holds which worker. Pure: the caller sends the messages."""

    def __init__(self):
        self.by_client: dict[bytes, Lease] = {}
        self.by_worker: dict[str, Lease] = {}

    @staticmethod
    def may_grant(is_driver: bool, holds: bool, idle_workers: int, queued: int) -> bool:
        """Grant a lease only to a driver without one, with a worker idle and
        nothing queued (a lease must never keep a queued task from a worker)."""
        return is_driver and not holds and idle_workers > 0 and queued == 0

    def grant(self, client: bytes, wid: str) -> Lease:
        assert client not in self.by_client and wid not in self.by_worker
        lease = self.by_client[client] = self.by_worker[wid] = Lease(client, wid)
        return lease

    def to_recall(self, queued: int, idle_workers: int) -> list[Lease]:
        """Tasks wait and no worker is idle: the leases still active are asked back."""
        if not queued or idle_workers:
            return []
        leases = [lease for lease in self.by_client.values() if lease.state == LeaseState.ACTIVE]
        for lease in leases:
            lease.state = LeaseState.RECALLED
        return leases

    def recall(self, lease: Lease) -> bool:
        """Ask for one lease back; False if it was asked already or is dead."""
        if lease.state != LeaseState.ACTIVE:
            return False
        lease.state = LeaseState.RECALLED
        return True

    def worker_died(self, wid: str) -> Lease | None:
        lease = self.by_worker.get(wid)
        if lease is None or lease.state == LeaseState.DEAD:
            return None
        lease.state = LeaseState.DEAD
        return lease

    def returned(self, client: bytes, wid: str) -> Lease | None:
        """The driver gave the lease back (or left: `wid` None)."""
        lease = self.by_client.get(client)
        if lease is None or (wid is not None and lease.wid != wid):
            return None
        del self.by_client[client]
        del self.by_worker[lease.wid]
        return lease

    def validate(self) -> None:
        assert len(self.by_client) == len(self.by_worker)
        for client, lease in self.by_client.items():
            assert lease.client == client and self.by_worker[lease.wid] is lease


class Leasing:
    """The scheduler's side of leases (composed by core/scheduler.py)."""

    def __init__(self, sched, session_dir: str):
        self.sched = sched
        self.book = LeaseBook()
        # (no leases where an ipc path there may be too long to bind: sun_path)
        self.session_dir = session_dir if len(session_dir) <= MAX_SESSION_DIR else ""
        self.demand = rs.to_units(LEASE_CPU)
        self.by_worker_client: dict[bytes, Lease] = {}
        self.asks: dict[bytes, None] = {}   # drivers waiting for a lease, oldest first

    def worker_of(self, client: bytes):
        """The live worker leased to a driver, or None."""
        lease = self.book.by_client.get(client)
        return None if lease is None else self.sched.pool.workers.get(lease.wid)

    # -- messages from drivers ------------------------------------------------------

    def on_ask(self, client: bytes, msg: p.LeaseAsk) -> None:
        """Grant a lease now, or as soon as a worker idles with nothing queued."""
        if self.session_dir and client in self.sched.drivers:
            self.asks[client] = None
            self.grant_asked()

    def grant_asked(self) -> None:
        """(after every event while drivers wait for a lease: Feed.schedule)"""
        sched = self.sched
        pool = sched.pool
        for client in list(self.asks):
            if not self.book.may_grant(client in sched.drivers, client in self.book.by_client,
                                       len(pool.idle), sched.queues.count):
                if client in self.book.by_client or client not in sched.drivers:
                    del self.asks[client]
                continue
            del self.asks[client]
            self._grant(client)

    def _grant(self, client: bytes) -> None:
        sched = self.sched
        pool = sched.pool
        worker = pool.idle[-1]
        pool.lease(worker, self.demand)
        lease = self.book.grant(client, worker.wid)
        self.by_worker_client[worker.client] = lease
        sched.stats["leases"] += 1
        sched.out.send(client, p.LeaseGrant(worker.wid, ids.worker_endpoint(
            self.session_dir, worker.wid)))

    def start(self, client: bytes, task) -> None:
        """A driver's Submit names its leased worker: the task runs there."""
        sched = self.sched
        sched.stats["direct"] += 1
        lease = self.book.by_client[client]
        worker = sched.pool.workers.get(lease.wid)
        if lease.state == LeaseState.DEAD or worker is None:
            task.attempts += 1   # (it was sent to a worker that died)
            sched.stats["workers_crashed"] += 1
            sched.retry_or_fail(task, records.system_error_record(
                WorkerCrashedError, f"the worker running {task.name}() died ({lease.how}) and "
                f"the task has no retries left (max_retries={task.spec.max_retries})", task.name))
            return
        sched.pool.start_leased(task, worker, sched.now)
        self._replay(lease)

    def finished(self, worker, task, msg: p.TaskDone) -> None:
        """A direct task's TaskDone (forwarded by its driver) is being booked: the
        driver has its inline values, so they are not pushed to it again -- unless
        a value holds refs, which the driver leaves to us (node/lease.py)."""
        lease = self.book.by_worker.get(worker.wid)
        if lease is not None:
            lease.ended.append(task.spec.task_id)
        if (msg.status == 0 and all(s == int(p.ObjectState.INLINE) for s in msg.states)
                and not any(msg.contained)):
            entries = self.sched.objects.entries
            for oid in task.returns:
                entry = entries.get(oid)
                if entry is not None:
                    entry.push_to = None

    def on_return(self, client: bytes, msg: p.LeaseReturn) -> None:
        self._end(self.book.returned(client, msg.wid))

    def client_gone(self, client: bytes) -> None:
        self.asks.pop(client, None)
        self._end(self.book.returned(client, None))

    def _end(self, lease: Lease | None) -> None:
        """The lease is over: its worker goes back to the pool (told so), and
        what it said meanwhile is handled."""
        if lease is None:
            return
        sched = self.sched
        worker = sched.pool.workers.get(lease.wid)
        if worker is None:
            return
        self.by_worker_client.pop(worker.client, None)
        sched.pool.unlease(worker, sched.now)
        sched.out.send(worker.client, p.LeaseEnd(worker.wid, "recall"))
        self._replay(lease)

    # -- the node's side --------------------------------------------------------------

    def recall(self) -> None:
        """(Feed.schedule) Tasks wait and no worker is idle: ask the leases back."""
        sched = self.sched
        for lease in self.book.to_recall(sched.queues.count, len(sched.pool.idle)):
            sched.stats["leases_recalled"] += 1
            sched.out.send(lease.client, p.LeaseEnd(lease.wid, "recall"))

    def worker_exited(self, worker, how: str) -> None:
        lease = self.book.worker_died(worker.wid)
        if lease is not None:
            lease.how = how
            self.by_worker_client.pop(worker.client, None)
            lease.held = None   # (what a dead worker said of a task never named is moot)
            self.sched.out.send(lease.client, p.LeaseEnd(lease.wid, "died"))

    def hold(self, sender: bytes, msg) -> bool:
        """Hold a leased worker's message about a direct task not named yet (and
        every message of that worker after it, in order); True if held."""
        lease = self.by_worker_client.get(sender)
        if lease is None:
            return False
        if lease.held is None:
            kind = type(msg)
            if kind is not p.Submit and kind is not p.Blocked:
                return False
            worker = self.sched.pool.workers.get(lease.wid)
            running = worker.task.spec.task_id if worker and worker.task else None
            about = msg.parent if kind is p.Submit else msg.task_id
            if about == running or about in lease.ended or not about:
                return False
            lease.held = []
            if self.book.recall(lease):   # (the driver names its task at once)
                self.sched.out.send(lease.client, p.LeaseEnd(lease.wid, "recall"))
        lease.held.append(msg)
        return True

    def _replay(self, lease: Lease) -> None:
        held, lease.held = lease.held, None
        if held:
            client = lease.wid.encode()
            for msg in held:
                self.sched.dispatch_client(client, msg)

    def validate(self) -> None:
        self.book.validate()
        pool = self.sched.pool
        for wid, lease in self.book.by_worker.items():
            worker = pool.workers.get(wid)
            if lease.state != LeaseState.DEAD:
                assert worker is not None and worker.leased is not None, wid
                assert self.by_worker_client.get(worker.client) is lease
        leased = {w.wid for w in pool.workers.values() if w.leased is not None}
        assert leased <= set(self.book.by_worker), leased
