"""The feed: which tasks go to which of this node's workers, after every event.

`Feed.schedule` starts queued tasks on idle workers (deepest first, then
oldest: core/queues.py), asks the pool for extra workers for the demand that
fits, hands what cannot start here to the spillover (core/spill.py), and
prefetches quick tasks to busy workers (core/workers.py). It then pipelines:
a waiting task whose missing arguments one busy worker is making goes to that
worker behind them (`pipeline`), so a chain of quick tasks costs no round
trip to the node per link. A worker runs its tasks in the order their
Executes were sent, so a task is pipelined only after everything decided
before it was sent.

Part of the scheduler (core/scheduler.py), whose state it reads and changes:
its tasks, queues, pool, objects and outbox.
"""
from __future__ import annotations

from .. import ids
from .. import protocol as p
from .tasks import Task, TaskState


class Feed:
    def __init__(self, sched):
        self.sched = sched

    def schedule(self) -> None:
        """Start, spill, prefetch and pipeline what the last event made possible."""
        sched = self.sched
        queues, pool = sched.queues, sched.pool
        if not queues.count:
            if sched.leases.asks and pool.idle:   # (core/leases.py)
                sched.leases.grant_asked()
            return
        sent = []
        while pool.idle:
            task = queues.pick(pool.available)
            if task is None:
                break
            worker = pool.idle_worker()
            pool.start_task(task, worker, sched.now)
            self.send_execute(task, worker)
            sent.append(task)
        else:
            pool.spawn_for_demand(queues)
            if sched.leases.book.by_client:   # (core/leases.py: a lease yields to queued work)
                sched.leases.recall()
        if queues.count and sched.spill.peers:
            sched.spill.spill()
        if queues.count:
            for task, worker in pool.prefetch(queues):
                self.send_execute(task, worker)
                sent.append(task)
        for task in sent:   # (only now: a worker runs its tasks in the order they were sent)
            self.pipeline_behind(task)

    def send_execute(self, task: Task, worker) -> None:
        sched, spec = self.sched, task.spec
        fn_blob = sched.functions.for_receiver(worker.known_fns, spec.fn_id)
        states, payloads = sched.objects.describe_for_worker(spec.deps)
        sched.out.send(worker.client, p.Execute(
            spec.task_id, spec.name, spec.fn_id, spec.num_returns, spec.depth,
            spec.deps, states, fn_blob, spec.args_blob, spec.retry_blob, payloads,
            spec.opts if task.gpus is None else {**spec.opts, "gpus": task.gpus}))

    def pipeline_behind(self, task: Task) -> None:
        """A task was just sent to a worker: the tasks waiting for its returns may
        follow it there (`pipeline`)."""
        entries, tasks = self.sched.objects.entries, self.sched.tasks
        for oid in task.returns:
            entry = entries.get(oid)
            if entry is not None and entry.dependents:
                for tid in list(entry.dependents):
                    dependent = tasks.get(tid)
                    if dependent is not None and dependent.state == TaskState.WAITING:
                        self.pipeline(dependent)

    def top_up(self, worker) -> None:
        """A task on `worker` ended, so there is room behind its queue again: the
        tasks waiting for the last one there may follow it (a pipelined chain
        keeps streaming to its worker while the worker runs)."""
        tail = worker.queue[-1] if worker.queue else worker.task
        if tail is not None:
            self.pipeline_behind(tail)

    def pipeline(self, task: Task) -> None:
        """Prefetch a waiting task behind the tasks making its missing arguments,
        if one worker makes them all: that worker hands it their values itself
        (their Execute states say PENDING), so a chain of quick tasks runs
        without a round trip to this node per link. The worker gives it back
        (Revoked) if one of them failed. Not behind a function whose last run
        returned a value in the store (the worker hands on inline values only:
        this node may refuse a stored one), not while a worker is idle unless the
        task is the only one waiting for those arguments (a fan-out runs in
        parallel), and only as prefetch allows (WorkerPool.may_pipeline)."""
        sched = self.sched
        tasks, entries, pool, wid = sched.tasks, sched.objects.entries, sched.pool, None
        for oid in task.missing:
            producer = tasks.get(ids.task_of(oid))
            if (producer is None or producer.worker is None or wid not in (None, producer.worker)
                    or pool.stored_last(producer.spec.fn_id)   # (it keeps inline ones)
                    or (pool.idle and len(entries[oid].dependents) > 1)):
                return
            wid = producer.worker
        for oid in task.spec.deps:
            if oid not in task.missing and not entries[oid].local:
                return
        worker = pool.workers.get(wid)
        if task.cancelled or worker is None or not pool.may_pipeline(worker, task):
            return
        pool.assign(task, worker)
        sched.stats["pipelined"] += 1
        self.send_execute(task, worker)
        self.pipeline_behind(task)
