"""Partitions across whole nodes (tests/harness/world.py): symmetric or one-way, one
island or several, one after another; and a driver that dies with work on every node.

After the last heal every node agrees on membership and every GCS replica holds
the same rows within a bound, and every task finishes with its value. After a
driver dies, nothing of it is left on any node.
"""
from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.core import events as ev
from zfabric.core.membership import MemberState
from zfabric.core.objects import peer_client
from zfabric.core.spill import SPILL_CHECK_AGE

from tests.harness.world import DRIVER, MB, SIM, World, rid

TABLES = ("node", "loc", "obj", "tl")


def views(sim) -> dict[tuple[int, int], MemberState]:
    """(observer, subject) -> the subject's state in the observer's membership."""
    return {(o.index, s.index): o.fabric.membership.members[s.node_id].state
            for o in sim.nodes for s in sim.nodes
            if s is not o and s.node_id in o.fabric.membership.members}


def agreed(sim) -> bool:
    """Every node knows every other, ALIVE, at the incarnation that node has."""
    n = len(sim.nodes)
    v = views(sim)
    if len(v) != n * (n - 1) or set(v.values()) != {MemberState.ALIVE}:
        return False
    return all(o.fabric.membership.members[s.node_id].incarnation
               == s.fabric.membership.me.incarnation
               for o in sim.nodes for s in sim.nodes if s is not o)


def replica(node) -> tuple:
    gcs = node.fabric.gcs
    return (gcs.vector(),
            {t: sorted((s, repr(k), repr(v)) for s, k, v in gcs.items(t)) for t in TABLES})


def replicas_agree(sim) -> bool:
    first = replica(sim.nodes[0])
    return all(replica(n) == first for n in sim.nodes[1:])


def cutter(islands: list[int], one_way: bool, cut: dict):
    """A FabricSim `drop`: while cut["on"], messages between islands are lost
    (one way: only what a lower island sends a higher one)."""
    def drop(src, dst, msg):
        a, b = islands[src], islands[dst]
        return cut["on"] and (a < b or (not one_way and a > b))
    return drop


episodes = st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=4, max_size=4),
                              st.booleans(), st.floats(0.0, 2.0), st.floats(0.0, 0.6)),
                    min_size=1, max_size=3)


@settings(max_examples=30, **SIM)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4), episodes=episodes,
       tasks=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.05, 0.2, 0.5])),
                      min_size=1, max_size=10))
def test_after_any_partitions_heal_membership_and_gcs_agree_and_every_task_finishes(
        seed, n, episodes, tasks):
    """Tasks submitted on every node run across the cluster while it is cut into
    islands (both ways, or one way so that only one side notices), healed, cut
    again. After the last heal: within (n-1) probes of the dead and a few
    rounds, every node sees every node ALIVE at its current incarnation; every
    task comes back to its owner with its value (retried as often as needed);
    and then the GCS replicas are identical."""
    world = World([{"CPU": 1}] * n, seed=seed)
    world.converge()
    sim = world.sim
    cfg = sim.config
    plans = [world.submit(k + 1, node=node % n, duration=d, max_retries=-1)
             for k, (node, d) in enumerate(tasks)]
    for islands, one_way, cut_for, healed_for in episodes:
        cut = {"on": True}
        sim.drop = cutter(islands[:n], one_way, cut)
        sim.run(cut_for)
        cut["on"] = False
        sim.run(healed_for)
    healed_at = sim.now - episodes[-1][3]
    rounds = math.ceil((n - 1) / cfg.gossip_fanout)
    tau = cfg.gossip_interval + sim.step_size
    bound = (n - 1) * cfg.dead_probe_rounds * tau + 3 * rounds * tau + 0.1
    assert sim.run_until(lambda: agreed(sim), max(0.0, healed_at + bound - sim.now)), \
        (views(sim), sim.now - healed_at, bound)
    # every task: (the SpillCheck of a task whose peer dropped it is due after a second)
    work = sum(pl.duration for pl in plans)
    assert world.run_until_finished(plans, work + 3.0), \
        [pl.n for pl in plans if not world.finished(pl)]
    for plan in plans:
        world.check_result(plan)
    assert sim.violations == []
    # the GCS: the last writes (timeline batches) reach everyone in a round or two
    assert sim.run_until(lambda: replicas_agree(sim), 5 * tau), \
        [replica(node)[0] for node in sim.nodes]
    sim.run(cfg.failure_timeout)
    assert agreed(sim) and replicas_agree(sim)


def test_a_node_cut_off_both_ways_finds_its_peers_again_by_itself():
    """Node 2 is cut off both ways: it declares both peers DEAD (it is alone) and
    they declare it DEAD. It keeps probing them at the slow rate, and its seed
    (node 0) too: after the heal the first probe across brings everyone back."""
    world = World([{"CPU": 1}] * 3, seed=4)
    world.converge()
    sim = world.sim
    cut = {"on": True}
    drop = cutter([0, 0, 1], False, cut)
    asked = []   # (time, destination) of each Gossip with reply=True node 2 sends

    def watch(src, dst, msg):
        if src == 2 and type(msg) is p.Gossip and msg.reply:
            asked.append((sim.now, dst))
        return drop(src, dst, msg)
    sim.drop = watch
    lonely = sim.nodes[2].fabric
    assert sim.run_until(lambda: lonely.membership.alone(), 3 * sim.config.failure_timeout)
    start = sim.now
    sim.run(3.0)
    probe = sim.config.dead_probe_rounds * (sim.config.gossip_interval + sim.step_size)
    seed_probes = [t for t, dst in asked if t > start and dst == 0]
    assert {dst for t, dst in asked if t > start} == {0}   # the seed only, as a join does
    assert len(seed_probes) >= math.floor(3.0 / probe) - 1
    cut["on"] = False
    tau = sim.config.gossip_interval + sim.step_size
    assert sim.run_until(lambda: agreed(sim), 2 * sim.config.dead_probe_rounds * tau + 5 * tau)


# -- a driver dies -----------------------------------------------------------------------------

@settings(max_examples=20, **SIM)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4),
       tasks=st.lists(st.tuples(st.sampled_from([0.05, 0.3, 2.0]),
                                st.sampled_from(["i", 200_000, 5 * MB])),
                      min_size=1, max_size=12),
       die_at=st.floats(0.0, 1.0))
def test_a_dead_driver_s_tasks_are_cancelled_and_its_objects_freed_on_every_node(
        seed, n, tasks, die_at):
    """A driver on node 0 submits tasks that run there and on its peers, some
    finished (their STORE results kept in the stores of the nodes that ran them),
    some running, some queued. Its process dies (ClientGone): on every node no
    task of it is left running or queued, and no object of it in any store, in
    any node's books or in the GCS."""
    world = World([{"CPU": 1}] * n, seed=seed)
    world.converge()
    sim = world.sim
    tasks = [(2.0, 5 * MB)] + tasks            # one at least still runs when it dies
    for k, (duration, kind) in enumerate(tasks):
        deps = [rid(k)] if k and k % 3 == 0 else []
        world.submit(k + 1, duration=duration, returns=[kind], deps=deps)
    sim.run(die_at)
    owner = sim.nodes[0].node_id

    def gone() -> bool:
        for node in sim.nodes:
            s = node.scheduler
            if any(t.owner in (DRIVER, peer_client(owner)) for t in s.tasks.values()):
                return False
            if node.running() or node.store or s.objects.store_used:
                return False
            if node.fabric.gcs.items("loc") or node.fabric.gcs.items("obj"):
                return False
        return True
    assert not gone()
    sim.handle(0, ev.ClientGone(DRIVER))
    # a force-cancel reaches a peer in a message; its answer and FreeObjects, one
    # more; the GCS deletes, one push: well within a second
    assert sim.run_until(gone, 1.0), [
        (node.index, [t.name for t in node.scheduler.tasks.values()],
         [r.task_id for r in node.running()], list(node.store),
         node.scheduler.objects.store_used) for node in sim.nodes]
    assert sim.violations == []
    for node in sim.nodes:
        assert not any(o in node.scheduler.objects.entries for o in
                       [rid(k + 1) for k in range(len(tasks))]), node.index


# -- every task sent to a peer comes back within a bound ----------------------------------------

@settings(max_examples=25, **SIM)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 3), owner_out=st.booleans(),
       cut_at=st.floats(0.0, 0.5),
       durations=st.lists(st.sampled_from([0.05, 0.2, 0.5]), min_size=1, max_size=8))
def test_a_task_sent_to_a_peer_comes_back_during_a_one_way_cut(
        seed, n, owner_out, cut_at, durations):
    """The owner (node 0) spills tasks to its peers; then what it sends them is
    lost for good (owner_out), or what they send it. The cut never heals, and
    still every task comes back and finishes with its value, whatever each side
    believes: the side that hears nothing declares the other dead -- the owner
    takes its tasks back at once; a peer drops the owner's tasks, and the owner,
    who still hears it, takes them back when the peer's gossip (its slow probe
    of the dead) says it holds the owner DEAD, and sends it no more."""
    world = World([{"CPU": 1}] * n, seed=seed)
    world.converge()
    sim = world.sim
    cfg = sim.config
    plans = [world.submit(k + 1, duration=d, max_retries=-1) for k, d in enumerate(durations)]
    sim.run(cut_at)
    cut = {"on": True}
    sim.drop = cutter([0] + [1] * (n - 1), True, cut) if owner_out else \
        cutter([1] + [0] * (n - 1), True, cut)
    tau = cfg.gossip_interval + sim.step_size
    probes = (n - 1) * cfg.dead_probe_rounds * tau
    bound = cfg.failure_timeout + probes + 2 * tau + sum(durations) + 0.2
    assert world.run_until_finished(plans, bound), \
        [(pl.n, world.nodes[0].scheduler.tasks.get(pl.task_id)) for pl in plans
         if not world.finished(pl)]
    for plan in plans:
        world.check_result(plan)
    assert sim.violations == []
    assert cut["on"]


@settings(max_examples=20, **SIM)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 4), loss=st.floats(0.1, 0.6),
       lossy_for=st.floats(0.5, 3.0),
       tasks=st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.05, 0.2, 0.5])),
                      min_size=1, max_size=10))
def test_lost_task_messages_delay_a_task_by_a_bounded_time(seed, n, loss, lossy_for, tasks):
    """Spill, TaskResult, Refuse, SpillCheck and Cancel messages are lost at random
    (gossip gets through: both ends hold each other alive) for a while. Once
    messages flow again, every task finishes within a SpillCheck (its age, a
    tick, a round trip) plus the work: no lost message leaves a task hanging."""
    world = World([{"CPU": 1}] * n, seed=seed)
    world.converge()
    sim = world.sim
    rng = random.Random(seed)
    lossy = {"on": True}
    kinds = (p.Spill, p.TaskResult, p.Refuse, p.SpillCheck, p.Cancel)
    lost = []

    def drop(src, dst, msg):
        if lossy["on"] and type(msg) in kinds and rng.random() < loss:
            lost.append(type(msg).__name__)
            return True
        return False
    sim.drop = drop
    plans = [world.submit(k + 1, node=node % n, duration=d, max_retries=-1)
             for k, (node, d) in enumerate(tasks)]
    sim.run(lossy_for)
    lossy["on"] = False
    work = sum(pl.duration for pl in plans)
    bound = SPILL_CHECK_AGE + 2 * sim.config.tick_interval + work + 0.2
    assert world.run_until_finished(plans, bound), (
        lost, [pl.n for pl in plans if not world.finished(pl)])
    for plan in plans:
        world.check_result(plan)
    assert sim.violations == []


@pytest.mark.parametrize("how", ["gossip lost", "link slow"])
def test_work_a_peer_holds_for_an_owner_that_moved_on_is_dropped_and_its_copy_released(how):
    """The owner (node 0, busy) spills T (a 5 MB result) to node 1, then stops
    hearing node 1 for a while -- node 1's gossip is lost ("gossip lost", T
    runs 2.5 s), or everything node 1 sends takes a second ("link slow", T
    runs 0.4 s) -- declares it dead, and runs T itself. Node 1, which hears the
    owner all along, learns from the owner's gossip that it is held dead and
    stops T; or, T done, its TaskResult reaches the owner late and is dropped
    (the value sealed first stays) and the owner tells node 1 to release its
    copy. Either way nothing of T stays in node 1's store, and T's value at
    the owner is the owner's own."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=7)
    world.converge()
    sim = world.sim
    world.submit(1, duration=0.5)                                   # keeps the owner busy
    t = world.submit(2, duration=2.5 if how == "gossip lost" else 0.4, returns=[5 * MB])
    sim.run(0.1)
    owner, peer = world.nodes
    assert owner.scheduler.tasks[t.task_id].node == peer.node_id
    if how == "gossip lost":
        cut = {"on": True}
        sim.drop = lambda src, dst, msg: cut["on"] and src == 1 and type(msg) is p.Gossip
        sim.call_at(2.0, lambda: cut.update(on=False))
    else:
        sim.extra_delay[(1, 0)] = 1.0
        sim.call_at(1.2, lambda: sim.extra_delay.clear())
    assert world.run_until_finished([t], 5.0)
    world.check_result(t)
    ran = world.runs_of(t)
    assert [r.node for r in ran] == [1, 0], ran
    oid = rid(2)
    assert sim.run_until(lambda: oid not in peer.store and not peer.running()
                         and t.task_id not in peer.scheduler.tasks, 5.0), \
        (list(peer.store), peer.running())
    assert owner.store[oid] == (5 * MB, b"t" + oid)                # the owner's own run
    assert sim.run_until(lambda: sim.converged() and oid not in peer.store, 5.0)
    if how == "gossip lost":
        assert ran[0].end is None                                   # stopped at node 1
    else:
        assert ran[0].end is not None and owner.scheduler.stats["stale_results"] == 1
    assert owner.store[oid] == (5 * MB, b"t" + oid) and world.readies()[oid] == \
        world.readies()[oid][:1]                                  # sealed once, kept
    assert sim.violations == []
