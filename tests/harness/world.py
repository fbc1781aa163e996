"""Several nodes' Fabrics in one process: the `World` the tests in tests/sim/ use.

No sockets and no processes: `zfabric.testing.sim.FabricSim` builds N nodes as
node/node.py does (Scheduler + Membership + Gcs + Transfers behind a Fabric,
nodes 1..N-1 joining through node 0), carries every message between them
through zfabric.protocol's encode/decode on FIFO links with a seeded delay,
plays their workers (Hello, Execute -> TaskDone after a virtual duration,
STORE results written into the node's fake store), answers chunk pulls from
the holder's fake store, and ticks every node each step of a virtual clock.
After every event it runs each node's validate()s and checks that no node
runs more than its resources hold.

A `World` below adds a driver on node 0 and decides what each task returns:
return k of task n is INLINE b"v" + oid, or a STORE object whose bytes the
fake store stands for by the tag b"t" + oid, so wherever a task runs and
however its arguments travel, the owner must end up with exactly these values.
Fake workers check their arguments: an INLINE one must carry that value, a
STORE one must be in the running node's store with that tag.
"""
from __future__ import annotations

from hypothesis import HealthCheck
from hypothesis import strategies as st

from zfabric import ids, protocol as p
from zfabric.core import effects as fx
from zfabric.core import resources as rs
from zfabric.protocol import ObjectState
from zfabric.testing.sim import FabricSim, Work

DRIVER = b"driver-1"
FN_BLOB = b"cloudpickled function"
FN = ids.function_id(FN_BLOB)   # (content-addressed, as protocol.decode checks)
INLINE, STORE, ERROR = int(ObjectState.INLINE), int(ObjectState.STORE), int(ObjectState.ERROR)
PENDING = int(ObjectState.PENDING)
MB = 1 << 20
SIM = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tid(n: int) -> bytes:
    return b"T" + n.to_bytes(15, "big")


def rid(n: int, k: int = 0) -> bytes:
    return tid(n) + k.to_bytes(4, "big")


def value(oid: bytes) -> bytes:
    """The INLINE value of an object (wherever its task ran)."""
    return b"v" + oid


def tag(oid: bytes) -> bytes:
    """What stands for the bytes of a STORE object in a fake store."""
    return b"t" + oid


class Plan:
    """A task as the test submits it: what it needs and what it returns."""

    def __init__(self, n: int, demand: dict, duration: float, returns: list, deps: list,
                 node: int, client: bytes):
        self.n = n
        self.task_id = tid(n)
        self.demand = demand          # name -> amount, as submitted
        self.duration = duration
        self.returns = returns        # per return: "i" (INLINE) or a STORE size in bytes
        self.deps = deps              # object ids
        self.node = node              # the node it was submitted to (its owner)
        self.client = client

    @property
    def oids(self) -> list[bytes]:
        return [rid(self.n, k) for k in range(len(self.returns))]


class World:
    """A FabricSim with drivers that submit `Plan`s and workers that follow them."""

    def __init__(self, nodes: list[dict], *, seed: int = 0, **kw):
        self.plans: dict[bytes, Plan] = {}
        self.sim = FabricSim(nodes, seed=seed, program=self.program, **kw)
        self.hello_sent: set[tuple[int, bytes]] = set()
        self.fn_sent: set[int] = set()

    @property
    def nodes(self):
        return self.sim.nodes

    def program(self, sim, i: int, ex: p.Execute) -> Work:
        plan = self.plans[ex.task_id]
        store = sim.nodes[i].store
        for oid, state, payload in zip(ex.dep_ids, ex.dep_states, ex.dep_payloads):
            if state == INLINE and payload != value(oid):
                sim.violations.append(f"{ex.task_id.hex()}: argument {oid.hex()} has "
                                      f"the wrong value {payload!r}")
            if state == STORE and oid in store and store[oid][1] != tag(oid):
                sim.violations.append(f"{ex.task_id.hex()}: argument {oid.hex()} has "
                                      "the wrong bytes")
            if state not in (INLINE, STORE):
                sim.violations.append(f"{ex.task_id.hex()}: argument in state {state}")
        results = []
        for k, kind in enumerate(plan.returns):
            oid = rid(plan.n, k)
            results.append((INLINE, 0, value(oid)) if kind == "i" else (STORE, kind, tag(oid)))
        return Work(plan.duration, tuple(results))

    def driver(self, node: int = 0, client: bytes = DRIVER) -> None:
        if (node, client) not in self.hello_sent:
            self.hello_sent.add((node, client))
            self.sim.send(node, client, p.Hello("driver", 4242, None))

    def submit(self, n: int, *, node: int = 0, client: bytes = DRIVER, deps=(), returns=("i",),
               cpu: float = 1, resources: dict | None = None, duration: float = 0.1,
               max_retries: int = 3, opts: dict | None = None) -> Plan:
        self.driver(node, client)
        demand = {"CPU": cpu} if cpu else {}
        demand.update(resources or {})
        plan = Plan(n, demand, duration, list(returns), list(deps), node, client)
        self.plans[plan.task_id] = plan
        blob = FN_BLOB if node not in self.fn_sent else b""
        self.fn_sent.add(node)
        self.sim.send(node, client, p.Submit(
            plan.task_id, "f", FN, len(plan.returns), demand, max_retries, False, 0, b"",
            list(plan.deps), [], blob, b"args-%d" % n, b"", opts or {}))
        return plan

    # -- what happened ------------------------------------------------------------------

    def readies(self, node: int = 0, client: bytes = DRIVER) -> dict[bytes, list]:
        """The values the client was sent, by object (not the notices: `notices`)."""
        out: dict[bytes, list] = {}
        for m in self.nodes[node].received(client, p.ObjectReady):
            if m.state != PENDING:
                out.setdefault(m.oid, []).append(m)
        return out

    def notices(self, node: int = 0, client: bytes = DRIVER) -> dict[bytes, list]:
        """What the client was told is ready in another node's store (ObjectReady
        PENDING: the owner pushes only values it has here), by object."""
        out: dict[bytes, list] = {}
        for m in self.nodes[node].received(client, p.ObjectReady):
            if m.state == PENDING:
                out.setdefault(m.oid, []).append(m)
        return out

    def remote_copy(self, plan: Plan, oid: bytes):
        """(holder node, its store's record) of a return the owner knows is
        in another node's store, else None. The owner does not push such a
        value to its driver: a client asks for it (Subscribe) when it gets."""
        entry = self.nodes[plan.node].scheduler.objects.get(oid)
        if entry is None or entry.state != STORE or entry.local or not entry.remote:
            return None
        holder = self.nodes[[n.node_id for n in self.nodes].index(entry.remote[0])]
        return holder, holder.store.get(oid)

    def finished(self, plan: Plan) -> bool:
        """The owner is done with the task: every return sealed (pushed to the
        driver, or sealed at the owner for a client to ask for), the task gone."""
        owner = self.nodes[plan.node]
        if plan.task_id in owner.scheduler.tasks:
            return False
        got = self.readies(plan.node, plan.client)
        objects = owner.scheduler.objects
        return all(oid in got or (oid in objects and objects.entries[oid].ready)
                   for oid in plan.oids)

    def runs_of(self, plan: Plan) -> list:
        return [r for r in self.sim.runs if r.task_id == plan.task_id]

    def chunk_requests(self, oid: bytes) -> list[tuple[int, fx.RequestChunk]]:
        return [(n.index, e) for n in self.nodes for e in n.effects(fx.RequestChunk)
                if e.oid == oid]

    def check_result(self, plan: Plan) -> None:
        """Exactly one ObjectReady per return at the owner's driver, with the right value."""
        got = self.readies(plan.node, plan.client)
        owner = self.nodes[plan.node]
        for oid, kind in zip(plan.oids, plan.returns):
            msgs = got.get(oid, [])
            if not msgs and kind != "i":   # made on a peer: the owner pushes it only if here
                entry = owner.scheduler.objects.get(oid)
                assert entry is not None and entry.state == STORE, (plan.n, oid.hex())
                assert len(self.notices(plan.node, plan.client).get(oid, [])) <= 1, plan.n
                remote = self.remote_copy(plan, oid)
                record = remote[1] if remote else owner.store.get(oid)
                assert record == (kind, tag(oid)), (plan.n, oid.hex(), record)
                continue
            assert len(msgs) == 1, (plan.n, oid.hex(), msgs)
            m = msgs[0]
            if kind == "i":
                assert (m.state, m.payload) == (INLINE, value(oid)), (plan.n, m)
            else:
                assert (m.state, m.size) == (STORE, kind), (plan.n, m)
                # the driver maps a STORE value from its own node's store
                assert owner.store.get(oid) == (kind, tag(oid)), (plan.n, oid.hex())

    def run_until_finished(self, plans, seconds: float) -> bool:
        plans = list(plans)
        return self.sim.run_until(lambda: all(self.finished(pl) for pl in plans), seconds)

    def converge(self) -> None:
        assert self.sim.run_until(self.sim.converged, 5.0)


def kill_after_result(world: World, victim: int, n: int) -> None:
    """Node `victim` dies just after it sends the TaskResult of task `n`."""
    sim = world.sim

    def kill(src, dst, msg):
        if type(msg) is p.TaskResult and msg.task_id == tid(n) and sim.nodes[victim].alive:
            sim.call_at(sim.now, lambda: sim.kill(victim))
        return False
    sim.drop = kill


def fits_total(resources: dict, demand: dict) -> bool:
    return rs.feasible(rs.to_units(resources), rs.to_units(demand))


# -- random clusters and batches of tasks --------------------------------------------------

@st.composite
def clusters(draw):
    n = draw(st.integers(1, 4))
    nodes = []
    for _ in range(n):
        node = {"CPU": draw(st.sampled_from([1, 1, 2, 3]))}
        gpu = draw(st.sampled_from([0, 0, 1, 2]))
        if gpu:
            node["gpu"] = gpu
        nodes.append(node)
    return nodes


@st.composite
def batches(draw, max_tasks: int = 14, store: bool = True, shapes=None):
    count = draw(st.integers(1, max_tasks))
    tasks = []
    outputs: list[bytes] = []
    for n in range(1, count + 1):
        if shapes is None:
            cpu = draw(st.sampled_from([0, 0.5, 1, 1, 2, 4]))
            gpu = draw(st.sampled_from([0, 0, 0, 1, 2]))
        else:
            cpu, gpu = draw(st.sampled_from(shapes)), 0
        num_returns = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
        returns = [draw(st.sampled_from(["i", "i", 200_000, 5 * MB, 9 * MB]) if store
                        else st.just("i")) for _ in range(num_returns)]
        deps = draw(st.lists(st.sampled_from(outputs), max_size=2, unique=True)) \
            if outputs else []
        tasks.append(dict(n=n, cpu=cpu, resources={"gpu": gpu} if gpu else {},
                          duration=draw(st.sampled_from([0.02, 0.1, 0.3, 1.0])),
                          returns=returns, deps=deps))
        outputs += [rid(n, k) for k in range(num_returns)]
    return tasks
