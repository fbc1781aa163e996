"""The ready queues of one node: tasks whose arguments are all here, by
resource shape (core/resources.py), waiting for a worker or a peer.

The scheduler pushes a ready task and asks for the best one that fits
(`pick`); the worker pool pops more of a shape for prefetch and counts what
fits for spawning; spillover looks at and pops the head of each shape.

Order within a shape, and across the heads of all shapes that fit: the
deepest task first (a nested task before its parents' siblings: this is
what lets 1,000 nested chains finish on one CPU), then the oldest.

A queued task that ends some other way (cancelled, failed through an
argument) keeps its heap entry until that entry reaches the head: `discard`
only uncounts it, and `_head` drops such entries lazily -- the one place
that tidies a heap.
"""
from __future__ import annotations

import heapq

from . import resources as rs
from .tasks import Task, TaskState


class ReadyQueues:
    def __init__(self):
        self._heaps: dict[tuple, list] = {}   # shape -> heap of (-depth, seq, Task)
        self.count = 0                        # tasks QUEUED
        self._counts: dict[tuple, int] = {}   # shape -> its tasks QUEUED (none: no key)

    def __len__(self) -> int:
        return self.count

    def push(self, task: Task) -> None:
        task.state = TaskState.QUEUED
        heap = self._heaps.get(task.shape)
        if heap is None:
            heap = self._heaps[task.shape] = []
        heapq.heappush(heap, (-task.spec.depth, task.seq, task))
        self.count += 1
        self._counts[task.shape] = self._counts.get(task.shape, 0) + 1

    def discard(self, task: Task) -> None:
        """A queued task ends: uncount it (its entry goes when it reaches the head)."""
        self.count -= 1
        self._uncount(task.shape)

    def _uncount(self, shape: tuple) -> None:
        left = self._counts[shape] - 1
        if left:
            self._counts[shape] = left
        else:
            del self._counts[shape]

    @staticmethod
    def _head(heap: list):
        """The heap's first entry of a task still QUEUED, dropping stale ones."""
        while heap:
            if heap[0][2].state == TaskState.QUEUED:
                return heap[0]
            heapq.heappop(heap)
        return None

    def head(self, shape: tuple) -> Task | None:
        heap = self._heaps.get(shape)
        entry = self._head(heap) if heap else None
        return entry[2] if entry else None

    def pop(self, shape: tuple) -> Task | None:
        """Take the head of a shape out of the queue; the caller takes custody."""
        heap = self._heaps.get(shape)
        if not heap or self._head(heap) is None:
            return None
        return self._take(heap)

    def pick(self, available: dict[str, int]) -> Task | None:
        """Pop the best queued task that fits `available` (see the module's order)."""
        best = best_heap = None
        for heap in self._heaps.values():
            entry = self._head(heap)
            if entry is not None and rs.fits(available, entry[2].demand) \
                    and (best is None or entry < best):
                best, best_heap = entry, heap
        return self._take(best_heap) if best is not None else None

    def _take(self, heap: list) -> Task:
        """Pop a heap whose head is QUEUED (`_head` said so)."""
        task = heapq.heappop(heap)[2]
        task.state = TaskState.WAITING
        self.count -= 1
        self._uncount(task.shape)
        return task

    def shapes(self) -> list[tuple]:
        return list(self._heaps)

    def any_head_fits(self, available: dict[str, int]) -> bool:
        for heap in self._heaps.values():
            entry = self._head(heap)
            if entry is not None and rs.fits(available, entry[2].demand):
                return True
        return False

    def count_fitting(self, available: dict[str, int], limit: int) -> int:
        """How many queued tasks (up to `limit`) would fit in `available` at once,
        taking each shape's tasks in turn until one does not fit."""
        budget = dict(available)
        fitting = 0
        for heap in self._heaps.values():
            for _, _, task in heap:
                if task.state != TaskState.QUEUED:
                    continue
                if not rs.fits(budget, task.demand):
                    break  # FIFO per shape: later ones of this shape wait too
                rs.acquire(budget, task.demand)
                fitting += 1
                if fitting >= limit:
                    return fitting
        return fitting

    def pending_demand(self, totals: list[dict[str, int]]) -> list[dict[str, int]]:
        """The shapes with queued tasks that no node (of `totals`) can ever run.
        Read only: a query must not tidy the heaps."""
        return [dict(shape) for shape, heap in self._heaps.items()
                if not any(rs.feasible(t, dict(shape)) for t in totals)
                and any(task.state == TaskState.QUEUED for _, _, task in heap)]

    def demands(self) -> list[tuple[dict[str, int], int]]:
        """(shape, tasks queued) of each shape with queued tasks, most tasks first."""
        return [(dict(shape), n) for shape, n in
                sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def validate(self, tasks: dict[bytes, Task]) -> None:
        queued = sum(1 for t in tasks.values() if t.state == TaskState.QUEUED)
        assert queued == self.count, (queued, self.count)
        by_shape: dict[tuple, int] = {}
        for t in tasks.values():
            if t.state == TaskState.QUEUED:
                by_shape[t.shape] = by_shape.get(t.shape, 0) + 1
        assert by_shape == self._counts, (by_shape, self._counts)
        in_heaps = {id(e[2]) for heap in self._heaps.values() for e in heap
                    if e[2].state == TaskState.QUEUED}
        assert len(in_heaps) == self.count, "a queued task is missing from its heap"
