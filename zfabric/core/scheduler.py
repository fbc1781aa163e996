"""The local scheduler of one node: the task table, and the one entry point.

`Scheduler.handle(event, now)` is the only way the node's scheduling state
changes; it returns the effects (core/effects.py) for the node loop to carry
out. The scheduler owns the tasks (core/tasks.py) from submission to end --
dependencies, finish, fail, retry, cancel -- and composes the owners of
everything else, each in a module of its own:

    ReadyQueues      core/queues.py     ready tasks by resource shape
    Feed             core/feed.py       tasks onto workers: started, prefetched, pipelined
    WorkerPool       core/workers.py    worker processes, resources, CPU lending, prefetch
    ObjectDirectory  core/directory.py  objects: put, subscribe, refs, pulls, frees
    Lineage          core/lineage.py    finished tasks' specs, and running them again
                                        to make lost objects (Rebuilder)
    Spillover        core/spill.py      tasks sent to peers, and tasks peers send us
    Timeline         core/timeline.py   the tasks this node ran
    Leasing          core/leases.py     workers leased to drivers, and their direct tasks
    TaskErrors       core/activity.py   the last failures of tasks this node ran

    clients --ClientMessage(s)--> Scheduler --Send / SpawnWorker / ...--> loop
    fabric --PeerMessage, PeerUp/Down, ObjectFetched/FetchFailed, Tick--> Scheduler

Life of a task: submitted (WAITING for its arguments) -> ready: queued here,
sent to the peer that holds its arguments, or its remote arguments pulled
first -> run on a worker, or on a peer (spillover) -> ended: its returns are
sealed with the values or the error, its dependents wake. A task that comes
back unfinished (its worker or peer died, a peer refused it, a prefetch was
revoked) goes through one decision, `retry_or_fail`: a cancelled task
fails, otherwise it runs again while it has attempts left.

After every event (a client's frame of several messages is one event;
reference changes alone start nothing), `Feed.schedule` starts what fits:
queued tasks on idle workers (deepest first, then oldest), extra workers
for demand, tasks that cannot start here to peers, quick tasks prefetched
to busy workers, and waiting tasks pipelined behind the worker making
their arguments.
"""
from __future__ import annotations

from collections import deque

from .. import ids, records
from .. import protocol as p
from ..exceptions import (NodeDiedError, ObjectLostError, TaskCancelledError,
                          WorkerCrashedError, ZFabricError)
from ..protocol import ObjectState, TaskStatus
from . import effects as fx
from . import events as ev
from . import guards
from . import resources as rs
from .activity import TaskErrors
from .directory import ObjectDirectory
from .feed import Feed
from .leases import Leasing
from .lineage import Lineage, Rebuilder
from .queues import ReadyQueues
from .rejects import client_source, peer_source
from .spill import Spillover
from .tasks import Functions, Task, TaskState
from .timeline import Timeline
from .workers import WorkerPool


# The scheduler's counters (`Scheduler.stats`, in the node's status record).
STATS = ("submitted", "finished", "failed", "cancelled", "retried", "prefetched", "pipelined",
         "workers_started", "workers_crashed", "spilled", "refused", "accepted", "fetches",
         "rebuilt", "sealed_twice", "dropped_by_peer", "stale_results", "evicted",
         "spilled_objects", "restored", "spill_failures", "leases", "leases_recalled", "direct")


class Scheduler:
    def __init__(self, *, node_id: bytes, resources: dict[str, float], store_capacity: int,
                 num_workers: int, max_workers: int, idle_worker_timeout: float,
                 timeline_capacity: int, errors: tuple[int, int] = (50, 4096),
                 prefetch_max_task_seconds: float = 0.0, prefetch_queue_seconds: float = 0.0,
                 prefetch_max_depth: int = 1, node_info: dict | None = None,
                 spill_depth: int = 1, refuse_backoff: float = 0.2,
                 spill_min_task_seconds: float = 0.0, locality_min_bytes: int = 1 << 20,
                 lineage_max_specs: int = 100_000, lineage_max_bytes: int = 100 << 20):
        self.node_id = node_id
        self.node_info = dict(node_info or {})
        self.stats = dict.fromkeys(STATS, 0)
        self.out = fx.Outbox()
        self.tasks: dict[bytes, Task] = {}
        self.functions = Functions()
        self.drivers: dict[bytes, int] = {}       # client -> pid
        self.queues = ReadyQueues()
        self.pool = WorkerPool(
            resources=resources, num_workers=num_workers, max_workers=max_workers,
            idle_worker_timeout=idle_worker_timeout,
            prefetch_max_task_seconds=prefetch_max_task_seconds,
            prefetch_queue=(prefetch_queue_seconds, prefetch_max_depth),
            out=self.out, stats=self.stats)
        self.lineage = Lineage(lineage_max_specs, lineage_max_bytes)
        self.rebuilds = Rebuilder(self, self.lineage)
        self.objects = ObjectDirectory(
            node_id, store_capacity, out=self.out, stats=self.stats,
            any_peers=lambda: bool(self.spill.peers), wake=self._wake_dependents,
            unavailable=self._fail_dependents, lost=self._fail_queued_users,
            rebuild=self.rebuilds.lost, copy_lost=self.rebuilds.copy_lost,
            drop_lost_copy=self.rebuilds.drop_lost_copy, forget=self.lineage.freed)
        self.spill = Spillover(
            self, node_id=node_id, address=self.node_info.get("address", ""),
            spill_depth=spill_depth, refuse_backoff=refuse_backoff,
            locality_min_bytes=locality_min_bytes, min_task_seconds=spill_min_task_seconds)
        self.timeline, self.errors = Timeline(node_id, timeline_capacity), TaskErrors(*errors)
        self.feed, self.leases = Feed(self), Leasing(self, self.node_info.get("session_dir", ""))
        self._client_handlers = {
            p.Hello: self._on_hello, p.Submit: self._on_submit, p.TaskDone: self._on_task_done,
            p.Subscribe: self.objects.subscribe, p.Put: self.objects.put,
            p.Refs: self.objects.refs, p.Cancel: self._on_cancel, p.Blocked: self.pool.on_blocked,
            p.Unblocked: self.pool.on_unblocked, p.Revoked: self._on_revoked,
            p.Shutdown: self._on_shutdown, p.Goodbye: self._on_goodbye,
            p.LeaseAsk: self.leases.on_ask, p.LeaseReturn: self.leases.on_return}
        self._peer_handlers = {
            p.Spill: self.spill.on_spill, p.TaskResult: self.spill.on_task_result,
            p.Refuse: self.spill.on_refuse, p.SpillCheck: self.spill.on_spill_check,
            p.FreeObjects: self.spill.on_free_objects, p.Cancel: self._on_cancel}
        self._event_handlers = {
            ev.WorkerExited: self._on_worker_exited,
            ev.ClientGone: self._on_client_gone, ev.Tick: self._on_tick,
            ev.ObjectFetched: self._on_fetched, ev.FetchFailed: self._on_fetch_failed,
            ev.PeerUp: self._on_peer_up, ev.PeerDown: self._on_peer_down,
            ev.PeerSuspect: self._on_peer_suspect, ev.DeclaredDead: self.spill.on_declared_dead,
            ev.ObjectSpilled: lambda e: self.objects.spilled(e.oid),
            ev.SpillFailed: lambda e: self.objects.spill_failed(e.oid, e.error),
            ev.ObjectRestored: lambda e: self.objects.restored(e.oid),
            ev.RestoreFailed: lambda e: self.objects.restore_failed(e.oid, e.error, e.lost)}
        self.now, self._seq = 0.0, 0
        self._fail_queue: deque = deque()
        self._failing = False

    # -- entry point ------------------------------------------------------------

    def start(self, now: float) -> list:
        """Effects to run when the node comes up: the pre-started workers."""
        self.now = now
        self.pool.start()
        return self.out.take()

    def handle(self, event, now: float) -> list:
        self.now = now
        kind = type(event)
        if kind is ev.ClientMessage or kind is ev.ClientMessages:   # (several: scheduled once)
            leases, client, refs_only = self.leases, event.client, True
            for msg in (event.msg,) if kind is ev.ClientMessage else event.msgs:
                if not (leases.by_worker_client and leases.hold(client, msg)):
                    self._dispatch(self._client_handlers, client, msg, False)
                refs_only = refs_only and type(msg) is p.Refs
            if refs_only:   # (reference changes free objects: they start nothing)
                return self.out.take()
        elif kind is ev.PeerMessage:
            self._dispatch(self._peer_handlers, event.node_id, event.msg, True)
        else:
            handler = self._event_handlers.get(kind)
            if handler is None:
                raise TypeError(f"unknown event {event!r}")
            handler(event)
        self.feed.schedule()
        return self.out.take()

    def dispatch_client(self, client: bytes, msg) -> None:
        self._dispatch(self._client_handlers, client, msg, False)

    def _dispatch(self, handlers: dict, sender: bytes, msg, peer: bool) -> None:
        """Run a message's handler, unless it makes no sense from this sender
        (core/guards.py): then it is refused as nonsense, and nothing changes."""
        handler = handlers.get(type(msg))
        if handler is None:
            why = f"a {type(msg).__name__}, which {'nodes' if peer else 'clients'} never send"
        else:
            why = (guards.peer_problem if peer else guards.client_problem)(self, sender, msg)
        if why:
            self.out.nonsense(peer_source(sender) if peer else client_source(sender), why)
        else:
            handler(sender, msg)

    # -- clients ------------------------------------------------------------------

    def _on_hello(self, client: bytes, msg: p.Hello) -> None:
        if msg.role == "worker":
            if not self.pool.hello(msg.worker_id or "", client, self.now, msg.pid):
                self.out.nonsense(client_source(client), f"a second Hello from worker "
                                                         f"{msg.worker_id!r}")
                return
        elif msg.role == "driver":
            self.drivers[client] = msg.pid
            self.out.emit(fx.WatchClient(client, msg.pid))
        info = self.node_info
        self.out.send(client, p.Welcome(self.node_id, info.get("store_dir", ""),
                                        info.get("session_dir", ""), info.get("address", ""),
                                        info.get("config", "{}"), info.get("pid", 0)))

    def _on_client_gone(self, event: ev.ClientGone) -> None:
        self._client_gone(event.client)

    def _client_gone(self, client: bytes) -> None:
        if client not in self.drivers:
            return
        del self.drivers[client]
        self.leases.client_gone(client)
        for task in [t for t in self.tasks.values() if t.owner == client]:
            self.cancel_task(task, force=True, recursive=True)
        self.objects.drop_client(client)

    def _on_shutdown(self, client: bytes, msg: p.Shutdown) -> None:
        self.out.emit(fx.StopNode(msg.reason or "asked to stop"))

    def _on_goodbye(self, client: bytes, msg: p.Goodbye) -> None:
        self._client_gone(client)

    # -- submission and dependencies ------------------------------------------

    def admit(self, spec: p.Submit, owner: bytes, demand: dict, *,
              owner_node: bytes | None = None, returns: bool = True) -> Task:
        """A new task in the table (WAITING), its returns held by `owner`
        (`owner_node`: the peer that forwarded it, which owns them; `returns`
        False: a task run again, whose returns exist already or are not wanted)."""
        self._seq += 1
        task = Task(spec, owner, demand, self._seq)
        self.tasks[spec.task_id] = task
        if returns:
            self.objects.create_returns(task.returns, owner, owner_node=owner_node,
                                        push=owner_node is None)
        return task

    def _on_submit(self, client: bytes, spec: p.Submit) -> None:
        self.stats["submitted"] += 1
        leased = spec.opts.pop("lease", None) if spec.opts else None   # (core/leases.py)
        if spec.fn_blob:
            self.functions.add(spec.fn_id, spec.fn_blob)
            spec.fn_blob = b""
        task = self.admit(spec, client, rs.to_units(spec.resources))
        parent = self.tasks.get(spec.parent) if spec.parent else None
        if parent is not None:
            parent.children.add(spec.task_id)
        failure = None
        if spec.fn_id not in self.functions:
            failure = records.system_error_record(
                ZFabricError, "the node does not know this function (it was "
                "submitted without its code)", spec.name)
        spec.contained = self.objects.pin_known(spec.contained)  # exactly what _end_task unpins
        failure = self.pin_deps(task) or failure
        if failure is not None:
            self.finish_failed(task, failure)
        elif leased is not None:
            self.leases.start(client, task)
        elif not task.missing:
            self.ready(task)
        else:
            self.feed.pipeline(task)

    def pin_deps(self, task: Task) -> bytes | None:
        """Pin a new task's arguments; note those not ready. The first failure, if any."""
        spec = task.spec
        failure = None
        pinned = []
        for oid in spec.deps:
            entry = self.objects.get(oid)
            if entry is None:
                failure = failure or records.system_error_record(
                    ObjectLostError, f"argument {oid.hex()} no longer exists "
                    "(it was freed or never created)", spec.name)
                continue
            self.objects.pin(oid)
            pinned.append(oid)
            if entry.state == ObjectState.ERROR:
                failure = failure or self._dep_error(entry, spec.name)
            elif entry.state == ObjectState.PENDING and oid not in task.missing:
                task.missing.add(oid)
                self.objects.wait_for(entry, spec.task_id)
        spec.deps = pinned
        return failure

    @staticmethod
    def _dep_error(entry, name: str) -> bytes:
        return records.error_with_context(
            entry.payload, f"an input of {name}() could not be computed")

    def ready(self, task: Task) -> None:
        """Every argument has its value: queue the task, unless some live in
        other nodes' stores -- then run it where most of them are, or pull them.
        (A task queued again after a refusal or a peer's death may find an
        argument lost meanwhile: it fails as its dependents do.)"""
        entries = self.objects.entries
        for oid in task.spec.deps:
            entry = entries[oid]
            if entry.state == ObjectState.ERROR:
                self.finish_failed(task, self._dep_error(entry, task.name))
                return
            if entry.state == ObjectState.PENDING and oid not in task.missing:
                task.missing.add(oid)   # lost meanwhile, and being made again
                self.objects.wait_for(entry, task.spec.task_id)
        if task.missing or self.spill.place(task):
            return
        remote = [entries[oid] for oid in task.spec.deps if not entries[oid].local]
        if not remote or (task.remote_owner is None
                          and not rs.feasible(self.pool.total, task.demand)):
            self.queues.push(task)   # (a task that cannot run here is spilled with its holders)
            return
        if task.remote_owner is None and not task.cancelled and self.spill.to_holder(task):
            return
        for entry in remote:
            if entry.oid not in task.missing:
                task.missing.add(entry.oid)
                self.objects.wait_for(entry, task.spec.task_id)
                self.objects.fetch(entry)
                if task.state is None:
                    return   # it could not be brought here: the task failed

    def _wake_dependents(self, entry, waiting: list[bytes]) -> None:
        """(ObjectDirectory hook) `entry` got its value: tasks waiting for it go on."""
        for tid in waiting:
            task = self.tasks.get(tid)
            if task is None:
                continue
            if task.state != TaskState.WAITING:   # pipelined: its worker made the value
                if entry.state != ObjectState.ERROR:   # (on an error, it gives it back)
                    task.missing.discard(entry.oid)
                continue
            if entry.state == ObjectState.ERROR:
                self.finish_failed(task, self._dep_error(entry, task.name))
                continue
            task.missing.discard(entry.oid)
            if not task.missing:
                self.ready(task)

    def _fail_dependents(self, waiting: list[bytes], record: bytes) -> None:
        """(ObjectDirectory hook) An argument cannot be brought here: its tasks fail."""
        for tid in waiting:
            task = self.tasks.get(tid)
            if task is not None and task.state == TaskState.WAITING:
                self.finish_failed(task, records.error_with_context(
                    record, f"an input of {task.name}() could not be brought here"))

    def _fail_queued_users(self, entry) -> None:
        """(ObjectDirectory hook) An argument was lost: queued tasks using it fail."""
        for task in [t for t in self.tasks.values()
                     if t.state == TaskState.QUEUED and entry.oid in t.spec.deps]:
            self.finish_failed(task, self._dep_error(entry, task.name))

    # -- a worker reports ---------------------------------------------------------

    def _on_task_done(self, client: bytes, msg: p.TaskDone) -> None:
        worker = self.pool.of_client(client) or self.leases.worker_of(client)
        task = worker.task if worker is not None else None
        if task is None or task.spec.task_id != msg.task_id:
            return   # (refused before: core/guards.py)
        if worker.leased is not None:
            self.leases.finished(worker, task, msg)
        for given_back in self.pool.task_ended(worker, task, self.now):
            self.retry_or_fail(given_back, None)
        spec = task.spec
        self.timeline.record(spec.name, spec.task_id, worker.wid, msg.start, msg.end,
                             int(msg.status), msg.fetched, msg.stored, worker.pid)
        self.pool.record_run(spec.fn_id, max(0.0, msg.end - msg.start),
                             ObjectState.STORE in msg.states)
        if msg.status == TaskStatus.OK:
            if len(msg.states) != spec.num_returns or len(msg.payloads) != spec.num_returns:
                self.out.nonsense(client_source(client), "a TaskDone with the wrong number "
                                                         "of returns")
                self.finish_failed(task, records.system_error_record(
                    ZFabricError, "worker reported a malformed result", spec.name))
                return
            self.finish_ok(task, msg)
            self.feed.top_up(worker)
            return
        if msg.status == TaskStatus.CANCELLED:
            task.cancelled = True
        record = msg.payloads[0] if msg.payloads else records.system_error_record(
            ZFabricError, "task failed without an error record", spec.name)
        if msg.status == TaskStatus.ERROR:
            self.errors.record(spec.name, spec.task_id, worker.wid, msg.end, record)
        self.retry_or_fail(task, record, retryable=msg.retryable)

    def _on_revoked(self, client: bytes, msg: p.Revoked) -> None:
        """The worker dropped a prefetched task unstarted: queue it again."""
        worker = self.pool.of_client(client)
        task = self.tasks.get(msg.task_id)
        if worker is None or task is None or task.worker != worker.wid:
            return
        for back in self.pool.revoked(worker, task, self.now):
            self.retry_or_fail(back, None)

    # -- tasks end ----------------------------------------------------------------

    def retry_or_fail(self, task: Task, failure: bytes | None, *, retryable: bool = True) -> None:
        """A task came back unfinished: a cancelled one fails as cancelled;
        otherwise it is ready again, if `failure` is None (the attempt did not
        count: refused, revoked, given back) or it is `retryable` with attempts
        left; else it fails with `failure`."""
        if task.cancelled:
            self.finish_failed(task, self._cancelled_record(task.name), cancelled=True)
        elif failure is None:
            self.ready(task)
        elif retryable and task.may_retry():
            self.stats["retried"] += 1
            self.ready(task)
        else:
            self.finish_failed(task, failure)

    def finish_ok(self, task: Task, msg, remote: bytes | None = None) -> None:
        """Seal a task's returns from its TaskDone, or from a peer's TaskResult
        (`remote`: that peer keeps the STORE returns in its store)."""
        self.stats["finished"] += 1
        self._end_task(task, self.rebuilds.seal_returns(task, msg, remote))

    def finish_failed(self, task: Task, record: bytes, cancelled: bool = False) -> None:
        """Fail a task's returns; dependents fail in turn, iteratively (a chain of
        thousands of waiting tasks must not overflow the stack)."""
        self._fail_queue.append((task, record, cancelled))
        if self._failing:
            return
        self._failing = True
        try:
            while self._fail_queue:
                self._fail_one(*self._fail_queue.popleft())
        finally:
            self._failing = False

    def _fail_one(self, task: Task, record: bytes, cancelled: bool) -> None:
        if task.state is None:
            return  # ended already (failed through two failed arguments)
        self.stats["cancelled" if cancelled else "failed"] += 1
        task.cancelled = task.cancelled or cancelled
        freed: list = []
        for oid in task.returns:
            freed += self.objects.fail_return(oid, record)
        self._end_task(task, freed)

    def _end_task(self, task: Task, freed: list) -> None:
        if task.state == TaskState.QUEUED:
            self.queues.discard(task)
        elif task.state == TaskState.SPILLED:
            self.spill.came_back(task)
        task.state = None
        spec = task.spec
        if task.remote_owner is not None:
            self.spill.report(task)
        self.tasks.pop(spec.task_id, None)
        parent = self.tasks.get(spec.parent) if spec.parent else None
        if parent is not None:
            parent.children.discard(spec.task_id)
        for oid in task.missing:
            self.objects.stop_waiting(oid, spec.task_id)
        freed += self.objects.unpin_all(spec.deps, spec.contained)
        spec.deps = []
        spec.contained = []
        self.objects.free(freed)

    # -- workers come and go ---------------------------------------------------------

    def _on_worker_exited(self, event: ev.WorkerExited) -> None:
        worker, task = self.pool.exited(event.worker_id)
        if worker is None:
            return
        self.objects.drop_client(worker.client)
        code = event.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self.leases.worker_exited(worker, how)
        for given_back in self.pool.give_back(worker):
            self.retry_or_fail(given_back, None)
        if task is not None:
            self.retry_or_fail(task, records.system_error_record(
                WorkerCrashedError, f"the worker running {task.name}() died ({how}) and the "
                f"task has no retries left (max_retries={task.spec.max_retries})", task.name))
        self.pool.keep_prestarted()

    def _on_tick(self, event: ev.Tick) -> None:
        """Check on tasks at peers, place parked ones; stop extra workers idle too long."""
        if self.spill.peers:
            self.spill.check_spilled()
        if self.spill.parked:
            self.spill.unpark()
        if self.queues.count:
            return
        for worker in self.pool.reap_idle(self.now):
            self.objects.drop_client(worker.client)

    # -- cancel -----------------------------------------------------------------------

    def _on_cancel(self, client: bytes, msg: p.Cancel) -> None:
        task = self.tasks.get(ids.task_of(msg.oid))
        if task is not None:
            self.cancel_task(task, msg.force, msg.recursive)

    @staticmethod
    def _cancelled_record(name: str) -> bytes:
        return records.system_error_record(
            TaskCancelledError, f"task {name}() was cancelled", name)

    def cancel_task(self, task: Task, force: bool, recursive: bool) -> None:
        """Cancel a task and, if recursive, every task it submitted (iteratively:
        a chain of thousands of nested tasks must not overflow the stack)."""
        order = [task]
        if recursive:
            seen = {task.spec.task_id}
            stack = [task]
            while stack:
                for child_id in list(stack.pop().children):
                    child = self.tasks.get(child_id)
                    if child is not None and child_id not in seen:
                        seen.add(child_id)
                        order.append(child)
                        stack.append(child)
        for t in reversed(order):  # children first, as they were submitted last
            self._cancel_one(t, force)

    def _cancel_one(self, task: Task, force: bool) -> None:
        state = task.state
        if state is None:
            return
        if state == TaskState.ASSIGNED:
            if not task.cancelled:
                task.cancelled = True
                self.out.send(self.pool.workers[task.worker].client, p.Revoke(task.spec.task_id))
        elif state == TaskState.SPILLED:
            if not task.cancelled or force:
                task.cancelled = True
                self.spill.cancel(task, force)
        elif state == TaskState.RUNNING:
            if task.cancelled and not force:
                return
            task.cancelled = True
            if force:
                self.pool.kill(self.pool.workers[task.worker])
            else:
                self.out.emit(fx.InterruptWorker(task.worker, task.spec.task_id))
        else:
            self.finish_failed(task, self._cancelled_record(task.name), cancelled=True)

    # -- objects ------------------------------------------------------------------------

    def _on_fetched(self, event: ev.ObjectFetched) -> None:
        self.objects.fetched(event.oid)

    def _on_fetch_failed(self, event: ev.FetchFailed) -> None:
        self.objects.fetch_failed(event.oid, event.reason)

    # -- peers ----------------------------------------------------------------------------

    def _on_peer_up(self, event: ev.PeerUp) -> None:
        self.spill.peer_up(event.node_id, event.address, event.info)

    def _on_peer_suspect(self, event: ev.PeerSuspect) -> None:
        self.spill.peer_suspect(event.node_id)

    def _on_peer_down(self, event: ev.PeerDown) -> None:
        """A peer is gone: forget its copies and tasks, lose what only it held,
        retry our tasks it ran."""
        if not self.spill.peer_down(event.node_id):
            return
        self.objects.holder_gone(event.node_id, event.reason)
        for task in self.spill.take_back(event.node_id):
            self.retry_or_fail(task, records.system_error_record(
                NodeDiedError, f"the node running {task.name}() died ({event.reason}) and "
                f"the task has no retries left (max_retries={task.spec.max_retries})",
                task.name))

    # -- queries --------------------------------------------------------------------------

    def resource_view(self) -> dict:
        """This node's resources, total and free, as gossip and `nodes()` show them."""
        pool = self.pool
        return {"total": rs.from_units(pool.total),
                "available": rs.from_units(pool.free())}

    def status(self) -> dict:
        """This node's live figures, for `status` and `memory`."""
        counts = {state: 0 for state in TaskState}
        for t in self.tasks.values():
            counts[t.state] += 1
        pool = self.pool
        totals = [pool.total] + [v.total for v in self.spill.peers.values()]
        view = self.resource_view()
        return {"Resources": view["total"], "available": view["available"],
                "tasks_queued": self.queues.count + pool.assigned_count(),
                "tasks_running": counts[TaskState.RUNNING],
                "tasks_waiting": counts[TaskState.WAITING],
                "tasks_spilled": counts[TaskState.SPILLED],
                "pending_demand": [rs.from_units(d) for d in self.queues.pending_demand(totals)],
                "demands": [[rs.from_units(d), n] for d, n in self.queues.demands()],
                "workers": len(pool.workers), "idle_workers": len(pool.idle),
                "objects": len(self.objects.entries),
                "store_used": self.objects.store_used,
                "store_capacity": self.objects.store_capacity,
                "spilled_bytes": self.objects.table.spilled_bytes,
                "spilled_objects": self.objects.table.spilled_count,
                "spill_error": self.objects.spill_error, "stats": dict(self.stats)}

    def validate(self) -> None:
        """Invariants (tests call this after every step)."""
        self.objects.validate()
        self.lineage.validate()
        self.queues.validate(self.tasks)
        self.pool.validate(self.tasks)
        self.leases.validate()
        self.spill.validate(self.tasks)
        for t in self.tasks.values():
            assert t.state in TaskState, t.state
