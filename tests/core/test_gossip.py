"""core/gossip.py: membership above `deltas_above` members -- bounded gossip
messages, failure detection by asking, and the same convergence as below it.

Clusters of 40-60 nodes on MembershipSim (every view validated and every
reported Change checked after every step), with deltas on above 8 members.
Rounds are gossip rounds (GI); bounds are in rounds of TAU = GI + STEP.
"""
from __future__ import annotations

import math
import random

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric.core.membership import ALIVE, DEAD, LEFT, SUSPECT
from zfabric.testing.sim import MembershipSim

GI = 0.1
STEP = 0.025
TAU = GI + STEP
FT = 1.0            # failure_timeout
P = 5               # dead_probe_rounds
NEWS, SYNC = 8, 4
CONFIG = dict(step=STEP, delay=(0.0, 0.02), gossip_interval=GI, failure_timeout=FT,
              fanout=3, dead_probe_rounds=P, deltas_above=8, news_rows=NEWS, sync_rows=SYNC)


def spread_rounds(n: int) -> int:
    """Rounds for news to reach every node: O(log n). Epidemic spread takes
    about log2 n rounds with fanout 3 and answers; twice that, for the tail."""
    return 2 * math.ceil(math.log2(n))


def agreed(sim) -> bool:
    live = sorted(sim.running)
    return all(sim.state(i, j) == ALIVE for i in live for j in live if i != j)


def test_below_the_threshold_every_row_goes_and_no_one_is_asked():
    sim = MembershipSim(8, 1, **CONFIG)
    sim.run(1.0)
    for node in sim.nodes:
        assert not node.delta.active
        peer = sim.nodes[(sim.index[node.me.node_id] + 1) % 8].me.node_id
        assert node.gossip_rows(peer) == node.rows() and not node.wants_reply(peer)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.05]))
def test_messages_stay_bounded_and_no_live_node_is_declared_dead(seed, loss):
    """Above the threshold a gossip carries at most our row, the target's, NEWS
    news rows and SYNC rows of the rest, whatever N; with every node answering,
    no one is declared dead, even with some messages lost (a probe is repeated
    every round until answered)."""
    sim = MembershipSim(40, seed, loss=loss, **CONFIG)
    for _ in range(int(3.0 / STEP)):
        sim.step()
        for node in sim.nodes[:5]:
            assert node.delta.active
            for peer in list(node.members)[:3]:
                assert len(node.gossip_rows(peer)) <= 2 + NEWS + SYNC
    assert not any(state in (DEAD, LEFT) for _, _, _, state in sim.history)
    assert agreed(sim)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), victim=st.integers(0, 49))
def test_a_crash_is_known_everywhere_within_the_timeout_and_a_few_log_n_rounds(seed, victim):
    sim = MembershipSim(50, seed, **CONFIG)
    sim.run(0.5)
    sim.crash(victim)
    start = sim.now
    bound = FT + FT / 4 + spread_rounds(50) * TAU
    assert sim.run_until(lambda: all(sim.state(i, victim) == DEAD for i in sim.running), bound), \
        sum(sim.state(i, victim) == DEAD for i in sim.running)
    # first suspected, then dead, by someone; never declared before the timeout
    first = min(t for t, _, j, s in sim.history if j == victim and s == DEAD)
    assert first - start >= FT - TAU
    assert agreed(sim)   # and no one else died


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), via=st.integers(0, 39))
def test_a_join_is_known_everywhere_in_a_few_log_n_rounds(seed, via):
    """The newcomer gets every row from its seed (a join reply); everyone else
    learns of it as news."""
    sim = MembershipSim(40, seed, **CONFIG)
    sim.run(0.5)
    new = sim.join(via)
    assert len(sim.nodes[new].members) == 41
    assert sim.run_until(lambda: agreed(sim), spread_rounds(41) * TAU)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), islands=st.integers(2, 3),
       cut_for=st.floats(1.5, 3.0))
def test_a_partition_heals_into_one_cluster(seed, islands, cut_for):
    """Cut into islands long enough for each to declare the others dead, then
    healed: every node holds every node ALIVE again within a probe of the dead
    per node, twice, and the news of the refutations."""
    n = 40
    sim = MembershipSim(n, seed, **CONFIG)
    sim.run(0.5)
    rng = random.Random(seed)
    side = [rng.randrange(islands) for _ in range(n)]
    for a in range(islands):
        for b in range(a + 1, islands):
            sim.partition([i for i in range(n) if side[i] == a],
                          [i for i in range(n) if side[i] == b])
    sim.run(cut_for)
    sim.heal()
    bound = 2 * P * TAU + FT / 4 + spread_rounds(n) * TAU
    assert sim.run_until(lambda: agreed(sim), bound)


def test_a_node_that_leaves_sends_its_row_alone_and_is_left_everywhere():
    sim = MembershipSim(40, 3, **CONFIG)
    sim.run(0.5)
    leaving = sim.nodes[7]
    rows = leaving.leave()
    assert rows == [leaving.me.row()] and rows[0][4] == LEFT
    sim.running.discard(7)
    for m in leaving.peers():
        sim.net.send(leaving.me.address, m.address, msgpack.packb([rows, False]), sim.now)
    sim.run(0.2)
    assert all(sim.state(i, 7) == LEFT for i in sim.running)
    sim.run(2 * FT)
    assert not any(s in (DEAD, SUSPECT) and j != 7 for _, _, j, s in sim.history)
