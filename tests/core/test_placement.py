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
