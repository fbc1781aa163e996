"""The worker pool of one node: its processes, and the resources they run on.

The scheduler asks the pool for an idle worker, starts tasks on workers and
hands their ends back; the pool decides when to start and stop processes
and keeps the node's resource books (`total`, `available`):

- `num_workers` processes are pre-started and replaced when one dies; extra
  ones are started when ready tasks fit the free resources but no worker is
  idle (`spawn_for_demand`), up to `max_workers`, and stopped after idling
  for `idle_worker_timeout` (`reap_idle`);
- CPU lending: a task blocked in get/wait gives its CPU back (`block`) and
  takes it again when it wakes (`unblock`), so nested tasks cannot deadlock;
- GPU ids: a task that demands "GPU" is given ids from the node's `GpuBook`
  (core/gpus.py) when it starts (`task.gpus`) and keeps them until it ends,
  blocked or not; the pool's "GPU" availability is the book's `capacity()`;
- prefetch: when every worker is busy, a worker running a task of function
  F is sent its next tasks of the same resource shape at once if F is
  *quick*: it has run at least PREFETCH_MIN_RUNS times and its slowest
  recent run took under `prefetch_max_task_seconds` (a prefetched task
  cannot move to another worker that frees up first, so it must only ever
  wait behind quick tasks). One task always; more only behind quick tasks
  whose slowest recent runs add up to under `prefetch_queue_seconds`, and
  at most `prefetch_max_depth` -- so a worker running tiny tasks takes a
  run of them per wake-up, and the node sends them in one frame. Those tasks
  are ASSIGNED: they hold no resources until the running one ends, when
  the resources pass to the next. A worker that blocks is sent Revoke for
  its prefetched tasks; it answers Revoked for each it had not started.
  A waiting task may be prefetched the same way behind the tasks making its
  arguments (`may_pipeline`, core/feed.py): the worker hands it their
  values, or gives it back (Revoked) if one failed.

Tasks the pool gives back (prefetched behind a worker that died or is being
killed) are returned to the caller, which queues or fails them.
"""
from __future__ import annotations

import math
from collections import deque
from enum import IntEnum

from .. import protocol as p
from . import effects as fx
from . import resources as rs
from .gpus import GpuBook
from .tasks import Task, TaskState

PREFETCH_MIN_RUNS = 3
# How much a function's mean run time moves towards its latest run.
RUN_MEAN_WEIGHT = 1 / 16
# A worker running tiny tasks starts its next one (as the node hears it: its
# reports come at least every prefetch_queue_seconds) well within this; a task
# of a tiny function running longer is not about to end (`runs_tiny`).
TINY_RUN_SILENCE = 0.05


class WorkerState(IntEnum):
    STARTING = 0
    IDLE = 1
    BUSY = 2


class Worker:
    __slots__ = ("wid", "client", "state", "task", "known_fns", "idle_since", "extra", "doomed",
                 "queue", "queued_fns", "pid", "leased", "started")

    def __init__(self, wid: str, extra: bool):
        self.wid = wid
        self.client = wid.encode()
        self.state = WorkerState.STARTING
        self.task: Task | None = None
        self.known_fns: set[bytes] = set()   # functions whose code it was sent
        self.idle_since = 0.0
        self.extra = extra    # started for demand (stopped when idle), not pre-started
        self.doomed = False   # a kill was asked: never give it another task
        self.queue: deque[Task] = deque()   # prefetched (ASSIGNED) tasks, in order
        self.queued_fns: dict[bytes, int] = {}   # their functions: fn_id -> how many
        self.pid = 0          # as its Hello says (0 until then)
        self.leased: dict | None = None   # leased to a driver (core/leases.py): what it holds
        self.started = 0.0    # when its task started (BUSY)

    def enqueue(self, task: Task) -> None:
        self.queue.append(task)
        fn = task.spec.fn_id
        self.queued_fns[fn] = self.queued_fns.get(fn, 0) + 1

    def unqueue(self, task: Task | None = None) -> Task:
        """Take `task` (the first if None) off the queue."""
        if task is None:
            task = self.queue.popleft()
        else:
            self.queue.remove(task)
        fn = task.spec.fn_id
        left = self.queued_fns[fn] - 1
        if left:
            self.queued_fns[fn] = left
        else:
            del self.queued_fns[fn]
        return task

    def take_queue(self) -> list[Task]:
        tasks = list(self.queue)
        self.queue.clear()
        self.queued_fns.clear()
        return tasks


def workers_for(num_cpus: float) -> int:
    """Workers a node pre-starts for `num_cpus` CPUs."""
    return int(math.ceil(num_cpus))


class WorkerPool:
    def __init__(self, *, resources: dict[str, float], num_workers: int, max_workers: int,
                 idle_worker_timeout: float, prefetch_max_task_seconds: float,
                 out: fx.Outbox, stats: dict, prefetch_queue: tuple[float, int] = (0.0, 1)):
        self.total = rs.to_units(resources)
        self.available = dict(self.total)
        self.gpus = GpuBook(self.total.get(rs.GPU, 0))
        if rs.GPU in self.total:
            self.available[rs.GPU] = self.gpus.capacity()
        self.num_workers = num_workers
        self.max_workers = max_workers
        self.idle_worker_timeout = idle_worker_timeout
        self.prefetch_max_task_seconds = prefetch_max_task_seconds
        self.prefetch_queue_seconds, self.prefetch_max_depth = prefetch_queue
        self.workers: dict[str, Worker] = {}
        self.idle: list[Worker] = []
        self._by_client: dict[bytes, Worker] = {}
        # fn_id -> [runs, peak run time, its last run returned a value in the store,
        # mean run time] (the peak decays 1% a run, so one slow outlier does not
        # disable prefetch for good; the mean weighs the last run RUN_MEAN_WEIGHT)
        self._fn_times: dict[bytes, list] = {}
        self._next_worker = 0
        self._out = out
        self._stats = stats

    # -- processes ------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.num_workers):
            self._spawn(extra=False)

    def _spawn(self, extra: bool) -> None:
        self._next_worker += 1
        wid = f"w{self._next_worker}"
        self.workers[wid] = worker = Worker(wid, extra)
        self._by_client[worker.client] = worker
        self._stats["workers_started"] += 1
        self._out.emit(fx.SpawnWorker(wid))

    def hello(self, worker_id: str, client: bytes, now: float, pid: int = 0) -> bool:
        """A worker process we started is up; False if we know no such one."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.client != client or worker.state != WorkerState.STARTING:
            return False
        worker.state = WorkerState.IDLE
        worker.idle_since = now
        worker.pid = pid
        self.idle.append(worker)
        return True

    def of_client(self, client: bytes) -> Worker | None:
        return self._by_client.get(client)

    def exited(self, wid: str) -> tuple[Worker | None, Task | None]:
        """A worker process ended: forget it and release what its task held.
        Returns it (its prefetched tasks still in its `queue`) and the task it
        was running, if any."""
        worker = self.workers.pop(wid, None)
        if worker is None:
            return None, None
        self._by_client.pop(worker.client, None)
        if worker in self.idle:
            self.idle.remove(worker)
        task = worker.task
        if worker.leased is not None and task is None:   # (a task holds the lease's share)
            rs.release(self.available, worker.leased)
        worker.leased = None
        if task is not None:
            self._stats["workers_crashed"] += 1
            worker.task = None
            self._release(task)
            task.worker = None
            task.state = TaskState.WAITING
        return worker, task

    def keep_prestarted(self) -> None:
        """Replace pre-started workers that died."""
        if sum(1 for w in self.workers.values() if not w.extra) < self.num_workers:
            self._spawn(extra=False)

    def spawn_for_demand(self, queues) -> None:
        """No idle worker: start as many as queued tasks would fit right now."""
        room = self.max_workers - len(self.workers)
        if room <= 0 or not queues.any_head_fits(self.available):
            return  # the common case: resources, not workers, are the limit
        starting = self.starting_count()
        fitting = queues.count_fitting(self.available, starting + room)
        for _ in range(min(room, fitting - starting)):
            self._spawn(extra=True)

    def reap_idle(self, now: float) -> list[Worker]:
        """Stop extra workers idle too long; the caller drops what they held."""
        reaped = []
        for worker in list(self.idle):
            if worker.extra and now - worker.idle_since > self.idle_worker_timeout:
                self.idle.remove(worker)
                del self.workers[worker.wid]
                self._by_client.pop(worker.client, None)
                self._out.emit(fx.StopWorker(worker.wid))
                reaped.append(worker)
        return reaped

    def kill(self, worker: Worker) -> None:
        worker.doomed = True
        self._out.emit(fx.KillWorker(worker.wid))

    def running_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.task is not None)

    def starting_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == WorkerState.STARTING)

    def assigned_count(self) -> int:
        return sum(len(w.queue) for w in self.workers.values())

    # -- tasks on workers -------------------------------------------------------------

    def idle_worker(self) -> Worker | None:
        return self.idle.pop() if self.idle else None

    def start_task(self, task: Task, worker: Worker, now: float) -> None:
        """The task runs on the worker from `now` on: it holds its resources."""
        rs.acquire(self.available, task.demand)
        gpu = task.demand.get(rs.GPU)
        if gpu:
            task.gpus = self.gpus.assign(gpu)
            self.available[rs.GPU] = self.gpus.capacity()
        task.state = TaskState.RUNNING
        task.worker = worker.wid
        task.attempts += 1
        worker.state = WorkerState.BUSY
        worker.task = task
        worker.started = now

    def task_ended(self, worker: Worker, task: Task, now: float) -> list[Task]:
        """A worker's task ended: release what it held, start its prefetched
        task or make it idle. Returns the prefetched tasks it gives back."""
        self._release(task)
        task.worker = None
        worker.task = None
        return self._next_or_idle(worker, now)

    def _next_or_idle(self, worker: Worker, now: float) -> list[Task]:
        given_back = self.give_back(worker) if worker.doomed else []
        if worker.queue:  # its prefetched task starts now, on the resources just freed
            nxt = worker.unqueue()
            self.start_task(nxt, worker, now)
            if nxt.cancelled:
                self._out.emit(fx.InterruptWorker(worker.wid, nxt.spec.task_id))
            return given_back
        worker.state = WorkerState.IDLE
        worker.idle_since = now
        if worker.leased is not None:   # the lease holds its share again
            rs.acquire(self.available, worker.leased)
        elif not worker.doomed:
            self.idle.append(worker)
        return given_back

    # -- leases (core/leases.py) --------------------------------------------------------

    def lease(self, worker: Worker, demand: dict) -> None:
        """An idle worker leaves the pool for a driver's direct tasks; the lease
        holds `demand` while no task of it runs (a running one holds it instead)."""
        self.idle.remove(worker)
        worker.leased = demand
        rs.acquire(self.available, demand)

    def unlease(self, worker: Worker, now: float) -> None:
        """The lease ended: the worker (if alive) is the pool's again."""
        demand, worker.leased = worker.leased, None
        if demand is None or self.workers.get(worker.wid) is not worker or worker.task is not None:
            return
        rs.release(self.available, demand)
        worker.idle_since = now
        if not worker.doomed:
            self.idle.append(worker)

    def start_leased(self, task: Task, worker: Worker, now: float) -> None:
        """A direct task runs on its leased worker, on the share the lease held."""
        rs.release(self.available, worker.leased)
        self.start_task(task, worker, now)

    def give_back(self, worker: Worker) -> list[Task]:
        """Take a worker's prefetched tasks off it (they are WAITING again)."""
        tasks = worker.take_queue()
        for task in tasks:
            task.worker = None
            task.state = TaskState.WAITING
        return tasks

    def revoked(self, worker: Worker, task: Task, now: float) -> list[Task]:
        """The worker dropped a prefetched task unstarted: it is WAITING again.
        Returns the tasks to queue again (it, and any the worker gives back)."""
        given_back: list[Task] = []
        if task.state == TaskState.ASSIGNED:
            worker.unqueue(task)
        elif task.state == TaskState.RUNNING and worker.task is task:
            # we had started it when its predecessor ended; the worker had not
            task.attempts -= 1
            self._release(task)
            worker.task = None
            given_back = self._next_or_idle(worker, now)
        else:
            return []
        task.worker = None
        task.state = TaskState.WAITING
        return given_back + [task]

    def _release(self, task: Task) -> None:
        """A running task ends or leaves its worker: what it held is free again."""
        rs.release(self.available, self._held(task))
        task.blocked = False
        if task.gpus is not None:
            self.gpus.release(task.gpus, task.demand[rs.GPU])
            task.gpus = None
            self.available[rs.GPU] = self.gpus.capacity()

    def free(self) -> dict[str, int]:
        """What is free, as views show it (all free GPU shares, not `capacity()`)."""
        free = {k: max(v, 0) for k, v in self.available.items()}
        if rs.GPU in free:
            free[rs.GPU] = self.gpus.free_total()
        return free

    @staticmethod
    def _held(task: Task) -> dict:
        """What a running task holds: its demand, less the CPU it gave back if blocked."""
        if task.blocked and rs.CPU in task.demand:
            return {k: v for k, v in task.demand.items() if k != rs.CPU}
        return task.demand

    # -- CPU lending -----------------------------------------------------------------

    def on_blocked(self, client: bytes, msg: p.Blocked) -> None:
        """A worker's task waits in get/wait (the scheduler's handler for Blocked)."""
        worker = self.of_client(client)
        task = worker.task if worker else None
        if task is not None and task.spec.task_id == msg.task_id and not task.blocked:
            self.block(worker, task)

    def on_unblocked(self, client: bytes, msg: p.Unblocked) -> None:
        worker = self.of_client(client)
        task = worker.task if worker else None
        if task is not None and task.spec.task_id == msg.task_id and task.blocked:
            self.unblock(task)

    def block(self, worker: Worker, task: Task) -> None:
        """Its task waits in get/wait: lend its CPU out, revoke what waits behind it."""
        task.blocked = True
        cpu = task.demand.get(rs.CPU, 0)
        if cpu:
            self.available[rs.CPU] = self.available.get(rs.CPU, 0) + cpu
        for queued in worker.queue:
            self._out.send(worker.client, p.Revoke(queued.spec.task_id))

    def unblock(self, task: Task) -> None:
        task.blocked = False
        cpu = task.demand.get(rs.CPU, 0)
        if cpu:  # may go below zero for a moment: the task is running again
            self.available[rs.CPU] = self.available.get(rs.CPU, 0) - cpu

    # -- prefetch ---------------------------------------------------------------------

    def record_run(self, fn_id: bytes, took: float, stored: bool = False) -> None:
        """A task of `fn_id` ran for `took` seconds (`stored`: it returned a value
        in the store)."""
        times = self._fn_times.get(fn_id)
        if times is None:
            self._fn_times[fn_id] = [1, took, stored, took]
        else:
            times[0] += 1
            times[1] = max(took, times[1] * 0.99)
            times[2] = stored
            times[3] += (took - times[3]) * RUN_MEAN_WEIGHT

    def stored_last(self, fn_id: bytes) -> bool:
        """Did the last run of `fn_id` return a value in the store?"""
        times = self._fn_times.get(fn_id)
        return times is not None and times[2]

    def quick(self, fn_id: bytes) -> bool:
        """Is this function quick (enough runs, all short)?"""
        times = self._fn_times.get(fn_id)
        return (times is not None and times[0] >= PREFETCH_MIN_RUNS
                and times[1] < self.prefetch_max_task_seconds)

    def tiny(self, fn_id: bytes, below: float) -> bool:
        """Has `fn_id` run PREFETCH_MIN_RUNS times, taking under `below` seconds
        on average?"""
        times = self._fn_times.get(fn_id)
        return times is not None and times[0] >= PREFETCH_MIN_RUNS and times[3] < below

    def runs_tiny(self, demand: dict, below: float, now: float) -> bool:
        """Is a worker here (not leased) running a task of this demand whose
        function is `tiny`, started less than TINY_RUN_SILENCE ago? It will take
        its next task within moments."""
        for worker in self.workers.values():
            task = worker.task
            if (task is not None and worker.leased is None and not task.blocked
                    and now - worker.started < TINY_RUN_SILENCE and task.demand == demand
                    and self.tiny(task.spec.fn_id, below)):
                return True
        return False

    def _room_behind(self, worker: Worker) -> bool:
        """May a busy worker take one more task? Always a first one (behind its
        quick running task); more only behind quick tasks whose slowest recent
        runs add up to less than `prefetch_queue_seconds`."""
        queue = worker.queue
        if not queue:
            return True
        if len(queue) >= self.prefetch_max_depth:
            return False
        work = 0.0
        for fn_id, count in worker.queued_fns.items():
            if not self.quick(fn_id):
                return False
            work += count * self._fn_times[fn_id][1]
        return work < self.prefetch_queue_seconds

    def _takes_prefetch(self, worker: Worker) -> bool:
        """Is a worker running a quick task that others may wait behind?"""
        running = worker.task
        return not (running is None or self.prefetch_max_task_seconds <= 0
                    or worker.leased is not None   # (a driver's: core/leases.py)
                    or len(worker.queue) >= self.prefetch_max_depth or running.blocked
                    or worker.doomed or running.cancelled or not self.quick(running.spec.fn_id)
                    or running.gpus is not None)   # (GPU ids are given at start)

    def may_pipeline(self, worker: Worker, task: Task) -> bool:
        """May a task wait on this busy worker, behind the ones making its
        arguments (core/feed.py)? As a prefetched task may."""
        return (self._takes_prefetch(worker) and task.shape == worker.task.shape
                and self._room_behind(worker))

    def assign(self, task: Task, worker: Worker) -> None:
        """Prefetch a task to a busy worker: it starts when the ones before it end."""
        task.state = TaskState.ASSIGNED
        task.worker = worker.wid
        worker.enqueue(task)

    def prefetch(self, queues) -> list[tuple[Task, Worker]]:
        """Assign queued quick tasks to busy workers; the caller sends them."""
        assigned = []
        for worker in self.workers.values():
            if not self._takes_prefetch(worker):
                continue
            while self._room_behind(worker):
                task = queues.pop(worker.task.shape)
                if task is None:
                    break
                self.assign(task, worker)
                self._stats["prefetched"] += 1
                assigned.append((task, worker))
            if not queues.count:
                break
        return assigned

    # -- invariants -------------------------------------------------------------------

    def validate(self, tasks: dict[bytes, Task]) -> None:
        self._validate_gpus(tasks)
        for name, total in self.total.items():
            if name == rs.GPU:
                continue
            running = sum(t.demand.get(name, 0) for t in tasks.values()
                          if t.state == TaskState.RUNNING
                          and not (t.blocked and name == rs.CPU))
            running += sum(w.leased.get(name, 0) for w in self.workers.values()
                           if w.leased is not None and w.task is None)
            assert self.available.get(name, 0) + running == total, (name, self.available, running)
        for t in tasks.values():
            if t.state == TaskState.RUNNING:
                w = self.workers[t.worker]
                assert w.task is t and w.state == WorkerState.BUSY
            if t.state == TaskState.ASSIGNED:
                w = self.workers[t.worker]
                assert t in w.queue and w.task is not None and w.task is not t
        for w in self.idle:
            assert w.state == WorkerState.IDLE and w.task is None and not w.queue
            assert w.leased is None
        for w in self.workers.values():
            assert all(t.state == TaskState.ASSIGNED and t.worker == w.wid for t in w.queue)
            fns: dict[bytes, int] = {}
            for t in w.queue:
                fns[t.spec.fn_id] = fns.get(t.spec.fn_id, 0) + 1
            assert w.queued_fns == fns, (w.queued_fns, fns)
            assert self._by_client[w.client] is w

    def _validate_gpus(self, tasks: dict[bytes, Task]) -> None:
        """Each GPU id's share is free or held by running tasks, a whole one by one task."""
        used = [0] * len(self.gpus)
        whole: set[int] = set()
        for t in tasks.values():
            gpu = t.demand.get(rs.GPU, 0)
            if t.state != TaskState.RUNNING or not gpu:
                assert t.gpus is None, (t.state, t.gpus)
                continue
            assert t.gpus and len(set(t.gpus)) == len(t.gpus), t.gpus
            for i in t.gpus:
                assert i not in whole, ("a whole GPU given twice", i)
                if gpu >= rs.UNIT:
                    whole.add(i)
                used[i] += min(gpu, rs.UNIT)
        for i, free in enumerate(self.gpus.free):
            assert free + used[i] == rs.UNIT and (i not in whole or free == 0), (i, free, used)
        if rs.GPU in self.total:
            assert self.available[rs.GPU] == self.gpus.capacity()
