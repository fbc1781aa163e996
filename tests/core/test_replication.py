"""core/ring.py and core/replication.py: where GCS shards live, and that the
replicas that should hold a shard converge to it whatever the network does.

The ring: every shard has min(R + 1, N) holders, every live node holds the
same number of live owners' shards, a join or a leave moves R shards' holder
sets by one node each. Partial replication: N nodes writing their shards over
a network that loses, duplicates and reorders (zfabric/testing/sim/scale.py
GcsWorld), some of them dying: once the faults stop, every replica the ring
names holds its shard's last state.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric.core.gcs import Gcs
from zfabric.core.replication import Replication
from zfabric.core.ring import Ring
from zfabric.testing.sim.scale import GcsWorld

node_ids = st.binary(min_size=16, max_size=16)
clusters = st.lists(node_ids, min_size=1, max_size=40, unique=True)


@settings(max_examples=200, deadline=None)
@given(members=clusters, r=st.integers(1, 5), shards=st.lists(node_ids, max_size=10))
def test_every_shard_has_min_r_plus_1_n_distinct_holders_owner_first(members, r, shards):
    ring = Ring(members)
    for shard in members + shards:
        holders = ring.replicas(shard, r)
        assert holders[0] == shard and len(set(holders)) == len(holders)
        others = len(members) - (shard in members)
        assert len(holders) == 1 + min(r, others)
        assert set(holders[1:]) <= set(members)


@settings(max_examples=200, deadline=None)
@given(members=clusters, r=st.integers(1, 5))
def test_every_node_holds_the_same_number_of_live_shards(members, r):
    """Balanced: each live node holds its own shard and its r predecessors'."""
    ring = Ring(members)
    load = {m: 0 for m in members}
    for shard in members:
        for holder in ring.replicas(shard, r):
            load[holder] += 1
    assert set(load.values()) == {min(r + 1, len(members))}


@settings(max_examples=200, deadline=None)
@given(members=st.lists(node_ids, min_size=2, max_size=40, unique=True), r=st.integers(1, 5))
def test_a_join_or_a_leave_moves_r_shards_by_one_holder(members, r):
    """Adding node x changes the holders of at most r shards besides x's own, each by
    one node (x in, one out); removing it again restores them (the same sets)."""
    x, rest = members[0], members[1:]
    before, after = Ring(rest), Ring(members)
    moved = 0
    for shard in rest:
        old, new = set(before.replicas(shard, r)), set(after.replicas(shard, r))
        if old != new:
            moved += 1
            assert x in new and len(new - old) == 1
            assert len(old - new) == (1 if len(rest) > r else 0)
    assert moved <= r
    assert all(Ring(rest).replicas(s, r) == before.replicas(s, r) for s in rest)


def test_at_most_r_plus_1_nodes_replication_is_full():
    ids = [bytes([i]) * 16 for i in range(4)]
    gcs = Gcs(ids[0])
    repl = Replication(ids[0], 3)
    repl.set_live(ids)
    assert repl.full() and repl.ring_peer() is None
    assert repl.push_targets() == sorted(ids[1:])
    gcs.put("t", "k", 1)
    assert repl.vector(gcs) == gcs.wanted_vector()
    assert repl.updates_for(gcs, ids[1], {}) == gcs.updates_for({})
    repl.set_live(ids + [bytes([9]) * 16])
    assert not repl.full() and len(repl.push_targets()) == 3


def test_a_peer_is_sent_only_the_shards_it_replicates():
    ids = [bytes([i]) * 16 for i in range(12)]
    repls = {i: Replication(i, 2) for i in ids}
    for r in repls.values():
        r.set_live(ids)
    stores = {i: Gcs(i) for i in ids}
    for i, g in stores.items():
        g.put("node", i, {"n": i[0]})
    holder = stores[ids[0]]
    for i in ids[1:]:   # node 0 holds every shard (as if it once replicated them all)
        holder.apply(stores[i].take_new())
    for peer in ids[1:]:
        sent = {rec[1] for rec in repls[ids[0]].updates_for(holder, peer, {})}
        assert sent == {s for s in ids if peer in repls[ids[0]].replica_set(s)}
        assert set(repls[peer].vector(stores[peer])) <= repls[peer].replica_set(peer) | {
            s for s in ids if peer in repls[peer].replica_set(s)}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 14), r=st.integers(1, 3),
       loss=st.sampled_from([0.0, 0.1, 0.3]), duplicate=st.sampled_from([0.0, 0.2]),
       deaths=st.integers(0, 3), log_capacity=st.sampled_from([3, 10_000]))
def test_replicas_converge_to_the_owners_state_after_loss_reordering_and_deaths(
        seed, n, r, loss, duplicate, deaths, log_capacity):
    """Every node writes its shard while messages are lost, duplicated and
    reordered and some nodes die (a dead owner's shard then lives on the next
    nodes of the ring, which catch up from the surviving copies). Once writes
    and faults stop, every live replica the ring names holds the shard's last
    state, within a bounded number of rounds."""
    world = GcsWorld(n, seed, replicas=r, writes_per_round=1.0, log_capacity=log_capacity)
    world.loss, world.duplicate, world.reorder = loss, duplicate, True
    rng = random.Random(seed)
    victims = rng.sample(range(n), min(deaths, n - 1))
    for k in range(30):
        world.step()
        if victims and k % 7 == 6:
            world.kill(victims.pop())
    world.stop_writing()
    world.loss = world.duplicate = 0.0
    # every pair of ring neighbours talks at least once in 2r rounds
    for _ in range(4 * r + 4):
        world.step()
    assert world.agreed(states=True)
    for g in world.gcs:
        g.validate()


@pytest.mark.parametrize("n", [40])
def test_a_node_holds_a_bounded_number_of_shards_whatever_n(n):
    world = GcsWorld(n, 3, replicas=3)
    for _ in range(10):
        world.step()
    world.stop_writing()
    world.step()
    world.step()
    assert world.agreed()
    assert max(len(g.shards()) for g in world.gcs) == 4
