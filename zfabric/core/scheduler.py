"""The local scheduler of one node: tasks, dependencies, workers, resources.

`Scheduler.handle(event, now)` is the only way its state changes; it returns
the effects (core/effects.py) for the node loop to carry out. It owns:

- the task table: each task is WAITING (for arguments), QUEUED (ready, in a
  queue of its resource shape), RUNNING (on a worker), then leaves the table
  when it ends (its returns hold the outcome);
- the worker pool: `num_workers` pre-started processes, plus extra ones when
  ready tasks fit the free resources but no worker is idle (a worker blocked
  in get/wait gives its CPU back, so nested tasks cannot deadlock); extras
  idle longer than `idle_worker_timeout` are stopped;
- the object directory (core/objects.py) and the store's capacity;
- the timeline (Chrome trace events of finished tasks).

Prefetch: when every worker is busy, a worker running a task of function F
is sent its next task of the same resource shape at once if F has run at
least PREFETCH_MIN_RUNS times and its slowest recent run took under
`prefetch_max_task_seconds` (a prefetched task cannot move to another worker
that frees up first, so it must only ever wait behind quick tasks). That task is ASSIGNED: it holds
no resources until the running one ends, when the resources pass to it. A
worker that blocks in get/wait is sent Revoke for its prefetched tasks; it
answers Revoked for each it had not started, and they are queued again.

Dispatch order: among the heads of the per-shape queues that fit the free
resources, the deepest task first (a nested task before its parents'
siblings: this is what lets 1,000 nested chains finish on one CPU), then
the oldest.

Peers (other nodes, as gossip describes them: `PeerUp`/`PeerDown` events):
- Spillover: a queued task that does not fit the free local resources is
  forwarded (Spill) to a peer that core/placement.py picks; the task is
  SPILLED there and this node stays its owner. The peer answers with a
  TaskResult, or Refuse (spillback: the task is queued here again and that
  peer is left alone for `refuse_backoff`). If the peer dies, the task is
  retried (a node death counts as an attempt).
- A task forwarded to us runs like a local one, owned by the peer
  (`peer_client(owner)` holds its returns); when it ends we send the owner a
  TaskResult. Its STORE returns stay in our store until the owner frees them.
- Arguments that are STORE objects in another node's store are pulled
  (Fetch) before a task runs here, unless a peer holding most of the
  task's argument bytes can start it now: then the task goes there.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from enum import IntEnum

from .. import protocol as p
from .. import records
from ..protocol import ObjectState, TaskStatus
from ..exceptions import (NodeDiedError, ObjectLostError, ObjectStoreFullError,
                          TaskCancelledError, WorkerCrashedError, ZFabricError)
from . import effects as fx
from . import events as ev
from . import placement
from . import resources as rs
from .objects import ObjectEntry, ObjectTable, peer_client
from .placement import PeerView


PREFETCH_MIN_RUNS = 3
# Tasks of a function known to be quick (as prefetch judges it) are queued
# this many deep per slot at a peer while the local queue is deep: a round
# trip to the owner per task would leave the peer idle most of the time,
# and a queue of quick tasks drains in milliseconds at the end.
QUICK_SPILL_DEPTH = 16
# A task forwarded to a peer longer ago than this is checked on every tick
# (SpillCheck): a peer that does not have it (its Spill or TaskResult was
# lost: TCP between live peers rarely loses, but a reconnect can) refuses
# it, and it runs again. Messages on one link are ordered, so a result
# already on its way always arrives before the answer.
SPILL_CHECK_AGE = 1.0


class TaskState(IntEnum):
    WAITING = 0
    QUEUED = 1
    RUNNING = 2
    ASSIGNED = 3   # prefetched: sent to a busy worker, starts when its task ends
    SPILLED = 4    # forwarded to a peer (task.node), which runs it for us


class WorkerState(IntEnum):
    STARTING = 0
    IDLE = 1
    BUSY = 2


class Task:
    __slots__ = ("spec", "owner", "demand", "shape", "state", "missing", "worker",
                 "attempts", "seq", "blocked", "cancelled", "returns", "children",
                 "node", "remote_owner", "since")

    def __init__(self, spec: p.Submit, owner: bytes, demand: dict, seq: int):
        self.spec = spec
        self.owner = owner
        self.demand = demand
        self.shape = rs.shape(demand)
        self.state = TaskState.WAITING
        self.missing: set[bytes] = set()
        self.worker: str | None = None
        self.attempts = 0
        self.seq = seq
        self.blocked = False
        self.cancelled = False   # a cancel was asked while it ran
        self.returns = [spec.task_id + i.to_bytes(4, "big") for i in range(spec.num_returns)]
        self.children: set[bytes] = set()
        self.node: bytes | None = None          # SPILLED: the peer running it
        self.remote_owner: bytes | None = None  # forwarded to us by this node
        self.since = 0.0                        # SPILLED: when it was forwarded


class Worker:
    __slots__ = ("wid", "client", "state", "task", "known_fns", "idle_since", "extra", "doomed",
                 "queue")

    def __init__(self, wid: str, extra: bool):
        self.wid = wid
        self.client = wid.encode()
        self.state = WorkerState.STARTING
        self.task: Task | None = None
        self.known_fns: set[bytes] = set()
        self.idle_since = 0.0
        self.extra = extra
        self.doomed = False   # a kill was asked: never give it another task
        self.queue: deque[Task] = deque()   # prefetched (ASSIGNED) tasks, in order


class Scheduler:
    def __init__(self, *, node_id: bytes, resources: dict[str, float],
                 store_capacity: int, num_workers: int, max_workers: int,
                 idle_worker_timeout: float, timeline_capacity: int,
                 prefetch_max_task_seconds: float = 0.0, node_info: dict | None = None,
                 spill_depth: int = 1, refuse_backoff: float = 0.2,
                 locality_min_bytes: int = 1 << 20):
        self.node_id = node_id
        self.spill_depth = spill_depth
        self.refuse_backoff = refuse_backoff
        self.locality_min_bytes = locality_min_bytes
        self.peers: dict[bytes, PeerView] = {}
        self.total = rs.to_units(resources)
        self.available = dict(self.total)
        self.store_capacity = store_capacity
        self.num_workers = num_workers
        self.max_workers = max_workers
        self.idle_worker_timeout = idle_worker_timeout
        self.prefetch_max_task_seconds = prefetch_max_task_seconds
        # fn_id -> [runs, peak run time] (the peak decays 1% a run, so one slow
        # outlier does not disable prefetch for good)
        self.fn_times: dict[bytes, list] = {}
        self.node_info = dict(node_info or {})
        self.objects = ObjectTable()
        self.tasks: dict[bytes, Task] = {}
        self.queues: dict[tuple, list] = {}       # shape -> heap of (-depth, seq, task_id)
        self.queued = 0
        self.workers: dict[str, Worker] = {}
        self.by_client: dict[bytes, Worker] = {}
        self.idle: list[Worker] = []
        self.drivers: dict[bytes, int] = {}       # client -> pid
        self.functions: dict[bytes, bytes] = {}
        self.timeline: deque = deque(maxlen=timeline_capacity)
        self.timeline_total = 0   # entries ever appended (the fabric publishes the new ones)
        self.stats = {"submitted": 0, "finished": 0, "failed": 0, "cancelled": 0,
                      "retried": 0, "prefetched": 0, "workers_started": 0, "workers_crashed": 0,
                      "spilled": 0, "refused": 0, "accepted": 0, "fetches": 0}
        self._seq = 0
        self._fail_queue: deque = deque()
        self._failing = False
        self._next_worker = 0
        self._out: list = []
        self._now = 0.0

    # -- entry point ------------------------------------------------------------

    def start(self, now: float) -> list:
        """Effects to run when the node comes up: the pre-started workers."""
        self._now = now
        for _ in range(self.num_workers):
            self._spawn(extra=False)
        return self._flush()

    def handle(self, event, now: float) -> list:
        self._now = now
        kind = type(event)
        if kind is ev.ClientMessage:
            handler = self._MESSAGE_HANDLERS.get(type(event.msg))
            if handler is None:
                self._log("warning", f"unexpected {type(event.msg).__name__} from a client")
            else:
                handler(self, event.client, event.msg)
        elif kind is ev.WorkerExited:
            self._on_worker_exited(event.worker_id, event.exitcode)
        elif kind is ev.WorkerSpawnFailed:
            self._log("error", f"worker {event.worker_id} failed to start: {event.error}")
            self._on_worker_exited(event.worker_id, None)
        elif kind is ev.ClientGone:
            self._on_client_gone(event.client)
        elif kind is ev.Tick:
            self._on_tick()
        elif kind is ev.PeerMessage:
            handler = self._PEER_HANDLERS.get(type(event.msg))
            if handler is None:
                self._log("warning", f"unexpected {type(event.msg).__name__} from a peer")
            else:
                handler(self, event.node_id, event.msg)
        elif kind is ev.ObjectFetched:
            self._on_fetched(event.oid)
        elif kind is ev.FetchFailed:
            self._on_fetch_failed(event.oid, event.reason)
        elif kind is ev.PeerUp:
            self._on_peer_up(event.node_id, event.address, event.info)
        elif kind is ev.PeerDown:
            self._on_peer_down(event.node_id, event.reason)
        elif kind is ev.PeerSuspect:
            view = self.peers.get(event.node_id)
            if view is not None:
                view.suspect = True
        else:
            raise TypeError(f"unknown event {event!r}")
        self._schedule()
        return self._flush()

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out

    def _send(self, to: bytes, msg) -> None:
        self._out.append(fx.Send(to, msg))

    def _log(self, level: str, text: str) -> None:
        self._out.append(fx.Log(level, text))

    # -- clients ------------------------------------------------------------------

    def _on_hello(self, client: bytes, msg: p.Hello) -> None:
        if msg.role == "worker":
            worker = self.workers.get(msg.worker_id or "")
            if worker is None or worker.client != client or worker.state != WorkerState.STARTING:
                self._log("warning", f"unknown worker {msg.worker_id!r} said hello")
                return
            worker.state = WorkerState.IDLE
            worker.idle_since = self._now
            self.idle.append(worker)
        elif msg.role == "driver":
            self.drivers[client] = msg.pid
            self._out.append(fx.WatchClient(client, msg.pid))
        self._send(client, p.Welcome(self.node_id, self.node_info.get("store_dir", ""),
                                     self.node_info.get("session_dir", ""),
                                     self.node_info.get("address", ""),
                                     self.node_info.get("config", "{}"),
                                     self.node_info.get("pid", 0)))

    def _on_client_gone(self, client: bytes) -> None:
        if client not in self.drivers:
            return
        del self.drivers[client]
        for task in [t for t in self.tasks.values() if t.owner == client]:
            self._cancel_task(task, force=True, recursive=True)
        self._free(self.objects.drop_client(client))

    def _on_shutdown(self, client: bytes, msg: p.Shutdown) -> None:
        self._out.append(fx.StopNode(msg.reason or "asked to stop"))

    def _on_goodbye(self, client: bytes, msg: p.Goodbye) -> None:
        self._on_client_gone(client)

    # -- submission and dependencies ------------------------------------------

    def _on_submit(self, client: bytes, spec: p.Submit) -> None:
        self.stats["submitted"] += 1
        if spec.fn_blob:
            self.functions[spec.fn_id] = spec.fn_blob
            spec.fn_blob = b""
        self._seq += 1
        task = Task(spec, client, rs.to_units(spec.resources), self._seq)
        self.tasks[spec.task_id] = task
        objects = self.objects
        for oid in task.returns:
            objects.create(oid, client).push_to = client
        parent = self.tasks.get(spec.parent) if spec.parent else None
        if parent is not None:
            parent.children.add(spec.task_id)
        failure = None
        if spec.fn_id not in self.functions:
            failure = records.system_error_record(
                ZFabricError, "the node does not know this function (it was "
                "submitted without its code)", spec.name)
        contained = [oid for oid in spec.contained if oid in objects]
        for oid in contained:
            objects.pin(oid)
        spec.contained = contained   # exactly what _end_task unpins
        pinned = []
        for oid in spec.deps:
            entry = objects.get(oid)
            if entry is None:
                failure = failure or records.system_error_record(
                    ObjectLostError, f"argument {oid.hex()} no longer exists "
                    "(it was freed or never created)", spec.name)
                continue
            objects.pin(oid)
            pinned.append(oid)
            if entry.state == ObjectState.ERROR:
                failure = failure or self._dep_error(entry, spec.name)
            elif entry.state == ObjectState.PENDING and oid not in task.missing:
                task.missing.add(oid)
                entry.dependents.append(spec.task_id)
        spec.deps = pinned
        if failure is not None:
            self._finish_failed(task, failure)
        elif not task.missing:
            self._ready(task)

    @staticmethod
    def _dep_error(entry: ObjectEntry, name: str) -> bytes:
        return records.error_with_context(
            entry.payload, f"an input of {name}() could not be computed")

    def _enqueue(self, task: Task) -> None:
        task.state = TaskState.QUEUED
        heap = self.queues.get(task.shape)
        if heap is None:
            heap = self.queues[task.shape] = []
        heapq.heappush(heap, (-task.spec.depth, task.seq, task.spec.task_id))
        self.queued += 1

    def _ready(self, task: Task) -> None:
        """Every argument has its value: queue the task, unless some live in
        other nodes' stores — then run it where most of them are, or pull them.
        (A task queued again after a refusal or a peer's death may find an
        argument lost meanwhile: it fails as its dependents do.)"""
        entries = self.objects.entries
        for oid in task.spec.deps:
            if entries[oid].state == ObjectState.ERROR:
                self._finish_failed(task, self._dep_error(entries[oid], task.spec.name))
                return
        remote = [entries[oid] for oid in task.spec.deps if not entries[oid].local]
        if not remote or (task.remote_owner is None
                          and not rs.feasible(self.total, task.demand)):
            self._enqueue(task)   # (a task that cannot run here is spilled with its holders)
            return
        if task.remote_owner is None and not task.cancelled:
            peer = placement.holder_with_room(self.peers.values(), task.demand, self._now,
                                              self._arg_bytes(task), self.locality_min_bytes)
            if peer is not None:
                self._forward(task, peer, start_now=True)
                return
        for entry in remote:
            if entry.oid not in task.missing:
                task.missing.add(entry.oid)
                entry.dependents.append(task.spec.task_id)
                self._fetch(entry)
                if task.state is None:
                    return   # it could not be brought here: the task failed

    def _arg_bytes(self, task: Task) -> dict[bytes, int]:
        """Bytes of the task's STORE arguments held by each node (us included)."""
        held: dict[bytes, int] = {}
        for oid in task.spec.deps:
            entry = self.objects.entries[oid]
            if entry.state != ObjectState.STORE:
                continue
            nodes = ([self.node_id] if entry.local else []) + entry.remote
            for node in nodes:
                held[node] = held.get(node, 0) + entry.size
        return held

    def _fetch(self, entry: ObjectEntry) -> None:
        """Start pulling a STORE object held elsewhere (once), if there is room."""
        if entry.local or entry.fetching:
            return
        if self.objects.store_used + entry.size > self.store_capacity:
            self._fail_askers(entry, records.system_error_record(
                ObjectStoreFullError, self._full_message(entry.size)))
            return
        self.objects.reserve(entry)
        self.stats["fetches"] += 1
        self._out.append(fx.Fetch(entry.oid, entry.size, tuple(entry.remote)))

    def _on_fetched(self, oid: bytes) -> None:
        entry = self.objects.get(oid)
        if entry is None or not entry.fetching:
            self._out.append(fx.DeleteObject(oid))  # freed while it was pulled
            return
        self.objects.fetched(entry)
        self._out.append(fx.Publish("loc", oid, entry.size))
        self._object_ready(entry)

    def _on_fetch_failed(self, oid: bytes, reason: str) -> None:
        entry = self.objects.get(oid)
        if entry is not None and entry.fetching:
            self.objects.unreserve(entry)
            self._lose(entry, ObjectLostError, reason)

    def _fail_askers(self, entry: ObjectEntry, record: bytes) -> None:
        """The object cannot come here now: those waiting for it here get the
        error; the object itself is unharmed (a task on its holder may still use it)."""
        for client in entry.subscribers:
            self._send(client, p.ObjectReady(entry.oid, int(ObjectState.ERROR), 0, record))
        entry.subscribers.clear()
        waiting, entry.dependents = entry.dependents, []
        for tid in waiting:
            task = self.tasks.get(tid)
            if task is not None and task.state == TaskState.WAITING:
                self._finish_failed(task, records.error_with_context(
                    record, f"an input of {task.spec.name}() could not be brought here"))

    def _lose(self, entry: ObjectEntry, error: type, text: str) -> None:
        """A ready object's value cannot be had: it becomes that error, and so
        do the tasks that were about to run with it."""
        entry.state = ObjectState.ERROR
        entry.payload = records.system_error_record(error, text)
        entry.shared_with += [n for n in entry.remote if n not in entry.shared_with]
        entry.local, entry.remote, entry.size = True, [], 0   # (copies still freed, see _free)
        if entry.owner_node is None:
            self._out.append(fx.Publish("obj", entry.oid, None))
        self._object_ready(entry)
        for task in [t for t in self.tasks.values()
                     if t.state == TaskState.QUEUED and entry.oid in t.spec.deps]:
            self._finish_failed(task, self._dep_error(entry, task.spec.name))

    def _object_ready(self, entry: ObjectEntry) -> None:
        """An object got its value: notify subscribers, wake dependent tasks.

        A value in another node's store is pulled before subscribers hear of
        it (they map it from our store), but only for a subscriber that asked:
        the submitter is sent a value unasked only if it is here (a client
        asks when it gets). Dependent tasks decide in `_ready`.
        """
        if entry.push_to is not None:
            if entry.local:
                entry.subscribers.add(entry.push_to)
            entry.push_to = None
        if entry.subscribers and not entry.local:
            self._fetch(entry)
        elif entry.subscribers:
            msg = p.ObjectReady(entry.oid, int(entry.state), entry.size, entry.payload)
            for client in entry.subscribers:
                self._send(client, msg)
            entry.subscribers.clear()
        if entry.dependents:
            waiting, entry.dependents = entry.dependents, []
            for tid in waiting:
                task = self.tasks.get(tid)
                if task is None or task.state != TaskState.WAITING:
                    continue
                if entry.state == ObjectState.ERROR:
                    self._finish_failed(task, self._dep_error(entry, task.spec.name))
                    continue
                task.missing.discard(entry.oid)
                if not task.missing:
                    self._ready(task)

    # -- dispatch -----------------------------------------------------------------

    def _pick(self, available: dict) -> Task | None:
        """The best queued task that fits `available`, popped from its queue."""
        best = None
        best_key = None
        for shape, heap in self.queues.items():
            while heap:
                tid = heap[0][2]
                task = self.tasks.get(tid)
                if task is not None and task.state == TaskState.QUEUED:
                    break
                heapq.heappop(heap)  # cancelled or failed while queued
            if not heap or not rs.fits(available, self.tasks[heap[0][2]].demand):
                continue
            if best_key is None or heap[0] < best_key:
                best_key = heap[0]
                best = shape
        if best is None:
            return None
        heapq.heappop(self.queues[best])
        self.queued -= 1
        return self.tasks[best_key[2]]

    def _schedule(self) -> None:
        if not self.queued:
            return
        while self.idle:
            task = self._pick(self.available)
            if task is None:
                break
            self._run(task, self.idle.pop())
        else:
            self._spawn_for_demand()
        if self.queued and self.peers:
            self._spill()
        if self.queued and self.prefetch_max_task_seconds > 0:
            self._prefetch()

    # -- peers: spillover ---------------------------------------------------------

    def cluster_total(self) -> dict[str, int]:
        total = dict(self.total)
        for view in self.peers.values():
            rs.release(total, view.total)
        return total

    def _spill(self) -> None:
        """Forward queued tasks that cannot start here to peers with room."""
        deep = placement.queue_is_deep(self.queued, self.cluster_total())
        for shape in list(self.queues):
            kept = []   # tasks peers forwarded to us: they run here or nowhere
            while True:
                task = self._head(shape)
                if task is None or rs.fits(self.available, task.demand):
                    break  # it starts here as soon as a worker is free
                if task.remote_owner is not None or (
                        task.spec.contained and rs.feasible(self.total, task.demand)):
                    # forwarded to us: runs here or nowhere; refs nested in the
                    # arguments are known here only: a peer could not get them
                    kept.append(self._pop_shape(shape))
                    continue
                depth = 0
                if deep:
                    depth = QUICK_SPILL_DEPTH if self._quick(task.spec.fn_id) else self.spill_depth
                peer = placement.pick_peer(self.peers.values(), task.demand, self._now,
                                           depth=depth, arg_bytes=self._arg_bytes(task))
                if peer is None:
                    break  # tasks of one shape are alike: the rest wait too
                self._pop_shape(shape)
                self._forward(task, peer)
            for task in kept:
                heapq.heappush(self.queues[shape], (-task.spec.depth, task.seq, task.spec.task_id))
                self.queued += 1

    def _quick(self, fn_id: bytes) -> bool:
        """Is this function quick, as prefetch judges it (enough runs, all short)?"""
        times = self.fn_times.get(fn_id)
        return (times is not None and times[0] >= PREFETCH_MIN_RUNS
                and times[1] < self.prefetch_max_task_seconds)

    def _head(self, shape: tuple) -> Task | None:
        heap = self.queues.get(shape)
        while heap:
            task = self.tasks.get(heap[0][2])
            if task is not None and task.state == TaskState.QUEUED:
                return task
            heapq.heappop(heap)
        return None

    def _forward(self, task: Task, peer: PeerView, start_now: bool = False) -> None:
        """Send a ready task to a peer to run; we stay its owner. `start_now`:
        it goes there for its arguments, not to wait in that peer's queue."""
        spec = task.spec
        task.state = TaskState.SPILLED
        task.node = peer.node_id
        task.since = self._now
        task.attempts += 1
        peer.sent(task.demand)
        self.stats["spilled"] += 1
        fn_blob = b""
        if spec.fn_id not in peer.known_fns:
            fn_blob = self.functions[spec.fn_id]
            peer.known_fns.add(spec.fn_id)
        states, sizes, holders, payloads = [], [], [], []
        for oid in spec.deps:
            entry = self.objects.entries[oid]
            states.append(int(entry.state))
            sizes.append(entry.size)
            if entry.state == ObjectState.STORE:
                holders.append(([self.node_id] if entry.local else []) + entry.remote)
                if peer.node_id not in entry.shared_with:
                    entry.shared_with.append(peer.node_id)  # it may pull a copy: free it there too
                payloads.append(b"")
            else:
                holders.append([])
                payloads.append(entry.payload)
        limit = spec.max_retries
        retries = -1 if limit < 0 else max(0, limit - (task.attempts - 1))
        self._out.append(fx.PeerSend(peer.address, p.Spill(
            self.node_id, self.node_info.get("address", ""), spec.task_id, spec.name, spec.fn_id, spec.num_returns, spec.resources,
            retries, spec.retry_exceptions, spec.depth, start_now, spec.deps, states, sizes,
            holders,
            fn_blob, spec.args_blob, spec.retry_blob, payloads)))

    def _unspill(self, task: Task) -> PeerView | None:
        """A SPILLED task came back (result, refusal or death): give back its room."""
        peer = self.peers.get(task.node)
        if peer is not None:
            peer.came_back(task.demand)
        task.node = None
        task.state = TaskState.WAITING
        return peer

    def _on_spill(self, sender: bytes, msg: p.Spill) -> None:
        """A peer forwards us a task to run: take it, or refuse (spillback)."""
        view = self.peers.get(sender)
        if view is None and msg.reply_to:  # it knows of us before we know of it
            view = self.peers[sender] = PeerView(sender, msg.reply_to)
        demand = rs.to_units(msg.resources)
        depth = (0 if msg.start_now else QUICK_SPILL_DEPTH if self._quick(msg.fn_id)
                 else self.spill_depth)
        if msg.fn_blob:   # kept even if we refuse: the owner will not send it again
            self.functions[msg.fn_id] = msg.fn_blob
        if view is None or msg.task_id in self.tasks or msg.fn_id not in self.functions \
                or not placement.accepts(self.available, self.total, self.queued, demand, depth):
            self.stats["refused"] += 1
            if view is not None:   # (without the code: the owner sends it with the next)
                self._out.append(fx.PeerSend(view.address, p.Refuse(
                    self.node_id, msg.task_id, rs.from_units(self.available))))
            return
        self.stats["accepted"] += 1
        owner = peer_client(sender)
        spec = p.Submit(msg.task_id, msg.name, msg.fn_id, msg.num_returns, msg.resources,
                        msg.max_retries, msg.retry_exceptions, msg.depth, b"", [], [],
                        b"", msg.args_blob, msg.retry_blob)
        self._seq += 1
        task = Task(spec, owner, demand, self._seq)
        task.remote_owner = sender
        self.tasks[spec.task_id] = task
        objects = self.objects
        for oid in task.returns:
            objects.create(oid, owner).owner_node = sender
        failure = None
        for i, oid in enumerate(msg.dep_ids):
            entry = objects.get(oid)
            if entry is None:
                entry = objects.create(oid, None)
                entry.owner_node = sender
                state = msg.dep_states[i]
                if state == ObjectState.INLINE:
                    objects.seal(entry, ObjectState.INLINE, msg.dep_sizes[i],
                                 bytes(msg.dep_payloads[i]), [])
                elif state == ObjectState.STORE:
                    holders = [h for h in msg.dep_holders[i] if h != self.node_id]
                    if holders:  # a copy we pull is kept till the owner frees it
                        objects.seal(entry, ObjectState.STORE, msg.dep_sizes[i], b"", [],
                                     remote=holders)
                        objects.hold(entry, owner)
                    else:
                        failure = failure or records.system_error_record(
                            ObjectLostError, f"argument {oid.hex()} has no copy left",
                            msg.name)
                        objects.seal(entry, ObjectState.ERROR, 0, b"", [])
                else:
                    failure = failure or records.system_error_record(
                        ZFabricError, f"argument {oid.hex()} was sent without a value",
                        msg.name)
                    objects.seal(entry, ObjectState.ERROR, 0, b"", [])
            objects.pin(oid)
            spec.deps.append(oid)
            if entry.state == ObjectState.PENDING:
                failure = failure or records.system_error_record(
                    ZFabricError, f"argument {oid.hex()} was forwarded before it was ready",
                    msg.name)
        if failure is not None:
            self._finish_failed(task, failure)
        else:
            self._ready(task)

    def _report_to_owner(self, task: Task) -> None:
        """A task a peer forwarded to us ended: tell it how; keep STORE returns
        (the owner frees them), drop the rest (the owner has their values)."""
        view = self.peers.get(task.remote_owner)
        owner = task.owner
        states, sizes, payloads, contained = [], [], [], []
        freed: list = []
        for oid in task.returns:
            entry = self.objects.get(oid)
            contained.append(list(entry.contains) if entry is not None else [])
            if entry is None:
                states.append(int(ObjectState.ERROR))
                sizes.append(0)
                payloads.append(records.system_error_record(
                    ObjectLostError, "the result was freed", task.spec.name))
                continue
            states.append(int(entry.state))
            sizes.append(entry.size)
            payloads.append(entry.payload if entry.state != ObjectState.STORE else b"")
        failed = task.cancelled or ObjectState.ERROR in states
        for oid in task.returns:   # the owner keeps STORE returns only of a success
            entry = self.objects.get(oid)
            if entry is not None and (failed or entry.state != ObjectState.STORE):
                freed += self.objects.decref(owner, oid)
        self._free(freed)
        if view is None:
            return  # the owner is gone: its copies went with peer_client(owner)
        status = TaskStatus.CANCELLED if task.cancelled else TaskStatus.OK
        self._out.append(fx.PeerSend(view.address, p.TaskResult(
            self.node_id, task.spec.task_id, int(status), states, sizes, contained, payloads)))

    def _on_task_result(self, sender: bytes, msg: p.TaskResult) -> None:
        task = self.tasks.get(msg.task_id)
        if task is None or task.state != TaskState.SPILLED or task.node != sender:
            return  # a late answer for a task already retried elsewhere
        self._unspill(task)
        spec = task.spec
        if len(msg.states) != spec.num_returns:
            self._finish_failed(task, records.system_error_record(
                ZFabricError, "a peer reported the wrong number of returns", spec.name))
        elif msg.status == TaskStatus.CANCELLED:
            self._finish_failed(task, self._cancelled_record(spec.name), cancelled=True)
        elif ObjectState.ERROR in msg.states:
            self._finish_failed(task, msg.payloads[msg.states.index(ObjectState.ERROR)])
        else:
            self._finish_ok(task, msg, remote=sender)

    def _on_refuse(self, sender: bytes, msg: p.Refuse) -> None:
        task = self.tasks.get(msg.task_id)
        if task is None or task.state != TaskState.SPILLED or task.node != sender:
            return
        peer = self._unspill(task)
        task.attempts -= 1
        if peer is not None:
            peer.known_fns.discard(task.spec.fn_id)   # it may have refused for want of it
            peer.refused_until = self._now + self.refuse_backoff
            peer.available = rs.to_units(msg.available)
        if task.cancelled:
            self._finish_failed(task, self._cancelled_record(task.spec.name), cancelled=True)
        else:
            self._ready(task)   # (its arguments may be in other stores: pulled if it runs here)

    def _check_spilled(self) -> None:
        """Ask each peer about our tasks it has had for a while (SpillCheck)."""
        due: dict[bytes, list] = {}
        for task in self.tasks.values():
            if task.state == TaskState.SPILLED and self._now - task.since > SPILL_CHECK_AGE:
                due.setdefault(task.node, []).append(task.spec.task_id)
        for node, ids in due.items():
            self._out.append(fx.PeerSend(self.peers[node].address, p.SpillCheck(self.node_id, ids)))

    def _on_spill_check(self, sender: bytes, msg: p.SpillCheck) -> None:
        view = self.peers.get(sender)
        if view is None:
            return
        owner = peer_client(sender)
        for tid in msg.task_ids:
            task = self.tasks.get(tid)
            if task is None or task.owner != owner:
                self._out.append(fx.PeerSend(view.address, p.Refuse(
                    self.node_id, tid, rs.from_units(self.available))))

    def _on_free_objects(self, sender: bytes, msg: p.FreeObjects) -> None:
        owner = peer_client(sender)
        freed: list = []
        for oid in msg.ids:
            freed += self.objects.decref(owner, oid)
        self._free(freed)

    def _on_peer_up(self, node_id: bytes, address: str, info: dict) -> None:
        view = self.peers.get(node_id)
        if view is None:
            view = self.peers[node_id] = PeerView(node_id, address)
        view.address = address
        view.suspect = False   # heard of again
        if not view.update(info):
            self._log("warning", f"peer {node_id.hex()[:12]} gossiped a malformed view")

    def _on_peer_down(self, node_id: bytes, reason: str) -> None:
        """A peer is gone: forget its copies and tasks, lose what only it held,
        retry our tasks it ran."""
        if self.peers.pop(node_id, None) is None:
            return
        owner = peer_client(node_id)
        orphans = [t for t in self.tasks.values() if t.owner == owner]
        for task in orphans:   # nobody to report to: if it comes back, it asks (SpillCheck)
            task.remote_owner = None
        for task in orphans:
            self._cancel_task(task, force=True, recursive=True)
        self._free(self.objects.drop_client(owner))
        lost = []
        for entry in list(self.objects.entries.values()):
            if node_id in entry.remote:
                entry.remote.remove(node_id)
                if not entry.remote and not entry.local and not entry.fetching:
                    lost.append(entry)
        for entry in lost:
            self._lose(entry, ObjectLostError,
                       f"object {entry.oid.hex()} was only on a node that died ({reason})")
        for task in [t for t in self.tasks.values()
                     if t.state == TaskState.SPILLED and t.node == node_id]:
            task.node = None
            task.state = TaskState.WAITING
            if task.cancelled:
                self._finish_failed(task, self._cancelled_record(task.spec.name), cancelled=True)
            elif self._may_retry(task):
                self.stats["retried"] += 1
                self._ready(task)
            else:
                self._finish_failed(task, records.system_error_record(
                    NodeDiedError, f"the node running {task.spec.name}() died ({reason}) and "
                    f"the task has no retries left (max_retries={task.spec.max_retries})",
                    task.spec.name))

    def _prefetch(self) -> None:
        for worker in self.workers.values():
            running = worker.task
            if (running is None or worker.queue or running.blocked or worker.doomed
                    or running.cancelled or not self._quick(running.spec.fn_id)):
                continue
            task = self._pop_shape(running.shape)
            if task is None:
                continue
            task.state = TaskState.ASSIGNED
            task.worker = worker.wid
            worker.queue.append(task)
            self.stats["prefetched"] += 1
            self._send_execute(task, worker)
            if not self.queued:
                return

    def _pop_shape(self, shape: tuple) -> Task | None:
        heap = self.queues.get(shape)
        while heap:
            task = self.tasks.get(heapq.heappop(heap)[2])
            if task is not None and task.state == TaskState.QUEUED:
                self.queued -= 1
                return task
        return None

    def _spawn_for_demand(self) -> None:
        """No idle worker: start as many as queued tasks would fit right now."""
        room = self.max_workers - len(self.workers)
        if room <= 0 or not self._any_head_fits():
            return  # the common case: resources, not workers, are the limit
        starting = self.starting_workers()
        budget = dict(self.available)
        fitting = 0
        for heap in self.queues.values():
            for _, _, tid in heap:
                task = self.tasks.get(tid)
                if task is None or task.state != TaskState.QUEUED:
                    continue
                if not rs.fits(budget, task.demand):
                    break  # FIFO per shape: later ones of this shape wait too
                rs.acquire(budget, task.demand)
                fitting += 1
                if fitting >= starting + room:
                    break
        for _ in range(min(room, fitting - starting)):
            self._spawn(extra=True)

    def running_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.task is not None)

    def starting_workers(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == WorkerState.STARTING)

    def _any_head_fits(self) -> bool:
        available, tasks = self.available, self.tasks
        for heap in self.queues.values():
            for _, _, tid in heap[:8]:   # a few heads per shape: stale entries are rare
                task = tasks.get(tid)
                if task is not None and task.state == TaskState.QUEUED:
                    if rs.fits(available, task.demand):
                        return True
                    break
        return False

    def _spawn(self, extra: bool) -> None:
        self._next_worker += 1
        wid = f"w{self._next_worker}"
        self.workers[wid] = worker = Worker(wid, extra)
        self.by_client[worker.client] = worker
        self.stats["workers_started"] += 1
        self._out.append(fx.SpawnWorker(wid))

    def _run(self, task: Task, worker: Worker) -> None:
        self._start(task, worker)
        self._send_execute(task, worker)

    def _start(self, task: Task, worker: Worker) -> None:
        """The task runs on the worker from now on: it holds its resources."""
        rs.acquire(self.available, task.demand)
        task.state = TaskState.RUNNING
        task.worker = worker.wid
        task.attempts += 1
        worker.state = WorkerState.BUSY
        worker.task = task

    def _send_execute(self, task: Task, worker: Worker) -> None:
        spec = task.spec
        fn_blob = b""
        if spec.fn_id not in worker.known_fns:
            fn_blob = self.functions[spec.fn_id]
            worker.known_fns.add(spec.fn_id)
        states, payloads = [], []
        for oid in spec.deps:
            entry = self.objects.entries[oid]
            states.append(int(entry.state))
            payloads.append(entry.payload if entry.state == ObjectState.INLINE else b"")
        self._send(worker.client, p.Execute(
            spec.task_id, spec.name, spec.fn_id, spec.num_returns, spec.depth,
            spec.deps, states, fn_blob, spec.args_blob, spec.retry_blob, payloads))

    # -- a worker reports ---------------------------------------------------------

    def _on_task_done(self, client: bytes, msg: p.TaskDone) -> None:
        worker = self.by_client.get(client)
        task = worker.task if worker is not None else None
        if task is None or task.spec.task_id != msg.task_id:
            self._log("warning", "a worker reported a task it was not running")
            return
        self._release_worker(worker, task)
        spec = task.spec
        self.timeline.append((spec.name, spec.task_id, worker.wid, msg.start, msg.end,
                              int(msg.status)))
        self.timeline_total += 1
        took = max(0.0, msg.end - msg.start)
        times = self.fn_times.get(spec.fn_id)
        if times is None:
            self.fn_times[spec.fn_id] = [1, took]
        else:
            times[0] += 1
            times[1] = max(took, times[1] * 0.99)
        if msg.status == TaskStatus.OK:
            if len(msg.states) != spec.num_returns or len(msg.payloads) != spec.num_returns:
                self._log("warning", "a worker reported the wrong number of returns")
                self._finish_failed(task, records.system_error_record(
                    ZFabricError, "worker reported a malformed result", spec.name))
                return
            self._finish_ok(task, msg)
        elif msg.status == TaskStatus.CANCELLED or task.cancelled:
            self._finish_failed(task, self._cancelled_record(spec.name), cancelled=True)
        elif msg.retryable and self._may_retry(task):
            self.stats["retried"] += 1
            self._enqueue(task)
        else:
            record = msg.payloads[0] if msg.payloads else records.system_error_record(
                ZFabricError, "task failed without an error record", spec.name)
            self._finish_failed(task, record)

    @staticmethod
    def _held(task: Task) -> dict:
        """What a running task holds: its demand, less the CPU it gave back if blocked."""
        if task.blocked and rs.CPU in task.demand:
            return {k: v for k, v in task.demand.items() if k != rs.CPU}
        return task.demand

    def _release_worker(self, worker: Worker, task: Task) -> None:
        rs.release(self.available, self._held(task))
        task.blocked = False
        task.worker = None
        worker.task = None
        self._next_or_idle(worker)

    def _next_or_idle(self, worker: Worker) -> None:
        """A worker's task ended: start its prefetched task, or make it idle."""
        if worker.doomed:
            self._requeue_prefetched(worker)
        elif worker.queue:  # its prefetched task starts now, on the resources just freed
            nxt = worker.queue.popleft()
            self._start(nxt, worker)
            if nxt.cancelled:
                self._out.append(fx.InterruptWorker(worker.wid, nxt.spec.task_id))
            return
        worker.state = WorkerState.IDLE
        worker.idle_since = self._now
        if not worker.doomed:
            self.idle.append(worker)

    def _requeue_prefetched(self, worker: Worker) -> None:
        while worker.queue:
            task = worker.queue.popleft()
            task.worker = None
            if task.cancelled:
                self._finish_failed(task, self._cancelled_record(task.spec.name), cancelled=True)
            else:
                self._enqueue(task)

    def _on_revoked(self, client: bytes, msg: p.Revoked) -> None:
        """The worker dropped a prefetched task unstarted: queue it again."""
        worker = self.by_client.get(client)
        task = self.tasks.get(msg.task_id)
        if worker is None or task is None or task.worker != worker.wid:
            return
        if task.state == TaskState.ASSIGNED:
            worker.queue.remove(task)
        elif task.state == TaskState.RUNNING and worker.task is task:
            # we had started it when its predecessor ended; the worker had not
            task.attempts -= 1
            rs.release(self.available, task.demand)
            worker.task = None
            self._next_or_idle(worker)
        else:
            return
        task.worker = None
        if task.cancelled:
            self._finish_failed(task, self._cancelled_record(task.spec.name), cancelled=True)
        else:
            self._enqueue(task)

    def _may_retry(self, task: Task) -> bool:
        limit = task.spec.max_retries
        return not task.cancelled and (limit < 0 or task.attempts <= limit)

    def _finish_ok(self, task: Task, msg, remote: bytes | None = None) -> None:
        """Seal a task's returns from its TaskDone, or from a peer's TaskResult
        (`remote`: that peer keeps the STORE returns in its store)."""
        self.stats["finished"] += 1
        objects = self.objects
        freed: list = []
        for i, oid in enumerate(task.returns):
            entry = objects.get(oid)
            state = msg.states[i]
            size, payload = msg.sizes[i], msg.payloads[i]
            if state != ObjectState.INLINE and state != ObjectState.STORE:
                state, size = ObjectState.ERROR, 0
                payload = records.system_error_record(
                    ZFabricError, "worker reported a malformed result", task.spec.name)
            if entry is None:  # nobody wants it any more
                if state == ObjectState.STORE:
                    self._out.append(fx.FreeCopies(oid, (remote,)) if remote
                                     else fx.DeleteObject(oid))
                continue
            contains = msg.contained[i] if i < len(msg.contained) else []
            if remote and state == ObjectState.STORE:
                objects.seal(entry, state, size, b"", contains, remote=[remote])
                self._publish_owned(entry, remote)
                self._object_ready(entry)
                freed += objects.release_if_unused(entry)
                continue
            if state == ObjectState.STORE and objects.store_used + size > self.store_capacity:
                self._out.append(fx.DeleteObject(oid))
                state, size = ObjectState.ERROR, 0
                payload = records.system_error_record(
                    ObjectStoreFullError, self._full_message(msg.sizes[i]), task.spec.name)
            objects.seal(entry, state, size, bytes(payload), contains)
            if state == ObjectState.STORE:
                self._out.append(fx.Publish("loc", oid, size))
                self._publish_owned(entry, self.node_id)
            self._object_ready(entry)
            freed += objects.release_if_unused(entry)
        self._end_task(task, freed)

    def _finish_failed(self, task: Task, record: bytes, cancelled: bool = False) -> None:
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
            entry = self.objects.get(oid)
            if entry is None or entry.ready:
                continue
            self.objects.seal(entry, ObjectState.ERROR, 0, record, [])
            self._object_ready(entry)
            freed += self.objects.release_if_unused(entry)
        self._end_task(task, freed)

    def _end_task(self, task: Task, freed: list) -> None:
        if task.state == TaskState.QUEUED:
            self.queued -= 1  # its heap entry is skipped lazily
        elif task.state == TaskState.SPILLED:
            self._unspill(task)
        task.state = None
        spec = task.spec
        if task.remote_owner is not None:
            self._report_to_owner(task)
        self.tasks.pop(spec.task_id, None)
        parent = self.tasks.get(spec.parent) if spec.parent else None
        if parent is not None:
            parent.children.discard(spec.task_id)
        for oid in task.missing:
            entry = self.objects.get(oid)
            if entry is not None and spec.task_id in entry.dependents:
                entry.dependents.remove(spec.task_id)
        for oid in spec.deps:
            freed += self.objects.unpin(oid)
        for oid in spec.contained:
            freed += self.objects.unpin(oid)
        spec.deps = []
        spec.contained = []
        self._free(freed)

    def _publish_owned(self, entry: ObjectEntry, made_on: bytes) -> None:
        """An object we own is sealed in a store: the GCS objects table says so."""
        if entry.owner_node is None:
            self._out.append(fx.Publish("obj", entry.oid, {
                "size": entry.size, "task": entry.oid[:16], "made_on": made_on}))

    def _free(self, freed: list) -> None:
        for entry in freed:
            if entry.state != ObjectState.STORE:
                if entry.shared_with and entry.owner_node is None:   # lost here, maybe not there
                    self._out.append(fx.FreeCopies(entry.oid, tuple(entry.shared_with)))
                continue
            if entry.owner_node is None:
                self._out.append(fx.Publish("obj", entry.oid, None))
            if entry.local:
                self._out.append(fx.DeleteObject(entry.oid))
            elif entry.fetching:
                self._out.append(fx.CancelFetch(entry.oid))
            if entry.owner_node is None and (entry.remote or entry.shared_with or self.peers):
                self._out.append(fx.FreeCopies(
                    entry.oid, tuple(dict.fromkeys(entry.remote + entry.shared_with))))

    def _full_message(self, size: int) -> str:
        return (f"object store is full: {size:,} bytes do not fit "
                f"({self.objects.store_used:,} of {self.store_capacity:,} bytes in use); "
                "free ObjectRefs you no longer need or raise object_store_memory")

    def _on_blocked(self, client: bytes, msg: p.Blocked) -> None:
        worker = self.by_client.get(client)
        task = worker.task if worker else None
        if task is None or task.spec.task_id != msg.task_id or task.blocked:
            return
        task.blocked = True
        cpu = task.demand.get(rs.CPU, 0)
        if cpu:
            self.available[rs.CPU] = self.available.get(rs.CPU, 0) + cpu
        for queued in worker.queue:  # they would wait behind a blocked task
            self._send(worker.client, p.Revoke(queued.spec.task_id))

    def _on_unblocked(self, client: bytes, msg: p.Unblocked) -> None:
        worker = self.by_client.get(client)
        task = worker.task if worker else None
        if task is None or task.spec.task_id != msg.task_id or not task.blocked:
            return
        task.blocked = False
        cpu = task.demand.get(rs.CPU, 0)
        if cpu:  # may go below zero for a moment: the task is running again
            self.available[rs.CPU] = self.available.get(rs.CPU, 0) - cpu

    # -- workers come and go ---------------------------------------------------------

    def _on_worker_exited(self, wid: str, exitcode: int | None) -> None:
        worker = self.workers.pop(wid, None)
        if worker is None:
            return
        self.by_client.pop(worker.client, None)
        if worker in self.idle:
            self.idle.remove(worker)
        self._free(self.objects.drop_client(worker.client))
        self._requeue_prefetched(worker)
        task = worker.task
        if task is not None:
            self.stats["workers_crashed"] += 1
            worker.task = None
            rs.release(self.available, self._held(task))
            task.blocked = False
            task.worker = None
            if task.cancelled:
                self._finish_failed(task, self._cancelled_record(task.spec.name), cancelled=True)
            elif self._may_retry(task):
                self.stats["retried"] += 1
                self._enqueue(task)
            else:
                how = (f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0
                       else f"exit code {exitcode}")
                self._finish_failed(task, records.system_error_record(
                    WorkerCrashedError, f"the worker running {task.spec.name}() died "
                    f"({how}) and the task has no retries left "
                    f"(max_retries={task.spec.max_retries})", task.spec.name))
        if sum(1 for w in self.workers.values() if not w.extra) < self.num_workers:
            self._spawn(extra=False)

    def _on_tick(self) -> None:
        """Check on tasks at peers; stop extra workers that have idled too long."""
        if self.peers:
            self._check_spilled()
        if self.queued:
            return
        for worker in list(self.idle):
            if worker.extra and self._now - worker.idle_since > self.idle_worker_timeout:
                self.idle.remove(worker)
                del self.workers[worker.wid]
                self.by_client.pop(worker.client, None)
                self._free(self.objects.drop_client(worker.client))
                self._out.append(fx.StopWorker(worker.wid))

    # -- cancel -----------------------------------------------------------------------

    def _on_cancel(self, client: bytes, msg: p.Cancel) -> None:
        task = self.tasks.get(msg.oid[:16])
        if task is not None:
            self._cancel_task(task, msg.force, msg.recursive)

    def _cancelled_record(self, name: str) -> bytes:
        return records.system_error_record(
            TaskCancelledError, f"task {name}() was cancelled", name)

    def _cancel_task(self, task: Task, force: bool, recursive: bool) -> None:
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
        if task.state is None:
            return
        if task.state == TaskState.ASSIGNED:
            if not task.cancelled:
                task.cancelled = True
                self._send(self.workers[task.worker].client, p.Revoke(task.spec.task_id))
            return
        if task.state == TaskState.SPILLED:
            if not task.cancelled or force:
                task.cancelled = True
                peer = self.peers.get(task.node)
                if peer is not None:  # the peer answers with a cancelled TaskResult
                    self._out.append(fx.PeerSend(peer.address, p.Cancel(
                        task.returns[0] if task.returns else task.spec.task_id + bytes(4),
                        force, True)))
            return
        if task.state == TaskState.RUNNING:
            if task.cancelled and not force:
                return
            task.cancelled = True
            if force:
                self.workers[task.worker].doomed = True
                self._out.append(fx.KillWorker(task.worker))
            else:
                self._out.append(fx.InterruptWorker(task.worker, task.spec.task_id))
        else:
            self._finish_failed(task, self._cancelled_record(task.spec.name), cancelled=True)

    # -- objects ------------------------------------------------------------------------

    def _on_subscribe(self, client: bytes, msg: p.Subscribe) -> None:
        for oid in msg.ids:
            entry = self.objects.get(oid)
            if entry is None:
                self._send(client, p.ObjectReady(oid, int(ObjectState.ERROR), 0,
                           records.system_error_record(
                               ObjectLostError, f"object {oid.hex()} does not exist "
                               "(it was freed, or was never created on this node)")))
            elif entry.ready and entry.local:
                self._send(client, p.ObjectReady(oid, int(entry.state), entry.size,
                                                 entry.payload))
            else:   # pending, or in other nodes' stores: told once it is here
                entry.subscribers.add(client)
                if entry.ready:
                    self._fetch(entry)

    def _on_put(self, client: bytes, msg: p.Put) -> None:
        objects = self.objects
        state = ObjectState(msg.state) if msg.state in (1, 2) else None
        error = ""
        if state is None:
            error = "bad object state"
        elif msg.oid in objects and objects.entries[msg.oid].ready:
            error = "object already exists"
        elif state == ObjectState.STORE and objects.store_used + msg.size > self.store_capacity:
            error = self._full_message(msg.size)
        if error:
            if state == ObjectState.STORE:
                self._out.append(fx.DeleteObject(msg.oid))
            if msg.req_id:
                self._send(client, p.PutReply(msg.req_id, error))
            else:
                self._log("warning", f"put refused: {error}")
            return
        entry = objects.create(msg.oid, client)
        payload = bytes(msg.payload) if state == ObjectState.INLINE else b""
        objects.seal(entry, state, msg.size, payload, msg.contained)
        if state == ObjectState.STORE:
            self._out.append(fx.Publish("loc", msg.oid, msg.size))
            self._publish_owned(entry, self.node_id)
        self._object_ready(entry)
        if msg.req_id:
            self._send(client, p.PutReply(msg.req_id, ""))

    def _on_refs(self, client: bytes, msg: p.Refs) -> None:
        objects = self.objects
        for oid in msg.incs:
            objects.incref(client, oid)
        freed: list = []
        for oid in msg.decs:
            freed += objects.decref(client, oid)
        self._free(freed)

    # -- queries ------------------------------------------------------------------------

    # (Requests -- nodes, resources, status, timeline -- are answered by the
    # fabric, which knows the whole cluster; these are this node's parts.)

    def status(self) -> dict:
        """This node's live figures, for `status` and `memory`."""
        running = sum(1 for t in self.tasks.values() if t.state == TaskState.RUNNING)
        waiting = sum(1 for t in self.tasks.values() if t.state == TaskState.WAITING)
        spilled = sum(1 for t in self.tasks.values() if t.state == TaskState.SPILLED)
        totals = [self.total] + [v.total for v in self.peers.values()]
        tasks = self.tasks   # (read only: a query must not tidy the heaps)
        pending_demand = [rs.from_units(dict(shape)) for shape, heap in self.queues.items()
                          if not any(rs.feasible(t, dict(shape)) for t in totals)
                          and any(tid in tasks and tasks[tid].state == TaskState.QUEUED
                                  for _, _, tid in heap)]
        assigned = sum(len(w.queue) for w in self.workers.values())
        return {"Resources": rs.from_units(self.total),
                "available": rs.from_units({k: max(v, 0) for k, v in self.available.items()}),
                "tasks_queued": self.queued + assigned, "tasks_running": running,
                "tasks_waiting": waiting, "tasks_spilled": spilled,
                "pending_demand": pending_demand,
                "workers": len(self.workers), "idle_workers": len(self.idle),
                "objects": len(self.objects.entries),
                "store_used": self.objects.store_used,
                "store_capacity": self.store_capacity, "stats": dict(self.stats)}

    def trace_events(self) -> list[dict]:
        return trace_events(self.node_id, self.timeline)

    def timeline_since(self, seen: int) -> list:
        """Timeline entries appended after the first `seen` (those still kept)."""
        new = min(self.timeline_total - seen, len(self.timeline))
        return list(self.timeline)[len(self.timeline) - new:] if new > 0 else []

    # -- invariants (tests call this after every step) -----------------------------------------

    def validate(self) -> None:
        self.objects.validate()
        for name, total in self.total.items():
            running = sum(t.demand.get(name, 0) for t in self.tasks.values()
                          if t.state == TaskState.RUNNING
                          and not (t.blocked and name == rs.CPU))
            assert self.available.get(name, 0) + running == total, (name, self.available, running)
        for t in self.tasks.values():
            if t.state == TaskState.RUNNING:
                w = self.workers[t.worker]
                assert w.task is t and w.state == WorkerState.BUSY
            if t.state == TaskState.ASSIGNED:
                w = self.workers[t.worker]
                assert t in w.queue and w.task is not None and w.task is not t
            if t.state == TaskState.SPILLED:
                assert t.node in self.peers and t.remote_owner is None
            assert t.state in (TaskState.WAITING, TaskState.QUEUED, TaskState.RUNNING,
                               TaskState.ASSIGNED, TaskState.SPILLED)
        for view in self.peers.values():
            mine = [t for t in self.tasks.values()
                    if t.state == TaskState.SPILLED and t.node == view.node_id]
            assert view.ours == len(mine), (view.ours, len(mine))
        for w in self.idle:
            assert w.state == WorkerState.IDLE and w.task is None and not w.queue
        for w in self.workers.values():
            assert all(t.state == TaskState.ASSIGNED and t.worker == w.wid for t in w.queue)
        queued = sum(1 for t in self.tasks.values() if t.state == TaskState.QUEUED)
        assert queued == self.queued, (queued, self.queued)

    _MESSAGE_HANDLERS = {
        p.Hello: _on_hello, p.Submit: _on_submit, p.TaskDone: _on_task_done,
        p.Subscribe: _on_subscribe, p.Put: _on_put, p.Refs: _on_refs,
        p.Cancel: _on_cancel, p.Blocked: _on_blocked, p.Unblocked: _on_unblocked,
        p.Revoked: _on_revoked, p.Shutdown: _on_shutdown, p.Goodbye: _on_goodbye,
    }
    _PEER_HANDLERS = {
        p.Spill: _on_spill, p.TaskResult: _on_task_result, p.Refuse: _on_refuse,
        p.FreeObjects: _on_free_objects, p.Cancel: _on_cancel, p.SpillCheck: _on_spill_check,
    }


def trace_events(node_id: bytes, entries) -> list[dict]:
    """Chrome trace events for timeline entries (name, task id, worker, start, end, status)."""
    pid = f"node {node_id.hex()[:8]}"
    status_names = {0: "ok", 1: "error", 2: "cancelled"}
    return [{"name": name, "cat": "task", "ph": "X", "pid": pid,
             "tid": wid, "ts": start * 1e6, "dur": max(end - start, 0) * 1e6,
             "args": {"task_id": tid.hex(), "status": status_names.get(status, "?")}}
            for name, tid, wid, start, end, status in entries]


def workers_for(num_cpus: float) -> int:
    """Workers a node pre-starts for `num_cpus` CPUs."""
    return int(math.ceil(num_cpus))
