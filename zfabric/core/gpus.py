"""Which GPUs of a node a running task holds: the node's GPU ids and their free shares.

A node declares `num_gpus` whole GPUs (a "GPU" resource of that many; the
node does not probe the hardware, as Ray's `num_gpus` is declared too),
numbered 0..N-1. The worker pool (core/workers.py) asks the book for ids
when a task that demands "GPU" starts, and hands them back when it ends
(finished, failed, cancelled, revoked, or its worker died); the ids go to
the worker in the Execute's `opts["gpus"]`, which sets CUDA_VISIBLE_DEVICES.

- A demand of one or more whole GPUs gets that many distinct ids, each
  wholly free, so no two running tasks share such an id (a demand above
  one that is not whole, which the API refuses, is rounded up).
- A fractional demand (below one GPU) shares one id with other fractional
  demands: the busiest id it still fits on (best fit, lowest id first), so
  fractions pack onto few GPUs and whole ones stay free, as Ray does.
- A worker blocked in get/wait keeps its GPUs (only its CPU is lent out).

`capacity()` is the largest GPU demand that can start now: every whole id
free, or else the biggest free share. The pool keeps it as its "GPU"
availability, so the plain `fits` of core/resources.py answers exactly
whether a GPU demand can be given ids now (an aggregate of free shares
could not: two half-used GPUs do not make one whole GPU). `free_total()` is
the aggregate, for views.

Amounts are in resource units (core/resources.py: 1 GPU = UNIT). Pure.
"""
from __future__ import annotations

from .resources import UNIT


class GpuBook:
    __slots__ = ("free",)

    def __init__(self, total_units: int):
        self.free = [UNIT] * (max(0, total_units) // UNIT)   # id -> free share (units)

    def __len__(self) -> int:
        return len(self.free)

    def capacity(self) -> int:
        whole = sum(1 for f in self.free if f == UNIT)
        if whole:
            return whole * UNIT
        return max(self.free, default=0)

    def free_total(self) -> int:
        return sum(self.free)

    def assign(self, demand: int) -> list[int]:
        """The ids for a GPU demand that fits `capacity()`; they are taken."""
        if demand >= UNIT:
            need = -(-demand // UNIT)   # (a share above one GPU takes whole ones)
            ids = [i for i, f in enumerate(self.free) if f == UNIT][:need]
            assert len(ids) == need, (demand, self.free)
            for i in ids:
                self.free[i] = 0
            return ids
        best = None
        for i, f in enumerate(self.free):
            if f >= demand and (best is None or f < self.free[best]):
                best = i
        assert best is not None, (demand, self.free)
        self.free[best] -= demand
        return [best]

    def release(self, ids: list[int], demand: int) -> None:
        """A task that held `ids` for `demand` ended: its shares are free again."""
        share = UNIT if demand >= UNIT else demand
        for i in ids:
            self.free[i] += share
            assert self.free[i] <= UNIT, (ids, demand, self.free)
