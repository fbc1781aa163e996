"""Membership above `gossip_deltas_above` at a few hundred nodes: a crash, once
someone has declared it, is known everywhere within log2 N gossip rounds
(zfabric.testing.sim.scale.MembershipWorld, the world bench/scale_sim.py
measures at 1,000 nodes). Rounds, never wall time.

A verdict carries the declarer's last known heartbeat of the dead node; with
bounded gossip that is often older than what the nodes it reaches know
(relays of the last beats go round for a while after the crash). Those
checked it with the dead node, waiting out failure_timeout from the last
relayed beat, and only those who believed it passed it on: a death spread
in waves, 9-11 rounds after the first verdict here (4 crashes), 14 at 1,000
nodes in the benchmark. Now every node checks a verdict with the member
itself (core/gossip.py `doubt`), one unanswered round, and passes it on
meanwhile: 6 rounds here.
"""
from __future__ import annotations

import math

from zfabric.core.membership import DEAD
from zfabric.testing.sim.scale import MembershipWorld

# The defaults' shape, with a shorter failure_timeout (10 rounds) to keep it cheap.
CONFIG = dict(gossip_interval=0.1, failure_timeout=1.0, fanout=3, dead_probe_rounds=10,
              deltas_above=32, news_rows=8, sync_rows=4)
N = 256


def small_info(i: int) -> dict:
    return {"queued": 0}   # (a real view is ~290 bytes: parsing it is most of the CPU)


def test_crashes_at_256_nodes_spread_within_log2_n_rounds_of_the_first_verdict():
    """Nodes crash one after another in a steady cluster: each is declared
    first after failure_timeout (10 rounds), by someone who asked it, and held
    DEAD by every running node at most log2 N (8) rounds later; no running
    node is ever held DEAD by anyone."""
    world = MembershipWorld(N, 2, info=small_info, **CONFIG)
    world.run_until(lambda: False, 20)
    timeout_rounds = round(CONFIG["failure_timeout"] / CONFIG["gossip_interval"])
    spreads = []
    for victim in (3, 77, 150, 201):
        world.crash(victim)
        first = world.run_until(
            lambda: any(world.state(i, victim) == DEAD for i in world.running), 4 * timeout_rounds)
        assert first is not None and first >= timeout_rounds, first
        spread = world.run_until(world_holds_dead(world, victim), 6 * int(math.log2(N)))
        spreads.append(spread)
        assert all(world.state(i, j) != DEAD for i in world.running for j in world.running)
    assert all(s is not None and s <= math.log2(N) for s in spreads), spreads


def world_holds_dead(world, victim: int):
    return lambda: all(world.state(i, victim) == DEAD for i in world.running)
