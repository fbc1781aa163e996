"""core/scheduler.py under random schedules (hypothesis.stateful).

The machine plays every process around one node's scheduler: drivers that
submit, put, subscribe, drop and borrow references, cancel, and go away;
workers that say hello, run what they are sent (keeping prefetched tasks in
a local queue, dropping revoked ones they have not started and saying so),
block in get, submit nested tasks, report OK / an error / a cancel, crash or
are killed. It keeps its own books (what each worker really runs, what the node
should count as running or prefetched where, what each client holds, which
resources are in use) and after every step checks them against the scheduler:

- `Scheduler.validate()`;
- no resource is over-committed: a task is dispatched only if it fits beside
  the running tasks that are not blocked (CPU may exceed the total only
  because an unblocked task took its CPU back, as WorkerPool.unblock documents),
  and `available` is exactly total minus what the model says is in use;
- no task is lost or is on two workers at once, and none runs more than
  max_retries + 1 times; no task is sent to a worker that is starting,
  stopping or being killed, and a busy one is sent only a prefetch (same
  shape, behind a quick function, not blocked, one at a time);
- every task ends exactly once: when it leaves the task table each return is
  sealed (one ObjectReady to its owner for each return it still holds: it is
  subscribed to them; none for a return it dropped),
  never before, and with the outcome the last report calls for (a result, the
  task's own error, TaskCancelledError, WorkerCrashedError, an argument's error);
- nothing a client holds or a pending task needs is ever freed; every store
  object that goes away gets one DeleteObject; the store never exceeds its capacity
  but by what is being spilled (this model's disk never answers: spills stay under
  way; tests/core/test_capacity.py plays the spiller), and a put or a result is
  refused for room only when spilling every unpinned object would not make enough;
- no idle worker is left unused while a queued task fits.

At teardown the machine runs every task to its end, checks each terminated,
then releases every reference and checks the object table is empty.

The model and its books: tests/harness/scheduler_model.py; the checks:
tests/harness/scheduler_checks.py. The rules are here.
"""
from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, precondition, rule)

from zfabric import protocol as p
from zfabric import records
from zfabric.core import events as ev
from zfabric.core import resources as rs
from zfabric.core.scheduler import Scheduler
from zfabric.core.tasks import TaskState

from tests.harness.scheduler_checks import CheckedModel
from tests.harness.scheduler_model import (FUNCTIONS, INLINE, MAX_TASKS, STORE, WATCHER, MWorker,
                                           user_error)


class SchedulerMachine(CheckedModel, RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.s: Scheduler | None = None
        self.broken = False

    # -- set-up -----------------------------------------------------------------------

    @initialize(cpus=st.sampled_from([1, 2, 2.5]), gpus=st.sampled_from([0, 1, 2]),
                spare=st.integers(0, 3), capacity=st.sampled_from([60, 150, 10**6]),
                idle_timeout=st.sampled_from([1.0, 30.0]), workers_up=st.booleans(),
                prefetch=st.sampled_from([0.0, 1.0, 1.0]))
    def boot(self, cpus, gpus, spare, capacity, idle_timeout, workers_up, prefetch):
        self.start(cpus, gpus, spare, capacity, idle_timeout, workers_up, prefetch)

    def pick_worker(self, data, workers: list[MWorker]) -> MWorker:
        wid = data.draw(st.sampled_from(sorted(w.wid for w in workers)), label="worker")
        return self.workers[wid]

    # -- drivers and workers act ---------------------------------------------------------------

    @precondition(lambda self: self.s is not None and len(self.tasks) < MAX_TASKS)
    @rule(data=st.data())
    def submit(self, data):
        """A driver or a running task submits a few tasks: one by one, or in one
        frame (the node hands a client's messages in a row on as one event)."""
        n = data.draw(st.integers(1, 3), label="how many")
        if n > 1 and data.draw(st.booleans(), label="one frame"):
            client = data.draw(st.sampled_from(self.submitters()), label="client")
            specs = [self.submit_one(data, client, send=False)
                     for _ in range(min(n, MAX_TASKS - len(self.tasks)))]
            self.step(ev.ClientMessages(client, tuple(specs)))
            return
        for _ in range(n):
            if len(self.tasks) < MAX_TASKS:
                self.submit_one(data)

    def submit_one(self, data, client: bytes | None = None, send: bool = True) -> p.Submit:
        if client is None:
            client = data.draw(st.sampled_from(self.submitters()), label="client")
        c = self.clients()[client]
        parent = None
        depth = 0
        w = self.workers.get(client.decode(errors="replace"))
        if w is not None and client not in self.drivers:
            parent = w.fake.current_id
            depth = self.tasks[parent].depth + 1
        n = self.fresh()
        tid = b"T" + n.to_bytes(15, "big")
        cpu = data.draw(st.sampled_from([0, 0.25, 0.5, 1, 1, 1, 1, 1, 1.5, 2]), label="cpu")
        gpu = 0
        if "gpu" in self.total:
            gpu = data.draw(st.sampled_from([0, 0, 0, 0, 0.5, 1]), label="gpu")
        if data.draw(st.integers(0, 9), label="infeasible") == 0:   # fits no node: waits
            cpu, gpu = data.draw(st.sampled_from([(4, 0), (1, 3)]), label="too big")
        resources = {}
        if cpu:
            resources["CPU"] = cpu
        if gpu:
            resources["gpu"] = gpu
        held = sorted(c.held)
        deps = data.draw(st.lists(st.sampled_from(held), max_size=3), label="deps") if held else []
        contained = (data.draw(st.lists(st.sampled_from(held), max_size=2, unique=True),
                               label="contained") if held else [])
        fn_id = data.draw(st.sampled_from(sorted(FUNCTIONS)), label="fn")
        return self.do_submit(client, tid, fn_id,
                              data.draw(st.integers(0, 3), label="num_returns"), resources,
                              data.draw(st.sampled_from([-1, 0, 1, 2]), label="retries"),
                              data.draw(st.booleans(), label="retry_exceptions"), depth,
                              parent, deps, contained, send)

    @precondition(lambda self: self.s is not None
                  and any(not w.hello for w in self.workers.values()))
    @rule(data=st.data())
    def worker_hello(self, data):
        if data.draw(st.booleans(), label="all"):
            self.all_hello()
            return
        w = self.pick_worker(data, [w for w in self.workers.values() if not w.hello])
        w.hello = True
        self.step(ev.ClientMessage(w.c.client, w.fake.hello(1000)))

    @precondition(lambda self: self.s is not None and bool(self.busy()))
    @rule(data=st.data())
    def task_done(self, data):
        """A worker returns (or, if its task was cancelled, may report the cancel)."""
        self.finish(data, raises=False)

    @precondition(lambda self: self.s is not None and bool(self.busy()))
    @rule(data=st.data())
    def task_raises(self, data):
        self.finish(data, raises=True)

    def finish(self, data, raises: bool) -> None:
        w = self.pick_worker(data, self.busy())
        t = self.tasks[w.fake.current_id]
        if t.blocked:   # a task blocked in get returns only once get has returned
            self.unblock(w)
        kinds = ["error"] if raises else ["ok"] + (["cancelled"] if t.cancel_flag else [])
        kind = data.draw(st.sampled_from(kinds), label="outcome")
        took = data.draw(st.sampled_from([0.001, 0.01, 0.2, 1.05]), label="seconds")
        tid = t.tid
        if kind == "ok":
            states, sizes, payloads, contained = [], [], [], []
            # a value cannot hold an ObjectRef to itself: leave out what (transitively)
            # holds one of this task's own returns
            held = sorted(o for o in w.c.held if not self.reaches(o, set(t.returns)))
            for i in range(len(t.returns)):
                state = data.draw(st.sampled_from([INLINE, STORE]), label="state")
                states.append(state)
                if state == STORE:
                    sizes.append(data.draw(st.sampled_from([0, 10, 40, 90]), label="size"))
                    payloads.append(b"")
                else:
                    payloads.append(b"value-%d" % i)
                    sizes.append(len(payloads[-1]))
                contained.append(data.draw(st.lists(st.sampled_from(held), max_size=2,
                                                    unique=True), label="refs in result")
                                 if held else [])
            self.reported = (states, sizes)
            msg = w.fake.done(tid, payloads=payloads, states=states, sizes=sizes,
                              contained=contained, start=1.0, end=1.0 + took)
            expect = "ok"
            store_reported = [oid for oid, s_ in zip(t.returns, states) if s_ == STORE]
        elif kind == "cancelled":
            record = records.system_error_record(Exception, "cancelled", "f")
            msg = w.fake.cancelled(tid, record, start=1.0, end=1.0 + took)
            expect, store_reported = "cancelled", []
        else:
            retryable = t.retry_exceptions and data.draw(st.booleans(), label="retryable")
            self.user_record = user_error(f"boom {tid.hex()} {t.attempts}")
            msg = w.fake.failed(tid, self.user_record, retryable=retryable, start=1.0,
                                end=1.0 + took)
            if t.cancel_flag:
                expect = "cancelled"
            elif retryable and t.may_retry():
                expect = "requeue"
            else:
                expect = "user"
            store_reported = []
        start_next = data.draw(st.booleans(), label="start next at once")
        self.report_done(w, msg, {tid: expect}, took, store_reported, start_next)
        if w.fake.current is None and w.fake.inbox and data.draw(st.booleans(),
                                                                 label="read revokes"):
            while w.fake.inbox and w.wid in self.workers:   # between tasks, it reads its mail
                self.read_revoke(w)

    @precondition(lambda self: self.s is not None and any(
        w.fake.current is None and w.fake.local and not w.doomed for w in self.workers.values()))
    @rule(data=st.data())
    def worker_starts_next(self, data):
        """A worker takes its next (prefetched) task: the node need not hear of it."""
        w = self.pick_worker(data, [w for w in self.workers.values()
                                    if w.fake.current is None and w.fake.local
                                    and not w.doomed])
        self.start_next(w)

    @precondition(lambda self: self.s is not None
                  and any(w.fake.inbox for w in self.workers.values()))
    @rule(data=st.data())
    def worker_reads_revoke(self, data):
        w = self.pick_worker(data, [w for w in self.workers.values() if w.fake.inbox])
        self.read_revoke(w)

    @precondition(lambda self: self.s is not None and (
        bool(self.busy()) or any(not w.hello for w in self.workers.values())
        or any(t.owner in self.drivers for t in self.live_tasks())))
    @rule(data=st.data())
    def mishap(self, data):
        """The rarer events, grouped so that they do not crowd out the work: a worker
        dies (crash, or the kill/stop the node asked for lands), a worker fails to
        start, a driver goes away."""
        kinds = []
        if self.busy() or any(not w.hello for w in self.workers.values()):
            kinds += ["worker exits"] * 2
        if any(t.owner in self.drivers for t in self.live_tasks()):
            kinds.append("driver gone")
        kind = data.draw(st.sampled_from(kinds), label="mishap")
        if kind == "worker exits":
            self.worker_exits(data)
        else:
            self.driver_gone(data)

    def worker_exits(self, data):
        w = self.pick_worker(data, list(self.workers.values()))
        if w.doomed:
            code = -9
        elif w.stopping:
            code = 0
        else:
            code = data.draw(st.sampled_from([-9, -11, 1, None]), label="exitcode")
        expect = self.worker_gone(w)
        self.step(ev.WorkerExited(w.wid, code), expect=expect)

    @precondition(lambda self: self.s is not None
                  and any(not self.tasks[w.fake.current_id].blocked for w in self.busy()))
    @rule(data=st.data())
    def worker_blocks(self, data):
        """The running task calls get/wait: its CPU is lent, its prefetched task revoked."""
        w = self.pick_worker(data, [w for w in self.busy()
                                    if not self.tasks[w.fake.current_id].blocked])
        t = self.tasks[w.fake.current_id]
        t.blocked = True
        self.in_use[rs.CPU] = self.in_use.get(rs.CPU, 0) - t.demand.get(rs.CPU, 0)
        self.step(ev.ClientMessage(w.c.client, w.fake.blocked()),
                  revokes=[(w.wid, q) for q in w.nqueue])

    @precondition(lambda self: self.s is not None
                  and any(self.tasks[w.fake.current_id].blocked for w in self.busy()))
    @rule(data=st.data())
    def worker_unblocks(self, data):
        w = self.pick_worker(data, [w for w in self.busy()
                                    if self.tasks[w.fake.current_id].blocked])
        self.unblock(w)

    # -- cancel and clients going away ---------------------------------------------------------

    @precondition(lambda self: self.s is not None and bool(self.tasks) and bool(self.drivers))
    @rule(data=st.data())
    def cancel(self, data):
        live = sorted(t.tid for t in self.live_tasks())
        active = [t for t in live if self.tasks[t].running_on or self.tasks[t].assigned_to]
        which = data.draw(st.sampled_from(["active", "live", "any"]), label="which")
        pool = (active if which == "active" and active else
                live if which != "any" and live else sorted(self.tasks))
        tid = data.draw(st.sampled_from(pool), label="task")
        force = data.draw(st.booleans(), label="force")
        recursive = data.draw(st.booleans(), label="recursive")
        client = data.draw(st.sampled_from(sorted(self.drivers)), label="by")
        reach = self.closure([tid], recursive)
        before = self.before_cancel(reach)
        out = self.step(ev.ClientMessage(client, p.Cancel(tid + b"\0\0\0\0", force, recursive)),
                        cancel_step=True)
        self.check_cancel(out, [tid], reach, force, before)

    def driver_gone(self, data):
        client = data.draw(st.sampled_from(sorted(self.drivers)), label="driver")
        goodbye = data.draw(st.booleans(), label="goodbye")
        roots = [t.tid for t in self.live_tasks() if t.owner == client]
        reach = self.closure(roots, True)
        before = self.before_cancel(reach)
        c = self.drivers.pop(client)
        self.gone_held = set(c.held)
        c.held.clear()
        self.dead.add(client)
        event = ev.ClientMessage(client, p.Goodbye("bye")) if goodbye else ev.ClientGone(client)
        out = self.step(event, cancel_step=True, gone=client)
        self.check_cancel(out, roots, reach, True, before)
        if not self.drivers:
            self.new_driver()

    # -- references and objects ---------------------------------------------------------------

    @precondition(lambda self: self.s is not None
                  and any(c.held for c in self.clients().values()))
    @rule(data=st.data())
    def drop_ref(self, data):
        holders = sorted(cl for cl, c in self.clients().items() if c.held)
        client = data.draw(st.sampled_from(holders), label="client")
        c = self.clients()[client]
        oid = data.draw(st.sampled_from(sorted(c.held)), label="oid")
        c.held.discard(oid)
        self.step(ev.ClientMessage(client, p.Refs([], [oid])))

    def ready_objects(self) -> list[bytes]:
        return sorted(oid for oid, e in self.s.objects.entries.items() if e.ready)

    @precondition(lambda self: self.s is not None and bool(self.ready_objects()))
    @rule(data=st.data())
    def borrow_ref(self, data):
        """A client deserializes a value holding a ref to a ready object. (Only ready ones:
        a pending object's ref reaches a worker only through its arguments, so no object
        ever contains itself, here as in real programs.)"""
        client = data.draw(st.sampled_from(self.submitters()), label="client")
        oid = data.draw(st.sampled_from(self.ready_objects()), label="oid")
        self.clients()[client].held.add(oid)
        self.step(ev.ClientMessage(client, p.Refs([oid], [])))

    @precondition(lambda self: self.s is not None)
    @rule(data=st.data())
    def put(self, data):
        client = data.draw(st.sampled_from(self.submitters()), label="client")
        c = self.clients()[client]
        oid = b"P" + self.fresh().to_bytes(15, "big") + (0x80000000).to_bytes(4, "big")
        held = sorted(c.held)
        contained = (data.draw(st.lists(st.sampled_from(held), max_size=2, unique=True),
                               label="contained") if held else [])
        self.puts.append(oid)
        if data.draw(st.booleans(), label="store"):
            size = data.draw(st.sampled_from([0, 20, 70, 200]), label="size")
            req = self.fresh()
            refused = self.no_room(size)
            if not refused:
                c.held.add(oid)
            self.step(ev.ClientMessage(client, p.Put(oid, STORE, size, contained, req, b"")),
                      store_reported=[oid], put_expect=(req, refused))
        else:
            c.held.add(oid)
            self.step(ev.ClientMessage(client, p.Put(oid, INLINE, 5, contained, 0, b"small")),
                      put_expect=(0, False))

    @precondition(lambda self: self.s is not None and bool(self.return_of or self.puts))
    @rule(data=st.data())
    def watcher_subscribes(self, data):
        known = sorted(self.return_of) + self.puts
        oids = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=3, unique=True))
        self.watch_pending |= set(oids)
        self.step(ev.ClientMessage(WATCHER, p.Subscribe(oids)))

    @precondition(lambda self: self.s is not None and len(self.s.pool.workers) > self.num_workers)
    @rule(dt=st.sampled_from([0.5, 5.0, 40.0]))
    def tick(self, dt):
        """Housekeeping (only matters once there are extra workers to stop)."""
        self.now += dt
        self.step(ev.Tick())

    # -- teardown: run everything to its end ------------------------------------------------------

    def teardown(self):
        if self.s is None or self.broken:
            return   # the step that failed is the report; do not bury it
        for _ in range(5000):
            if not self.advance():
                break
        live = self.live_tasks()
        assert not live, f"{len(live)} tasks never ended"
        for t in self.tasks.values():
            if t.owner not in self.dead:
                assert all(self.ready_count[oid] == (oid not in self.unpushed)
                           for oid in t.returns)
        assert not self.watch_pending
        # every reference goes: the object table must empty out
        for client in sorted(self.drivers):
            c = self.drivers.pop(client)
            c.held.clear()
            self.dead.add(client)
            self.step(ev.ClientGone(client), gone=client, cancel_step=True)
        self.dead.add(WATCHER)
        self.step(ev.ClientGone(WATCHER), gone=WATCHER)
        for w in sorted(self.workers.values(), key=lambda w: w.wid):
            if w.c.held:
                decs = sorted(w.c.held)
                w.c.held.clear()
                self.step(ev.ClientMessage(w.c.client, p.Refs([], decs)))
        assert not self.s.objects.entries, [e.oid for e in self.s.objects.entries.values()]
        assert self.s.objects.store_used == 0
        # idle extra workers are stopped in time; the pre-started ones stay
        self.now += 1000
        self.step(ev.Tick())
        for w in sorted(self.workers.values(), key=lambda w: w.wid):
            if w.stopping:
                self.worker_gone(w)
                self.step(ev.WorkerExited(w.wid, 0))
        assert len(self.s.pool.workers) == self.num_workers
        assert all(self.s.pool.available.get(k, 0) == v for k, v in self.total.items())

    def advance(self) -> bool:
        """One step towards the end: False when nothing is left to do."""
        workers = sorted(self.workers.values(), key=lambda w: w.wid)
        for w in workers:
            if w.doomed or w.stopping:
                expect = self.worker_gone(w)
                self.step(ev.WorkerExited(w.wid, -9 if w.doomed else 0), expect=expect)
                return True
        for w in workers:
            if not w.hello:
                w.hello = True
                self.step(ev.ClientMessage(w.c.client, w.fake.hello(1000)))
                return True
        for w in workers:
            if w.fake.inbox:
                self.read_revoke(w)
                return True
        for w in workers:
            if w.fake.current is None and w.fake.local:
                self.start_next(w)
                return True
        for w in workers:
            if w.fake.current is None:
                continue
            t = self.tasks[w.fake.current_id]
            if t.blocked:
                self.unblock(w)
            if t.cancel_flag:
                record = records.system_error_record(Exception, "cancelled", "f")
                msg = w.fake.cancelled(t.tid, record, start=1.0, end=1.001)
                self.report_done(w, msg, {t.tid: "cancelled"}, 0.001, (), True)
            else:
                n = len(t.returns)
                self.reported = ([INLINE] * n, [1] * n)
                msg = w.fake.done(t.tid, payloads=[b"v"] * n, states=[INLINE] * n, sizes=[1] * n,
                                  contained=[[] for _ in range(n)], start=1.0, end=1.001)
                self.report_done(w, msg, {t.tid: "ok"}, 0.001, (), True)
            return True
        live = self.live_tasks()
        if not live:
            return False
        # nothing runs and every worker is idle: what is left must be stuck for a reason
        for t in live:
            st_ = self.s.tasks[t.tid]
            if st_.state == TaskState.QUEUED:
                assert not rs.fits(self.total, t.demand), "a feasible task was never dispatched"
            else:
                assert st_.state == TaskState.WAITING, st_.state
                assert all(self.return_of.get(o) in self.s.tasks for o in st_.missing)
        stuck = sorted(t.tid for t in live if self.s.tasks[t.tid].state == TaskState.QUEUED)
        assert stuck, "tasks wait on each other and nothing can run"
        if not self.drivers:
            self.new_driver()
        client = sorted(self.drivers)[0]
        tid = stuck[0]
        reach = self.closure([tid], False)
        before = self.before_cancel(reach)
        out = self.step(ev.ClientMessage(client, p.Cancel(tid + b"\0\0\0\0", True, False)),
                        cancel_step=True)
        self.check_cancel(out, [tid], reach, True, before)
        return True


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_scheduler_state_machine = SchedulerMachine.TestCase
