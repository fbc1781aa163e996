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
  because an unblocked task took its CPU back, as _on_unblocked documents),
  and `available` is exactly total minus what the model says is in use;
- no task is lost or is on two workers at once, and none runs more than
  max_retries + 1 times; no task is sent to a worker that is starting,
  stopping or being killed, and a busy one is sent only a prefetch (same
  shape, behind a quick function, not blocked, one at a time);
- every task ends exactly once: when it leaves the task table each return is
  sealed (one ObjectReady to its owner, which is subscribed to its returns),
  never before, and with the outcome the last report calls for (a result, the
  task's own error, TaskCancelledError, WorkerCrashedError, an argument's error);
- nothing a client holds or a pending task needs is ever freed; every store
  object that goes away gets one DeleteObject; the store never exceeds its capacity;
- no idle worker is left unused while a queued task fits.

At teardown the machine runs every task to its end, checks each terminated,
then releases every reference and checks the object table is empty.
"""
from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, precondition, rule)

from zfabric import protocol as p
from zfabric import records, serialization
from zfabric.core import effects as fx
from zfabric.core import events as ev
from zfabric.core import resources as rs
from zfabric.protocol import ObjectState
from zfabric.core.scheduler import (PREFETCH_MIN_RUNS, Scheduler, TaskState, WorkerState,
                                    workers_for)
from zfabric.protocol import TaskStatus

NODE_ID = b"N" * 16
WATCHER = b"watcher"
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

    The worker's side: `current` is the task it executes; `local` the Executes it
    has received and not started (a prefetched task waits there); `inbox` the
    Revokes it has not read yet. The node's side, as the model predicts it:
    `nrun` is the task the node counts as RUNNING there, `nqueue` the tasks it
    ASSIGNED there (prefetched). The two differ only between a TaskDone and the
    moment the worker takes its next task from `local`.
    """

    def __init__(self, wid: str):
        self.wid = wid
        self.c = MClient(wid.encode())
        self.hello = False
        self.doomed = False      # a KillWorker was sent: it dies before starting anything new
        self.stopping = False    # a StopWorker was sent
        self.known_fns: set[bytes] = set()
        self.current: bytes | None = None
        self.local: list[bytes] = []
        self.inbox: list[bytes] = []
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


class SchedulerMachine(RuleBasedStateMachine):
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
        resources = {"CPU": cpus, **({"gpu": gpus} if gpus else {})}
        self.total = rs.to_units(resources)
        self.capacity = capacity
        self.num_workers = workers_for(cpus)
        self.max_workers = self.num_workers + spare
        self.prefetch = prefetch
        self.s = Scheduler(node_id=NODE_ID, resources=resources, store_capacity=capacity,
                           num_workers=self.num_workers, max_workers=self.max_workers,
                           idle_worker_timeout=idle_timeout, timeline_capacity=50,
                           prefetch_max_task_seconds=prefetch)
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
                msg = p.TaskDone(tid, int(TaskStatus.OK), False, [], [], [], 1.0, 1.001, [])
                self.report_done(w, msg, {tid: "ok"}, 0.001, (), True)

    def new_driver(self) -> None:
        self.next_driver += 1
        client = b"driver-%d" % self.next_driver
        self.drivers[client] = MClient(client)
        self.step(ev.ClientMessage(client, p.Hello("driver", 100 + self.next_driver, None)))

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
        return [w for w in self.workers.values() if w.current is not None]

    def submitters(self) -> list[bytes]:
        return sorted(self.drivers) + [w.c.client for w in self.busy()]

    def pick_worker(self, data, workers: list[MWorker]) -> MWorker:
        wid = data.draw(st.sampled_from(sorted(w.wid for w in workers)), label="worker")
        return self.workers[wid]

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

    def node_requeue_assigned(self, w: MWorker, expect: dict) -> None:
        for tid in w.nqueue:
            t = self.tasks[tid]
            t.assigned_to = None
            expect[tid] = "cancelled" if t.cancel_flag else "requeue"
        w.nqueue = []

    # -- one step: handle, then check everything --------------------------------------------

    def step(self, event, *, expect=None, cancel_step=False, gone=None, store_reported=(),
             put_expect=None, allow_error_log=False, interrupts=(), revokes=()) -> list:
        """Hand the scheduler one event and check everything. `expect` names the outcome
        of the tasks the event is about; `interrupts` and `revokes` are the
        InterruptWorker and Revoke it must cause (outside cancel steps)."""
        self.broken = True
        s = self.s
        before_store = {oid for oid, e in s.objects.entries.items() if e.state == ObjectState.STORE}
        used_before = s.objects.store_used
        dead_before = set(self.dead)
        out = s.handle(event, self.now)
        s.validate()
        seen = self.absorb(out, dead_before - {gone}, cancel_step)
        if not cancel_step:
            assert not seen["kills"]
            assert seen["interrupts"] == set(interrupts), (seen["interrupts"], interrupts)
            assert seen["revokes"] == set(revokes), (seen["revokes"], revokes)
        self.check(seen, expect or {}, cancel_step, gone, before_store, used_before,
                   set(store_reported), put_expect, allow_error_log)
        self.broken = False
        return out

    def absorb(self, effects: list, dead_before: set[bytes], cancel_step: bool) -> dict:
        """Apply the effects to the model, checking each as it comes (in order: a
        dispatch must fit what is in use at that point)."""
        seen = {"ready": {}, "deletes": [], "replies": {}, "logs": [], "kills": set(),
                "interrupts": set(), "revokes": set()}
        for e in effects:
            kind = type(e)
            if kind is fx.SpawnWorker:
                assert e.worker_id not in self.spawned, e
                self.spawned.add(e.worker_id)
                self.workers[e.worker_id] = MWorker(e.worker_id)
            elif kind is fx.Send:
                assert e.to not in dead_before, f"{type(e.msg).__name__} sent to gone client {e.to}"
                msg = e.msg
                if isinstance(msg, p.Execute):
                    self.on_execute(e.to, msg)
                elif isinstance(msg, p.ObjectReady):
                    self.on_ready(e.to, msg, seen)
                elif isinstance(msg, p.Revoke):
                    w = self.workers[e.to.decode()]
                    assert msg.task_id in w.nqueue, "Revoke of a task not prefetched there"
                    if cancel_step:
                        self.tasks[msg.task_id].cancel_flag = True
                    w.inbox.append(msg.task_id)
                    seen["revokes"].add((w.wid, msg.task_id))
                elif isinstance(msg, p.PutReply):
                    assert msg.req_id not in seen["replies"]
                    seen["replies"][msg.req_id] = msg.error
                elif isinstance(msg, p.Welcome):
                    pass
                else:
                    raise AssertionError(f"unexpected message {msg!r}")
            elif kind is fx.KillWorker:
                w = self.workers[e.worker_id]
                assert w.nrun is not None and not w.stopping, e
                w.doomed = True     # it may still answer what it read, but starts nothing
                self.tasks[w.nrun].cancel_flag = True
                seen["kills"].add(e.worker_id)
            elif kind is fx.InterruptWorker:
                w = self.workers[e.worker_id]
                assert w.nrun == e.task_id, e
                self.tasks[e.task_id].cancel_flag = True
                seen["interrupts"].add((e.worker_id, e.task_id))
            elif kind is fx.StopWorker:
                w = self.workers[e.worker_id]
                assert w.hello and w.nrun is None and not w.nqueue, e
                assert not w.doomed and not w.stopping, e
                w.stopping = True
                w.c.held.clear()            # the node dropped its references
                self.dead.add(w.c.client)
            elif kind is fx.DeleteObject:
                seen["deletes"].append(e.oid)
            elif kind is fx.WatchClient:
                pass
            elif kind is fx.Publish:
                seen.setdefault("published", []).append((e.table, e.key))
            elif kind is fx.Log:
                seen["logs"].append(e.level)
            else:
                raise AssertionError(f"unexpected effect {e!r}")
        return seen

    def on_execute(self, to: bytes, ex: p.Execute) -> None:
        wid = to.decode()
        w = self.workers.get(wid)
        assert w is not None, f"Execute to unknown worker {wid}"
        assert w.hello and not w.doomed and not w.stopping, (
            f"Execute to {wid}: hello={w.hello} doomed={w.doomed} stopping={w.stopping}")
        t = self.tasks[ex.task_id]
        assert t.live and t.running_on is None and t.assigned_to is None, \
            "task sent to a worker while it runs or waits on another"
        if w.nrun is None:      # an idle worker: the task starts now
            assert not w.nqueue
            for name, amount in t.demand.items():
                assert self.in_use.get(name, 0) + amount <= self.total.get(name, 0), (
                    "over-committed", name, self.in_use, t.demand, self.total)
            self.node_start(w, t)
        else:                   # prefetched behind the running task
            running = self.tasks[w.nrun]
            assert self.prefetch > 0, "prefetch while disabled"
            assert not w.nqueue and not running.blocked and not running.cancel_flag
            assert rs.shape(running.demand) == rs.shape(t.demand), "prefetch of another shape"
            runs, peak = self.fn_times.get(running.fn_id, (0, 0.0))
            assert runs >= PREFETCH_MIN_RUNS and peak < self.prefetch, (
                "prefetch behind a function not known to be quick", runs, peak)
            w.nqueue.append(t.tid)
            t.assigned_to = wid
        if w.current is None and not w.local:
            w.current = t.tid
        else:
            w.local.append(t.tid)
        assert ex.dep_ids == t.spec_deps and ex.depth == t.depth
        assert ex.num_returns == len(t.returns)
        assert all(s in (INLINE, STORE) for s in ex.dep_states), ex.dep_states
        for oid, state, payload in zip(ex.dep_ids, ex.dep_states, ex.dep_payloads):
            entry = self.s.objects.get(oid)
            assert entry is not None and int(entry.state) == state
            assert payload == (entry.payload if state == INLINE else b"")
        expected_blob = b"" if t.fn_id in w.known_fns else FUNCTIONS[t.fn_id]
        assert ex.fn_blob == expected_blob
        w.known_fns.add(t.fn_id)

    def on_ready(self, to: bytes, msg: p.ObjectReady, seen: dict) -> None:
        tid = self.return_of.get(msg.oid)
        if tid is not None and self.tasks[tid].owner == to:
            self.ready_count[msg.oid] += 1
            assert self.ready_count[msg.oid] == 1, "return sealed twice"
            seen["ready"][msg.oid] = msg
            if msg.state == ERROR:
                self.err_record[msg.oid] = msg.payload
        else:
            assert to == WATCHER, f"ObjectReady to {to} that never asked"
            assert msg.oid in self.watch_pending, "ObjectReady the watcher is not waiting for"
            self.watch_pending.discard(msg.oid)

    # -- the checks ---------------------------------------------------------------------------

    def check(self, seen, expect, cancel_step, gone, before_store, used_before,
              store_reported, put_expect, allow_error_log) -> None:
        s = self.s
        for oid, e in s.objects.entries.items():   # errors sealed where the owner cannot see
            if e.state == ObjectState.ERROR:
                self.err_record.setdefault(oid, e.payload)
        # logs: the simulation is faithful, so nothing should look odd to the scheduler
        for level in seen["logs"]:
            assert level == "error" and allow_error_log, f"unexpected {level} log"

        # tasks: none lost, none unknown, each ends exactly once with the right outcome
        in_table = set(s.tasks)
        live = {t.tid for t in self.live_tasks()}
        assert in_table <= live, "scheduler has tasks nobody submitted"
        for tid in live - in_table:
            t = self.tasks[tid]
            t.live = False
            assert t.running_on is None and t.assigned_to is None, \
                "a running or prefetched task left the table"
            self.check_ended(t, seen, expect.get(tid), cancel_step, gone, used_before)
        for tid, kind in expect.items():
            if kind == "requeue":
                assert tid in s.tasks
                assert s.tasks[tid].state in (TaskState.QUEUED, TaskState.RUNNING,
                                              TaskState.ASSIGNED)
            else:
                assert tid not in s.tasks, f"task expected to end ({kind}) is still there"
        for t in self.live_tasks():
            assert all(self.ready_count[oid] == 0 for oid in t.returns), "sealed before its end"
            st_ = s.tasks[t.tid]
            assert (st_.state == TaskState.RUNNING) == (t.running_on is not None)
            assert (st_.state == TaskState.ASSIGNED) == (t.assigned_to is not None)
            if t.running_on is not None or t.assigned_to is not None:
                assert st_.worker == (t.running_on or t.assigned_to)
            for oid in t.spec_deps:
                assert oid in s.objects, "argument of a pending task was freed"

        # workers: the node's view is what the model predicts, and agrees with the workers
        model_workers = {wid for wid, w in self.workers.items() if not w.stopping}
        assert set(s.workers) == model_workers, (set(s.workers), model_workers)
        executing = []
        for wid in model_workers:
            sw, mw = s.workers[wid], self.workers[wid]
            assert (sw.task.spec.task_id if sw.task else None) == mw.nrun
            assert [t.spec.task_id for t in sw.queue] == mw.nqueue
            assert (sw.state == WorkerState.STARTING) == (not mw.hello)
            if mw.current is not None:
                executing.append(mw.current)
            if mw.doomed:
                continue
            executing += mw.local
            if mw.current is not None:
                assert mw.nrun == mw.current and mw.nqueue == mw.local, (wid, mw.__dict__)
            else:   # between tasks: the node already counts the next one as running
                assert mw.nrun == (mw.local[0] if mw.local else None), (wid, mw.__dict__)
                assert mw.nqueue == mw.local[1:], (wid, mw.__dict__)
        assert len(executing) == len(set(executing)), "a task is on two workers at once"
        idle = {w.wid for w in s.idle}
        assert len(idle) == len(s.idle), "a worker is idle twice"
        assert idle == {w.wid for w in self.workers.values()
                        if w.hello and w.nrun is None and not w.doomed and not w.stopping}

        # resources: exactly total minus what runs and is not blocked
        for name, total in self.total.items():
            assert s.available.get(name, 0) == total - self.in_use.get(name, 0), (
                name, s.available, self.in_use)
            if name != rs.CPU:
                assert s.available[name] >= 0
        assert all(v == 0 for k, v in s.available.items() if k not in self.total)

        # work-conserving: an idle worker never sits beside a queued task that fits
        queued_fit = [t for t in s.tasks.values()
                      if t.state == TaskState.QUEUED and rs.fits(s.available, t.demand)]
        if queued_fit:
            assert not s.idle, "idle worker left beside a queued task that fits"
            if len(s.workers) < self.max_workers:
                assert any(w.state == WorkerState.STARTING for w in s.workers.values()), (
                    "a queued task fits the free resources but no worker is starting for it")

        # objects: held ones exist; what leaves the store is deleted once
        for c in self.clients().values():
            for oid in c.held:
                assert oid in s.objects, f"object held by {c.client} was freed"
        for oid in self.watch_pending:
            e = s.objects.get(oid)
            assert e is not None and e.state == ObjectState.PENDING
        after_store = {oid for oid, e in s.objects.entries.items() if e.state == ObjectState.STORE}
        deletes = seen["deletes"]
        assert len(deletes) == len(set(deletes)), "object deleted twice in one step"
        assert not set(deletes) & self.deleted, "object deleted twice"
        assert before_store - after_store <= set(deletes), "store object dropped without delete"
        assert set(deletes) <= before_store | store_reported, "DeleteObject of a non-store object"
        for oid in deletes:   # freed, or a result refused for want of room (kept as an error)
            e = s.objects.get(oid)
            assert e is None or e.state == ObjectState.ERROR, e.state
        self.deleted |= set(deletes)
        assert 0 <= s.objects.store_used <= self.capacity

        # puts
        if put_expect is not None:
            req, refused = put_expect
            if req:
                assert set(seen["replies"]) == {req}
                assert (seen["replies"][req] != "") == refused
            else:
                assert not seen["replies"]
        else:
            assert not seen["replies"]

    def check_ended(self, t: MTask, seen, kind, cancel_step, gone, used_before) -> None:
        owner_silent = t.owner in self.dead and t.owner != gone
        msgs = [seen["ready"].get(oid) for oid in t.returns]
        if owner_silent:
            assert all(m is None for m in msgs)
            return
        assert all(m is not None for m in msgs), "a return of an ended task was not sealed"
        if not msgs:
            return
        if kind == "ok":
            reported, sizes = self.reported
            accepted = 0
            for m, state, size in zip(msgs, reported, sizes):
                if m.state == ERROR:
                    rec = record_of(m.payload)
                    assert state == STORE and rec["system"] == "ObjectStoreFullError", rec
                    assert used_before + accepted + size > self.capacity
                else:
                    assert m.state == state
                    if state == STORE:
                        accepted += size
            return
        assert all(m.state == ERROR for m in msgs)
        payload = msgs[0].payload
        assert all(m.payload == payload for m in msgs)
        rec = record_of(payload)
        if kind == "user":
            assert payload == self.user_record
        elif kind == "cancelled":
            assert rec["system"] == "TaskCancelledError" and not rec["context"], rec
        elif kind == "crashed":
            assert rec["system"] == "WorkerCrashedError" and not rec["context"], rec
            assert t.max_retries >= 0 and t.attempts == t.max_retries + 1
        elif kind is None and cancel_step:
            assert rec["system"] == "TaskCancelledError", rec
        else:
            assert kind is None, kind
            # failed through an argument: the argument's error, with one more context line
            assert rec["context"], rec
            if all(d in self.err_record for d in t.spec_deps):
                bases = [record_of(self.err_record[d]) for d in t.spec_deps]
                assert any({k: v for k, v in rec.items() if k != "context"}
                           == {k: v for k, v in b.items() if k != "context"}
                           and rec["context"][:-1] == b["context"] for b in bases), rec

    # -- drivers and workers act ---------------------------------------------------------------

    @precondition(lambda self: self.s is not None and len(self.tasks) < MAX_TASKS)
    @rule(data=st.data())
    def submit(self, data):
        """A driver or a running task submits a few tasks."""
        for _ in range(data.draw(st.integers(1, 3), label="how many")):
            if len(self.tasks) < MAX_TASKS:
                self.submit_one(data)

    def submit_one(self, data):
        client = data.draw(st.sampled_from(self.submitters()), label="client")
        c = self.clients()[client]
        parent = None
        depth = 0
        w = self.workers.get(client.decode(errors="replace"))
        if w is not None and client not in self.drivers:
            parent = w.current
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
        self.do_submit(client, tid, fn_id, data.draw(st.integers(0, 3), label="num_returns"),
                       resources, data.draw(st.sampled_from([-1, 0, 1, 2]), label="retries"),
                       data.draw(st.booleans(), label="retry_exceptions"), depth, parent,
                       deps, contained)

    def do_submit(self, client, tid, fn_id, num_returns, resources, max_retries,
                  retry_exceptions, depth, parent, deps, contained) -> None:
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
        self.step(ev.ClientMessage(client, spec))

    @precondition(lambda self: self.s is not None
                  and any(not w.hello for w in self.workers.values()))
    @rule(data=st.data())
    def worker_hello(self, data):
        if data.draw(st.booleans(), label="all"):
            self.all_hello()
            return
        w = self.pick_worker(data, [w for w in self.workers.values() if not w.hello])
        w.hello = True
        self.step(ev.ClientMessage(w.c.client, p.Hello("worker", 1000, w.wid)))

    def all_hello(self) -> None:
        for w in sorted(self.workers.values(), key=lambda w: w.wid):
            if not w.hello:
                w.hello = True
                self.step(ev.ClientMessage(w.c.client, p.Hello("worker", 1000, w.wid)))

    def worker_spawn_fails(self, data):
        w = self.pick_worker(data, [w for w in self.workers.values() if not w.hello])
        self.worker_gone(w)
        self.step(ev.WorkerSpawnFailed(w.wid, "exec failed"), allow_error_log=True)

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
        t = self.tasks[w.current]
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
            msg = p.TaskDone(tid, int(TaskStatus.OK), False, states, sizes, contained,
                             1.0, 1.0 + took, payloads)
            expect = "ok"
            store_reported = [oid for oid, s_ in zip(t.returns, states) if s_ == STORE]
        elif kind == "cancelled":
            record = records.system_error_record(Exception, "cancelled", "f")
            msg = p.TaskDone(tid, int(TaskStatus.CANCELLED), False, [], [], [], 1.0, 1.0 + took,
                             [record])
            expect, store_reported = "cancelled", []
        else:
            retryable = t.retry_exceptions and data.draw(st.booleans(), label="retryable")
            self.user_record = user_error(f"boom {tid.hex()} {t.attempts}")
            msg = p.TaskDone(tid, int(TaskStatus.ERROR), retryable, [], [], [], 1.0, 1.0 + took,
                             [self.user_record])
            if t.cancel_flag:
                expect = "cancelled"
            elif retryable and t.may_retry():
                expect = "requeue"
            else:
                expect = "user"
            store_reported = []
        start_next = data.draw(st.booleans(), label="start next at once")
        self.report_done(w, msg, {tid: expect}, took, store_reported, start_next)
        if w.current is None and w.inbox and data.draw(st.booleans(), label="read revokes"):
            while w.inbox and w.wid in self.workers:   # between tasks, it reads its mail
                self.read_revoke(w)

    def report_done(self, w: MWorker, msg: p.TaskDone, expect: dict, took: float,
                    store_reported, start_next: bool) -> None:
        """Worker `w` sends `msg` for its current task; the model plays the node's part."""
        assert w.nrun == w.current == msg.task_id
        t = self.node_release(w)
        times = self.fn_times.get(t.fn_id)
        if times is None:
            self.fn_times[t.fn_id] = [1, took]
        else:
            times[0] += 1
            times[1] = max(took, times[1] * 0.99)
        interrupts = []
        if w.doomed:
            self.node_requeue_assigned(w, expect)
        elif w.nqueue:      # the prefetched task takes over the resources at once
            nxt = self.tasks[w.nqueue.pop(0)]
            assert rs.shape(nxt.demand) == rs.shape(t.demand)
            self.node_start(w, nxt)
            if nxt.cancel_flag:
                interrupts.append((w.wid, nxt.tid))
        w.current = None
        if w.local and start_next and not w.doomed:
            w.current = w.local.pop(0)
        self.step(ev.ClientMessage(w.c.client, msg), expect=expect,
                  store_reported=store_reported, interrupts=interrupts)
        if w.c.held:       # the refs the task made die after it returns
            decs = sorted(w.c.held)
            w.c.held.clear()
            self.step(ev.ClientMessage(w.c.client, p.Refs([], decs)))

    @precondition(lambda self: self.s is not None and any(
        w.current is None and w.local and not w.doomed for w in self.workers.values()))
    @rule(data=st.data())
    def worker_starts_next(self, data):
        """A worker takes its next (prefetched) task: the node need not hear of it."""
        w = self.pick_worker(data, [w for w in self.workers.values()
                                    if w.current is None and w.local and not w.doomed])
        w.current = w.local.pop(0)

    @precondition(lambda self: self.s is not None and any(w.inbox for w in self.workers.values()))
    @rule(data=st.data())
    def worker_reads_revoke(self, data):
        w = self.pick_worker(data, [w for w in self.workers.values() if w.inbox])
        self.read_revoke(w)

    def read_revoke(self, w: MWorker) -> None:
        """The worker drops a revoked task it has not started, and says so."""
        tid = w.inbox.pop(0)
        if tid not in w.local:
            return      # started already (or gone): nothing to say
        w.local.remove(tid)
        t = self.tasks[tid]
        expect, interrupts = {}, []
        if tid in w.nqueue:
            w.nqueue.remove(tid)
            t.assigned_to = None
            expect[tid] = "cancelled" if t.cancel_flag else "requeue"
        elif w.nrun == tid:     # the node had started it when the task before it ended
            for name, amount in t.demand.items():
                self.in_use[name] -= amount
            t.running_on = None
            t.attempts -= 1
            w.nrun = None
            expect[tid] = "cancelled" if t.cancel_flag else "requeue"
            if w.doomed:        # a worker being killed gets nothing new
                self.node_requeue_assigned(w, expect)
            elif w.nqueue:      # the next prefetched task takes its place
                nxt = self.tasks[w.nqueue.pop(0)]
                self.node_start(w, nxt)
                if nxt.cancel_flag:
                    interrupts.append((w.wid, nxt.tid))
        # else: the node took the task back already (its worker is being killed)
        self.step(ev.ClientMessage(w.c.client, p.Revoked(tid)), expect=expect,
                  interrupts=interrupts)

    def worker_gone(self, w: MWorker) -> dict:
        expect = {}
        self.node_requeue_assigned(w, expect)
        if w.nrun is not None:
            t = self.node_release(w)
            if t.cancel_flag:
                expect[t.tid] = "cancelled"
            elif t.may_retry():
                expect[t.tid] = "requeue"
            else:
                expect[t.tid] = "crashed"
        del self.workers[w.wid]
        w.c.held.clear()
        self.dead.add(w.c.client)
        return expect

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
        if any(not w.hello for w in self.workers.values()):
            kinds.append("spawn fails")
        if any(t.owner in self.drivers for t in self.live_tasks()):
            kinds.append("driver gone")
        kind = data.draw(st.sampled_from(kinds), label="mishap")
        if kind == "worker exits":
            self.worker_exits(data)
        elif kind == "spawn fails":
            self.worker_spawn_fails(data)
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
                  and any(not self.tasks[w.current].blocked for w in self.busy()))
    @rule(data=st.data())
    def worker_blocks(self, data):
        """The running task calls get/wait: its CPU is lent, its prefetched task revoked."""
        w = self.pick_worker(data, [w for w in self.busy() if not self.tasks[w.current].blocked])
        t = self.tasks[w.current]
        t.blocked = True
        self.in_use[rs.CPU] = self.in_use.get(rs.CPU, 0) - t.demand.get(rs.CPU, 0)
        self.step(ev.ClientMessage(w.c.client, p.Blocked(t.tid)),
                  revokes=[(w.wid, q) for q in w.nqueue])

    @precondition(lambda self: self.s is not None
                  and any(self.tasks[w.current].blocked for w in self.busy()))
    @rule(data=st.data())
    def worker_unblocks(self, data):
        w = self.pick_worker(data, [w for w in self.busy() if self.tasks[w.current].blocked])
        self.unblock(w)

    def unblock(self, w: MWorker) -> None:
        t = self.tasks[w.current]
        t.blocked = False
        self.in_use[rs.CPU] = self.in_use.get(rs.CPU, 0) + t.demand.get(rs.CPU, 0)
        self.step(ev.ClientMessage(w.c.client, p.Unblocked(t.tid)))

    # -- cancel and clients going away ---------------------------------------------------------

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

    def check_cancel(self, out: list, roots: list[bytes], reach: set[bytes], force: bool,
                     before: dict) -> None:
        """`before`: task id -> (running_on, assigned_to, cancel_flag) before the step."""
        kills = {e.worker_id for e in out if type(e) is fx.KillWorker}
        interrupts = {(e.worker_id, e.task_id) for e in out if type(e) is fx.InterruptWorker}
        revokes = {(e.to.decode(), e.msg.task_id) for e in out
                   if type(e) is fx.Send and isinstance(e.msg, p.Revoke)}
        running = {before[t][0]: t for t in reach if before[t][0] is not None}
        assigned = {(before[t][1], t) for t in reach if before[t][1] is not None}
        assert revokes <= {(w, t) for w, t in assigned if not before[t][2]}
        if force:
            assert not interrupts and kills <= set(running)
        else:
            assert not kills
            assert interrupts <= {(w, t) for w, t in running.items() if not before[t][2]}
        for tid in roots:       # the task named is always reached
            if tid not in reach:
                continue
            on, at, flagged = before[tid]
            if on is not None:
                if force:
                    assert on in kills
                elif not flagged:
                    assert (on, tid) in interrupts
            elif at is not None:
                assert flagged or (at, tid) in revokes
                assert self.tasks[tid].live, "a prefetched task ended before its worker answered"
            else:
                assert not self.tasks[tid].live, "a cancelled queued/waiting task is still pending"

    def before_cancel(self, reach: set[bytes]) -> dict:
        return {tid: (self.tasks[tid].running_on, self.tasks[tid].assigned_to,
                      self.tasks[tid].cancel_flag) for tid in reach}

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
            refused = self.s.objects.store_used + size > self.capacity
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

    @precondition(lambda self: self.s is not None and len(self.s.workers) > self.num_workers)
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
                assert all(self.ready_count[oid] == 1 for oid in t.returns)
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
        assert len(self.s.workers) == self.num_workers
        assert all(self.s.available.get(k, 0) == v for k, v in self.total.items())

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
                self.step(ev.ClientMessage(w.c.client, p.Hello("worker", 1000, w.wid)))
                return True
        for w in workers:
            if w.inbox:
                self.read_revoke(w)
                return True
        for w in workers:
            if w.current is None and w.local:
                w.current = w.local.pop(0)
                return True
        for w in workers:
            if w.current is None:
                continue
            t = self.tasks[w.current]
            if t.blocked:
                self.unblock(w)
            if t.cancel_flag:
                record = records.system_error_record(Exception, "cancelled", "f")
                msg = p.TaskDone(t.tid, int(TaskStatus.CANCELLED), False, [], [], [],
                                 1.0, 1.001, [record])
                self.report_done(w, msg, {t.tid: "cancelled"}, 0.001, (), True)
            else:
                n = len(t.returns)
                self.reported = ([INLINE] * n, [1] * n)
                msg = p.TaskDone(t.tid, int(TaskStatus.OK), False, [INLINE] * n, [1] * n,
                                 [[] for _ in range(n)], 1.0, 1.001, [b"v"] * n)
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
