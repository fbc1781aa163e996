"""Which GCS shards this node replicates, and with whom it exchanges them.

The fabric (core/fabric.py) owns a `Replication` beside its `Gcs` and asks it
every question about where records go; core/ring.py places the shards:

    fabric --set_live(ids)-----------> Replication  (the live members of our view changed)
    fabric --push_targets()----------> [node id]: our shard's replicas, for GcsUpdate
    fabric --vector(gcs)-------------> the version vector our Gossip carries
    fabric --updates_for(gcs, peer, vector)
                                     -> records for the shards `peer` replicates and lacks
    fabric --ring_peer()-------------> a ring neighbour for this round's anti-entropy, or None

A shard is replicated on its owner and the `replicas` nodes after it on the
ring of live members (owner + R successors). While the cluster has at most
R + 1 live nodes every node replicates every shard, and every answer here is
what full replication gives: pushes to every live peer, the whole vector,
no ring neighbour. Beyond that, a node replicates its own shard and its R
ring predecessors' (and those of dead owners whose point falls in that arc),
pushes to its R successors only, gossips a vector of its replicated shards
only, and each round also gossips to one of its 2R ring neighbours -- the
nodes that share shards with it -- so that a node that became a replica
(a join, a death) catches up by the usual snapshot / delta anti-entropy.

A node drops the shards of live owners it no longer replicates (`strays`,
after the ring changed) and ignores records of them (`keeps`); it keeps a
dead owner's shard it holds, since its copy may be one of the last. Views
differ for a while after a change: a peer may skip a shard we replicate
(the next exchange with a ring neighbour brings it). Pure: no clock, no I/O.
"""
from __future__ import annotations

from .gcs import Gcs
from .ring import Ring


class Replication:
    def __init__(self, node_id: bytes, replicas: int):
        if replicas < 1:
            raise ValueError("gcs_replicas must be >= 1")
        self.node_id = node_id
        self.replicas = replicas
        self.ring = Ring([node_id])
        self._sets: dict[bytes, frozenset] = {}   # shard -> its replica set, for this ring
        self._neighbours: list[bytes] = []
        self._next = 0

    # -- the ring ---------------------------------------------------------------

    def set_live(self, live) -> bool:
        """The live members of our view (we are always one); True if the ring changed."""
        members = frozenset(live) | {self.node_id}
        if members == self.ring.members:
            return False
        self.ring = Ring(members)
        self._sets.clear()
        r = self.replicas
        self._neighbours = list(dict.fromkeys(
            self.ring.successors(self.node_id, r) + self.ring.predecessors(self.node_id, r)))
        self._next = 0
        return True

    def full(self) -> bool:
        """Does every live node replicate every shard (at most R + 1 live nodes)?"""
        return len(self.ring) <= self.replicas + 1

    def replica_set(self, shard: bytes) -> frozenset:
        s = self._sets.get(shard)
        if s is None:
            s = self._sets[shard] = frozenset(self.ring.replicas(shard, self.replicas))
        return s

    def replicates(self, node_id: bytes, shard: bytes) -> bool:
        """Does `node_id` hold `shard`, as our view of the ring has it?"""
        return self.full() or node_id in self.replica_set(shard)

    def keeps(self, shard: bytes) -> bool:
        """Do we keep `shard`: we replicate it, or its owner is not live in our
        view (a dead owner's shard we hold may be one of its last copies)?"""
        return self.full() or shard not in self.ring.members or \
            self.node_id in self.replica_set(shard)

    def strays(self, gcs: Gcs) -> list[bytes]:
        """Shards we hold and no longer keep (a live owner's, placed elsewhere
        since): the fabric drops them, their owner and replicas hold them."""
        return [s for s in gcs.shards() if not self.keeps(s)]

    # -- what the fabric sends ------------------------------------------------------

    def push_targets(self) -> list[bytes]:
        """The peers our new deltas go to at once: our shard's other replicas."""
        return sorted(self.replica_set(self.node_id) - {self.node_id})

    def vector(self, gcs: Gcs) -> dict[bytes, int]:
        """Our wanted vector (core/gcs.py), of the shards we replicate only."""
        wanted = gcs.wanted_vector()
        if self.full():
            return wanted
        me = self.node_id
        return {s: v for s, v in wanted.items() if self.replicates(me, s)}

    def updates_for(self, gcs: Gcs, peer: bytes, vector) -> list[list]:
        """What `peer`, at `vector`, lacks of the shards it replicates."""
        if self.full():
            return gcs.updates_for(vector)
        return gcs.updates_for(vector, only=lambda shard: self.replicates(peer, shard))

    def ring_peer(self) -> bytes | None:
        """The next of our ring neighbours (R successors, R predecessors), taken in
        turn, or None while replication is full (every gossip target is one)."""
        if self.full() or not self._neighbours:
            return None
        peer = self._neighbours[self._next % len(self._neighbours)]
        self._next += 1
        return peer
