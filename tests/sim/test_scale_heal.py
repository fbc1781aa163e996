"""Membership above `gossip_deltas_above` at a few hundred nodes: a cluster cut
in halves heals in O(log N) gossip rounds (zfabric.testing.sim.scale.
MembershipWorld, the world bench/scale_sim.py measures at 1,000 nodes).
Rounds, never wall time.

With bounded delta gossip alone, every node had to learn the refutation of
every member of the other half as news, a few rows a message: at 256 nodes a
heal took 25 rounds, and it grew linearly with N (102 at 1,000). With
push-pull across the cut (core/gossip.py `catch_up`) it takes 6-11.
"""
from __future__ import annotations

import math

import pytest

from zfabric.core.membership import DEAD
from zfabric.testing.sim.scale import MembershipWorld

# The defaults' shape, with a shorter failure_timeout (10 rounds) to keep it cheap.
CONFIG = dict(gossip_interval=0.1, failure_timeout=1.0, fanout=3, dead_probe_rounds=10,
              deltas_above=32, news_rows=8, sync_rows=4)
N = 256


def small_info(i: int) -> dict:
    return {"queued": 0}   # (a real view is ~290 bytes: parsing it is most of the CPU)


def bounded(world) -> bool:
    """Every node's gossip to, and answer to, a few peers is back to the bounded rows."""
    limit = 2 + CONFIG["news_rows"] + CONFIG["sync_rows"]
    for i in range(0, N, 17):
        node = world.nodes[i]
        for j in (i + 1, i + N // 2):
            peer = world.nodes[j % N]
            rows = peer.gossip_rows(node.me.node_id)
            if len(rows) > limit or len(node.answer_rows(peer.me.node_id, rows)) > limit:
                return False
    return True


@pytest.mark.parametrize("seed, cut_rounds", [(1, 30), (2, 30), (3, 13)])
def test_halves_of_256_nodes_heal_within_2_log2_n_rounds(seed, cut_rounds):
    """Cut for 3 failure_timeouts (each half holds the other dead), or for just
    over one (verdicts still spreading at the heal), then healed: every node
    holds every node ALIVE within 2 log2 N rounds, and then sends bounded
    messages again. No node ever holds a member of its own half DEAD."""
    world = MembershipWorld(N, seed, info=small_info, **CONFIG)
    world.run_until(lambda: False, 3)
    half = set(range(N // 2))
    world.partition(half)
    assert world.run_until(held_dead_on_its_side(world, half), cut_rounds) is None
    declared = sum(world.state(i, j) == DEAD for i in range(N) for j in range(N)
                   if (i in half) != (j in half))
    if cut_rounds >= 3 * CONFIG["failure_timeout"] / CONFIG["gossip_interval"]:
        assert declared > 0.9 * N * N / 2, declared
    else:
        assert 0 < declared < N * N / 2, declared
    world.heal()
    rounds = world.run_until(lambda: held_dead_on_its_side(world, half)() or world.agreed(),
                             6 * int(math.log2(N)))
    assert not held_dead_on_its_side(world, half)()
    assert rounds is not None and rounds <= 2 * math.log2(N), rounds
    assert bounded(world)


def held_dead_on_its_side(world, half):
    """Does any node hold a member of its own half DEAD (one it was never cut
    from: a false death, from the other half's verdicts)? Checked after every
    round, during the cut and after the heal."""
    def check() -> bool:
        for i in world.running:
            members = world.nodes[i].members
            for j in world.running:
                if (i in half) == (j in half) and \
                        members[world.nodes[j].me.node_id].state == DEAD:
                    return True
        return False
    return check
