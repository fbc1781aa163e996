"""Chaos: a whole cluster under random faults, checked against a model.

`ChaosRun(scenario).play()` (or `check(scenario)`, which raises) plays a
`scenario.Scenario` on a FabricSim: its drivers submit, put, get, drop,
borrow and cancel; workers, zygotes, nodes and drivers die, nodes leave,
nodes restart with a fresh id, the island of a partition (both ways or one)
is cut off and healed; the network loses, duplicates, reorders and delays
messages until `scenario.quiet`. Then the network heals and calms, every
live driver gets every object it still holds, and the run goes on until the
cluster is quiet. Everything random comes from the scenario's seed.

What it checks (an `AssertionError` names the first broken one; the CLI
and `check()` print the seed and a one-line replay command):

- values: every ObjectReady a live driver receives is the model's value
  (scenario.value: a hash of the task and its arguments' values), or an
  error of a documented kind that a fault may explain: ObjectLostError,
  NodeDiedError and WorkerCrashedError only if a fault touched the
  object's lineage (a node it ran on or was copied to crashed or was cut
  off, or a worker running one of its tasks died), TaskCancelledError only
  if the driver cancelled a task of its lineage. An untouched object must
  have its value. With `lineage=True` (LINEAGE_STRICT) an ObjectLostError
  is right for a live driver only when a task of the object's lineage may
  have spent its retries (`max_retries` 0, or it ran more often than that
  allows): its owner is alive, so lineage must rebuild what was lost;
- bounded gets: after `quiet`, every get of a live driver is answered
  within `get_bound()` of virtual time;
- convergence: after the heal every live node sees every live node ALIVE
  and every dead one gone, every GCS replica of a live node's shard
  reaches that node's version, and no live node still holds a task;
- no referenced object freed: after every step, every object a live
  driver holds is in its node's books, and in its store if it is a STORE
  object the books say is there;
- no attempt runs twice at once: an attempt is (task, the owner's count of
  starts of it when it sent it out), and two live runs of one are an error;
- every node's state machines validate after every event, no node runs
  more than its resources, and no task runs without its arguments
  (FabricSim's own checks).
"""
from __future__ import annotations

import argparse
import collections
import random
import sys
import traceback

from ... import protocol as _p, records as _records
from ...core import events as _ev
from ...core.membership import GONE as _GONE, MemberState as _MemberState
from ...protocol import ObjectState as _ObjectState
from .fabric import FabricSim, Work
from .links import LinkFaults
from .scenario import FN, FN_BLOB, Scenario, SeedChooser, generate, oid_of, put_value, tid, value

# Lineage (core/lineage.py) rebuilds what a fault lost while its owner lives: an
# ObjectLostError for an object a live driver holds is a failure. (False: accepted
# where a fault touched the object's lineage, as before lineage existed.)
LINEAGE_STRICT = True

INLINE, STORE, ERROR = int(_ObjectState.INLINE), int(_ObjectState.STORE), int(_ObjectState.ERROR)
PENDING = int(_ObjectState.PENDING)
# Errors a fault may explain (`system` of an error record), and those a cancel explains.
FAULT_ERRORS = {"ObjectLostError", "NodeDiedError", "WorkerCrashedError"}
CANCEL_ERRORS = {"TaskCancelledError"}
CHAOS_CONFIG = dict(gossip_interval=0.05, failure_timeout=0.6, chunk_timeout=1.0,
                    join_timeout=5.0, prefetch_max_task_seconds=0.0, idle_worker_timeout=10.0)


class Driver:
    def __init__(self, d: int, node):
        self.d = d
        self.client = b"driver-%d" % d
        self.node = node              # the SimNode it is attached to (dies with it)
        self.alive = True
        self.held: set[bytes] = set()
        self.known: set[bytes] = set()      # every object it ever held
        self.waiting: set[bytes] = set()   # gets not answered yet
        self.answered: dict[bytes, list] = {}   # oid -> [(time, state)]
        self.sent_code = False


class ChaosRun:
    def __init__(self, sc: Scenario, *, lineage: bool | None = None, validate: bool = True):
        self.sc = sc
        self.lineage = LINEAGE_STRICT if lineage is None else lineage
        rng = random.Random(sc.seed)
        self.faults = LinkFaults(random.Random(rng.getrandbits(64)), **sc.net)
        self.rng = random.Random(rng.getrandbits(64))
        self.sim = FabricSim(sc.nodes, seed=rng.getrandbits(64), program=self.program,
                             faults=self.faults, stop_is_error=False, validate=validate,
                             **CHAOS_CONFIG)
        self.sim.to_driver = self.to_driver
        self._handle, self.sim.handle = self.sim.handle, self._sim_handle
        self.puts = sc.puts
        self.specs: dict[bytes, list] = {}        # task id -> its submit op
        self.made: dict[bytes, tuple] = {}        # oid -> (task id or None, k, kind)
        self.owner: dict[bytes, Driver] = {}
        self.failures: list[str] = []
        self.faulted: set[int] = set()            # node slots that crashed or were cut off
        self.touched: set[bytes] = set()          # task ids a worker crash hit
        self.cancelled: set[bytes] = set()        # task ids their driver cancelled
        self.fault_log: list[str] = []
        self.drivers: list[Driver] = []
        self.quiet_at = 0.0

    # -- the model -----------------------------------------------------------------------

    def expected(self, oid: bytes, memo: dict | None = None) -> bytes:
        memo = {} if memo is None else memo
        if oid not in memo:
            task_id, k, _ = self.made[oid]
            if task_id is None:
                memo[oid] = put_value(oid)
            else:
                deps = [oid_of(key, self.puts) for key in self.specs[task_id][4]]
                memo[oid] = value(task_id, k, [self.expected(d, memo) for d in deps])
        return memo[oid]

    def lineage_tasks(self, oid: bytes) -> set[bytes]:
        out, stack = set(), [oid]
        while stack:
            task_id = self.made[stack.pop()][0]
            if task_id is not None and task_id not in out:
                out.add(task_id)
                stack += [oid_of(key, self.puts) for key in self.specs[task_id][4]]
        return out

    # -- the fake workers ------------------------------------------------------------------

    def program(self, sim, i: int, ex) -> Work:
        node = sim.nodes[i]
        self._check_attempt(node, ex)
        args = []
        for oid, state, payload in zip(ex.dep_ids, ex.dep_states, ex.dep_payloads):
            args.append(payload if state == INLINE else node.store.get(oid, (0, b"?"))[1])
        op = self.specs[ex.task_id]
        results = []
        for k, kind in enumerate(op[5]):
            v = value(ex.task_id, k, args)
            results.append((INLINE, 0, v) if kind == "i" else (STORE, kind, v))
        return Work(op[6], tuple(results))

    def attempt(self, node, task_id: bytes) -> int | None:
        """The owner's count of starts of the task when it sent out this run."""
        task = node.scheduler.tasks.get(task_id)
        if task is None:
            self.fail(f"node {node.index} runs task {task_id.hex()}, which it does not have")
            return None
        if task.remote_owner is None:
            return task.attempts
        return self.specs[task_id][8] - task.spec.max_retries + 1   # a Spill says retries left

    def _check_attempt(self, node, ex) -> None:
        mine = (ex.task_id, self.attempt(node, ex.task_id))
        for other in self.sim.nodes:
            if not other.alive:
                continue
            for w in other.workers.values():
                run = w.run
                if (w.alive and run is not None and run.end is None and run.task_id == ex.task_id
                        and (run.task_id, run.attempt) == mine):
                    self.fail(f"attempt {mine[1]} of task {ex.task_id.hex()} starts on node "
                              f"{node.index} while it runs on node {other.index}")
        self.sim.runs[-1].attempt = mine[1]   # (the Run this Execute just started)

    def _sim_handle(self, i: int, event) -> None:
        """Every event of every node: note the task a dying worker leaves behind
        (also one sent to it after it died), then let the node have it."""
        if type(event) is _ev.WorkerExited:
            worker = self.sim.nodes[i].scheduler.pool.workers.get(event.worker_id)
            if worker is not None and worker.task is not None:
                self.touched.add(worker.task.spec.task_id)
        self._handle(i, event)

    # -- what drivers read ------------------------------------------------------------------

    def to_driver(self, i: int, client: bytes, msg) -> None:
        driver = next((d for d in self.drivers if d.client == client and d.node.index == i), None)
        if driver is None or not driver.alive or type(msg) is not _p.ObjectReady:
            return
        oid = msg.oid
        if msg.state == PENDING:   # (a return of its own, kept on another node: asked
            if oid in driver.waiting and oid in driver.known:   # for if wanted, as a
                self.sim.send(i, client, _p.Subscribe([oid]))   # client does)
            return
        driver.waiting.discard(oid)
        driver.answered.setdefault(oid, []).append((self.sim.now, msg.state))
        if oid not in driver.known:
            return self.fail(f"driver {driver.d} was sent {oid.hex()}, which it never made")
        want = self.expected(oid)
        if msg.state == INLINE:
            if msg.payload != want:
                self.fail(f"driver {driver.d}: {self.name(oid)} = {msg.payload!r}, "
                          f"want {want!r}")
        elif msg.state == STORE:
            size = self.made[oid][2]
            got = driver.node.store.get(oid)
            if msg.size != size or got != (size, want):
                self.fail(f"driver {driver.d}: {self.name(oid)} is STORE {msg.size} with "
                          f"{got!r} in its node's store, want {(size, want)!r}")
        elif msg.state == ERROR:
            self._check_error(driver, oid, _records.fields(msg.payload))
        else:
            self.fail(f"driver {driver.d}: {self.name(oid)} in state {msg.state}")

    def _check_error(self, driver: Driver, oid: bytes, err: dict) -> None:
        kind = err.get("system")
        allowed = self.allowed_errors(oid)
        if kind not in allowed:
            self.fail(f"driver {driver.d}: {self.name(oid)} raised {kind or err.get('type')}: "
                      f"{err.get('message')} {err.get('context')} (allowed here: "
                      f"{sorted(allowed) or 'none, its lineage saw no fault'})")

    def allowed_errors(self, oid: bytes) -> set[str]:
        lineage = self.lineage_tasks(oid)
        allowed = set(CANCEL_ERRORS) if lineage & self.cancelled else set()
        if lineage & self.touched or self.involved(oid, lineage) & self.faulted:
            allowed |= FAULT_ERRORS
            if self.lineage and not self.out_of_retries(lineage):
                allowed.discard("ObjectLostError")
        return allowed

    def out_of_retries(self, lineage: set[bytes]) -> bool:
        """May a task of this lineage have spent its retries, so that lineage
        may not run it again (ObjectLostError is then right, as in Ray)? Yes if
        it allows none, or it ran once more than its `max_retries` allows."""
        runs = collections.Counter(r.task_id for r in self.sim.runs)
        for task_id in lineage:
            max_retries = self.specs[task_id][8]
            if max_retries == 0 or 0 < max_retries < runs[task_id]:
                return True
        return False

    def involved(self, oid: bytes, lineage: set[bytes]) -> set[int]:
        """Node slots the lineage of `oid` touched: its owner, where its tasks ran or
        were sent, and both ends of every pull of one of its objects."""
        oids = {oid} | {o for o, made in self.made.items() if made[0] in lineage}
        slots = {self.owner[oid].node.index}
        slots |= {r.node for r in self.sim.runs if r.task_id in lineage}
        for node in self.all_nodes:
            for _, e in node.trace:
                if type(e).__name__ == "RequestChunk" and e.oid in oids:
                    slots |= {node.index, self.sim.slots.get(e.holder, node.index)}
                elif type(e).__name__ == "PeerSend" and type(e.msg) is _p.Spill \
                        and e.msg.task_id in lineage:
                    slots.add(self.sim._by_address[e.address].index)
        return slots

    def name(self, oid: bytes) -> str:
        task_id, k, _ = self.made[oid]
        return f"put {int.from_bytes(oid[1:], 'big')}" if task_id is None else \
            f"task {int.from_bytes(task_id[1:], 'big')} return {k}"

    def fail(self, text: str) -> None:
        self.failures.append(f"t={self.sim.now:.2f}: {text}")

    # -- driving ----------------------------------------------------------------------------

    def start(self) -> None:
        sim = self.sim
        self.all_nodes = list(sim.nodes)
        if not sim.run_until(sim.converged, 5.0):
            self.fail("the cluster did not form")
        t0 = sim.now
        for d, i in enumerate(self.sc.drivers):
            driver = Driver(d, sim.nodes[i])
            self.drivers.append(driver)
            sim.send(i, driver.client, _p.Hello("driver", 4000 + d, None))
        for op in self.sc.ops:
            sim.call_at(t0 + op[0], lambda op=op: self.do(op))
        for f in self.sc.faults:
            sim.call_at(t0 + f[0], lambda f=f: self.inject(f))
        self.quiet_at = t0 + self.sc.quiet
        sim.call_at(self.quiet_at, self.calm)

    def do(self, op: list) -> None:
        driver = self.drivers[op[1]]
        if not (driver.alive and driver.node.alive):
            return
        kind, i, sim = op[2], driver.node.index, self.sim
        if kind == "submit":
            n, deps, returns, _, cpu, retries = op[3:]
            task_id = tid(n)
            dep_ids = [oid_of(key, self.puts) for key in deps]
            if not set(dep_ids) <= driver.held:
                return   # an argument it could not borrow (its lender had died)
            self.specs[task_id] = op
            blob = b"" if driver.sent_code else FN_BLOB
            driver.sent_code = True
            for k, ret in enumerate(returns):   # (a failed argument fails it at once)
                self._made(driver, oid_of([n, k], ()), task_id, k, ret)
            sim.send(i, driver.client, _p.Submit(
                task_id, "f", FN, len(returns), {"CPU": cpu}, retries, False, 0, b"", dep_ids,
                [], blob, b"args-%d" % n, b""))
        elif kind == "put":
            oid = oid_of([op[3], 0], self.puts)
            self._made(driver, oid, None, 0, op[4])
            v = put_value(oid)
            if op[4] == "i":
                sim.send(i, driver.client, _p.Put(oid, INLINE, len(v), [], 0, v))
            else:
                driver.node.store[oid] = (op[4], v)
                sim.send(i, driver.client, _p.Put(oid, STORE, op[4], [], 0, b""))
        else:
            self._ref_op(driver, kind, oid_of(op[3], self.puts), op)

    def _made(self, driver: Driver, oid: bytes, task_id, k: int, kind) -> None:
        self.made[oid] = (task_id, k, kind)
        self.owner[oid] = driver
        driver.held.add(oid)
        driver.known.add(oid)

    def _ref_op(self, driver: Driver, kind: str, oid: bytes, op: list) -> None:
        i = driver.node.index
        if kind == "borrow":
            if any(oid in d.held for d in self.live_drivers() if d.node is driver.node):
                driver.held.add(oid)
                driver.known.add(oid)
                self.sim.send(i, driver.client, _p.Refs([oid], []))
            return
        if oid not in driver.held:
            return   # borrowing it failed
        if kind == "drop":
            driver.held.discard(oid)
            driver.waiting.discard(oid)
            self.sim.send(i, driver.client, _p.Refs([], [oid]))
        elif kind == "get":
            if oid not in driver.answered:
                driver.waiting.add(oid)
                self.sim.send(i, driver.client, _p.Subscribe([oid]))
        elif kind == "cancel" and self.made[oid][0] is not None:
            self.cancelled.add(self.made[oid][0])
            self.sim.send(i, driver.client, _p.Cancel(oid, op[4], True))

    def inject(self, f: list) -> None:
        sim, kind = self.sim, f[1]
        self.fault_log.append(f"t={sim.now:.2f} {f}")
        if kind == "worker" or kind == "zygote":
            node = sim.nodes[f[2]]
            wids = sorted(w for w, x in node.workers.items() if x.alive)
            if kind == "worker":
                wids = [wids[f[3] % len(wids)]] if wids else []
            for wid in wids:
                sim.kill_worker(f[2], wid)   # (its task is noted when the node hears it died)
        elif kind == "crash" or kind == "leave":
            self.faulted.add(f[2])
            if sim.nodes[f[2]].alive:
                (sim.kill if kind == "crash" else sim.leave)(f[2])
        elif kind == "restart":
            live = [n.index for n in sim.nodes if n.alive]
            self.faulted.add(f[2])
            if not sim.nodes[f[2]].alive and live:
                sim.restart(f[2], [self.rng.choice(live)])
                self.all_nodes.append(sim.nodes[f[2]])
        elif kind == "cut":
            island, one_way, seconds = f[2], f[3], f[4]
            self.faulted.add(island)
            self.faults.partition([island], [j for j in range(len(sim.nodes)) if j != island],
                                  one_way=one_way)
            sim.call_at(sim.now + seconds, self.faults.heal)
        elif kind == "driver":
            driver = self.drivers[f[2]]
            if driver.alive and driver.node.alive:
                driver.alive = False
                self.cancelled |= {t for t, op in self.specs.items() if op[1] == driver.d}
                sim.client_gone(driver.node.index, driver.client)

    def calm(self) -> None:
        self.faults.calm()
        self.faults.heal()
        for driver in self.live_drivers():
            want = sorted(o for o in driver.held if o not in driver.answered)
            driver.waiting |= set(want)
            if want:
                self.sim.send(driver.node.index, driver.client, _p.Subscribe(want))

    def live_drivers(self) -> list[Driver]:
        for d in self.drivers:
            if d.alive and not (d.node.alive and self.sim.nodes[d.node.index] is d.node):
                d.alive = False    # its node died: so did it (NodeDiedError)
        return [d for d in self.drivers if d.alive]

    # -- invariants during the run ---------------------------------------------------------

    def check_refs(self) -> None:
        """Every object a live driver holds is in its node's books (and store)."""
        for driver in self.live_drivers():
            objects, store = driver.node.scheduler.objects, driver.node.store
            for oid in driver.held:
                entry = objects.get(oid)
                if entry is None:
                    self.fail(f"driver {driver.d} holds {self.name(oid)}, which its node freed")
                elif (entry.state == STORE and entry.local and oid not in store
                      and not getattr(entry, "spilled", False)):   # (on disk: not in the store)
                    self.fail(f"driver {driver.d} holds {self.name(oid)}: the books have it "
                              "in the store, the store does not")

    def get_bound(self) -> float:
        """How long after `quiet` every get may take: detecting the dead and the
        pulls that time out, a few times over, plus all the work done again."""
        cfg = self.sim.config
        work = sum(op[6] for op in self.sc.ops if op[2] == "submit")
        return 4 * cfg.failure_timeout + 2 * cfg.chunk_timeout + 2 * work + 2.0

    def converged(self) -> bool:
        """Every live node sees every live node ALIVE and every other one gone; every
        replica (core/replication.py) of a live node's GCS shard is at that node's version."""
        live = [n for n in self.sim.nodes if n.alive]
        ids = {n.node_id for n in live}
        for n in live:
            for node_id, m in n.fabric.membership.members.items():
                if (m.state == _MemberState.ALIVE) != (node_id in ids) and not (
                        node_id not in ids and m.state in _GONE):
                    return False
            if not ids <= set(n.fabric.membership.members):
                return False
            vector, repl = n.fabric.gcs.vector(), n.fabric.replication
            if any(repl.replicates(n.node_id, m.node_id)
                   and vector.get(m.node_id) != m.fabric.gcs.vector()[m.node_id] for m in live):
                return False
        return True

    def finish(self) -> None:
        sim = self.sim
        bound = self.get_bound()
        ok = sim.run_until(lambda: not any(d.waiting for d in self.live_drivers()),
                           self.quiet_at + bound - sim.now)
        if not ok:
            for d in self.live_drivers():
                if d.waiting:
                    self.fail(f"driver {d.d}: no answer {bound:.1f} s after the faults ended "
                              f"for {sorted(self.name(o) for o in d.waiting)}")
        if not sim.run_until(self.converged, 5.0):
            self.fail("membership or the GCS replicas did not converge 5 s after the heal")
        busy = lambda: [(n.index, len(n.scheduler.tasks)) for n in sim.nodes
                        if n.alive and n.scheduler.tasks]
        if not sim.run_until(lambda: not busy(), bound):
            self.fail(f"tasks still held {bound:.1f} s after the gets: (node, count) {busy()}")
        self.failures += [f"sim: {v}" for v in sim.violations]
        refused = [(n.index, {k: v for k, v in n.fabric.stats.items()
                              if k.startswith("rejected_") and v}) for n in sim.nodes]
        if any(counts for _, counts in refused):   # (every message here is an honest one)
            self.fail(f"honest messages refused: (node, counts) {refused}")

    def play(self) -> "ChaosRun":
        """Run the scenario to the end, checking as it goes; failures in `failures`."""
        sim = self.sim
        self.start()
        try:
            while sim.now < self.quiet_at and not self.failures:
                sim.step()
                self.check_refs()
            if not self.failures:
                self.finish()
        except AssertionError as e:    # a state machine's validate(), or FabricSim's checks
            self.fail(f"invariant: {e!r}\n{traceback.format_exc()}")
        except Exception:              # (a crash in the core: still name the seed)
            self.fail(f"crashed:\n{traceback.format_exc()}")
        return self

    def summary(self) -> str:
        st = self.faults.stats
        runs = len(self.sim.runs)
        return (f"seed {self.sc.seed}: {len(self.sim.nodes)} nodes, {len(self.specs)} tasks, "
                f"{runs} runs, faults {self.fault_log or 'none'}, network {self.sc.net}: "
                f"sent {st.sent} lost {st.lost} cut {st.cut} duplicated {st.duplicated}; "
                f"nodes that stopped: {self.sim.stopped}")


def scenario_for(seed: int) -> Scenario:
    return generate(seed, SeedChooser(seed))


def replay_command(sc: Scenario, *, from_seed: bool) -> str:
    if from_seed:
        return f"python -m zfabric.testing.sim.chaos --seed {sc.seed}"
    return f"python -m zfabric.testing.sim.chaos --scenario '{sc.to_json()}'"


def check(sc: Scenario, *, from_seed: bool = True, lineage: bool | None = None) -> ChaosRun:
    """Play a scenario; raise AssertionError naming its seed, the failures and
    the command that replays it if any invariant broke."""
    run = ChaosRun(sc, lineage=lineage).play()
    if run.failures:
        raise AssertionError("\n".join([
            f"chaos seed {sc.seed} failed; replay: {replay_command(sc, from_seed=from_seed)}",
            run.summary(), *run.failures[:10]]))
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zfabric.testing.sim.chaos",
                                 description="Replay a chaos simulation run.")
    ap.add_argument("--seed", type=int, help="the scenario generate(seed) makes")
    ap.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed")
    ap.add_argument("--scenario", help="a scenario as JSON (as a failing test prints it)")
    ap.add_argument("--lineage", action="store_true", help="the stricter check (LINEAGE_STRICT)")
    args = ap.parse_args(argv)
    if args.scenario:
        scenarios = [Scenario.from_json(args.scenario)]
    else:
        start = 0 if args.seed is None else args.seed
        scenarios = [scenario_for(s) for s in range(start, start + args.seeds)]
    bad = 0
    for sc in scenarios:
        run = ChaosRun(sc, lineage=args.lineage or None).play()
        print(("FAIL " if run.failures else "ok   ") + run.summary())
        for f in run.failures:
            print("    " + f)
        bad += bool(run.failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
