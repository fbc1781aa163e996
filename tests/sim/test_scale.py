"""50 whole nodes (tests/harness/world.py): past `gossip_deltas_above` members
gossip carries deltas and past `gcs_replicas` + 1 nodes each GCS shard lives
on its owner and the next nodes of the ring (docs/scaling.md).

Membership converges, every shard's replicas agree with its owner and no node
holds more than gcs_replicas + 1 shards of live owners; a crash is known
everywhere and the dead node's shard stays on the next nodes of the ring; a
task whose argument lives on a node whose shard its node does not replicate
still finds it (object locations come from the owner, not from the GCS).
"""
from __future__ import annotations

from zfabric.core.membership import ALIVE, DEAD

from tests.harness.world import MB, World, rid

N = 50


def world_of(n: int = N, seed: int = 1) -> World:
    # one resource of its own per node, to pin a task to a node
    return World([{"CPU": 1, f"n{i}": 1} for i in range(n)], seed=seed)


def membership_agrees(sim) -> bool:
    live = [x for x in sim.nodes if x.alive]
    for x in live:
        members = x.fabric.membership.members
        for y in live:
            if y is not x and (y.node_id not in members or members[y.node_id].state != ALIVE):
                return False
    return True


def replicas_agree(sim) -> bool:
    """Every live node the ring (its own view) names for a live owner's shard is at
    the owner's seq."""
    live = [x for x in sim.nodes if x.alive]
    for owner in live:
        seq = owner.fabric.gcs.vector()[owner.node_id]
        for x in live:
            if x.fabric.replication.replicates(x.node_id, owner.node_id) and \
                    x.fabric.gcs.vector().get(owner.node_id) != seq:
                return False
    return True


def test_fifty_nodes_converge_with_bounded_gossip_and_partial_replication():
    world = world_of()
    sim = world.sim
    cfg = sim.config
    assert sim.run_until(lambda: membership_agrees(sim) and replicas_agree(sim), 5.0)
    for x in sim.nodes:
        f = x.fabric
        assert f.membership.delta.active and not f.replication.full()
        assert len(f.gcs.shards()) == cfg.gcs_replicas + 1
        assert len(f.replication.push_targets()) == cfg.gcs_replicas
        peer = sim.nodes[(x.index + 1) % N].node_id
        assert len(f.membership.gossip_rows(peer)) <= 2 + 8 + 4
    # every shard is held by its owner and gcs_replicas others, whose rows agree
    for owner in sim.nodes:
        holders = [x for x in sim.nodes if owner.node_id in x.fabric.gcs.shards()]
        assert len(holders) == cfg.gcs_replicas + 1
        rows = {repr(x.fabric.gcs.get("node", owner.node_id, shard=owner.node_id))
                for x in holders}
        assert len(rows) == 1


def test_a_crash_is_known_everywhere_and_its_shard_stays_on_the_ring():
    world = world_of(seed=2)
    sim = world.sim
    cfg = sim.config
    assert sim.run_until(lambda: membership_agrees(sim) and replicas_agree(sim), 5.0)
    victim = sim.nodes[7]
    seq = victim.fabric.gcs.vector()[victim.node_id]
    sim.kill(7)
    assert sim.run_until(lambda: all(
        x.fabric.membership.members[victim.node_id].state == DEAD
        for x in sim.nodes if x.alive), 3 * cfg.failure_timeout)
    assert sim.run_until(lambda: membership_agrees(sim) and replicas_agree(sim), 3.0)
    live = [x for x in sim.nodes if x.alive]
    ring = live[0].fabric.replication
    named = [x for x in live if x.node_id in ring.replica_set(victim.node_id)]
    assert len(named) == cfg.gcs_replicas
    # the next nodes of the ring hold the dead node's shard at its last seq
    # (a node that joined the set catches up from the ones that held it)
    assert sim.run_until(lambda: all(
        x.fabric.gcs.vector().get(victim.node_id) == seq for x in named), 2.0)


def test_a_task_finds_an_argument_held_by_a_node_whose_shard_its_node_does_not_replicate():
    world = world_of(seed=3)
    sim = world.sim
    assert sim.run_until(lambda: membership_agrees(sim) and replicas_agree(sim), 5.0)
    maker = 11
    user = next(i for i in range(1, N) if i != maker and not sim.nodes[i].fabric.replication
                .replicates(sim.nodes[i].node_id, sim.nodes[maker].node_id)
                and maker != 0 and not sim.nodes[0].fabric.replication
                .replicates(sim.nodes[0].node_id, sim.nodes[maker].node_id))
    a = world.submit(1, resources={f"n{maker}": 1}, returns=[5 * MB], duration=0.1)
    b = world.submit(2, resources={f"n{user}": 1}, deps=[rid(1)], duration=0.1)
    assert world.run_until_finished([a, b], 5.0)
    assert [r.node for r in world.runs_of(a)] == [maker]
    assert [r.node for r in world.runs_of(b)] == [user]
    assert sim.nodes[user].store[rid(1)][0] == 5 * MB   # pulled from the maker
    world.check_result(a)
    world.check_result(b)
    assert sim.violations == []
