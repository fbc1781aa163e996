"""Scheduling strategies across several Fabrics (tests/harness/world.py):
SPREAD puts tasks on every node even when the submitting one has room; node
affinity runs tasks on the node it names, and a hard affinity to a node that
is dead, unknown or too small fails the task (TaskUnschedulableError) instead
of running it elsewhere, while a soft one falls back to any node.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import serialization
from zfabric.exceptions import NodeDiedError, TaskUnschedulableError

from tests.harness.world import ERROR, SIM, World

SPREAD = {"strategy": "SPREAD"}


def affinity(world: World, i: int, soft: bool = False) -> dict:
    return {"strategy": {"node": world.nodes[i].node_id, "soft": soft}}


def ran_on(world: World, plan) -> list[int]:
    return [r.node for r in world.runs_of(plan)]


def error_of(world: World, plan) -> BaseException:
    msgs = world.readies().get(plan.oids[0], [])
    assert len(msgs) == 1 and msgs[0].state == ERROR, msgs
    return serialization.error_from_record(msgs[0].payload)


def warm(nodes: list[dict], seed: int = 0) -> World:
    world = World(nodes, seed=seed)
    world.converge()
    return world


# -- SPREAD ------------------------------------------------------------------------

@settings(max_examples=15, **SIM)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(30, 45))
def test_spread_tasks_land_on_every_node_that_has_room(seed, count):
    world = warm([{"CPU": 4}] * 3, seed)
    plans = [world.submit(n, duration=0.3, opts=SPREAD) for n in range(1, count + 1)]
    assert world.run_until_finished(plans, 30.0)
    assert world.sim.violations == []
    per_node = [0, 0, 0]
    for pl in plans:
        world.check_result(pl)
        (node,) = ran_on(world, pl)
        per_node[node] += 1
    assert all(c >= count // 6 for c in per_node), per_node


def test_spread_leaves_the_submitting_node_even_when_it_has_room():
    """Three tasks on a node with 4 free CPUs: DEFAULT keeps them all there;
    SPREAD gives each node one."""
    world = warm([{"CPU": 4}] * 3)
    default = [world.submit(n, duration=0.5) for n in (1, 2, 3)]
    assert world.run_until_finished(default, 10.0)
    assert sorted(n for pl in default for n in ran_on(world, pl)) == [0, 0, 0]
    spread = [world.submit(n, duration=0.5, opts=SPREAD) for n in (4, 5, 6)]
    assert world.run_until_finished(spread, 10.0)
    assert sorted(n for pl in spread for n in ran_on(world, pl)) == [0, 1, 2]


def test_spread_skips_nodes_that_can_never_hold_the_task():
    world = warm([{"CPU": 2}, {"CPU": 2, "GPU": 1}, {"CPU": 2}])
    plans = [world.submit(n, resources={"GPU": 1}, opts=SPREAD) for n in range(1, 7)]
    assert world.run_until_finished(plans, 20.0)
    assert {n for pl in plans for n in ran_on(world, pl)} == {1}


# -- node affinity: alive ------------------------------------------------------------------

@settings(max_examples=10, **SIM)
@given(seed=st.integers(0, 2**32 - 1), target=st.integers(0, 2), soft=st.booleans())
def test_affinity_runs_tasks_on_the_named_node(seed, target, soft):
    world = warm([{"CPU": 2}] * 3, seed)
    count = 2 if soft else 8   # soft: while the node has room by its gossip
    plans = [world.submit(n, duration=0.2, opts=affinity(world, target, soft))
             for n in range(1, count + 1)]
    assert world.run_until_finished(plans, 20.0)
    assert world.sim.violations == []
    for pl in plans:
        world.check_result(pl)
        assert ran_on(world, pl) == [target]


def test_hard_affinity_to_this_node_is_never_spilled_while_it_is_busy():
    world = warm([{"CPU": 1}, {"CPU": 4}])
    plans = [world.submit(n, duration=0.2, opts=affinity(world, 0)) for n in range(1, 7)]
    assert world.run_until_finished(plans, 20.0)
    assert {n for pl in plans for n in ran_on(world, pl)} == {0}


def test_soft_affinity_falls_back_to_other_nodes_when_its_node_is_full():
    world = warm([{"CPU": 1}, {"CPU": 1}, {"CPU": 4}])
    plans = [world.submit(n, duration=0.5, opts=affinity(world, 1, soft=True))
             for n in range(1, 7)]
    assert world.run_until_finished(plans, 20.0)
    nodes = [n for pl in plans for n in ran_on(world, pl)]
    assert 1 in nodes and len(set(nodes)) > 1, nodes


# -- node affinity: dead, unknown, too small -------------------------------------------------

def test_hard_affinity_to_a_dead_node_fails_with_a_clear_error():
    world = warm([{"CPU": 2}] * 3)
    world.sim.kill(2)
    assert world.sim.run_until(lambda: world.nodes[2].node_id in
                               world.nodes[0].scheduler.spill.dead, 10.0)
    plan = world.submit(1, opts=affinity(world, 2))
    world.sim.run(1.0)
    assert world.runs_of(plan) == []
    err = error_of(world, plan)
    assert isinstance(err, TaskUnschedulableError) and "died" in str(err), err
    assert world.nodes[2].node_id.hex() in str(err)


def test_hard_affinity_to_an_unknown_node_fails_with_a_clear_error():
    world = warm([{"CPU": 2}] * 2)
    plan = world.submit(1, opts={"strategy": {"node": b"\x07" * 16, "soft": False}})
    world.sim.run(0.5)
    assert world.runs_of(plan) == []
    err = error_of(world, plan)
    assert isinstance(err, TaskUnschedulableError) and "no such node" in str(err), err


def test_hard_affinity_to_a_node_too_small_fails_and_soft_runs_elsewhere():
    world = warm([{"CPU": 2}, {"CPU": 2, "GPU": 2}, {"CPU": 1}])
    hard = world.submit(1, resources={"GPU": 1}, opts=affinity(world, 2))
    soft = world.submit(2, resources={"GPU": 1}, opts=affinity(world, 2, soft=True))
    assert world.run_until_finished([soft], 10.0)
    assert ran_on(world, soft) == [1]
    err = error_of(world, hard)
    assert isinstance(err, TaskUnschedulableError) and "never fit" in str(err), err
    assert world.runs_of(hard) == []


def test_soft_affinity_to_a_dead_node_runs_elsewhere():
    world = warm([{"CPU": 2}] * 3)
    world.sim.kill(2)
    assert world.sim.run_until(lambda: world.nodes[2].node_id in
                               world.nodes[0].scheduler.spill.dead, 10.0)
    plans = [world.submit(n, opts=affinity(world, 2, soft=True)) for n in (1, 2, 3)]
    assert world.run_until_finished(plans, 10.0)
    for pl in plans:
        world.check_result(pl)
        assert ran_on(world, pl) in ([0], [1])


@settings(max_examples=10, **SIM)
@given(seed=st.integers(0, 2**32 - 1), soft=st.booleans(), retries=st.sampled_from([0, 3]))
def test_when_the_named_node_dies_under_its_tasks_hard_ones_fail_soft_ones_run_elsewhere(
        seed, soft, retries):
    world = warm([{"CPU": 2}] * 3, seed)
    count = 2 if soft else 4   # soft: while the node has room by its gossip
    plans = [world.submit(n, duration=2.0, max_retries=retries,
                          opts=affinity(world, 2, soft)) for n in range(1, count + 1)]
    assert world.sim.run_until(lambda: any(ran_on(world, pl) for pl in plans), 5.0)
    world.sim.kill(2)
    assert world.sim.run_until(lambda: all(world.finished(pl) for pl in plans), 30.0)
    assert world.sim.violations == []
    for pl in plans:
        nodes = ran_on(world, pl)
        if soft and retries:
            world.check_result(pl)            # ran again on a live node
            assert nodes[-1] in (0, 1), nodes
        else:
            assert set(nodes) <= {2}, nodes   # never anywhere else
            err = error_of(world, pl)
            assert isinstance(err, (TaskUnschedulableError, NodeDiedError)), err


def test_hard_affinity_waits_while_its_node_is_busy_then_runs_there():
    """More tasks than the node can run at once: it takes them all (they have
    nowhere else to go) and runs them in turn."""
    world = warm([{"CPU": 4}, {"CPU": 1}])
    plans = [world.submit(n, duration=0.3, opts=affinity(world, 1)) for n in range(1, 13)]
    assert world.run_until_finished(plans, 30.0)
    for pl in plans:
        assert ran_on(world, pl) == [1]


def test_hard_affinity_waits_while_its_node_backs_off_and_soft_goes_elsewhere():
    """A peer that refused a task is left alone for a while: a hard-affinity task
    for it is parked (not run elsewhere) and placed again on a tick after."""
    world = warm([{"CPU": 2}] * 3)
    owner = world.nodes[0].scheduler
    view = owner.spill.peers[world.nodes[2].node_id]
    view.refused_until = world.sim.now + 1.0
    hard = [world.submit(n, opts=affinity(world, 2)) for n in (1, 2)]
    soft = world.submit(3, opts=affinity(world, 2, soft=True))
    world.sim.run(0.3)
    assert [owner.tasks[pl.task_id] in owner.spill.parked for pl in hard] == [True, True]
    assert all(world.runs_of(pl) == [] for pl in hard)
    assert world.run_until_finished(hard + [soft], 10.0)
    assert [ran_on(world, pl) for pl in hard] == [[2], [2]]
    assert ran_on(world, soft) in ([0], [1])
