"""The model of tests/core/test_scheduler_stateful.py: every process around one
node's scheduler, and what the scheduler should think of them.

`SchedulerModel` keeps the model's books: the drivers and what each client
holds (`MClient`), the tasks (`MTask`), what is in use, the functions' run
times. Each worker (`MWorker`) is, on its own side, a
`zfabric.testing.fakes.FakeWorker` (the task it executes, the Executes it
holds, the Revokes it has not read, the code it was sent); beside it the
model predicts what the node should think of it: `nrun`, `nqueue`, `doomed`,
`stopping`. The actions here are what the rules (in the test) and the
teardown share; each hands the scheduler one event through `step`, which
tests/harness/scheduler_checks.py defines with every check.
"""
from __future__ import annotations

import msgpack

from zfabric import protocol as p
from zfabric import serialization
from zfabric.core import events as ev
from zfabric.core import resources as rs
from zfabric.protocol import ObjectState
from zfabric.core.scheduler import Scheduler
from zfabric.core.workers import PREFETCH_MIN_RUNS, workers_for
from zfabric.testing.fakes import FakeWorker

NODE_ID = b"N" * 16
WATCHER = b"watcher"
# a busy worker queues tasks behind quick ones up to PREFETCH_QUEUE x the quick
# limit of work, at most PREFETCH_DEPTH of them (core/workers.py)
PREFETCH_QUEUE, PREFETCH_DEPTH = 1.5, 3
FUNCTIONS = {b"fn-A".ljust(16, b"."): b"code of A", b"fn-B".ljust(16, b"."): b"code of B"}
INLINE, STORE, ERROR = int(ObjectState.INLINE), int(ObjectState.STORE), int(ObjectState.ERROR)
MAX_TASKS = 40


def record_of(payload: bytes) -> dict:
    return msgpack.unpackb(payload)


def user_error(text: str) -> bytes:
    return serialization.error_record(ValueError(text), "f", "Traceback: ValueError")


class MClient:
    """What a driver or worker process holds, as the model sees it."""

    def __init__(self, client: bytes):
        self.client = client
        self.held: set[bytes] = set()
        self.fns_sent: set[bytes] = set()


class MWorker:
    """A worker process: what it really does, and what the node should think it does.

    The worker's side is `fake`, the shared FakeWorker: `fake.current` is the
    task it executes; `fake.local` the Executes it has received and not started
    (a prefetched task waits there); `fake.inbox` the Revokes it has not read
    yet; `fake.known_fns` the functions whose code it was sent. The node's
    side, as the model predicts it: `nrun` is the task the node counts as
    RUNNING there, `nqueue` the tasks it ASSIGNED there (prefetched). The two
    differ only between a TaskDone and the moment the worker takes its next
    task from `local`.
    """

    def __init__(self, wid: str):
        self.wid = wid
        self.c = MClient(wid.encode())
        self.hello = False
        self.doomed = False      # a KillWorker was sent: it dies before starting anything new
        self.stopping = False    # a StopWorker was sent
        self.fake = FakeWorker(wid)
        self.nrun: bytes | None = None
        self.nqueue: list[bytes] = []


class MTask:
    def __init__(self, spec: p.Submit, owner: bytes, demand: dict, parent: bytes | None):
        self.tid = spec.task_id
        self.spec_deps = list(spec.deps)
        self.fn_id = spec.fn_id
        self.owner = owner
        self.depth = spec.depth
        self.returns = [spec.task_id + i.to_bytes(4, "big") for i in range(spec.num_returns)]
        self.demand = demand
        self.max_retries = spec.max_retries
        self.retry_exceptions = spec.retry_exceptions
        self.parent = parent
        self.children: set[bytes] = set()
        self.attempts = 0
        self.running_on: str | None = None    # the node counts it RUNNING there
        self.assigned_to: str | None = None   # the node prefetched it there
        self.blocked = False
        self.cancel_flag = False
        self.live = True

    def may_retry(self) -> bool:
        return not self.cancel_flag and (self.max_retries < 0 or self.attempts <= self.max_retries)


class SchedulerModel:
    """The books, the node's side as predicted, and the actions the rules share."""

    # -- set-up -----------------------------------------------------------------------

    def start(self, cpus, gpus, spare, capacity, idle_timeout, workers_up, prefetch) -> None:
        """A node with these resources and settings, a watcher and one driver."""
        resources = {"CPU": cpus, **({"gpu": gpus} if gpus else {})}
        self.total = rs.to_units(resources)
        self.capacity = capacity
        self.num_workers = workers_for(cpus)
        self.max_workers = self.num_workers + spare
        self.prefetch = prefetch
        self.s = Scheduler(node_id=NODE_ID, resources=resources, store_capacity=capacity,
                           num_workers=self.num_workers, max_workers=self.max_workers,
                           idle_worker_timeout=idle_timeout, timeline_capacity=50,
                           prefetch_max_task_seconds=prefetch,
                           prefetch_queue_seconds=PREFETCH_QUEUE * prefetch,
                           prefetch_max_depth=PREFETCH_DEPTH)
        self.now = 0.0
        self.in_use: dict[str, int] = {}
        self.workers: dict[str, MWorker] = {}      # spawned and not yet exited
        self.spawned: set[str] = set()
        self.drivers: dict[bytes, MClient] = {}    # alive drivers (not the watcher)
        self.dead: set[bytes] = set()              # clients the node forgot
        self.tasks: dict[bytes, MTask] = {}
        self.fn_times: dict[bytes, list] = {}      # fn_id -> [runs, decayed peak seconds]
        self.return_of: dict[bytes, bytes] = {}
        self.ready_count: dict[bytes, int] = {}
        self.err_record: dict[bytes, bytes] = {}
        self.puts: list[bytes] = []
        self.watch_pending: set[bytes] = set()
        self.deleted: set[bytes] = set()
        self.unpushed: set[bytes] = set()          # returns their owner dropped before they ended
        self.gone_held: set[bytes] = set()         # what a driver going away held
        self.next_id = 0
        self.next_driver = 0
        self.broken = True
        self.absorb(self.s.start(self.now), set(), False)
        self.s.validate()
        self.broken = False
        self.step(ev.ClientMessage(WATCHER, p.Hello("driver", 2, None)))
        self.new_driver()
        if workers_up or prefetch:
            self.all_hello()
        if prefetch:
            self.warm_up()

    def warm_up(self) -> None:
        """Each function runs a few quick tasks first, so that prefetch may start."""
        client = sorted(self.drivers)[0]
        for fn_id in sorted(FUNCTIONS):
            for _ in range(PREFETCH_MIN_RUNS):
                tid = b"T" + self.fresh().to_bytes(15, "big")
                self.do_submit(client, tid, fn_id, 0, {"CPU": 1}, 0, False, 0, None, [], [])
                w = self.workers[self.tasks[tid].running_on]
                msg = w.fake.done(tid, start=1.0, end=1.001)
                self.report_done(w, msg, {tid: "ok"}, 0.001, (), True)

    def new_driver(self) -> None:
        self.next_driver += 1
        client = b"driver-%d" % self.next_driver
        self.drivers[client] = MClient(client)
        self.step(ev.ClientMessage(client, p.Hello("driver", 100 + self.next_driver, None)))

    def room(self) -> tuple[int, int]:
        """The store bytes that stay once spills under way end, and the bytes that
        could be spilled (STORE objects in the store, pinned by no task)."""
        table = self.s.objects.table
        movable = sum(e.size for e in table.entries.values()
                      if e.state == ObjectState.STORE and e.local and e.pins == 0
                      and not e.spilling)
        return table.store_used - table.spilling_bytes, movable

    def no_room(self, size: int) -> bool:
        """Would a put of `size` bytes be refused (neither fits nor can be made to)?"""
        committed, movable = self.room()
        need = committed + size - self.capacity
        return need > 0 and (size > self.capacity or need > movable)

    def fresh(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- views ----------------------------------------------------------------------------

    def clients(self) -> dict[bytes, MClient]:
        out = dict(self.drivers)
        for w in self.workers.values():
            if not w.stopping:
                out[w.c.client] = w.c
        return out

    def busy(self) -> list[MWorker]:
        """Workers executing a task (the worker's view)."""
        return [w for w in self.workers.values() if w.fake.current is not None]

    def submitters(self) -> list[bytes]:
        return sorted(self.drivers) + [w.c.client for w in self.busy()]

    def reaches(self, oid: bytes, targets: set[bytes]) -> bool:
        """Is one of `targets` `oid` itself or nested in it (at any depth)?"""
        stack, seen = [oid], set()
        while stack:
            o = stack.pop()
            if o in targets:
                return True
            if o in seen:
                continue
            seen.add(o)
            e = self.s.objects.get(o)
            if e is not None:
                stack += e.contains
        return False

    def live_tasks(self) -> list[MTask]:
        return [t for t in self.tasks.values() if t.live]

    # -- the node's side, as the model predicts it ----------------------------------------------

    def node_start(self, w: MWorker, t: MTask) -> None:
        for name, amount in t.demand.items():
            self.in_use[name] = self.in_use.get(name, 0) + amount
        t.running_on, t.assigned_to = w.wid, None
        t.attempts += 1
        w.nrun = t.tid
        if t.max_retries >= 0:
            assert t.attempts <= t.max_retries + 1, (t.attempts, t.max_retries)

    def node_release(self, w: MWorker) -> MTask:
        t = self.tasks[w.nrun]
        for name, amount in t.demand.items():
            if not (name == rs.CPU and t.blocked):
                self.in_use[name] -= amount
        t.running_on = None
        t.blocked = False
        w.nrun = None
        return t

    def node_requeue_assigned(self, w: MWorker, expect: dict, failing=()) -> None:
        """The node takes a worker's prefetched tasks back (`failing`: returns of
        the task it ran, which fails in this step)."""
        failing = set(failing)
        for tid in w.nqueue:
            t = self.tasks[tid]
            t.assigned_to = None
            expect[tid] = self.back_again(t, failing)
            if expect[tid] in (None, "cancelled"):   # (its dependents behind it fail too)
                failing.update(t.returns)
        w.nqueue = []

    # -- what drivers and workers do (the rules and the teardown share these) ------------------

    def do_submit(self, client, tid, fn_id, num_returns, resources, max_retries,
                  retry_exceptions, depth, parent, deps, contained, send=True) -> p.Submit:
        """Book a task submitted by `client`, and send its Submit (unless `send` is
        false: the caller sends it in one frame with others)."""
        c = self.clients()[client]
        fn_blob = b"" if fn_id in c.fns_sent else FUNCTIONS[fn_id]
        c.fns_sent.add(fn_id)
        spec = p.Submit(tid, "f", fn_id, num_returns, resources, max_retries, retry_exceptions,
                        depth, parent or b"", deps, contained, fn_blob, b"args", b"")
        t = MTask(spec, client, rs.to_units(resources), parent)
        self.tasks[tid] = t
        if parent is not None:
            self.tasks[parent].children.add(tid)
        for oid in t.returns:
            self.return_of[oid] = tid
            self.ready_count[oid] = 0
            c.held.add(oid)
        if send:
            self.step(ev.ClientMessage(client, spec))
        return spec

    def all_hello(self) -> None:
        for w in sorted(self.workers.values(), key=lambda w: w.wid):
            if not w.hello:
                w.hello = True
                self.step(ev.ClientMessage(w.c.client, w.fake.hello(1000)))

    def report_done(self, w: MWorker, msg: p.TaskDone, expect: dict, took: float,
                    store_reported, start_next: bool) -> None:
        """Worker `w` sends `msg` for its current task; the model plays the node's part."""
        assert w.nrun == w.fake.current_id == msg.task_id
        t = self.node_release(w)
        times = self.fn_times.get(t.fn_id)
        if times is None:
            self.fn_times[t.fn_id] = [1, took]
        else:
            times[0] += 1
            times[1] = max(took, times[1] * 0.99)
        interrupts = []
        if w.doomed:        # (what waits behind a task failing now fails with it)
            failing = t.returns if expect.get(t.tid) not in ("ok", "requeue") else ()
            self.node_requeue_assigned(w, expect, failing)
        elif w.nqueue:      # the prefetched task takes over the resources at once
            nxt = self.tasks[w.nqueue.pop(0)]
            assert rs.shape(nxt.demand) == rs.shape(t.demand)
            self.node_start(w, nxt)
            if nxt.cancel_flag:
                interrupts.append((w.wid, nxt.tid))
        w.fake.finish(msg)
        if start_next and not w.doomed:
            w.fake.start_next()
        self.step(ev.ClientMessage(w.c.client, msg), expect=expect,
                  store_reported=store_reported, interrupts=interrupts)
        self.send_given_back(w)
        if w.c.held:       # the refs the task made die after it returns
            decs = sorted(w.c.held)
            w.c.held.clear()
            self.step(ev.ClientMessage(w.c.client, p.Refs([], decs)))

    def read_revoke(self, w: MWorker) -> None:
        """The worker drops a revoked task it has not started, and says so."""
        answer = w.fake.read()
        if not answer:
            return      # started already (or gone): nothing to say
        (revoked,) = answer
        self.revoked(w, revoked)

    def start_next(self, w: MWorker) -> None:
        """The worker starts its next task (giving back the pipelined ones it cannot)."""
        w.fake.start_next()
        self.send_given_back(w)

    def send_given_back(self, w: MWorker) -> None:
        given_back = w.fake.given_back
        while given_back:   # one at a time: the checks count those not sent yet
            self.revoked(w, given_back.pop(0))

    def back_again(self, t: MTask, failing: set = frozenset()) -> str | None:
        """What the node does with a task a worker gave back: it fails a cancelled
        one; one pipelined behind an argument that failed (or is `failing` in this
        step) fails with it (None); one whose argument is being made again waits;
        others are queued again."""
        if t.cancel_flag:
            return "cancelled"
        states = {self.s.objects.get(oid).state for oid in t.spec_deps}
        if ObjectState.ERROR in states or failing.intersection(t.spec_deps):
            return None
        return "waiting" if ObjectState.PENDING in states else "requeue"

    def revoked(self, w: MWorker, revoked: p.Revoked) -> None:
        """The worker says it dropped a task it had not started."""
        tid = revoked.task_id
        t = self.tasks[tid]
        expect, interrupts = {}, []
        if tid in w.nqueue:
            w.nqueue.remove(tid)
            t.assigned_to = None
            expect[tid] = self.back_again(t)
        elif w.nrun == tid:     # the node had started it when the task before it ended
            for name, amount in t.demand.items():
                self.in_use[name] -= amount
            t.running_on = None
            t.attempts -= 1
            w.nrun = None
            expect[tid] = self.back_again(t)
            if w.doomed:        # a worker being killed gets nothing new
                self.node_requeue_assigned(w, expect)
            elif w.nqueue:      # the next prefetched task takes its place
                nxt = self.tasks[w.nqueue.pop(0)]
                self.node_start(w, nxt)
                if nxt.cancel_flag:
                    interrupts.append((w.wid, nxt.tid))
        # else: the node took the task back already (its worker is being killed)
        self.step(ev.ClientMessage(w.c.client, revoked), expect=expect,
                  interrupts=interrupts)

    def worker_gone(self, w: MWorker) -> dict:
        expect, failing = {}, ()
        if w.nrun is not None:
            t = self.node_release(w)
            if t.cancel_flag:
                expect[t.tid] = "cancelled"
            elif t.may_retry():
                expect[t.tid] = "requeue"
            else:
                expect[t.tid] = "crashed"
            if expect[t.tid] != "requeue":   # what waits behind it for its returns fails
                failing = t.returns
        self.node_requeue_assigned(w, expect, failing)
        del self.workers[w.wid]
        w.c.held.clear()
        self.dead.add(w.c.client)
        return expect

    def unblock(self, w: MWorker) -> None:
        t = self.tasks[w.fake.current_id]
        t.blocked = False
        self.in_use[rs.CPU] = self.in_use.get(rs.CPU, 0) + t.demand.get(rs.CPU, 0)
        self.step(ev.ClientMessage(w.c.client, w.fake.unblocked()))

    # -- cancel --------------------------------------------------------------------------------

    def closure(self, roots: list[bytes], recursive: bool) -> set[bytes]:
        """Live tasks a cancel of `roots` may reach."""
        out: set[bytes] = set()
        stack = [r for r in roots if r in self.s.tasks]
        while stack:
            tid = stack.pop()
            if tid in out:
                continue
            out.add(tid)
            if recursive:
                stack += [c for c in self.tasks[tid].children if c in self.s.tasks]
        return out

    def before_cancel(self, reach: set[bytes]) -> dict:
        return {tid: (self.tasks[tid].running_on, self.tasks[tid].assigned_to,
                      self.tasks[tid].cancel_flag) for tid in reach}
