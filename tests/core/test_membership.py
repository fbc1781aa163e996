"""core/membership.py: the merge rules by example, then properties, most of them
on a simulated cluster (zfabric/testing/sim/) whose every random choice comes from a
hypothesis-drawn seed, so a failure replays and shrinks.

Timing bounds below are in these terms (sim step `STEP`, one round every
gossip_interval, i.e. every `TAU` = GI + STEP at worst, since a round starts at
the first step at least GI after the last one):
- a node walks its n - 1 peers in a fixed random cycle, `fanout` per round, so
  it sends to each live peer at least once in any G = ceil((n-1)/fanout)
  consecutive rounds (test 7);
- a message sent at t arrives at the first step at or after t + delay, delay
  uniform in [0, HI]: by t + HI + STEP.
"""
from __future__ import annotations

import math
import random

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric.core.membership import (ALIVE, DEAD, GONE, LEFT, SUSPECT, Change, MemberState,
                                     Membership)
from zfabric.testing.sim import MembershipSim, Network

GI = 0.1            # gossip_interval in the simulated clusters
STEP = 0.025        # simulation step
TAU = GI + STEP     # longest time between two rounds of one node
EPS = 1e-9          # float slack on time comparisons

seeds = st.integers(0, 2**32 - 1)


def nid(i: int) -> bytes:
    return bytes([i]) * 16


def row(i, inc=0, hb=0, state=ALIVE, info=None, address=None):
    return [nid(i), address or f"tcp://10.0.0.{i}:7000", inc, hb, int(state), info or {}]


def new(i=0, now=0.0, **kw) -> Membership:
    kw.setdefault("rng", random.Random(0))
    return Membership(nid(i), f"tcp://10.0.0.{i}:7000", {"CPU": 4}, now=now, **kw)


def rounds_to_cover(n_peers: int, fanout: int) -> int:
    return max(1, math.ceil(n_peers / fanout))


# -- the merge rules, by example ---------------------------------------------

def test_unknown_member_is_added_with_a_change_unless_dead_or_left():
    m = new()
    assert m.merge([row(1), row(2, state=SUSPECT)], 1.0) == [
        Change(nid(1), ALIVE, "tcp://10.0.0.1:7000", {}),
        Change(nid(2), ALIVE, "tcp://10.0.0.2:7000", {})]
    assert m.members[nid(2)].state == ALIVE   # a sender's suspicion is not adopted
    assert m.merge([row(3, inc=2, state=DEAD), row(4, state=LEFT)], 1.0) == []
    assert m.members[nid(3)].state == DEAD and m.members[nid(4)].state == LEFT
    # Stale gossip cannot bring it back: same incarnation stays DEAD.
    assert m.merge([row(3, inc=2, hb=9)], 2.0) == []
    assert m.members[nid(3)].state == DEAD
    # A higher incarnation revives it.
    assert m.merge([row(3, inc=3, hb=0, info={"q": 1})], 3.0) == [
        Change(nid(3), ALIVE, "tcp://10.0.0.3:7000", {"q": 1})]
    m.validate()


def test_silence_makes_suspect_then_dead_and_a_newer_heartbeat_clears_suspicion():
    m = new(failure_timeout=3.0)
    m.merge([row(1, hb=5)], 0.0)
    assert m.tick(1.5)[1] == []                                   # exactly ft/2: not yet
    assert m.tick(1.75)[1] == [Change(nid(1), SUSPECT, "tcp://10.0.0.1:7000", {})]
    # A SUSPECT row (someone else's opinion) or an old heartbeat is no evidence of life.
    assert m.merge([row(1, hb=5, state=SUSPECT), row(1, hb=4)], 1.75) == []
    assert m.members[nid(1)].state == SUSPECT
    assert m.merge([row(1, hb=6, info={"x": 1})], 2.0) == [
        Change(nid(1), ALIVE, "tcp://10.0.0.1:7000", {"x": 1})]
    assert m.members[nid(1)].heard == 2.0
    assert m.tick(3.5)[1] == []
    assert [c.state for c in m.tick(5.0)[1]] == [SUSPECT]        # exactly ft: not DEAD yet
    assert m.tick(5.25)[1] == [Change(nid(1), DEAD, "tcp://10.0.0.1:7000", {"x": 1})]
    assert row(1, hb=6, state=DEAD, info={"x": 1}) in m.rows()    # gossiped as DEAD
    m.validate()


def test_timeouts_are_checked_between_rounds():
    m = new(failure_timeout=1.0, gossip_interval=10.0)
    m.merge([row(1)], 0.0)
    assert len(m.tick(0.0)[0]) == 1                               # first call: a round
    targets, changes = m.tick(1.01)
    assert targets == [] and [c.state for c in changes] == [DEAD]


def test_refutation_rejoins_above_the_incarnation_we_were_declared_at():
    m = new()
    me = Change(nid(0), ALIVE, "tcp://10.0.0.0:7000", {"CPU": 4})
    assert m.merge([row(0, inc=0, state=SUSPECT)], 1.0) == [me]
    assert m.me.incarnation == 1 and m.me.state == ALIVE
    assert m.merge([row(0, inc=4, state=DEAD)], 1.0) == [me]
    assert m.me.incarnation == 5
    assert m.merge([row(0, inc=4, state=DEAD), row(0, inc=3, state=LEFT)], 1.0) == []  # stale
    assert m.merge([row(0, inc=5, state=LEFT)], 1.0) == [me]    # LEFT is never adopted
    assert m.me.incarnation == 6 and m.me.state == ALIVE
    assert m.merge([row(0, inc=9, state=ALIVE)], 1.0) == []      # confused peer: jump past it
    assert m.me.incarnation == 10
    m.validate()


def test_dead_and_left_are_final_for_an_incarnation():
    m = new()
    m.merge([row(1, inc=1, hb=3)], 0.0)
    # a verdict older than what we heard of it is not adopted (it lived on after)
    assert m.merge([row(1, inc=1, hb=2, state=DEAD)], 0.1) == []
    assert m.members[nid(1)].state == ALIVE
    assert [c.state for c in m.merge([row(1, inc=1, hb=3, state=DEAD)], 0.1)] == [DEAD]
    assert m.members[nid(1)].heartbeat == 3                       # never decreases
    assert m.merge([row(1, inc=1, hb=9), row(1, inc=1, hb=9, state=SUSPECT)], 0.2) == []
    # LEFT refines DEAD (it stopped on purpose); nothing undoes LEFT.
    assert [c.state for c in m.merge([row(1, inc=1, state=LEFT)], 0.3)] == [LEFT]
    assert m.merge([row(1, inc=1, hb=10, state=DEAD), row(1, inc=0, hb=99)], 0.4) == []
    assert m.members[nid(1)].state == LEFT
    m.validate()


def test_leave_and_info():
    m = new()
    m.merge([row(1)], 0.0)
    m.set_info({"CPU": 2})
    assert m.rows()[0][5] == {"CPU": 4}                           # goes out with the next heartbeat
    m.tick(0.0)
    assert m.rows()[0][2:] == [0, 1, int(ALIVE), {"CPU": 2}]
    assert m.leave()[0] == [nid(0), "tcp://10.0.0.0:7000", 0, 1, int(LEFT), {"CPU": 2}]
    assert m.tick(5.0)[0] == []                                   # a node that left gossips no more
    assert m.merge([row(0, inc=3, state=DEAD)], 5.0) == [] and m.me.state == LEFT
    other = new(2)
    other.merge([row(0)], 4.0)
    assert other.merge(m.rows(), 5.0) == [Change(nid(0), LEFT, "tcp://10.0.0.0:7000", {"CPU": 2})]
    other.validate()


def test_malformed_input_is_counted_never_raised():
    m = new()
    bad = [None, 7, "x", [], row(1)[:5], row(1) + [0], [b"short", "a", 0, 0, 0, {}],
           [nid(1), 5, 0, 0, 0, {}], [nid(1), "a", -1, 0, 0, {}], [nid(1), "a", 0, 1.5, 0, {}],
           [nid(1), "a", True, 0, 0, {}], [nid(1), "a", 0, 0, 4, {}], [nid(1), "a", 0, 0, 0, []],
           [nid(1), "a", 0, 0, 0, {1: 2}], [nid(1), "a", 2**64, 0, 0, {}],
           # addresses others would connect to: only tcp://HOST:PORT
           [nid(1), "garbage", 0, 0, 0, {}], [nid(1), "tcp://host", 0, 0, 0, {}],
           [nid(1), "tcp://:7000", 0, 0, 0, {}], [nid(1), "tcp://h:70000", 0, 0, 0, {}],
           [nid(1), "tcp://a b:7000", 0, 0, 0, {}], [nid(1), "ipc:///tmp/x:1", 0, 0, 0, {}]]
    assert m.merge(bad + [row(2)], 0.0) == [Change(nid(2), ALIVE, "tcp://10.0.0.2:7000", {})]
    assert m.malformed == len(bad)
    assert m.merge({"not": "a list"}, 0.0) == [] and m.malformed == len(bad) + 1
    assert set(m.members) == {nid(0), nid(2)}
    m.validate()


def test_rows_are_msgpack_safe():
    m = new()
    m.merge([row(1, info={"CPU": 1.5, "addr": "tcp://x:1", "q": 3})], 0.0)
    m.tick(0.0)
    assert msgpack.unpackb(msgpack.packb(m.rows())) == m.rows()


def test_network_delivers_in_time_order_drops_across_a_partition_and_replays():
    def run(seed):
        net = Network(random.Random(seed), delay=(0.0, 1.0), duplicate=0.3)
        for k in range(50):
            net.send("a", "b" if k % 2 else "c", k, now=0.0)
        net.partition(["a"], ["c"])
        out = net.deliver_due(2.0)
        return out, net.statistics()

    out, stats = run(7)
    assert out == run(7)[0]                                       # one seed, one schedule
    assert out and all(dst == "b" for _, dst, _ in out)           # a-c cut at delivery
    assert stats.delivered + stats.cut == stats.sent + stats.duplicated
    net = Network(random.Random(1), delay=(0.5, 0.5))
    for k in range(5):
        net.send("x", "y", k, now=0.0)
    assert net.deliver_due(0.4) == [] and [p for *_, p in net.deliver_due(0.5)] == [0, 1, 2, 3, 4]


# -- 3. merge is monotone under any input ------------------------------------

POOL = 5   # node ids 0 (ourselves) .. 4

valid_rows = st.builds(
    row, st.integers(0, POOL - 1), inc=st.integers(0, 4), hb=st.integers(0, 6),
    state=st.sampled_from(list(MemberState)),
    info=st.dictionaries(st.sampled_from(["CPU", "q"]), st.integers(0, 3), max_size=2),
    address=st.sampled_from(["tcp://a:1", "tcp://b:2"]))
bad_values = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=3),
                       st.binary(max_size=17), st.integers(-2**70, 2**70),
                       st.lists(st.integers(), max_size=7), st.dictionaries(st.integers(), st.none()))


@st.composite
def malformed_rows(draw):
    """A row that must be rejected: garbage, the wrong length, or one bad field."""
    kind = draw(st.sampled_from(["garbage", "length", "field"]))
    if kind == "garbage":
        return draw(bad_values.filter(lambda v: not (isinstance(v, list) and len(v) == 6)))
    r = draw(valid_rows)
    if kind == "length":
        return draw(st.sampled_from([r[:k] for k in range(6)] + [r + [None]]))
    field = draw(st.integers(0, 5))
    bad = {0: st.one_of(st.binary(max_size=15), st.binary(min_size=17, max_size=20), st.text()),
           1: st.one_of(st.binary(), st.integers(), st.none()),
           2: st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63 - 1), st.booleans(),
                        st.floats(), st.text()),
           3: st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63 - 1), st.booleans(),
                        st.floats(), st.none()),
           4: st.one_of(st.integers(max_value=-1), st.integers(min_value=4), st.booleans(),
                        st.floats(), st.text()),
           5: st.one_of(st.lists(st.integers()), st.none(),
                        st.dictionaries(st.integers(), st.integers(), min_size=1))}[field]
    r[field] = draw(bad)
    return r


ops = st.lists(st.one_of(
    st.tuples(st.just("merge"), st.lists(st.one_of(
        st.tuples(st.just(True), valid_rows), st.tuples(st.just(False), malformed_rows())),
        max_size=8)),
    st.tuples(st.just("tick"), st.floats(0.0, 2.5)),
    st.tuples(st.just("garbage"), bad_values.filter(lambda v: not isinstance(v, list))),
    st.tuples(st.just("leave"), st.none())), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=ops, seed=seeds)
def test_merge_is_monotone_and_total(ops, seed):
    m = new(rng=random.Random(seed), failure_timeout=3.0)
    now = 0.0
    told: dict[bytes, MemberState] = {}
    left = False
    for op, arg in ops:
        before = {k: (v.incarnation, v.heartbeat, v.state) for k, v in m.members.items()}
        malformed = m.malformed
        if op == "merge":
            changes = m.merge([r for _, r in arg], now)
            assert m.malformed == malformed + sum(not ok for ok, _ in arg)
        elif op == "garbage":
            changes = m.merge(arg, now)
            assert m.malformed == malformed + 1 and changes == []
        elif op == "tick":
            now += arg
            changes = m.tick(now)[1]
        else:
            m.leave()
            left, changes = True, []
        m.validate()
        incoming = [r for ok, r in arg if ok] if op == "merge" else []
        for c in changes:
            if c.node_id != m.me.node_id:
                told[c.node_id] = c.state
        for k, v in m.members.items():
            if k not in before:
                continue
            inc, hb, state = before[k]
            assert (v.incarnation, v.heartbeat) >= (inc, hb), (v, before[k])
            if state in GONE and v.state not in GONE:
                # Revived: only by a row with a higher incarnation (or, for
                # ourselves, never: we are never DEAD, and LEFT is ours only).
                assert k != m.me.node_id and v.incarnation > inc
                assert any(r[0] == k and r[2] == v.incarnation for r in incoming)
            if state == LEFT and v.incarnation == inc:
                assert v.state == LEFT
        # What the changes said is what the table holds; silent only for DEAD/LEFT newcomers.
        for k, v in m.members.items():
            if v is not m.me:
                assert told.get(k, v.state if v.state in GONE else None) == v.state, v
        assert (m.me.state == LEFT) == left


# -- 7. round-robin coverage ---------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(seed=seeds, n_live=st.integers(1, 12), n_dead=st.integers(0, 3), n_left=st.integers(0, 2),
       fanout=st.integers(1, 5), dead_probe_rounds=st.integers(1, 6),
       join_at=st.integers(1, 40), kill_at=st.integers(1, 40))
def test_round_robin_covers_every_live_peer_in_every_window(
        seed, n_live, n_dead, n_left, fanout, dead_probe_rounds, join_at, kill_at):
    m = Membership(nid(0), "me", {}, now=0.0, rng=random.Random(seed), failure_timeout=1e9,
                   gossip_interval=1.0, fanout=fanout, dead_probe_rounds=dead_probe_rounds)
    m.merge([row(1 + i) for i in range(n_live)]
            + [row(20 + i, state=DEAD) for i in range(n_dead)]
            + [row(30 + i, state=LEFT) for i in range(n_left)], 0.0)
    segments = [[]]      # per stretch of constant membership: (live set, targets of each round)
    for r in range(1, 61):
        if r == join_at:
            m.merge([row(50)], r)
        if r == kill_at:
            m.merge([row(1, state=DEAD)], r)
        live = {p.node_id for p in m.peers()}
        if segments[-1] and segments[-1][0][0] != live:
            segments.append([])
        targets, _ = m.tick(float(r))
        m.validate()
        ids = [t for t, _ in targets]
        gossip = [t for t in ids if t in live]
        probes = [t for t in ids if t not in live]
        assert len(set(ids)) == len(ids) and len(gossip) == min(fanout, len(live))
        dead = {p.node_id for p in m.peers((DEAD,))}
        # once every dead_probe_rounds rounds, at a phase of our own
        assert m.probe_round == ((r + m._probe_phase) % dead_probe_rounds == 0)
        assert len(probes) == (1 if m.probe_round and dead else 0)
        assert set(probes) <= dead                                # never LEFT
        segments[-1].append((live, gossip))
    for seg in segments:
        live = seg[0][0]
        window = rounds_to_cover(len(live), fanout)
        for start in range(len(seg) - window + 1):
            covered = set().union(*(set(g) for _, g in seg[start:start + window]))
            assert covered == live, (start, window)


# -- simulated clusters ---------------------------------------------------------

def transitions(sim, subject, observer=None):
    return [(t, o, s) for t, o, j, s in sim.history
            if j == subject and (observer is None or o == observer)]


# -- 2. no false suspicion when delays are bounded ------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), fanout=st.integers(1, 4),
       delay_fraction=st.floats(0.0, 0.95), duplicate=st.sampled_from([0.0, 0.3]))
def test_no_live_node_is_ever_suspected_when_delays_are_bounded(
        seed, n, fanout, delay_fraction, duplicate):
    # A live X reaches Y directly at least once per G rounds, so Y's silence
    # about X never exceeds G*TAU + HI + STEP (HI the delay bound: the spread
    # between two arrivals). No suspicion needs that to be <= ft/2, so
    # HI <= ft/2 - G*TAU - STEP; with ft = 3, GI = 0.1 that leaves >= 0.6 s.
    ft = 3.0
    g = rounds_to_cover(n - 1, fanout)
    hi = delay_fraction * (ft / 2 - g * TAU - STEP)
    assert hi >= 0
    sim = MembershipSim(n, seed, step=STEP, delay=(0.0, hi), duplicate=duplicate,
                        failure_timeout=ft, gossip_interval=GI, fanout=fanout)
    sim.run(8.0)
    assert all(state == ALIVE for *_, state in sim.history)
    assert all(sim.view(i) == {j: ALIVE for j in range(n) if j != i} for i in range(n))


# -- 1. a crashed node is detected by everyone, SUSPECT first -------------------

@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), fanout=st.integers(1, 4), hi=st.floats(0.0, 0.05),
       victim=st.integers(0, 7), warmup=st.floats(0.5, 2.0))
def test_a_crashed_node_is_suspected_then_declared_dead_by_every_live_node(
        seed, n, fanout, hi, victim, warmup):
    # Detection time. Heartbeats are relayed, so a node's last heartbeat
    # reaches Y up to two hops after it is sent: to a target A of the last
    # round (<= HI + STEP), then A -> Y within G rounds (<= G*TAU + HI + STEP).
    # Y declares DEAD at the first step more than ft after that:
    #     bound = ft + G*TAU + 2*HI + 3*STEP      (G = 1, HI = 0: ft + GI + 4*STEP)
    # SUSPECT first: Y suspects by its own timer (<= its last news + ft/2 + STEP)
    # before any Z's DEAD can reach it (>= Z's last news + ft + STEP); the last
    # news of two nodes differ by at most 2*G*TAU + 3*HI + 2*STEP, so it holds
    # while 2*G*TAU + 3*HI + 3*STEP < ft/2: ft = 4 covers n <= 8, HI <= 0.05.
    ft = 4.0
    victim %= n
    g = rounds_to_cover(n - 1, fanout)
    assert 2 * g * TAU + 3 * hi + 3 * STEP < ft / 2
    sim = MembershipSim(n, seed, step=STEP, delay=(0.0, hi), failure_timeout=ft,
                        gossip_interval=GI, fanout=fanout)
    sim.run(warmup)
    sim.crash(victim)
    crashed = sim.now
    bound = ft + g * TAU + 2 * hi + 3 * STEP
    sim.run(bound + 1.0)
    for y in sim.running:
        seen = [(t, s) for t, _, s in transitions(sim, victim, y) if t > crashed]
        dead_at = next((t for t, s in seen if s == DEAD), None)
        assert dead_at is not None, (y, seen)
        assert dead_at - crashed <= bound + EPS, (y, dead_at - crashed, bound)
        assert any(s == SUSPECT and t < dead_at for t, s in seen), (y, seen)
        assert sim.state(y, victim) == DEAD
    # and nobody else was ever suspected
    assert all(s == ALIVE for t, o, j, s in sim.history if j != victim)


# -- 4. partition: declared dead, rejoin after the heal -------------------------

@settings(max_examples=25, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), fanout=st.integers(1, 4), hi=st.floats(0.0, 0.05),
       split=st.integers(1, 7), dead_probe_rounds=st.sampled_from([5, 10]))
def test_a_partition_heals_into_one_cluster_with_higher_incarnations(
        seed, n, fanout, hi, split, dead_probe_rounds):
    # Across a partition each side declares the other DEAD. After the heal a
    # DEAD member is sent our rows once every `dead_probe_rounds` rounds; one
    # that learns it was declared DEAD rejoins with a higher incarnation, and
    # the DEAD verdicts (final for their incarnation) spread until each node
    # has refuted its own. That hinges on random probe choices, so the bound
    # is empirical: over 1000 seeded runs (n <= 8, ft 2..4, dead_probe_rounds
    # 3..10) the worst took 1.9 * (P + ft), P = dead_probe_rounds * TAU, the
    # time between two probes; allow 3 * (P + ft). The other side's verdicts
    # about nodes one's own side kept hearing from are older than what it
    # knows, so they are not adopted: no node ever sees a peer of its own
    # side die.
    ft = 3.0
    split = 1 + split % (n - 1)
    a, b = range(split), range(split, n)
    sim = MembershipSim(n, seed, step=STEP, delay=(0.0, hi), failure_timeout=ft,
                        gossip_interval=GI, fanout=fanout, dead_probe_rounds=dead_probe_rounds)
    sim.run(1.0)
    sim.partition(a, b)

    def split_brain():
        return all(sim.state(i, j) == DEAD and sim.state(j, i) == DEAD for i in a for j in b)
    assert sim.run_until(split_brain, ft + 1.0)
    assert all(sim.state(i, j) == ALIVE for side in (a, b) for i in side for j in side if i != j)
    before = [node.me.incarnation for node in sim.nodes]
    healed_at = len(sim.history)
    sim.heal()

    def one_cluster():
        return all(s == ALIVE for i in range(n) for s in sim.view(i).values())
    assert sim.run_until(one_cluster, 3 * (dead_probe_rounds * TAU + ft))
    same_side = [(i, j) for _, i, j, state in sim.history[healed_at:]
                 if state == DEAD and (i in a) == (j in a)]
    assert same_side == []
    assert all(node.me.incarnation > inc for node, inc in zip(sim.nodes, before))
    sim.run(ft)                                                   # and it stays so
    assert one_cluster()
    for i in range(n):
        for j in range(n):
            if i != j:
                assert sim.nodes[i].members[sim.nodes[j].me.node_id].incarnation \
                    == sim.nodes[j].me.incarnation


# -- 4b. any partitions, symmetric or one-way, several islands: agreement after the last heal

def cut_islands(sim, islands: list[int], one_way: bool) -> None:
    """Nodes with different island numbers are cut from each other; one way: only
    what a lower island sends a higher one is lost."""
    n = len(islands)
    for a in range(n):
        for b in range(n):
            if islands[a] < islands[b] or (not one_way and islands[a] > islands[b]):
                sim.cut([a], [b])


partitions = st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=8, max_size=8),
                                st.booleans(), st.floats(0.0, 7.0), st.floats(0.0, 2.0)),
                      min_size=1, max_size=3)


def agreement_bound(n: int, fanout: int, dead_probe_rounds: int, hi: float) -> float:
    """Seconds from the last heal until every node sees every node ALIVE.

    After the heal, within G rounds (G = ceil((n-1)/fanout)) plus a delay every
    node hears every peer it holds live, so no timer declares anyone DEAD later
    than that. A node probes the members it holds DEAD in turn, one every
    dead_probe_rounds rounds (P seconds): each within (n-1)*P. A probed node
    that holds the prober DEAD answers at once, and either side learns from the
    other's rows that it was declared dead and refutes; the higher incarnation
    reaches the other within G rounds (it holds the refuter live by then, or the
    refuter's answer carried it). So: (n-1)*P + 3 G-round walks + 4 delays."""
    g = rounds_to_cover(n - 1, fanout)
    return (n - 1) * dead_probe_rounds * TAU + 3 * g * TAU + 4 * (hi + STEP)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), fanout=st.integers(1, 4), hi=st.floats(0.0, 0.05),
       dead_probe_rounds=st.sampled_from([2, 5, 10]), episodes=partitions)
def test_after_any_partitions_heal_every_node_agrees_within_a_bound(
        seed, n, fanout, hi, dead_probe_rounds, episodes):
    # Each episode cuts the nodes into up to three islands, both ways or one way
    # (a lower island's messages to a higher one lost: only one side notices),
    # for a random time, then heals for a random time. Some episodes leave a
    # node with every peer DEAD (alone); some end before any timer fired.
    ft = 3.0
    sim = MembershipSim(n, seed, step=STEP, delay=(0.0, hi), failure_timeout=ft,
                        gossip_interval=GI, fanout=fanout, dead_probe_rounds=dead_probe_rounds)
    sim.run(0.5)
    for islands, one_way, cut_for, healed_for in episodes:
        cut_islands(sim, islands[:n], one_way)
        sim.run(cut_for)
        sim.heal()
        sim.run(healed_for)
    # (the clock since the last heal: `healed_for` of the last episode is already spent)
    healed_at = sim.now - episodes[-1][3]

    def agreed():
        return all(s == ALIVE for i in range(n) for s in sim.view(i).values())
    bound = agreement_bound(n, fanout, dead_probe_rounds, hi)
    assert sim.run_until(agreed, max(0.0, healed_at + bound - sim.now)), \
        ({i: sim.view(i) for i in range(n)}, sim.now - healed_at, bound)
    sim.run(ft)                                                   # and it stays so
    assert agreed()
    for i in range(n):
        for j in range(n):
            if i != j:
                assert sim.nodes[i].members[sim.nodes[j].me.node_id].incarnation \
                    == sim.nodes[j].me.incarnation


def test_a_node_alone_keeps_probing_its_dead_members_in_turn():
    """Cut off from everyone both ways, a node declares them all DEAD and goes on
    probing them, one per dead_probe_rounds rounds, each in turn, for as long
    as the cut lasts; the first probe after the heal brings it back."""
    sim = MembershipSim(5, 3, step=STEP, failure_timeout=1.0, gossip_interval=GI,
                        dead_probe_rounds=4)
    sim.run(0.5)
    sim.partition([0], range(1, 5))
    assert sim.run_until(lambda: set(sim.view(0).values()) == {DEAD}, 2.0)
    lonely = sim.nodes[0]
    assert lonely.alone()
    probed = []
    for _ in range(40):                        # 40 rounds (only node 0 runs meanwhile)
        for _ in range(round(TAU / STEP)):
            sim.clock.advance()
        targets, _ = lonely.tick(sim.now)
        probed += [sim.index[t] for t, _ in targets]
    assert len(probed) == 10                                      # one per 4 rounds
    assert sorted(probed[:4]) == [1, 2, 3, 4] and probed[4:8] == probed[:4]
    sim.heal()
    assert sim.run_until(lambda: all(s == ALIVE for i in range(5) for s in sim.view(i).values()),
                         4 * 4 * TAU + 3 * TAU + 4 * STEP)


def test_a_message_from_a_member_held_dead_is_answered_and_it_rejoins_both_ways():
    """X holds Y DEAD (a third node's verdict) while Y knows nothing of it. When Y
    speaks to X, X answers with its rows (`answers`); Y learns it was declared
    dead and rejoins with a higher incarnation, which revives it at X. Both ways."""
    for x_i, y_i in ((1, 2), (2, 1)):
        x, y = new(x_i), new(y_i)
        x.merge(y.rows(), 0.0)
        y.merge(x.rows(), 0.0)
        x.tick(0.1), y.tick(0.1)
        x.merge(y.rows(), 0.1)
        hb = x.members[nid(y_i)].heartbeat
        assert [c.state for c in x.merge([row(y_i, hb=hb, state=DEAD)], 0.2)] == [DEAD]
        assert x.answers(nid(y_i)) and not y.answers(nid(x_i))
        assert x.merge(y.rows(), 0.3) == []                   # DEAD is final for inc 0
        y.merge(x.rows(), 0.3)                                # the answer
        assert y.me.incarnation == 1 and y.me.state == ALIVE
        assert [c.state for c in x.merge(y.rows(), 0.4)] == [ALIVE]
        assert x.members[nid(y_i)].incarnation == 1 and not x.answers(nid(y_i))


def test_holds_us_dead_reads_the_sender_s_own_row_about_us():
    m = new(0)
    assert m.holds_us_dead([row(1), row(0, inc=0, state=DEAD)])
    assert m.holds_us_dead([row(0, inc=5, state=DEAD)])          # whatever the incarnation
    assert not m.holds_us_dead([row(0, state=SUSPECT), row(1, state=DEAD)])
    assert not m.holds_us_dead([row(1)]) and not m.holds_us_dead([])
    assert not m.holds_us_dead("rows") and not m.holds_us_dead([[nid(0), "x", 0, 0, 2, {}]])


def test_one_way_loss_only_one_side_notices_and_the_heal_brings_it_back():
    """What Y sends X is lost: X declares Y DEAD, Y holds X ALIVE all along
    (X's suspicion reached it: it refuted, but its refutation was lost too; X's
    probes of the dead, every dead_probe_rounds rounds, keep Y hearing from it).
    After the heal Y's next round to X carries the higher incarnation."""
    for declarer, declared in ((0, 1), (1, 0)):
        sim = MembershipSim(2, 5, step=STEP, failure_timeout=3.0, gossip_interval=GI)
        sim.run(0.3)
        sim.cut([declared], [declarer])
        assert sim.run_until(lambda: sim.state(declarer, declared) == DEAD, 4.0)
        sim.run(3.0)
        assert sim.state(declared, declarer) == ALIVE
        dead_inc = sim.nodes[declarer].members[sim.ids[declared]].incarnation
        assert sim.nodes[declared].me.incarnation > dead_inc
        sim.heal()
        assert sim.run_until(lambda: sim.state(declarer, declared) == ALIVE, 2 * TAU + 2 * STEP)
        assert sim.nodes[declarer].members[sim.ids[declared]].incarnation \
            == sim.nodes[declared].me.incarnation


# -- 5. a graceful leave is final ----------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), fanout=st.integers(1, 4), hi=st.floats(0.0, 0.3),
       duplicate=st.sampled_from([0.0, 0.3]), who=st.integers(0, 7), warmup=st.floats(0.2, 2.0))
def test_a_node_that_leaves_is_left_everywhere_and_never_dead_or_revived(
        seed, n, fanout, hi, duplicate, who, warmup):
    who %= n
    ft = 3.0
    sim = MembershipSim(n, seed, step=STEP, delay=(0.0, hi), duplicate=duplicate,
                        failure_timeout=ft, gossip_interval=GI, fanout=fanout)
    sim.run(warmup)
    sim.leave(who)
    left = sim.now
    sim.run(hi + STEP)                                            # its rows have arrived
    assert all(sim.state(y, who) == LEFT for y in sim.running)
    sim.run(2 * ft)
    after = [(t, o, s) for t, o, s in transitions(sim, who) if t > left]
    assert {s for *_, s in after} == {LEFT} and len(after) == n - 1
    assert all(s == ALIVE for t, o, j, s in sim.history if j != who)


# -- 6. a joining node ------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=st.integers(1, 7), fanout=st.integers(1, 4), hi=st.floats(0.0, 0.05),
       via=st.integers(0, 6), warmup=st.floats(0.0, 2.0))
def test_a_joining_node_learns_everyone_from_one_reply_and_everyone_learns_it(
        seed, n, fanout, hi, via, warmup):
    # The newcomer J sends its rows to each of its n peers within G rounds of
    # joining (its first tick is a round): all know J by G*TAU + HI + 2*STEP.
    # J hears Z's heartbeat once Z knows J and has gone round its cycle to J:
    # silence <= 2*G*TAU + 2*HI + 3*STEP < 2 s, so ft = 4 never suspects.
    ft = 4.0
    sim = MembershipSim(n, seed, step=STEP, delay=(0.0, hi), failure_timeout=ft,
                        gossip_interval=GI, fanout=fanout)
    sim.run(warmup)
    j = sim.join(via % n)
    assert sim.view(j) == {i: ALIVE for i in range(n)}
    g = rounds_to_cover(n, fanout)
    assert sim.run_until(lambda: all(sim.state(i, j) == ALIVE for i in range(n)),
                         g * TAU + hi + 2 * STEP + EPS)
    sim.run(2 * ft)
    assert all(s == ALIVE for *_, s in sim.history)
    assert all(sim.view(i) == {k: ALIVE for k in range(n + 1) if k != i} for i in range(n + 1))


# -- the whole thing under loss, duplication and crashes stays valid ---------------

@settings(max_examples=15, deadline=None)
@given(seed=seeds, n=st.integers(2, 8), fanout=st.integers(1, 4),
       loss=st.floats(0.0, 0.5), duplicate=st.floats(0.0, 0.5),
       events=st.lists(st.tuples(st.sampled_from(["crash", "leave", "join", "partition", "heal"]),
                                 st.integers(0, 15), st.floats(0.0, 2.0)), max_size=6),
       forget=st.sampled_from([None, 0.5]))
def test_chaos_keeps_every_view_valid(seed, n, fanout, loss, duplicate, events, forget):
    # MembershipSim validates every node and checks its Changes after each step.
    sim = MembershipSim(n, seed, step=0.05, delay=(0.0, 0.3), loss=loss, duplicate=duplicate,
                        fanout=fanout, dead_probe_rounds=3, forget_left_after=forget)
    for kind, k, wait in events:
        alive = sorted(sim.running)
        if kind == "crash" and len(alive) > 1:
            sim.crash(alive[k % len(alive)])
        elif kind == "leave" and len(alive) > 1:
            sim.leave(alive[k % len(alive)])
        elif kind == "join" and alive:
            sim.join(alive[k % len(alive)])
        elif kind == "partition":
            cut = k % len(sim.nodes)
            sim.partition(range(cut), range(cut, len(sim.nodes)))
        elif kind == "heal":
            sim.heal()
        sim.run(wait)
    sim.run(2.0)


def test_our_own_pause_is_not_the_peers_silence():
    m = new(failure_timeout=3.0, pause_threshold=0.75)
    m.merge([row(1, hb=1), row(2, hb=1)], 0.0)
    m.tick(0.1)
    # the process was stopped for 10 s: nobody is declared dead on waking up
    _, changes = m.tick(10.1)
    assert changes == [] and all(x.state == ALIVE for x in m.peers())
    m.validate()
    m.merge([row(1, hb=2)], 10.2)                 # node 1 speaks again, node 2 does not
    seen = []
    for k in range(1, 40):                        # then ticks come as usual, every 0.1 s
        now = 10.1 + k * 0.1
        seen += [(round(now, 1), c.node_id, c.state) for c in m.tick(now)[1]]
        m.validate()
    # node 2's silence counts again from about the wake-up (its clock moved on
    # by the 10 s pause), node 1's from its news at 10.2
    assert seen == [(11.6, nid(2), SUSPECT), (11.8, nid(1), SUSPECT),
                    (13.1, nid(2), DEAD), (13.3, nid(1), DEAD)]


def test_a_member_that_left_is_forgotten_after_a_while_and_stale_rows_do_not_bring_it_back():
    m = new(failure_timeout=3.0, forget_left_after=10.0)
    m.merge([row(1, hb=1), row(2, hb=1)], 0.0)
    assert [c.state for c in m.merge([row(1, hb=2, state=LEFT)], 1.0)] == [LEFT]
    for t in range(2, 12):                       # node 2 keeps talking; node 1 is gone
        m.merge([row(2, hb=t)], float(t))
        m.tick(float(t))
        m.validate()
    assert nid(1) in m.members and nid(1) in [r[0] for r in m.rows()]   # still told about
    m.merge([row(2, hb=12)], 12.0)
    m.tick(12.0)                                 # > 10 s after it left
    assert nid(1) not in m.members and nid(1) not in [r[0] for r in m.rows()]
    assert m.merge([row(1, hb=2, state=LEFT), row(1, hb=9), row(1, inc=3, hb=9)], 12.5) == []
    assert nid(1) not in m.members
    targets, _ = m.tick(13.0)
    assert targets == [(nid(2), "tcp://10.0.0.2:7000")]
    m.validate()
