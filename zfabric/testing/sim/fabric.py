"""FabricSim: N whole nodes (core.fabric.Fabric) in one process, on a virtual clock.

Drives the same sans-I/O state machines node/node.py builds, with the
node's shell (sockets, workers, store) replaced by fakes; see the comment
below for how messages, workers and object pulls are simulated. Used by
the tests in tests/sim/.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from ... import ids as _ids, protocol as _p
from ...config import Config as _Config
from ...core import effects as _fx
from ...core import events as _ev
from ...core import resources as _rs
from ...core.fabric import Fabric as _Fabric, build as _build_fabric
from ...protocol import ObjectState as _ObjectState, TaskStatus as _TaskStatus
from ..fakes import FakeWorker


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
    attempt: int | None = None   # set by a program that tells attempts apart (chaos.py)


class SimWorker(FakeWorker):
    """The shared fake worker (testing/fakes.py), with the Run it executes."""

    def __init__(self, wid: str):
        super().__init__(wid)
        self.run: Run | None = None


class SimNode:
    """One node of a FabricSim: its Fabric and everything its shell would hold."""

    def __init__(self, index: int, node_id: bytes, fabric: _Fabric,
                 address: str, object_address: str):
        self.index = index
        self.node_id = node_id
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
        self.logs: list[tuple[float, str, str]] = []       # (time, level, text) of Log effects
        self.deleted: list[tuple[float, bytes]] = []

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
    `leave(i)` (graceful), `restart(i, seeds)` (node i's machine starts a new
    node: a fresh node id at the same address, as node/node.py does),
    `kill_worker(i, wid)`, `kill_workers(i)` (the zygote died: every worker of
    the node exits at once), `client_gone(i, client)` (a driver died),
    `extra_delay[(i, j)]` (a slow link), `drop(i, j, msg)` (called on every
    node-to-node message as it arrives; True loses it), and `faults`
    (network.LinkFaults: loss, duplication, reordering, spikes, cuts on
    every message, control and object sockets alike). `stop_is_error`
    False: a node that emits StopNode exits (as the real one does) and is
    listed in `stopped`, instead of failing the test. `to_driver(i, client,
    msg)`, if set, sees each message a node sends a driver as it arrives.
    What happened: `runs` (every Execute started), each node's `store`, `inbox`
    (per driver), `trace` (its effects, less gossip) and `deleted`.
    """

    def __init__(self, nodes: list[dict], *, seed: int = 0, program=None,
                 latency: tuple[float, float] = (0.001, 0.003), ipc_latency: float = 0.0002,
                 spawn_delay: float = 0.01, bandwidth: float = 2e9, step: float = 0.01,
                 store_capacity: int = 1 << 40, validate: bool = True, late=(),
                 faults=None, stop_is_error: bool = True, **config):
        self.rng = random.Random(seed)
        self.faults = faults         # network.LinkFaults, or None: every message arrives
        self.stop_is_error = stop_is_error
        self.stopped: list[tuple[float, int, str]] = []
        self.to_driver = None        # to_driver(i, client, msg): a driver reads a message
        self.slots: dict[bytes, int] = {}   # every node id ever, old ones too -> its index
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
        self.demands: dict[tuple, dict] = {}      # (node, task id) -> demand (Submit / Spill)
        self.runs: list[Run] = []
        self.violations: list[str] = []
        self.nodes: list[SimNode] = []
        self._by_address: dict[str, SimNode] = {}
        self.unroutable: list = []   # sends to addresses no node has (a hostile peer's)
        self.store_capacity = store_capacity
        self.resources = [dict(r) for r in nodes]
        for i, resources in enumerate(nodes):
            self._add(i, resources, store_capacity)
        for node in self.nodes:
            if node.index in late:   # started later by start_node()
                node.alive = False
            else:
                self.start_node(node.index)

    # -- building ------------------------------------------------------------------

    def _add(self, i: int, resources: dict, store_capacity: int, seeds=None) -> None:
        cfg = self.config
        node_id = self.rng.randbytes(_ids.NODE_ID_SIZE)
        host, port = f"10.0.0.{i + 1}", 7000
        address, object_address = f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}"
        info = {"node_id": node_id.hex(), "pid": 1000 + i, "address": address,
                "object_address": object_address, "host": host, "port": port,
                "store_dir": f"/sim/zfabric-{node_id.hex()}", "session_dir": f"/sim/session{i}"}
        fabric = _build_fabric(cfg, node_id=node_id, resources=dict(resources),
                               store_capacity=store_capacity, info=info,
                               seeds=seeds if seeds is not None else
                               [self.nodes[0].address] if self.nodes else [],
                               now=self.time)
        node = SimNode(i, node_id, fabric, address, object_address)
        self.slots[node_id] = i
        if i < len(self.nodes):
            self.nodes[i] = node
        else:
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

    def _handle_if_current(self, node: SimNode, event) -> None:
        """An event of `node`, unless a restart replaced it meanwhile."""
        if self.nodes[node.index] is node:
            self.handle(node.index, event)

    def send(self, i: int, client: bytes, msg) -> None:
        """A local client (driver) of node i sends `msg` (through encode/decode)."""
        msg = _p.decode(_p.encode(msg))
        if type(msg) is _p.Submit:
            self.demands[(i, msg.task_id)] = _rs.to_units(msg.resources)
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

    def restart(self, i: int, seeds: list[int]) -> None:
        """Node i's machine starts a new node (node i must be down): a fresh node id
        and an empty store at the same address, joining through the nodes `seeds`."""
        assert not self.nodes[i].alive, f"node {i} is running"
        self._add(i, self.resources[i], self.store_capacity,
                  seeds=[self.nodes[j].address for j in seeds])
        self.start_node(i)

    def kill_worker(self, i: int, wid: str) -> None:
        """A worker of node i dies (SIGKILL): its exit is seen after the ipc latency."""
        node = self.nodes[i]
        worker = node.workers.get(wid)
        if node.alive and worker is not None and worker.alive:
            worker.alive = False
            self._at(self.time + self.ipc_latency,
                     lambda: self._handle_if_current(node, _ev.WorkerExited(wid, -9)))

    def kill_workers(self, i: int) -> None:
        """Node i's zygote dies: every worker of the node exits at once (the node
        starts a new zygote; here the workers are spawned as before)."""
        for wid in list(self.nodes[i].workers):
            self.kill_worker(i, wid)

    def client_gone(self, i: int, client: bytes) -> None:
        """A driver of node i died without saying goodbye (its pidfd fired)."""
        self.handle(i, _ev.ClientGone(client))

    def leave(self, i: int) -> None:
        """Node i stops gracefully: it tells its peers (Fabric.leave), then is gone;
        what it sent before still arrives."""
        node = self.nodes[i]
        self._execute(node, node.fabric.leave())
        self.kill(i)
        node.left = True

    # -- queries -------------------------------------------------------------------

    def index_of(self, node_id: bytes) -> int:
        return self.slots[node_id]

    def converged(self) -> bool:
        """Every live node knows every other live one, with its resources."""
        live = [n for n in self.nodes if n.alive]
        for n in live:
            peers = n.scheduler.spill.peers
            for m in live:
                if m is not n and (m.node_id not in peers or not peers[m.node_id].total):
                    return False
        return all(not n.scheduler.pool.starting_count() for n in live)

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
        pool = s.pool
        blocked = any(t.blocked for t in s.tasks.values())
        for name in pool.total:
            assert blocked or pool.available.get(name, 0) >= 0, (node.index, name, pool.available)
        used: dict[str, int] = {}
        for run in node.running():
            _rs.release(used, self.demands.get((node.index, run.task_id), {}))
        for name, amount in used.items():
            assert amount <= pool.total.get(name, 0), \
                f"node {node.index} runs {amount} of {name}, has {pool.total.get(name, 0)}"

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
                if type(e.msg) not in (_p.Gossip, _p.GcsUpdate):
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
                             self._handle_if_current(n, _ev.WorkerExited(w.wid, c)))
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
                if self.stop_is_error:
                    raise AssertionError(f"node {node.index} stopped: {e.reason}")
                self.stopped.append((t, node.index, e.reason))
                self.kill(node.index)
                return
            else:
                raise AssertionError(f"node {node.index}: unexpected effect {e!r}")

    def _send_on_link(self, channel: str, src: SimNode, dst: SimNode, delay: float, fn) -> None:
        """fn() at the due time of each copy of a message src sends dst now (as
        `faults` has it: lost, duplicated, delayed, out of order), unless src and
        dst are cut from each other by then."""
        key = (channel, src.index, dst.index)
        if self.faults is None:
            self._at(self._link(key, delay), fn)
            return
        faults = self.faults
        for extra, fifo in faults.copies(src.index, dst.index, channel):
            due = self._link(key, delay + extra) if fifo else self.time + delay + extra

            def arrive(a=src.index, b=dst.index):
                if faults.is_cut(a, b):
                    faults.stats.cut += 1
                else:
                    faults.stats.delivered += 1
                    fn()
            self._at(due, arrive)

    def _peer_send(self, node: SimNode, e) -> None:
        dst = self._by_address.get(e.address)
        if dst is None:   # (as the shell's PeerUnreachable: dropped)
            self.unroutable.append(e)
            return
        data = _p.encode(e.msg)

        def deliver():
            if not ((node.alive or node.left) and dst.alive):
                return
            msg = _p.decode(data)
            if self.drop is not None and self.drop(node.index, dst.index, msg):
                self.dropped.append((node.index, dst.index, msg))
                return
            if type(msg) is _p.Spill:
                self.demands[(dst.index, msg.task_id)] = _rs.to_units(msg.resources)
            self.handle(dst.index, _ev.PeerMessage(node.node_id, msg))
        self._send_on_link("ctl", node, dst, self.rng.uniform(*self.latency)
                           + self.extra_delay.get((node.index, dst.index), 0.0), deliver)

    def _client_send(self, node: SimNode, to: bytes, msg) -> None:
        msg = _p.decode(_p.encode(msg))
        worker = next((w for w in node.workers.values() if w.client == to), None)
        if worker is None:   # a driver: it reads at once
            node.inbox.setdefault(to, []).append((self.time, msg))
            if self.to_driver is not None:
                self.to_driver(node.index, to, msg)
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
            self._give_back(node, worker)
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
        ex = worker.current
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
        worker.finish(done)
        self._from_worker(node, worker, done)
        if worker.local and worker.alive and worker.current is None:
            nxt = worker.start_next()
            self._give_back(node, worker)
            if nxt is not None:
                self._worker_start(node, worker, nxt)

    def _give_back(self, node: SimNode, worker: SimWorker) -> None:
        """Send the Revoked of each pipelined task the worker could not start."""
        for msg in worker.take_given_back():
            self._from_worker(node, worker, msg)

    # -- the object sockets ---------------------------------------------------------------

    def _request_chunk(self, node: SimNode, e) -> None:
        holder = self._by_address.get(e.object_address)
        if holder is None:   # (an address a hostile peer gossiped: the pull fails there)
            self.unroutable.append(e)
            self._at(self.time, lambda: self._handle_if_current(
                node, _ev.ChunkFailed(e.holder, e.oid, "no such object server")))
            return
        if e.oid not in node.partial:
            node.partial[e.oid] = [e.size, None]
        data = _p.encode(_p.PullChunk(e.oid, e.offset, e.length))
        self._send_on_link("obj", node, holder, self.rng.uniform(*self.latency),
                           lambda: self._serve_chunk(node, holder, data))

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
        self._send_on_link("obj", holder, puller, self.rng.uniform(*self.latency) + took, arrive)
