"""core/placement.py, the spill policy alone: which peer a task is sent to, what a
node accepts, what a peer view gives back. Properties, no nodes.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric.core import placement
from zfabric.core import resources as rs
from zfabric.core.placement import PeerView

MB = 1 << 20


# -- the spill policy ------------------------------------------------------------------------

@st.composite
def peer_views(draw):
    views = []
    for k in range(draw(st.integers(0, 5))):
        view = PeerView(bytes([k + 1]) * 16, f"tcp://peer{k}:1")
        total = {"CPU": draw(st.sampled_from([0, 1, 2, 4]))}
        if draw(st.booleans()):
            total["gpu"] = draw(st.integers(1, 2))
        available = {name: draw(st.integers(-1, amount)) for name, amount in total.items()}
        view.update({"address": view.address, "total": total, "available": available,
                     "queued": draw(st.integers(0, 6))})
        for _ in range(draw(st.integers(0, 6))):
            view.sent(rs.to_units({"CPU": draw(st.sampled_from([0.5, 1, 2]))}))
        view.refused_until = draw(st.sampled_from([0.0, 0.0, 0.9, 1.1]))
        view.suspect = draw(st.sampled_from([False, False, True]))
        views.append(view)
    return views


demands = st.dictionaries(st.sampled_from(["CPU", "gpu", "other"]),
                          st.sampled_from([0.5, 1, 2, 3]), max_size=2).map(rs.to_units)


@settings(max_examples=500, deadline=None)
@given(views=peer_views(), demand=demands, depth=st.integers(0, 2),
       held=st.dictionaries(st.integers(1, 5), st.sampled_from([0, MB, 50 * MB]), max_size=3))
def test_pick_peer_never_picks_a_peer_backing_off_or_too_small(views, demand, depth, held):
    now = 1.0
    arg_bytes = {bytes([k]) * 16: b for k, b in held.items()}

    def qualifies(v):
        return not v.suspect and v.refused_until <= now and rs.feasible(v.total, demand) and all(
            v.inflight.get(k, 0) + a <= v.total.get(k, 0) * (1 + depth) for k, a in demand.items())

    def key(v):   # `available` already counts what we sent since its last gossip
        free = sum(v.available.get(k, 0) for k in demand)
        return (arg_bytes.get(v.node_id, 0), free, -v.ours)

    pick = placement.pick_peer(views, demand, now, depth=depth, arg_bytes=arg_bytes)
    good = [v for v in views if qualifies(v)]
    if not good:
        assert pick is None
    else:
        assert pick in good and key(pick) == max(key(v) for v in good)
        assert pick.room(demand, depth)
    # locality: only a holder of enough bytes that can start the task now by its view
    holder = placement.holder_with_room(views, demand, now, arg_bytes, MB)
    if holder is not None:
        assert arg_bytes.get(holder.node_id, 0) >= MB and holder.refused_until <= now
        assert not holder.suspect
        assert rs.fits(holder.available, demand)
        assert rs.feasible(holder.total, demand)
        assert all(arg_bytes.get(v.node_id, 0) <= arg_bytes[holder.node_id] for v in views
                   if not v.suspect and v.refused_until <= now and rs.fits(v.available, demand)
                   and v.room(demand, 0))


@settings(max_examples=500, deadline=None)
@given(total=demands, available=demands, queued=st.integers(0, 8), demand=demands,
       depth=st.integers(0, 3), cpus=st.sampled_from([0, 1, 2, 4]))
def test_accepts_only_what_can_ever_run_here(total, available, queued, demand, depth, cpus):
    total = {**total, "CPU": cpus * rs.UNIT}
    available = {k: min(v, total.get(k, 0)) for k, v in available.items()}
    ok = placement.accepts(available, total, queued, demand, depth)
    if not rs.feasible(total, demand):
        assert not ok
    elif rs.fits(available, demand):
        assert ok
    else:
        assert ok == (queued < depth * max(cpus, 1))


@settings(max_examples=300, deadline=None)
@given(sends=st.lists(demands, max_size=8), depth=st.integers(0, 2))
def test_a_peer_view_gives_back_what_its_tasks_took(sends, depth):
    view = PeerView(b"P" * 16, "tcp://p:1")
    view.update({"total": {"CPU": 2, "gpu": 1}, "available": {"CPU": 2, "gpu": 1}})
    for demand in sends:
        view.sent(demand)
    assert view.ours == len(sends)
    for demand in reversed(sends):
        view.came_back(demand)
    assert view.ours == 0 and all(v == 0 for v in view.inflight.values())
    assert view.room({"CPU": rs.UNIT}, depth)
    assert not view.room({"CPU": 3 * rs.UNIT}, depth)   # never more than it has at once
    assert placement.queue_is_deep(5, {"CPU": 4 * rs.UNIT})
    assert not placement.queue_is_deep(4, {"CPU": 4 * rs.UNIT})


# -- scheduling strategies ------------------------------------------------------------------

HERE = b"\x00" * 16
LOCAL = rs.to_units({"CPU": 2})


def by_strategy(strategy, views, demand, *, turn=0, dead=(), nested=False, local=LOCAL):
    return placement.by_strategy(
        strategy, demand, 1.0, here=HERE, local_total=local,
        peers={v.node_id: v for v in views}, dead=set(dead), depth=1, spread_turn=turn,
        nested_refs=nested)


@settings(max_examples=300)
@given(views=peer_views(), demand=demands, turn=st.integers(0, 50), nested=st.booleans())
def test_spread_turns_go_round_every_node_that_may_take_the_task(views, demand, turn, nested):
    fit = sorted(([HERE] if rs.feasible(LOCAL, demand) else []) + (
        [] if nested else [v.node_id for v in views if not v.suspect
                           and v.refused_until <= 1.0 and v.room(demand, 1)]))
    picked = []
    for k in range(turn, turn + len(fit)):
        verdict, view = by_strategy("SPREAD", views, demand, turn=k, nested=nested)
        assert verdict in (placement.DEFAULT, placement.PEER)
        picked.append(HERE if verdict == placement.DEFAULT else view.node_id)
    assert sorted(picked) == fit   # each node once in as many turns as there are nodes


@settings(max_examples=300)
@given(views=peer_views(), demand=demands, pick=st.integers(0, 9), soft=st.booleans(),
       nested=st.booleans(), dead=st.booleans())
def test_node_affinity_goes_to_its_node_or_fails_only_when_hard(views, demand, pick, soft,
                                                                nested, dead):
    nodes = [HERE] + [v.node_id for v in views]
    target = b"\x09" * 16 if pick >= len(nodes) else nodes[pick]
    if dead and target != HERE:
        views = [v for v in views if v.node_id != target]
    verdict, detail = by_strategy({"node": target, "soft": soft}, views, demand,
                                  dead=[target] if dead else [], nested=nested)
    view = {v.node_id: v for v in views}.get(target)
    if verdict == placement.PEER:
        assert detail is view and not view.suspect and view.refused_until <= 1.0
        assert rs.feasible(view.total, demand)
        assert not soft or (rs.fits(view.available, demand) and not nested)
    elif verdict == placement.FAIL:
        assert not soft and (view is None and target != HERE
                             or not rs.feasible(view.total if view else LOCAL, demand))
        assert ("died" in detail) == (dead and target != HERE and view is None)
    elif verdict == placement.PARK:
        assert not soft and (view.suspect or view.refused_until > 1.0)
    elif verdict == placement.HERE:
        assert target == HERE and not soft and rs.feasible(LOCAL, demand)
    else:
        assert verdict == placement.DEFAULT and soft   # a hard one never goes the default way


def test_hard_affinity_to_this_node_only_when_it_is_named_and_hard():
    opts = {"strategy": {"node": HERE, "soft": False}}
    assert placement.hard_affinity_to(opts, HERE)
    assert not placement.hard_affinity_to(opts, b"\x01" * 16)
    assert not placement.hard_affinity_to({"strategy": {"node": HERE, "soft": True}}, HERE)
    assert not placement.hard_affinity_to({"strategy": "SPREAD"}, HERE)
    assert not placement.hard_affinity_to({}, HERE)
