"""A consistent-hash ring of node ids: which nodes replicate whose GCS shard.

core/replication.py builds one from the live members of a node's view and
asks it for replica sets:

    Ring(node ids) .replicas(shard, r) --> [shard's owner, then its r successors]

A node sits on the ring at a point drawn from a hash of its id. The shard a
node writes (keyed by its node id, core/gcs.py) lives on its owner and on
the `r` nodes that follow the owner's point clockwise. So every live node
holds r + 1 shards of live owners (its own and its r predecessors'), and a
node joining or leaving moves r shards' replicas, no more. With at most
r + 1 nodes, every node holds every shard. A shard whose owner is not on the
ring (dead, or not yet known) lives on the r nodes after its owner's point.

Pure: no clock, no randomness, no I/O.
"""
from __future__ import annotations

from bisect import bisect_right
from hashlib import blake2b


def point(node_id: bytes) -> int:
    """Where a node id sits on the ring (64 bits)."""
    return int.from_bytes(blake2b(node_id, digest_size=8).digest(), "big")


class Ring:
    __slots__ = ("members", "_points", "_order")

    def __init__(self, members):
        self.members = frozenset(members)
        self._order = sorted(self.members, key=lambda m: (point(m), m))
        self._points = [point(m) for m in self._order]

    def __len__(self) -> int:
        return len(self._order)

    def successors(self, node_id: bytes, count: int) -> list[bytes]:
        """The first `count` members clockwise after node_id's point, without it."""
        n = len(self._order)
        if n == 0 or count <= 0:
            return []
        start = bisect_right(self._points, point(node_id))
        out = []
        for k in range(n):
            m = self._order[(start + k) % n]
            if m != node_id:
                out.append(m)
                if len(out) == count:
                    break
        return out

    def predecessors(self, node_id: bytes, count: int) -> list[bytes]:
        """The first `count` members counter-clockwise before node_id's point, without it."""
        n = len(self._order)
        if n == 0 or count <= 0:
            return []
        p = point(node_id)
        start = bisect_right(self._points, p) - 1
        out = []
        for k in range(n):
            m = self._order[(start - k) % n]
            if m != node_id:
                out.append(m)
                if len(out) == count:
                    break
        return out

    def replicas(self, shard: bytes, r: int) -> list[bytes]:
        """The nodes that hold `shard`: its owner first, then its r successors."""
        return [shard, *self.successors(shard, r)]
