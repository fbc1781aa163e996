"""LinkFaults: what a FabricSim's links do to the messages between nodes.

FabricSim (fabric.py) asks `copies(src, dst)` for every message one node
sends another, on the control and the object sockets alike, and drops a
copy that falls due while `is_cut(src, dst)`. chaos.py turns the knobs: a
lossy, duplicating, reordering, spiky network while the faults last, the
cuts of partitions (symmetric or one-way), then `calm()` and `heal()`.
All randomness comes from the `random.Random` it is given.
"""
from __future__ import annotations

import random

from .network import NetworkStatistics


class LinkFaults:
    """The faults of a FabricSim's links (testing/sim/fabric.py asks `copies`
    for every message between two nodes, control and object sockets alike).

    Endpoints are node indexes. A message from a to b is lost if (a, b) is
    cut when it is sent or when it falls due; otherwise it is lost with
    probability `loss`, else sent twice with probability `duplicate`. Each
    copy gets an extra delay: with probability `spike` one drawn from
    `spike_delay`, else none; with probability `reorder` it skips the link's
    FIFO order (it may overtake earlier messages). `calm()` turns all of it
    off (the cuts stay until `heal`).
    """

    def __init__(self, rng: random.Random, *, loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, spike: float = 0.0,
                 spike_delay: tuple[float, float] = (0.0, 0.0)):
        self.rng = rng
        self.loss, self.duplicate, self.reorder, self.spike = loss, duplicate, reorder, spike
        self.spike_delay = spike_delay
        self.cut: set[tuple] = set()       # directed (src, dst) pairs
        self.stats = NetworkStatistics()

    def partition(self, side_a, side_b, *, one_way: bool = False) -> None:
        """Cut what side_a sends to side_b, and (unless one_way) what it receives."""
        for a in side_a:
            for b in side_b:
                if a != b:
                    self.cut.add((a, b))
                    if not one_way:
                        self.cut.add((b, a))

    def heal(self) -> None:
        self.cut.clear()

    def calm(self) -> None:
        self.loss = self.duplicate = self.reorder = self.spike = 0.0

    def is_cut(self, src, dst) -> bool:
        return (src, dst) in self.cut

    def copies(self, src, dst, channel: str = "ctl") -> list[tuple[float, bool]]:
        """(extra delay, keeps FIFO order) of each copy of a message src sends dst
        now on `channel` ("ctl": node to node, "obj": chunk requests and chunks);
        [] = lost."""
        self.stats.sent += 1
        if (src, dst) in self.cut:
            self.stats.cut += 1
            return []
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.stats.lost += 1
            return []
        n = 2 if self.duplicate and rng.random() < self.duplicate else 1
        self.stats.duplicated += n - 1
        out = []
        for _ in range(n):
            extra = rng.uniform(*self.spike_delay) if self.spike and rng.random() < self.spike \
                else 0.0
            fifo = not (self.reorder and rng.random() < self.reorder)
            out.append((extra, fifo))
        return out
