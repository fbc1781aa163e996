"""A virtual clock and an in-memory network, for simulated clusters.

    Clock          virtual time, now = ticks * step (no drift from adding floats)
    Network        messages between named endpoints: a delay drawn per message
                   (so also reordering), loss, duplication, partitions
                   (symmetric, or one-way: `cut`);
                   send(src, dst, payload, now) / deliver_due(now)

They know nothing of what they carry: `membership.MembershipSim` drives
core.membership over them, and tests may drive other state machines the
same way. All randomness comes from the `random.Random` they are given.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, replace


class Clock:
    def __init__(self, step: float):
        self.step = step
        self.ticks = 0

    @property
    def now(self) -> float:
        return self.ticks * self.step

    def advance(self) -> float:
        self.ticks += 1
        return self.now


@dataclass
class NetworkStatistics:
    sent: int = 0
    lost: int = 0          # by the loss probability
    duplicated: int = 0
    cut: int = 0           # dropped by a partition, at send or at delivery
    delivered: int = 0


class Network:
    """In-memory datagrams between endpoints named by any hashable value.

    A message is delivered after a delay drawn uniformly from `delay`, unless
    it is lost (probability `loss`) or its endpoints are cut from each other
    when it is sent or when it falls due. With probability `duplicate` it is
    delivered twice, each copy with its own delay.
    """

    def __init__(self, rng: random.Random, *, delay: tuple[float, float] = (0.0, 0.0),
                 loss: float = 0.0, duplicate: float = 0.0):
        assert 0 <= delay[0] <= delay[1]
        self.rng = rng
        self.delay = delay
        self.loss = loss
        self.duplicate = duplicate
        self._queue: list[tuple] = []     # heap of (due, seq, src, dst, payload)
        self._seq = 0                     # ties at one due time go in send order
        self._cut: set[tuple] = set()     # (src, dst): what src sends dst is dropped
        self._stats = NetworkStatistics()

    def partition(self, side_a, side_b) -> None:
        """Cut every endpoint in side_a from every endpoint in side_b, both ways."""
        self.cut(side_a, side_b)
        self.cut(side_b, side_a)

    def cut(self, sources, destinations) -> None:
        """One way: what an endpoint in `sources` sends one in `destinations` is lost."""
        self._cut.update((a, b) for a in sources for b in destinations if a != b)

    def heal(self) -> None:
        self._cut.clear()

    def is_cut(self, src, dst) -> bool:
        return (src, dst) in self._cut

    def send(self, src, dst, payload, now: float) -> None:
        self._stats.sent += 1
        lost = self.rng.random() < self.loss
        copies = 2 if self.rng.random() < self.duplicate else 1
        if self.is_cut(src, dst):
            self._stats.cut += 1
            return
        if lost:
            self._stats.lost += 1
            return
        self._stats.duplicated += copies - 1
        for _ in range(copies):
            due = now + self.rng.uniform(*self.delay)
            heapq.heappush(self._queue, (due, self._seq, src, dst, payload))
            self._seq += 1

    def deliver_due(self, now: float) -> list[tuple]:
        """(src, dst, payload) of every message due by `now`, in due-time order."""
        out = []
        while self._queue and self._queue[0][0] <= now:
            _, _, src, dst, payload = heapq.heappop(self._queue)
            if self.is_cut(src, dst):
                self._stats.cut += 1
                continue
            self._stats.delivered += 1
            out.append((src, dst, payload))
        return out

    def statistics(self) -> NetworkStatistics:
        return replace(self._stats)
