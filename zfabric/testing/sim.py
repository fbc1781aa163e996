"""Deterministic simulation: the core state machines of many nodes in one process.

The state machines in zfabric/core take time and randomness as arguments and
return what to send, so a test can run many of them against each other on a
network it controls, under a clock it controls. Everything random here comes
from one seed: a failing schedule of delays, losses, crashes and partitions
replays exactly, and hypothesis can shrink it.

    Clock          virtual time, now = ticks * step (no drift from adding floats)
    Network        messages between named endpoints: a delay drawn per message
                   (so also reordering), loss, duplication, partitions;
                   send(src, dst, payload, now) / deliver_due(now)
    MembershipSim  N core.membership.Membership gossiping over a Network: crash,
                   leave, join, partition, heal; records every node's view

Clock and Network know nothing of what they carry, so other state machines
(GCS replication, transfers) can be driven the same way. MembershipSim
carries rows as msgpack bytes, as the node does, so a row that is not
msgpack-safe fails here, and no two nodes ever share an object.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, replace

import msgpack

from .. import ids as _ids, protocol as _p
from ..config import Config as _Config
from ..core import effects as _fx
from ..core import events as _ev
from ..core import resources as _rs
from ..core.fabric import Fabric as _Fabric, build as _build_fabric
from ..core.membership import GONE, Change, MemberState, Membership
from ..protocol import ObjectState as _ObjectState, TaskStatus as _TaskStatus
from .fakes import FakeWorker


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
        self._cut: set[frozenset] = set()
        self._stats = NetworkStatistics()

    def partition(self, side_a, side_b) -> None:
        """Cut every endpoint in side_a from every endpoint in side_b, both ways."""
        self._cut.update(frozenset((a, b)) for a in side_a for b in side_b if a != b)

    def heal(self) -> None:
        self._cut.clear()

    def is_cut(self, a, b) -> bool:
        return frozenset((a, b)) in self._cut

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

    def in_flight(self) -> int:
        return len(self._queue)

    def statistics(self) -> NetworkStatistics:
        return replace(self._stats)


class MembershipSim:
    """N `Membership` instances, numbered 0..N-1, gossiping over a `Network`.

    Each `step()` advances the clock by `step`, delivers the messages due
    (merge), then ticks every running node in index order and sends its
    rows to the targets it names. After each step every running node is
    validated, and the Changes it reported are checked against its members:
    the last Change about a member states its current state, and a member
    never reported is DEAD or LEFT.

    With `bootstrap` every node starts knowing every other (as after a
    completed join); otherwise each joins through node 0's rows.
    `history` records every transition in every running node's view:
    (time, observer, subject, new state), by node index.
    """

    def __init__(self, n: int, seed: int, *, step: float = 0.05,
                 delay: tuple[float, float] = (0.0, 0.02), loss: float = 0.0,
                 duplicate: float = 0.0, bootstrap: bool = True, **config):
        self._rng = random.Random(seed)
        self.clock = Clock(step)
        self.net = Network(random.Random(self._rng.getrandbits(64)), delay=delay,
                           loss=loss, duplicate=duplicate)
        self.config = config            # keyword arguments of every Membership
        self.nodes: list[Membership] = []
        self.running: set[int] = set()
        self.index: dict[bytes, int] = {}
        self._by_address: dict[str, int] = {}
        self._told: list[dict[bytes, MemberState]] = []   # each node's Changes, last per member
        self._seen: list[dict[int, MemberState]] = []     # each node's view at the last step
        self.history: list[tuple[float, int, int, MemberState]] = []
        for i in range(n):
            self._add()
            if not bootstrap and i > 0:
                self._merge(i, self.nodes[0].rows())
        if bootstrap:
            for i in range(n):
                for j in range(n):
                    if i != j:
                        self._merge(i, self.nodes[j].rows())
        self._record()
        self.check()

    @property
    def now(self) -> float:
        return self.clock.now

    @property
    def ids(self) -> list[bytes]:
        return [m.me.node_id for m in self.nodes]

    # -- driving ------------------------------------------------------------

    def step(self) -> None:
        now = self.clock.advance()
        for _, dst, payload in self.net.deliver_due(now):
            i = self._by_address[dst]
            if i in self.running:
                self._merge(i, msgpack.unpackb(payload))
        for i in sorted(self.running):
            node = self.nodes[i]
            targets, changes = node.tick(now)
            self._tell(i, changes)
            if targets:
                payload = msgpack.packb(node.rows())
                for _, address in targets:
                    self.net.send(node.me.address, address, payload, now)
        self._record()
        self.check()

    def run(self, seconds: float) -> None:
        """Step for at least `seconds`."""
        for _ in range(self._steps(seconds)):
            self.step()

    def run_until(self, condition, seconds: float) -> bool:
        """Step until `condition()` holds (True) or `seconds` have passed (False)."""
        end = self.clock.ticks + self._steps(seconds)
        while not condition():
            if self.clock.ticks >= end:
                return False
            self.step()
        return True

    # -- events -------------------------------------------------------------

    def crash(self, i: int) -> None:
        """Node i stops silently: no more ticks, its incoming messages are dropped."""
        self.running.discard(i)

    def leave(self, i: int) -> None:
        """Node i stops gracefully: its leave() rows go to every live peer it knows."""
        node = self.nodes[i]
        payload = msgpack.packb(node.leave())
        for m in node.peers():
            self.net.send(node.me.address, m.address, payload, self.now)
        self.running.discard(i)

    def join(self, via: int) -> int:
        """A new node that has received node `via`'s rows (a join reply); its index."""
        i = self._add()
        self._merge(i, self.nodes[via].rows())
        return i

    def partition(self, side_a, side_b) -> None:
        self.net.partition([self.nodes[i].me.address for i in side_a],
                           [self.nodes[i].me.address for i in side_b])

    def heal(self) -> None:
        self.net.heal()

    # -- views --------------------------------------------------------------

    def state(self, observer: int, subject: int) -> MemberState | None:
        m = self.nodes[observer].members.get(self.nodes[subject].me.node_id)
        return None if m is None else m.state

    def view(self, observer: int) -> dict[int, MemberState]:
        """Node observer's view of the others, by index."""
        me = self.nodes[observer].me
        return {self.index[m.node_id]: m.state
                for m in self.nodes[observer].members.values() if m is not me}

    def check(self) -> None:
        for i in self.running:
            node = self.nodes[i]
            node.validate()
            told = self._told[i]
            for node_id, m in node.members.items():
                if m is not node.me:
                    assert told.get(node_id, m.state if m.state in GONE else None) == m.state, \
                        (i, self.index[node_id], told.get(node_id), m)

    # -- internals ----------------------------------------------------------

    def _steps(self, seconds: float) -> int:
        return max(0, math.ceil(seconds / self.clock.step - 1e-9))

    def _add(self) -> int:
        i = len(self.nodes)
        node_id = self._rng.randbytes(16)
        address = f"tcp://node{i}.sim:7000"
        node = Membership(node_id, address, {"index": i}, now=self.now,
                          rng=random.Random(self._rng.getrandbits(64)), **self.config)
        self.nodes.append(node)
        self.index[node_id] = i
        self._by_address[address] = i
        self._told.append({})
        self._seen.append({})
        self.running.add(i)
        return i

    def _merge(self, i: int, rows) -> None:
        self._tell(i, self.nodes[i].merge(rows, self.now))

    def _tell(self, i: int, changes: list[Change]) -> None:
        for c in changes:
            if c.node_id != self.nodes[i].me.node_id:
                self._told[i][c.node_id] = c.state

    def _record(self) -> None:
        for i in sorted(self.running):
            seen = self._seen[i]
            for j, state in self.view(i).items():
                if seen.get(j) != state:
                    seen[j] = state
                    self.history.append((self.now, i, j, state))


# ---------------------------------------------------------------------------------
# FabricSim: N whole nodes (core.fabric.Fabric) talking through the wire protocol
# ---------------------------------------------------------------------------------
#
#     driver --ClientMessage--> Fabric i --PeerSend(address, msg)--> encode/decode --> Fabric j
#                                  |  Send(worker, Execute) --> fake worker --TaskDone--^
#                                  |  RequestChunk --> holder's fake store --ChunkArrived/Failed--^
#                                  '-- SealPull / AbortPull / DeleteObject --> its fake store
#
# Every node is built as node/node.py builds it (Scheduler + Membership + Gcs +
# Transfers behind one Fabric, membership rng seeded by the node id, nodes 1..N-1
# joining through node 0). Time is virtual: each `step()` delivers what is due
# (each event at its own due time) and then gives every live node a Tick. Every
# message between nodes is encoded and decoded by zfabric.protocol, so the wire
# schemas are exercised; links are FIFO per (sender, receiver) as a DEALER ->
# ROUTER pair is. Workers are fake: they say Hello when spawned, run an Execute
# for the time `program(sim, node_index, execute)` says, write STORE results into
# their node's fake store (oid -> (size, tag); the tag stands for the bytes) and
# answer TaskDone. All randomness comes from one seed.


# Short intervals, so that joins, gossip and failure detection take little virtual
# time; prefetch off, so each Execute goes to an idle worker (the fake workers do
# handle a prefetched Execute and Revoke, for a test that turns it on).
SIM_CONFIG = dict(gossip_interval=0.05, failure_timeout=0.6, chunk_timeout=1.0,
                  prefetch_max_task_seconds=0.0, idle_worker_timeout=10.0)


@dataclass(frozen=True)
class Work:
    """What a fake worker does with one Execute: run `duration` seconds, then
    report `results`, one (state, size, payload) per return: INLINE with its
    blob, or STORE with its size and a tag that stands for its bytes. A status
    other than OK reports `error` (an error record) instead."""
    duration: float
    results: tuple = ()
    status: int = int(_TaskStatus.OK)
    error: bytes = b""


@dataclass
class Run:
    """One Execute a fake worker started."""
    node: int
    worker: str
    task_id: bytes
    start: float
    end: float | None = None
    execute: object = None


class SimWorker(FakeWorker):
    """The shared fake worker (testing/fakes.py), with the Run it executes."""

    def __init__(self, wid: str):
        super().__init__(wid)
        self.run: Run | None = None


class SimNode:
    """One node of a FabricSim: its Fabric and everything its shell would hold."""

    def __init__(self, index: int, node_id: bytes, resources: dict, fabric: _Fabric,
                 address: str, object_address: str):
        self.index = index
        self.node_id = node_id
        self.resources = dict(resources)
        self.fabric = fabric
        self.address = address
        self.object_address = object_address
        self.alive = True
        self.left = False      # stopped gracefully: what it sent before still arrives
        self.store: dict[bytes, tuple[int, bytes]] = {}    # oid -> (size, tag)
        self.partial: dict[bytes, list] = {}               # oid -> [size, tag] while pulled
        self.workers: dict[str, SimWorker] = {}
        self.inbox: dict[bytes, list] = {}                 # client -> [(time, msg)]
        self.trace: list[tuple[float, object]] = []        # effects, less gossip and logs
        self.logs: list[tuple[float, str, str]] = []
        self.deleted: list[tuple[float, bytes]] = []
        self.gossip_sent = 0

    @property
    def scheduler(self):
        return self.fabric.scheduler

    def running(self) -> list[Run]:
        return [w.run for w in self.workers.values() if w.alive and w.run is not None]

    def received(self, client: bytes, kind: type | None = None) -> list:
        return [m for _, m in self.inbox.get(client, []) if kind is None or type(m) is kind]

    def effects(self, kind: type) -> list:
        return [e for _, e in self.trace if type(e) is kind]

    def peer_sends(self, kind: type) -> list:
        return [e for _, e in self.trace if type(e) is _fx.PeerSend and type(e.msg) is kind]


class FabricSim:
    """N Fabrics in one process on a virtual clock; see the comment above.

    `nodes`: each node's resources ({"CPU": 2, "gpu": 1}); those whose index is in
    `late` start only when `start_node(i)` is called. `program(sim, i,
    execute) -> Work` decides what node i's fake worker does with a task
    (default: 0.1 s, an INLINE b"ok" per return). After every event each live
    node is validated (scheduler, membership, GCS, transfers), and no node may
    have more tasks running on its fake workers than its resources hold;
    problems the fake processes notice (a STORE argument missing from the
    local store, function code never sent) land in `violations`.

    Driving: `send(i, client, msg)` (a driver of node i), `step()` / `run(s)` /
    `run_until(cond, s)`, `call_at(t, fn)`. Faults: `kill(i)` (silent),
    `leave(i)` (graceful), `extra_delay[(i, j)]` (a slow link), `drop(i, j, msg)`
    (called on every node-to-node message as it arrives; True loses it).
    What happened: `runs` (every Execute started), each node's `store`, `inbox`
    (per driver), `trace` (its effects, less gossip) and `deleted`.
    """

    def __init__(self, nodes: list[dict], *, seed: int = 0, program=None,
                 latency: tuple[float, float] = (0.001, 0.003), ipc_latency: float = 0.0002,
                 spawn_delay: float = 0.01, bandwidth: float = 2e9, step: float = 0.01,
                 store_capacity: int = 1 << 40, validate: bool = True, late=(), **config):
        self.rng = random.Random(seed)
        self.config = _Config(**{**SIM_CONFIG, **config})
        self.program = program or (lambda sim, i, ex: Work(
            0.1, tuple((int(_ObjectState.INLINE), 2, b"ok") for _ in range(ex.num_returns))))
        self.latency = latency
        self.ipc_latency = ipc_latency
        self.spawn_delay = spawn_delay
        self.bandwidth = bandwidth
        self.step_size = step
        self.validate_every_event = validate
        self.time = 0.0
        self.ticks = 0
        self._queue: list = []
        self._seq = 0
        self._link_free: dict[tuple, float] = {}   # FIFO: a link delivers in send order
        self.extra_delay: dict[tuple[int, int], float] = {}   # (src, dst) -> added seconds
        self.drop = None             # drop(src, dst, msg) -> True: that message is lost
        self.dropped: list[tuple[int, int, object]] = []
        self.demands: dict[bytes, dict] = {}      # task id -> demand (from Submit / Spill)
        self.runs: list[Run] = []
        self.violations: list[str] = []
        self.nodes: list[SimNode] = []
        self._by_address: dict[str, SimNode] = {}
        for i, resources in enumerate(nodes):
            self._add(i, resources, store_capacity)
        for node in self.nodes:
            if node.index in late:   # started later by start_node()
                node.alive = False
            else:
                self.start_node(node.index)

    # -- building ------------------------------------------------------------------

    def _add(self, i: int, resources: dict, store_capacity: int) -> None:
        cfg = self.config
        node_id = self.rng.randbytes(16)
        host, port = f"10.0.0.{i + 1}", 7000
        address, object_address = f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}"
        info = {"node_id": node_id.hex(), "pid": 1000 + i, "address": address,
                "object_address": object_address, "host": host, "port": port,
                "store_dir": f"/sim/zfabric-{node_id.hex()}", "session_dir": f"/sim/session{i}"}
        fabric = _build_fabric(cfg, node_id=node_id, resources=dict(resources),
                               store_capacity=store_capacity, info=info,
                               seeds=[self.nodes[0].address] if self.nodes else [],
                               now=self.time)
        node = SimNode(i, node_id, resources, fabric, address, object_address)
        self.nodes.append(node)
        self._by_address[address] = node
        self._by_address[object_address] = node

    # -- driving -------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self.time

    def step(self) -> None:
        """Advance one step: deliver what falls due, then tick every live node."""
        self.ticks += 1
        until = self.ticks * self.step_size
        self._run_due(until)
        self.time = max(self.time, until)
        for node in self.nodes:
            if node.alive:
                self.handle(node.index, _ev.Tick())
        self._run_due(until)

    def run(self, seconds: float) -> None:
        for _ in range(max(0, math.ceil(seconds / self.step_size - 1e-9))):
            self.step()

    def run_until(self, condition, seconds: float) -> bool:
        end = self.time + seconds
        while not condition():
            if self.time >= end:
                return False
            self.step()
        return True

    def handle(self, i: int, event) -> None:
        node = self.nodes[i]
        if not node.alive:
            return
        effects = node.fabric.handle(event, self.time)
        self._check(node)
        self._execute(node, effects)

    def send(self, i: int, client: bytes, msg) -> None:
        """A local client (driver) of node i sends `msg` (through encode/decode)."""
        msg = _p.decode(_p.encode(msg))
        if type(msg) is _p.Submit:
            self.demands[msg.task_id] = _rs.to_units(msg.resources)
        self.handle(i, _ev.ClientMessage(client, msg))

    def start_node(self, i: int) -> None:
        """Start node i now (its Fabric.start): it joins through node 0."""
        node = self.nodes[i]
        node.alive = True
        self._execute(node, node.fabric.start(self.time))
        self._check(node)

    def call_at(self, due: float, fn) -> None:
        """Run fn() at virtual time `due` (after the events already due then)."""
        self._at(max(due, self.time), fn)

    def kill(self, i: int) -> None:
        """Node i dies silently: no more ticks; nothing is delivered to or from it."""
        node = self.nodes[i]
        node.alive = False
        for worker in node.workers.values():
            worker.alive = False

    def leave(self, i: int) -> None:
        """Node i stops gracefully: it tells its peers (Fabric.leave), then is gone;
        what it sent before still arrives."""
        node = self.nodes[i]
        self._execute(node, node.fabric.leave())
        self.kill(i)
        node.left = True

    # -- queries -------------------------------------------------------------------

    def index_of(self, node_id: bytes) -> int:
        return next(n.index for n in self.nodes if n.node_id == node_id)

    def converged(self) -> bool:
        """Every live node knows every other live one, with its resources."""
        live = [n for n in self.nodes if n.alive]
        for n in live:
            peers = n.scheduler.peers
            for m in live:
                if m is not n and (m.node_id not in peers or not peers[m.node_id].total):
                    return False
        return all(not n.scheduler.starting_workers() for n in live)

    # -- invariants ------------------------------------------------------------------

    def _check(self, node: SimNode) -> None:
        if not self.validate_every_event:
            return
        f = node.fabric
        f.scheduler.validate()
        f.membership.validate()
        f.gcs.validate()
        f.transfers.validate()
        s = f.scheduler
        blocked = any(t.blocked for t in s.tasks.values())
        for name in s.total:
            assert blocked or s.available.get(name, 0) >= 0, (node.index, name, s.available)
        used: dict[str, int] = {}
        for run in node.running():
            _rs.release(used, self.demands.get(run.task_id, {}))
        for name, amount in used.items():
            assert amount <= s.total.get(name, 0), \
                f"node {node.index} runs {amount} of {name}, has {s.total.get(name, 0)}"

    # -- the event queue -------------------------------------------------------------

    def _at(self, due: float, fn) -> None:
        heapq.heappush(self._queue, (due, self._seq, fn))
        self._seq += 1

    def _run_due(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            due, _, fn = heapq.heappop(self._queue)
            self.time = max(self.time, due)
            fn()

    def _link(self, key: tuple, delay: float) -> float:
        """Due time of a message sent now on a FIFO link."""
        due = max(self.time + delay, self._link_free.get(key, 0.0))
        self._link_free[key] = due
        return due

    # -- effects ---------------------------------------------------------------------

    def _execute(self, node: SimNode, effects: list) -> None:
        t = self.time
        for e in effects:
            kind = type(e)
            if kind is _fx.PeerSend or kind is _fx.JoinSend:   # (the same link here)
                if type(e.msg) in (_p.Gossip, _p.GcsUpdate):
                    node.gossip_sent += 1
                else:
                    node.trace.append((t, e))
                self._peer_send(node, e)
                continue
            if kind is _fx.ForgetPeer:
                continue   # sockets: nothing to close in memory
            if kind is _fx.Log:
                node.logs.append((t, e.level, e.text))
                continue
            node.trace.append((t, e))
            if kind is _fx.Send:
                self._client_send(node, e.to, e.msg)
            elif kind is _fx.SpawnWorker:
                worker = node.workers[e.worker_id] = SimWorker(e.worker_id)
                hello = worker.hello(2000)
                self._at(t + self.spawn_delay,
                         lambda n=node, w=worker, m=hello: self._from_worker(n, w, m))
            elif kind in (_fx.StopWorker, _fx.KillWorker):
                worker = node.workers.get(e.worker_id)
                if worker is not None and worker.alive:
                    worker.alive = False
                    code = -15 if kind is _fx.StopWorker else -9
                    self._at(t + self.ipc_latency, lambda n=node, w=worker, c=code:
                             self.handle(n.index, _ev.WorkerExited(w.wid, c)))
            elif kind is _fx.RequestChunk:
                self._request_chunk(node, e)
            elif kind is _fx.SealPull:   # (an empty object has no chunk, so no partial)
                size, tag = node.partial.pop(e.oid, (0, None))
                node.store[e.oid] = (size, tag)
            elif kind is _fx.AbortPull:
                node.partial.pop(e.oid, None)
            elif kind is _fx.DeleteObject:
                node.store.pop(e.oid, None)
                node.deleted.append((t, e.oid))
            elif kind in (_fx.WatchClient, _fx.InterruptWorker):
                pass
            elif kind is _fx.StopNode:
                raise AssertionError(f"node {node.index} stopped: {e.reason}")
            else:
                raise AssertionError(f"node {node.index}: unexpected effect {e!r}")

    def _peer_send(self, node: SimNode, e) -> None:
        dst = self._by_address[e.address]
        data = _p.encode(e.msg)
        due = self._link(("ctl", node.index, dst.index),
                         self.rng.uniform(*self.latency)
                         + self.extra_delay.get((node.index, dst.index), 0.0))

        def deliver():
            if not ((node.alive or node.left) and dst.alive):
                return
            msg = _p.decode(data)
            if self.drop is not None and self.drop(node.index, dst.index, msg):
                self.dropped.append((node.index, dst.index, msg))
                return
            if type(msg) is _p.Spill:
                self.demands[msg.task_id] = _rs.to_units(msg.resources)
            self.handle(dst.index, _ev.PeerMessage(node.node_id, msg))
        self._at(due, deliver)

    def _client_send(self, node: SimNode, to: bytes, msg) -> None:
        msg = _p.decode(_p.encode(msg))
        worker = next((w for w in node.workers.values() if w.client == to), None)
        if worker is None:   # a driver: it reads at once
            node.inbox.setdefault(to, []).append((self.time, msg))
            return
        self._at(self.time + self.ipc_latency,
                 lambda: self._worker_receive(node, worker, msg))

    # -- fake workers -------------------------------------------------------------------

    def _from_worker(self, node: SimNode, worker: SimWorker, msg) -> None:
        if node.alive and worker.alive:
            self.handle(node.index, _ev.ClientMessage(worker.client, _p.decode(_p.encode(msg))))

    def _worker_receive(self, node: SimNode, worker: SimWorker, msg) -> None:
        if not (node.alive and worker.alive):
            return
        kind = type(msg)
        if kind is _p.Execute:
            if not worker.has_code(msg):
                self.violations.append(f"node {node.index} {worker.wid}: no code for "
                                       f"{msg.fn_id!r} (task {msg.task_id.hex()})")
            if worker.take(msg):
                self._worker_start(node, worker, msg)
        elif kind is _p.Revoke:
            for answer in worker.receive(msg):
                self._at(self.time + self.ipc_latency, lambda m=answer:
                         self._from_worker(node, worker, m))
        elif kind is _p.Welcome:
            pass
        else:
            self.violations.append(f"node {node.index} {worker.wid}: unexpected {msg!r}")

    def _worker_start(self, node: SimNode, worker: SimWorker, ex) -> None:
        for oid, state in zip(ex.dep_ids, ex.dep_states):
            if state == _ObjectState.STORE and oid not in node.store:
                self.violations.append(f"node {node.index}: task {ex.task_id.hex()} runs "
                                       f"without its STORE argument {oid.hex()} in the store")
        run = Run(node.index, worker.wid, ex.task_id, self.time, execute=ex)
        worker.run = run
        self.runs.append(run)
        work = self.program(self, node.index, ex)
        self._at(self.time + work.duration, lambda: self._worker_finish(node, worker, run, work))

    def _worker_finish(self, node: SimNode, worker: SimWorker, run: Run, work: Work) -> None:
        if not (node.alive and worker.alive) or worker.run is not run:
            return
        run.end = self.time
        worker.run = None
        ex = worker.finish()
        if work.status == _TaskStatus.OK:
            states, sizes, payloads = [], [], []
            for k, (state, size, payload) in enumerate(work.results):
                oid = _ids.object_id(ex.task_id, k)
                states.append(int(state))
                if state == _ObjectState.STORE:
                    node.store[oid] = (size, payload)
                    sizes.append(size)
                    payloads.append(b"")
                else:
                    sizes.append(len(payload))
                    payloads.append(payload)
            done = worker.done(ex.task_id, payloads=payloads, states=states, sizes=sizes,
                               start=run.start, end=run.end)
        else:
            done = worker.failed(ex.task_id, work.error, status=int(work.status),
                                 start=run.start, end=run.end)
        self._from_worker(node, worker, done)
        if worker.local and worker.alive and worker.current is None:
            self._worker_start(node, worker, worker.start_next())

    # -- the object sockets ---------------------------------------------------------------

    def _request_chunk(self, node: SimNode, e) -> None:
        holder = self._by_address[e.object_address]
        if e.oid not in node.partial:
            node.partial[e.oid] = [e.size, None]
        data = _p.encode(_p.PullChunk(e.oid, e.offset, e.length))
        due = self._link(("obj", node.index, holder.index), self.rng.uniform(*self.latency))
        self._at(due, lambda: self._serve_chunk(node, holder, data))

    def _serve_chunk(self, puller: SimNode, holder: SimNode, data: bytes) -> None:
        """The holder's object server: stateless, answers from its store (or not at all
        if it is dead)."""
        if not (holder.alive and puller.alive):
            return
        req = _p.decode(data)
        item = holder.store.get(req.oid)
        if item is None or req.offset + req.length > item[0]:
            head = _p.encode_chunk(req.oid, req.offset, None,
                                   f"object {req.oid.hex()} cannot be served here")[0]
            tag, took = None, 0.0
        else:
            head = _p.encode(_p.Chunk(req.oid, req.offset, req.length, ""))
            tag, took = item[1], req.length / self.bandwidth
        due = self._link(("obj", holder.index, puller.index),
                         self.rng.uniform(*self.latency) + took)

        def arrive():
            if not (holder.alive and puller.alive):
                return
            chunk = _p.decode(head)
            if chunk.error:
                self.handle(puller.index, _ev.ChunkFailed(holder.node_id, chunk.oid, chunk.error))
                return
            pull = puller.partial.get(chunk.oid)
            if pull is None:
                return   # the pull was dropped meanwhile (as the loop does)
            if pull[1] is not None and pull[1] != tag:
                self.violations.append(f"node {puller.index}: {chunk.oid.hex()} pulled from "
                                       "holders with different contents")
            pull[1] = tag
            self.handle(puller.index, _ev.ChunkArrived(holder.node_id, chunk.oid,
                                                       chunk.offset, chunk.length))
        self._at(due, arrive)
