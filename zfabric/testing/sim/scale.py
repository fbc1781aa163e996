"""Light worlds for many nodes: membership alone, the GCS alone (bench/scale_sim.py).

MembershipSim and FabricSim check every view after every step and keep a
history; at 1,000 nodes that costs more than the nodes do. These worlds run
the same core state machines (core.membership.Membership, core.gcs.Gcs with
core.replication.Replication) the way core/fabric.py drives them, one gossip
round per step, with no per-step validation, and count what each node sends:
messages and msgpack bytes (`Traffic`).

    MembershipWorld  N Membership: join, crash, partition (two halves), heal;
                     a message sent in one round arrives in the next
    GcsWorld         N Gcs replicas: each node writes its shard at a steady
                     rate, pushes its new deltas to its shard's replicas, and
                     answers each peer's gossiped version vector

All randomness comes from one seed.
"""
from __future__ import annotations

import random

import msgpack

from ...core.gcs import Gcs
from ...core.membership import ALIVE, DEAD, Membership
from ...core.replication import Replication
from ...ids import NODE_ID_SIZE

# A node's gossiped view as a 2-CPU node sends it (core/fabric.py `_publish_view`).
def node_info(i: int) -> dict:
    host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    return {"address": f"tcp://{host}:7000", "object_address": f"tcp://{host}:7001",
            "host": host, "port": 7000, "pid": 1000 + i, "auth": "curve",
            "total": {"CPU": 2.0}, "available": {"CPU": 2.0}, "queued": 0, "running": 0,
            "store_used": 0, "store_capacity": 1 << 33, "spilled_bytes": 0,
            "spilled_objects": 0, "demands": []}


class Traffic:
    """Messages and bytes each node sent, by kind, since `reset()`."""

    def __init__(self):
        self.reset(0.0)

    def reset(self, now: float) -> None:
        self.since = now
        self.messages: dict[str, dict[int, int]] = {}
        self.bytes: dict[str, dict[int, int]] = {}

    def count(self, kind: str, sender: int, nbytes: int, messages: int = 1) -> None:
        m = self.messages.setdefault(kind, {})
        m[sender] = m.get(sender, 0) + messages
        b = self.bytes.setdefault(kind, {})
        b[sender] = b.get(sender, 0) + nbytes

    def per_node(self, kind: str, nodes: int, now: float) -> dict:
        """Mean and max per node, per second, over the window."""
        span = max(now - self.since, 1e-9)
        m = self.messages.get(kind, {})
        b = self.bytes.get(kind, {})
        return {"messages_per_s": sum(m.values()) / nodes / span,
                "bytes_per_s": sum(b.values()) / nodes / span,
                "max_bytes_per_s": max(b.values(), default=0) / span}


class _Rounds:
    """A world that moves in rounds (`step`)."""

    def step(self) -> None:
        raise NotImplementedError

    def run_until(self, condition, max_rounds: int) -> int | None:
        """Rounds until condition() holds, or None after max_rounds."""
        for k in range(max_rounds + 1):
            if condition():
                return k
            if k < max_rounds:
                self.step()
        return None


class MembershipWorld(_Rounds):
    """N Membership instances gossiping in rounds, as core/fabric.py drives them.

    Each step is one gossip round (`gossip_interval`): the messages sent in the
    last round arrive (a member the receiver holds DEAD, or a join, is answered
    at once, as the fabric does), then every running node ticks and sends
    `gossip_rows(target)` to its targets. Bootstrapped: every node starts
    knowing every other.
    """

    def __init__(self, n: int, seed: int, *, info=None, **config):
        self.rng = random.Random(seed)
        self._info = info or node_info   # i -> node i's gossiped view
        self.config = config
        self.interval = config.get("gossip_interval", 0.2)
        self.rounds = 0
        self.nodes: list[Membership] = []
        self.running: set[int] = set()
        self.index: dict[bytes, int] = {}
        self._by_address: dict[str, int] = {}
        self.side: dict[int, int] = {}   # while partitioned: node -> its half
        self._inflight: list = []
        self.traffic = Traffic()
        for _ in range(n):
            self._add()
        rows = [m.me.row() for m in self.nodes]
        for m in self.nodes:
            m.merge(rows, self.now)

    @property
    def now(self) -> float:
        # (a hair over the interval: a node starts a round only once a full
        # gossip_interval has passed, and 0.7 - 0.6 < 0.1 in floats)
        return self.rounds * self.interval * (1 + 1e-9)

    def _add(self) -> int:
        i = len(self.nodes)
        node_id = self.rng.randbytes(NODE_ID_SIZE)
        info = self._info(i)
        address = node_info(i)["address"]
        self._by_address[address] = i
        m = Membership(node_id, address, info, now=self.now,
                       rng=random.Random(self.rng.getrandbits(64)), **self.config)
        self.nodes.append(m)
        self.index[node_id] = i
        self.running.add(i)
        return i

    # -- driving -----------------------------------------------------------------

    def _send(self, src: int, dst: int, rows: list, nbytes: int, reply: bool) -> None:
        self.traffic.count("membership", src, nbytes)
        self._inflight.append((src, dst, rows, reply))

    def _cut(self, a: int, b: int) -> bool:
        return bool(self.side) and self.side.get(a) != self.side.get(b)

    def step(self) -> None:
        self.rounds += 1
        now = self.now
        inflight, self._inflight = self._inflight, []
        for src, dst, rows, reply in inflight:
            if dst not in self.running or self._cut(src, dst):
                continue
            node = self.nodes[dst]
            node.merge(rows, now, sender=self.nodes[src].me.node_id)
            if reply or node.answers(self.nodes[src].me.node_id):
                back = node.answer_rows(self.nodes[src].me.node_id, rows)
                self._send(dst, src, back, len(msgpack.packb(back)), False)
        for i in sorted(self.running):
            node = self.nodes[i]
            targets, _changes = node.tick(now)
            node.take_forgotten()
            for node_id, address in targets:
                rows = node.gossip_rows(node_id)
                self._send(i, self._by_address[address], rows, len(msgpack.packb(rows)),
                           node.wants_reply(node_id))

    # -- events ------------------------------------------------------------------

    def join(self, via: int) -> int:
        """A new node joins through node `via` (its join Gossip, and the reply)."""
        i = self._add()
        new, seed = self.nodes[i], self.nodes[via]
        seed.merge([new.me.row()], self.now)
        new.merge(seed.rows(), self.now)
        return i

    def crash(self, i: int) -> None:
        self.running.discard(i)

    def partition(self, half: set[int]) -> None:
        self.side = {i: int(i in half) for i in range(len(self.nodes))}

    def heal(self) -> None:
        self.side = {}

    # -- views -------------------------------------------------------------------

    def state(self, observer: int, subject: int):
        m = self.nodes[observer].members.get(self.nodes[subject].me.node_id)
        return None if m is None else m.state

    def all_hold(self, subject: int, state) -> bool:
        return all(self.state(i, subject) == state for i in self.running if i != subject)

    def agreed(self) -> bool:
        """Every running node holds every other running one ALIVE."""
        live = {self.nodes[i].me.node_id for i in self.running}
        for i in self.running:
            members = self.nodes[i].members
            for node_id in live:
                m = members.get(node_id)
                if m is None or m.state != ALIVE:
                    return False
        return True

    def split_seen(self, half: set[int]) -> bool:
        """Every running node holds every running node of the other half DEAD."""
        for i in self.running:
            members = self.nodes[i].members
            for j in self.running:
                if (i in half) != (j in half) and \
                        members[self.nodes[j].me.node_id].state != DEAD:
                    return False
        return True


class GcsWorld(_Rounds):
    """N Gcs replicas behind a fixed set of live members, as core/fabric.py moves
    records: each node writes `writes_per_round` deltas a round (values of about
    `value_bytes`), pushes them (GcsUpdate) to the push targets its Replication
    names, and gossips its wanted vector to `fanout` random peers (plus one ring
    neighbour when replication is partial), which answer what it lacks."""

    def __init__(self, n: int, seed: int, *, replicas: int, fanout: int = 3,
                 interval: float = 0.2, writes_per_round: float = 1.0,
                 value_bytes: int = 120, log_capacity: int = 10_000):
        self.rng = random.Random(seed)
        self.loss = 0.0            # each message is lost with this probability,
        self.duplicate = 0.0       # delivered twice with this one,
        self.reorder = False       # and a round's messages arrive in any order
        self.interval = interval
        self.fanout = fanout
        self.rounds = 0
        self.writes_per_round = writes_per_round
        self.value = "x" * value_bytes
        self.ids = [self.rng.randbytes(NODE_ID_SIZE) for _ in range(n)]
        self.index = {node_id: i for i, node_id in enumerate(self.ids)}
        self.gcs = [Gcs(node_id, log_capacity=log_capacity) for node_id in self.ids]
        self.repl = [Replication(node_id, replicas) for node_id in self.ids]
        for r in self.repl:
            r.set_live(self.ids)
        self.running = set(range(n))
        self._written = [0] * n
        self._inflight: list = []
        self.traffic = Traffic()

    @property
    def now(self) -> float:
        return self.rounds * self.interval

    def step(self) -> None:
        self.rounds += 1
        inflight, self._inflight = self._inflight, []
        if self.reorder:
            self.rng.shuffle(inflight)
        inflight += [m for m in inflight if self.rng.random() < self.duplicate]
        for src, dst, kind, payload in inflight:
            if dst not in self.running or self.rng.random() < self.loss:
                continue
            if kind == "vector":
                records = self.repl[dst].updates_for(self.gcs[dst], self.ids[src], payload)
                if records:
                    self._update(dst, src, records)
            else:
                for record in payload:
                    if self.repl[dst].keeps(record[1]):
                        self.gcs[dst].apply(record)
        n = len(self.ids)
        for i in sorted(self.running):
            due = int(self.rounds * self.writes_per_round) - self._written[i]
            for _ in range(due):
                self._written[i] += 1
                self.gcs[i].put("tl", str(self._written[i] % 50), [self._written[i], self.value])
            record = self.gcs[i].take_new()
            if record:
                for node_id in self.repl[i].push_targets():
                    self._update(i, self.index[node_id], [record])
            vector = self.repl[i].vector(self.gcs[i])
            size = len(msgpack.packb(vector))
            others = [j for j in sorted(self.running) if j != i]
            peers = self.rng.sample(others, min(self.fanout, len(others)))
            ring_peer = self.repl[i].ring_peer()
            if ring_peer is not None:
                peers.append(self.index[ring_peer])
            for j in peers:
                self.traffic.count("gcs", i, size)   # (the vector rides on a Gossip)
                self._inflight.append((i, j, "vector", vector))

    def _update(self, src: int, dst: int, records: list) -> None:
        self.traffic.count("gcs", src, len(msgpack.packb([self.ids[src], records])))
        self._inflight.append((src, dst, "records", records))

    def kill(self, i: int) -> None:
        """Node i stops; every other node's ring drops it at once."""
        self.running.discard(i)
        live = [self.ids[j] for j in self.running]
        for j in self.running:
            if self.repl[j].set_live(live):
                for shard in self.repl[j].strays(self.gcs[j]):
                    self.gcs[j].drop_shard(shard)

    def stop_writing(self) -> None:
        self.writes_per_round = 0.0

    def agreed(self, states: bool = False) -> bool:
        """Every live replica of every shard (by the ring) is at its last seq: the
        owner's, or for a dead owner's shard the most advanced live copy's (a
        replica at the owner's seq holds the owner's state: core/gcs.py); with
        `states`, its entries are compared too."""
        vectors = {i: self.gcs[i].vector() for i in self.running}
        ring = self.repl[min(self.running)]
        for i, owner in enumerate(self.ids):
            holders = [self.index[h] for h in ring.replica_set(owner)
                       if self.index[h] in self.running]
            if i in self.running:
                want = i
            else:
                known = [j for j in self.running if owner in vectors[j]]
                if not known:
                    continue
                want = max(known, key=lambda j: vectors[j][owner])
            seq = vectors[want][owner]
            if any(vectors[j].get(owner) != seq for j in holders):
                return False
            if states:
                entries = self._entries(want, owner)
                if any(self._entries(j, owner) != entries for j in holders):
                    return False
        return True

    def _entries(self, i: int, shard: bytes) -> list:
        return sorted(repr(e) for e in self.gcs[i].items("tl") if e[0] == shard)
