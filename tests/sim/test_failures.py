"""Failures across several Fabrics (tests/harness/world.py): a node that dies or
leaves, a result lost with its node (rebuilt: more in test_lineage.py), an owner
wrongly declared dead.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric import serialization
from zfabric.core import events as ev
from zfabric.core.membership import MemberState
from zfabric.core.tasks import TaskState
from zfabric.testing.sim import LinkFaults

from tests.harness.world import (DRIVER, INLINE, MB, SIM, STORE, World, batches,
                                 kill_after_result, rid, tid)


# -- a node dies mid-run -------------------------------------------------------------------

@settings(max_examples=40, **SIM)
@given(cpus=st.lists(st.sampled_from([1, 2]), min_size=2, max_size=4),
       tasks=batches(max_tasks=12, store=False, shapes=[0.5, 1, 1]),
       seed=st.integers(0, 2**32 - 1), victim=st.integers(1, 3),
       kill_at=st.floats(0.0, 1.5))
def test_a_dead_node_s_tasks_are_retried_and_finish_once_at_the_owner(
        cpus, tasks, seed, victim, kill_at):
    nodes = [{"CPU": c} for c in cpus]
    victim = 1 + (victim - 1) % (len(nodes) - 1)
    world = World(nodes, seed=seed)
    world.converge()
    plans = [world.submit(t["n"], cpu=t["cpu"], duration=t["duration"], returns=t["returns"],
                          deps=t["deps"]) for t in tasks]
    world.sim.run(kill_at)
    t_kill = world.sim.now
    world.sim.kill(victim)
    work = sum(pl.duration for pl in plans)
    timeout = world.sim.config.failure_timeout
    # The owner (1 CPU at least) can run all that is left alone once it declared the
    # victim dead: failure_timeout, plus all the work, plus a second of messages.
    assert world.run_until_finished(plans, timeout + work + 1.0), \
        [pl.n for pl in plans if not world.finished(pl)]
    sim = world.sim
    assert sim.violations == []
    for pl in plans:
        world.check_result(pl)
        runs = world.runs_of(pl)
        assert runs, pl.n
        # a task runs again only because its earlier run was on the node that died
        for r in runs[:-1]:
            assert r.node == victim and (r.end is None or r.end >= t_kill - 0.01), (pl.n, runs)
        assert all(r.start < t_kill for r in runs if r.node == victim)
    owner = world.nodes[0]
    assert owner.scheduler.tasks == {}
    gone = world.nodes[victim].node_id
    assert sim.run_until(lambda: all(gone not in n.scheduler.spill.peers
                                     for n in world.nodes if n.alive), timeout + 0.5)
    retried = [pl for pl in plans if len(world.runs_of(pl)) > 1]
    assert owner.scheduler.stats["retried"] >= len(retried)


def test_a_node_that_leaves_gracefully_has_its_tasks_retried_at_once():
    """No failure timeout: the peers hear the leave and the owner retries the tasks
    that were running there right away."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=13)
    world.converge()
    sim = world.sim
    plans = [world.submit(n, duration=0.5) for n in range(1, 7)]
    sim.run(0.2)
    on_leaver = [pl for pl in plans if any(r.node == 1 for r in world.runs_of(pl))]
    assert on_leaver
    sim.leave(1)
    gone = sim.nodes[1].node_id
    owner = world.nodes[0].scheduler
    # a message delay, not failure_timeout (0.6 s)
    assert sim.run_until(lambda: gone not in owner.spill.peers, 0.05)
    for pl in on_leaver:   # back in the owner's hands: queued, or spilled elsewhere
        task = owner.tasks[pl.task_id]
        assert task.state != TaskState.SPILLED or task.node != gone
    assert owner.stats["retried"] == len(on_leaver)
    assert world.run_until_finished(plans, 5)
    for pl in plans:
        world.check_result(pl)
        assert [r.node for r in world.runs_of(pl)][-1] != 1
    assert sim.run_until(lambda: all(gone not in n.scheduler.spill.peers for n in sim.nodes
                                     if n.alive), 0.1)
    assert sim.violations == []


# -- bugs the harness found (each test failed before its fix) ----------------------------------

def node_1_dies_after_making_a():
    """Two nodes; the owner (node 0) is busy, so A (50 MB) runs on node 1, which
    dies just after reporting it; B needs A. Returns (world, plan A, plan B)."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=11)
    world.converge()
    kill_after_result(world, 1, 1)
    world.submit(10, duration=1.0)                                # keeps the owner busy
    a = world.submit(1, returns=[50 * MB], duration=0.2)
    b = world.submit(2, deps=[rid(1)], duration=0.2)
    return world, a, b


def test_a_task_retried_after_its_peer_died_waits_for_its_argument_to_be_rebuilt():
    """A (50 MB) runs on node 1; B, sent there to run beside it, is retried when node 1
    dies: its argument died with the node, so the owner runs A again, and B runs
    with the new A -- never where A is missing."""
    world, a, b = node_1_dies_after_making_a()
    assert world.run_until_finished([a, b], 15)
    got = world.readies()[rid(2)][0]
    assert got.state == INLINE, serialization.error_from_record(got.payload)
    world.check_result(b)
    assert [r.node for r in world.runs_of(a)] == [1, 0]
    assert [r.node for r in world.runs_of(b)] in ([0], [1, 0])
    assert world.sim.violations == []


def test_a_result_lost_with_its_node_is_rebuilt_by_running_its_task_again():
    """A (50 MB) runs on node 1 because the owner is busy; B needs it and waits for the
    owner to pull it. Node 1 dies just after reporting A, before the pull is done."""
    world, a, b = node_1_dies_after_making_a()
    sim = world.sim
    assert world.run_until_finished([a, b], 15)
    assert [r.node for r in world.runs_of(a)][0] == 1 and not sim.nodes[1].alive
    got = world.readies()[rid(2)][0]
    assert got.state == INLINE, serialization.error_from_record(got.payload)
    world.check_result(b)
    owner = world.nodes[0].scheduler
    assert owner.stats["rebuilt"] == 1 and owner.tasks == {}
    assert sim.violations == []


def test_a_queued_task_whose_argument_died_with_its_node_waits_for_it_to_be_rebuilt():
    """A (50 MB) runs on node 1; B needs it but only node 2 (z, busy for a while) can
    run B, so B is QUEUED at the owner. Node 1 dies just after reporting A: B goes
    back to waiting while the owner runs A again, then runs with the new A."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1, "z": 1}], seed=11)
    world.converge()
    sim = world.sim
    kill_after_result(world, 1, 1)
    world.submit(10, duration=1.0)                                # keeps the owner busy
    world.submit(11, resources={"z": 1}, duration=2.0)            # keeps node 2 busy
    a = world.submit(1, returns=[50 * MB], duration=0.2)
    b = world.submit(2, resources={"z": 1}, deps=[rid(1)], duration=0.2)
    assert world.run_until_finished([a, b], 15)
    assert [r.node for r in world.runs_of(a)][0] == 1 and not sim.nodes[1].alive
    assert len(world.runs_of(a)) == 2 and [r.node for r in world.runs_of(b)] == [2]
    got = world.readies()[rid(2)][0]
    assert got.state == INLINE, serialization.error_from_record(got.payload)
    world.check_result(b)
    assert sim.violations == []


def test_a_task_stopped_because_its_owner_was_declared_dead_is_not_reported_cancelled():
    """Node 1 stops hearing node 0 for longer than the failure timeout (one way only)
    and stops the task node 0 spilled to it; node 0 never saw node 1 go down. The
    task must run again and succeed: never a TaskCancelledError nobody asked for."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=2, ipc_latency=0.4)
    world.converge()
    sim = world.sim
    world.submit(1, duration=5.0)              # runs on node 0
    victim = world.submit(2, duration=2.0)     # spilled to node 1
    sim.run(0.3)
    owner, peer = world.nodes
    assert world.sim.index_of(owner.scheduler.tasks[victim.task_id].node) == 1
    cut = {"on": True}
    sim.drop = lambda src, dst, msg: cut["on"] and (src, dst) == (0, 1)
    sim.run(0.9)                               # > failure_timeout (0.6)
    cut["on"] = False
    assert world.run_until_finished([victim], 30.0)
    assert peer.scheduler.stats["cancelled"] == 1   # it stopped the orphan (quietly)
    assert [e.msg.status for e in peer.peer_sends(p.TaskResult)
            if e.msg.task_id == victim.task_id] in ([], [0])   # never CANCELLED
    (ready,) = world.readies()[rid(2)]
    assert ready.state == INLINE
    world.check_result(victim)


# -- a partition heals -----------------------------------------------------------------------

def views(sim) -> dict[tuple[int, int], MemberState]:
    """(observer, subject) -> the subject's state in the observer's membership."""
    return {(o.index, s.index): o.fabric.membership.members[s.node_id].state
            for o in sim.nodes for s in sim.nodes if s.node_id in o.fabric.membership.members}


@settings(max_examples=25, **SIM)
@given(seed=st.integers(0, 2**32 - 1), one_way=st.booleans(), island=st.sampled_from([0, 1, 2]))
def test_after_a_partition_heals_every_node_sees_every_node_alive_within_a_few_rounds(
        seed, one_way, island):
    """A node is cut off (both ways, or only what it sends is lost) until the
    others declare it dead -- and, both ways, it declares them dead. After the
    heal, whichever side declared whom dead, every node sees every node alive
    again within one slow probe of the dead and a few messages."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=seed)
    world.converge()
    sim = world.sim
    cut = {"on": True}
    sim.drop = lambda src, dst, msg: cut["on"] and (
        src == island and dst != island or not one_way and dst == island and src != island)
    others = [i for i in range(3) if i != island]
    timeout = sim.config.failure_timeout
    declared = [(o, island) for o in others] + ([] if one_way else [(island, o) for o in others])
    assert sim.run_until(lambda: all(views(sim)[k] == MemberState.DEAD for k in declared),
                         3 * timeout)
    cut["on"] = False
    # the first contact after the heal is a probe of the dead (every dead_probe_rounds
    # gossip rounds); then a few messages: a refutation each way
    probe = 10 * sim.config.gossip_interval
    assert sim.run_until(lambda: set(views(sim).values()) == {MemberState.ALIVE},
                         probe + 6 * sim.config.gossip_interval), views(sim)
    # and a task from the island's driver runs anywhere again
    plans = [world.submit(n, node=island, duration=0.2) for n in range(1, 7)]
    assert world.run_until_finished(plans, 3.0)
    for plan in plans:
        world.check_result(plan)


# -- bugs the chaos simulation found (tests/sim/test_chaos_sim.py) ----------------------------

def test_a_spill_that_arrives_twice_runs_its_task_once():
    """(chaos seed 119) The network delivers the Spill of task 2 twice. The peer must
    not answer the second copy with a Refuse: the owner would take it for a refusal
    of the task the peer runs, queue it again, and run the same attempt elsewhere
    at the same time."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], seed=2)
    world.converge()
    sim = world.sim

    def twice(src, dst, msg):
        if type(msg) is p.Spill and msg.task_id == tid(2) and not twice.done:
            twice.done = True
            peer = sim.nodes[src].node_id
            sim.call_at(sim.now + 0.001, lambda: sim.handle(dst, ev.PeerMessage(peer, msg)))
        return False
    twice.done = False
    sim.drop = twice
    world.submit(1, duration=1.0)                  # keeps the owner busy
    b = world.submit(2, duration=0.5)              # spilled
    assert world.run_until_finished([b], 5.0)
    assert twice.done
    assert len(world.runs_of(b)) == 1, world.runs_of(b)
    world.check_result(b)
    assert world.nodes[0].scheduler.stats["retried"] == 0


def test_a_lost_chunk_request_to_the_only_holder_does_not_lose_the_object():
    """(chaos seed 101) A's 50 MB live on node 1 only; the first request of the
    owner's pull is lost on the way. The holder is alive and has it: the late chunk
    is asked again, and the driver gets the value, not ObjectLostError."""
    world = World([{"CPU": 1}, {"CPU": 1, "x": 1}], seed=5)
    world.converge()
    sim = world.sim

    class LoseFirstChunkRequest(LinkFaults):
        lost = 0

        def copies(self, src, dst, channel="ctl"):
            if channel == "obj" and src == 0 and not self.lost:
                self.lost += 1
                return []
            return super().copies(src, dst, channel)
    sim.faults = LoseFirstChunkRequest(random.Random(0))
    a = world.submit(1, resources={"x": 1}, returns=[50 * MB], duration=0.3)
    world.sim.send(0, DRIVER, p.Subscribe([rid(1)]))
    assert world.run_until_finished([a], 5)
    assert sim.run_until(lambda: rid(1) in world.readies(), 3 * sim.config.chunk_timeout)
    assert sim.faults.lost == 1
    (ready,) = world.readies()[rid(1)]
    assert ready.state == STORE, serialization.error_from_record(ready.payload)
    world.check_result(a)


def test_a_task_run_again_after_its_result_was_lost_seals_its_store_result_once():
    """(chaos, a cut while a TaskResult was on its way) Task 2's 5 MB result is made
    on node 1, and its TaskResult is lost. The owner's SpillCheck finds node 1 no
    longer running it, so node 1 runs it again, while it still keeps the first
    copy for the owner: the second seal of that object is the same value and must
    be dropped, not counted twice in the store's books."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=2)
    world.converge()
    sim = world.sim

    def lose_first_result(src, dst, msg):
        if type(msg) is p.TaskResult and msg.task_id == tid(2) and not lose_first_result.done:
            lose_first_result.done = True
            return True
        return False
    lose_first_result.done = False
    sim.drop = lose_first_result
    world.submit(1, duration=3.0)                            # keeps the owner busy
    b = world.submit(2, returns=[5 * MB], duration=0.2)      # runs on node 1
    assert world.run_until_finished([b], 10.0)
    assert [r.node for r in world.runs_of(b)] == [1, 1]      # run again after the SpillCheck
    world.check_result(b)
    peer = world.nodes[1]
    assert peer.scheduler.objects.store_used == 5 * MB == sum(s for s, _ in peer.store.values())
