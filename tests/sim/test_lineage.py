"""Lineage across several Fabrics (tests/harness/world.py): objects whose every
copy died with a node are made again by running their tasks again, through
their arguments; what cannot be made again (lineage dropped past the cap, no
retries left) raises ObjectLostError saying which object, which node and why.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import ids
from zfabric import protocol as p
from zfabric import serialization
from zfabric.exceptions import NodeDiedError, ObjectLostError

from tests.harness.world import (DRIVER, ERROR, INLINE, MB, SIM, STORE, World, batches,
                                 kill_after_result, rid, tag)


def error_of(msg) -> BaseException:
    assert msg.state == ERROR, msg
    return serialization.error_from_record(msg.payload)


def declared_dead(world: World, victim: int, seconds: float = 2.0) -> None:
    gone = world.nodes[victim].node_id
    assert world.sim.run_until(lambda: all(gone not in n.scheduler.spill.peers
                                           for n in world.nodes if n.alive), seconds)


def test_a_chain_whose_links_died_with_their_node_is_rebuilt_link_by_link():
    """a -> b -> c (2 MB each): a and b run on node 1, b there beside a; c needs z,
    which only the owner has. The driver dropped its refs to a and b, so a is freed
    once b has run. Node 1 dies just after reporting b: the owner runs a again
    (from its lineage: its entry was gone), then b, then c, and c is right."""
    world = World([{"CPU": 1, "z": 1}, {"CPU": 1}], seed=5)
    world.converge()
    sim = world.sim
    kill_after_result(world, 1, 2)
    world.submit(10, duration=1.0)                                 # keeps the owner busy
    a = world.submit(1, returns=[2 * MB], duration=0.1)
    b = world.submit(2, deps=[rid(1)], returns=[2 * MB], duration=0.1)
    c = world.submit(3, deps=[rid(2)], returns=[2 * MB], resources={"z": 1}, duration=0.1)
    sim.send(0, DRIVER, p.Refs([], [rid(1), rid(2), rid(10)]))
    assert world.run_until_finished([c], 10)
    assert not sim.nodes[1].alive
    assert [r.node for r in world.runs_of(a)] == [1, 0]
    assert [r.node for r in world.runs_of(b)] == [1, 0]
    assert [r.node for r in world.runs_of(c)] == [0]
    world.check_result(c)
    owner = world.nodes[0].scheduler
    assert owner.stats["rebuilt"] == 2
    # c's lineage holds b's, which holds a's; a's and b's values are freed
    assert set(owner.lineage.specs) == {a.task_id, b.task_id, c.task_id}
    assert rid(1) not in owner.objects and rid(2) not in owner.objects
    sim.send(0, DRIVER, p.Refs([], [rid(3)]))
    assert sim.run_until(lambda: len(owner.lineage) == 0, 0.1)
    assert sim.violations == []


def test_an_inline_argument_freed_meanwhile_is_restored_from_the_lineage_that_used_it():
    """a (INLINE) -> b (2 MB): both run on node 1 while the owner is busy; the driver
    dropped its ref to a. Node 1 dies just after reporting b: b runs again with a's
    value, which b's lineage kept -- a does not run again."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=6)
    world.converge()
    sim = world.sim
    kill_after_result(world, 1, 2)
    world.submit(10, duration=1.0)                                 # keeps the owner busy
    a = world.submit(1, duration=0.1)
    b = world.submit(2, deps=[rid(1)], returns=[2 * MB], duration=0.1)
    sim.send(0, DRIVER, p.Refs([], [rid(1), rid(10)]))
    assert sim.run_until(lambda: not sim.nodes[1].alive, 2)
    owner = world.nodes[0].scheduler
    assert rid(1) not in owner.objects and set(owner.lineage.specs) == {b.task_id}
    assert sim.run_until(lambda: len(world.runs_of(b)) == 2 and world.finished(b), 5)
    assert [r.node for r in world.runs_of(a)] == [1]
    assert [r.node for r in world.runs_of(b)] == [1, 0]
    world.check_result(b)            # (the fake worker checked a's value: violations)
    assert rid(1) not in owner.objects
    assert sim.violations == []


def test_past_the_cap_the_oldest_lineage_is_dropped_and_its_object_says_so():
    """With room for one spec, recording x drops a's. Node 1, which made both, dies:
    x is made again, a raises ObjectLostError naming a, node 1 and the cap."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=3, lineage_max_specs=1)
    world.converge()
    sim = world.sim
    kill_after_result(world, 1, 2)
    world.submit(10, duration=3.0)                                 # keeps the owner busy
    a = world.submit(1, returns=[2 * MB], duration=0.1)
    x = world.submit(2, returns=[2 * MB], duration=0.1)
    assert sim.run_until(lambda: not sim.nodes[1].alive, 2)
    assert [r.node for r in world.runs_of(a) + world.runs_of(x)] == [1, 1]
    owner = world.nodes[0].scheduler
    assert owner.lineage.was_dropped(a.task_id)
    declared_dead(world, 1)
    sim.send(0, DRIVER, p.Subscribe([rid(1), rid(2)]))
    assert world.run_until_finished([x], 10)
    (lost,) = world.readies()[rid(1)]
    error = error_of(lost)
    assert isinstance(error, ObjectLostError), repr(error)
    text = str(error)
    assert rid(1).hex() in text and ids.short(world.nodes[1].node_id) in text, text
    assert "lineage was dropped" in text, text
    (made,) = world.readies()[rid(2)]
    assert (made.state, made.size) == (STORE, 2 * MB)
    assert world.nodes[0].store[rid(2)] == (2 * MB, tag(rid(2)))
    assert [r.node for r in world.runs_of(x)] == [1, 0]
    assert sim.violations == []


@pytest.mark.parametrize("max_retries", [0, 1, -1])
def test_a_task_on_a_node_that_dies_runs_again_within_max_retries(max_retries):
    """The owner is busy, so t runs on node 1, which dies under it: the owner runs it
    again if it has a retry left, else t fails with NodeDiedError."""
    world = World([{"CPU": 1}, {"CPU": 1}], seed=7)
    world.converge()
    sim = world.sim
    world.submit(10, duration=0.5)                                 # keeps the owner busy
    t = world.submit(1, duration=1.0, max_retries=max_retries)
    sim.run(0.2)
    assert [r.node for r in world.runs_of(t)] == [1]
    sim.kill(1)
    assert world.run_until_finished([t], 5)
    (got,) = world.readies()[rid(1)]
    if max_retries == 0:
        assert isinstance(error_of(got), NodeDiedError)
        assert len(world.runs_of(t)) == 1
    else:
        assert got.state == INLINE
        world.check_result(t)
        assert [r.node for r in world.runs_of(t)] == [1, 0]
    assert world.nodes[0].scheduler.stats["retried"] == (0 if max_retries == 0 else 1)
    assert sim.violations == []


def test_a_return_sealed_twice_keeps_its_first_value_and_the_second_copy_is_freed():
    """t makes r0 and r1 (2 MB each) on a w node; the driver gets r1, so the owner
    pulls it. The node dies: r0 is made again by running t on the other w node, whose
    r1 is a second copy: the owner keeps its own, frees that one, and tells the
    driver of r1 once."""
    world = World([{"CPU": 1}, {"CPU": 1, "w": 1}, {"CPU": 1, "w": 1}], seed=9)
    world.converge()
    sim = world.sim
    t = world.submit(1, returns=[2 * MB, 2 * MB], resources={"w": 1}, duration=0.1)
    sim.send(0, DRIVER, p.Subscribe([rid(1, 1)]))
    owner = world.nodes[0]
    assert sim.run_until(lambda: rid(1, 1) in owner.store, 2)
    first = world.runs_of(t)[0].node
    other = 3 - first
    sim.kill(first)
    assert sim.run_until(lambda: len(world.runs_of(t)) == 2 and t.task_id not in
                         owner.scheduler.tasks, 5)
    assert world.runs_of(t)[1].node == other
    assert owner.scheduler.stats["sealed_twice"] == 1
    entry = owner.scheduler.objects.get(rid(1, 0))
    assert (entry.state, entry.remote) == (STORE, [world.nodes[other].node_id])
    assert sim.run_until(lambda: rid(1, 1) not in world.nodes[other].store, 0.5)
    assert rid(1, 0) in world.nodes[other].store
    assert owner.store[rid(1, 1)] == (2 * MB, tag(rid(1, 1)))
    assert len(world.readies()[rid(1, 1)]) == 1
    assert sim.violations == []


def test_a_peer_whose_argument_died_gives_the_task_back_to_its_owner():
    """a (50 MB) runs on node 1; b needs z, which only node 2 has, so b goes to
    node 2, which pulls a from node 1 -- dead just after reporting a. Node 2 cannot
    get a, so it gives b back (Refuse) instead of failing it; the owner makes a
    again and b runs with it."""
    world = World([{"CPU": 1}, {"CPU": 1}, {"CPU": 1, "z": 1}], seed=4)
    world.converge()
    sim = world.sim
    kill_after_result(world, 1, 1)
    world.submit(10, duration=1.0)                                 # keeps the owner busy
    world.submit(11, resources={"z": 1}, duration=0.5)             # keeps node 2 busy
    a = world.submit(1, returns=[50 * MB], duration=0.2)
    b = world.submit(2, deps=[rid(1)], resources={"z": 1}, duration=0.2)
    assert world.run_until_finished([a, b], 15)
    assert [r.node for r in world.runs_of(a)][0] == 1 and len(world.runs_of(a)) == 2
    got = world.readies()[rid(2)][0]
    assert got.state == INLINE, serialization.error_from_record(got.payload)
    world.check_result(b)
    assert [r.node for r in world.runs_of(b)] == [2]
    assert [m.msg.task_id for m in world.nodes[2].peer_sends(p.Refuse)].count(b.task_id) >= 1
    assert sim.violations == []


@settings(max_examples=40, **SIM)
@given(cpus=st.lists(st.sampled_from([1, 2]), min_size=2, max_size=4),
       tasks=batches(max_tasks=10, shapes=[0.5, 1, 1]),
       seed=st.integers(0, 2**32 - 1), victim=st.integers(1, 3),
       kill_at=st.floats(0.0, 1.5))
def test_whatever_a_dead_node_made_every_result_at_the_owner_is_right(
        cpus, tasks, seed, victim, kill_at):
    """Random DAGs with STORE results (up to 9 MB) on 2-4 nodes; one node other
    than the owner dies at a random time. Every task ends at the owner with the
    right values: results that lived only on the dead node are made again (in
    about a quarter of the examples some are)."""
    world = World([{"CPU": c} for c in cpus], seed=seed)
    victim = 1 + (victim - 1) % (len(cpus) - 1)
    world.converge()
    world.submit(99, duration=1.0)     # the owner is busy: most tasks run on its peers
    plans = [world.submit(t["n"], cpu=t["cpu"], duration=t["duration"], returns=t["returns"],
                          deps=t["deps"]) for t in tasks]
    sim = world.sim
    sim.run(kill_at)
    sim.kill(victim)
    work = sum(pl.duration for pl in plans) * 3     # each task may run again, and its inputs
    assert world.run_until_finished(plans, sim.config.failure_timeout + work + 2.0), \
        [pl.n for pl in plans if not world.finished(pl)]
    declared_dead(world, victim)
    assert sim.run_until(lambda: not world.nodes[0].scheduler.tasks, work + 2.0)
    for pl in plans:
        for oid in pl.oids:   # a STORE result the driver did not ask for is not pushed
            if oid not in world.readies() and pl.returns[pl.oids.index(oid)] != "i":
                sim.send(0, DRIVER, p.Subscribe([oid]))
    assert sim.run_until(lambda: all(oid in world.readies() for pl in plans
                                     for oid in pl.oids), work + 2.0)
    for pl in plans:
        world.check_result(pl)
    assert sim.violations == []
