"""core/memview.py: the objects a node knows (`memory`), and the pure helpers the
command line shows them with (merge, sort, group by node).

A bare scheduler (tests/harness/scheduler.py) with a GCS replica beside it
plays a node; hypothesis draws listings for the helpers.
"""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.scheduler import DRIVER, NODE_ID, STORE, Node, put_id, rid, tid
from zfabric.core import memview
from zfabric.core.gcs import Gcs
from zfabric.core.objects import peer_client

PEER = b"B" * 16
OTHER = b"C" * 16


def wire(x):
    return msgpack.unpackb(msgpack.packb(x, use_bin_type=True), raw=False, use_list=True,
                           strict_map_key=False)


def by_id(listing: dict) -> dict[bytes, dict]:
    return {bytes.fromhex(r["object_id"]): r for r in listing["objects"]}


def test_listing_shows_each_object_its_holders_and_where_it_is():
    node = Node(cpus=1, store_capacity=10_000)
    node.put(put_id(1), payload=b"small")                       # inline, the driver's
    node.put(put_id(2), state=STORE, size=4000)                 # in the store
    node.submit(3, deps=[put_id(2)])                            # runs on w1, needs put 2
    node.submit(4, deps=[rid(3)], contained=[put_id(1)])        # waits for task 3
    gcs = Gcs(NODE_ID)
    gcs.put("loc", put_id(2), 4000)
    peer = Gcs(PEER)                 # a peer owns an object, held by it and by OTHER
    peer.put("obj", b"X" * 20, {"size": 777, "task": b"X" * 16, "made_on": PEER})
    peer.put("loc", b"X" * 20, 777)
    peer.put("obj", b"bad", "not a record")                     # garbage: left out
    other = Gcs(OTHER)
    other.put("loc", b"X" * 20, 777)
    gcs.apply(wire(peer.take_new()))
    gcs.apply(wire(other.take_new()))

    listing = memview.listing(NODE_ID, node.s, gcs, limit=100)
    assert listing["self"] == NODE_ID.hex() and listing["total"] == 5
    objects = by_id(listing)
    assert list(objects)[:2] == [put_id(2), b"X" * 20]           # largest first
    big = objects[put_id(2)]
    assert (big["size"], big["state"], big["owner"], big["nodes"], big["spilled"]) == (
        4000, "STORE", NODE_ID.hex(), [NODE_ID.hex()], False)
    kinds = [(h["kind"], h["id"]) for h in big["ref_holders"]]
    assert kinds == [("driver", DRIVER.hex()), ("task", tid(3).hex())]
    assert big["ref_holders"][0]["pid"] == 4242 and big["ref_holders"][1]["name"] == "f"
    small = objects[put_id(1)]
    assert small["state"] == "INLINE" and small["nodes"] == [NODE_ID.hex()]
    assert [(h["kind"], h["id"]) for h in small["ref_holders"]] == [
        ("driver", DRIVER.hex()), ("task", tid(4).hex())]
    pending = objects[rid(3)]
    assert pending["state"] == "PENDING" and pending["nodes"] == []
    assert [h["kind"] for h in pending["ref_holders"]] == ["driver", "task"]
    remote = objects[b"X" * 20]
    assert remote["owner"] == PEER.hex() and remote["detail"] is False
    assert remote["nodes"] == sorted([PEER.hex(), OTHER.hex()])
    assert remote["spilled"] is None and remote["ref_holders"] is None

    assert [r["object_id"] for r in memview.listing(NODE_ID, node.s, gcs, 1)["objects"]] == [
        put_id(2).hex()]


def test_a_worker_and_a_peer_holding_refs_are_named():
    node = Node(cpus=1, store_capacity=10_000)
    node.submit(1)                                              # on w1
    node.put(put_id(5), state=STORE, size=100, client=b"w1")   # the task's own put
    node.s.objects.table.hold(node.s.objects.get(put_id(5)), peer_client(PEER))
    holders = by_id(memview.listing(NODE_ID, node.s, Gcs(NODE_ID), 10))[put_id(5)]["ref_holders"]
    assert {(h["kind"], h["id"], h.get("task")) for h in holders} == {
        ("worker", "w1", tid(1).hex()), ("node", PEER.hex(), None)}
    assert all(h["at"] == NODE_ID.hex() for h in holders)


# -- the helpers, on drawn listings ------------------------------------------------------

NODES = [bytes([65 + i]) * 16 for i in range(4)]
HEX = [n.hex() for n in NODES]


@st.composite
def records(draw):
    oid = draw(st.sampled_from([bytes([i]) * 20 for i in range(8)])).hex()
    detail = draw(st.booleans())
    nodes = draw(st.lists(st.sampled_from(HEX), unique=True, max_size=3))
    spilled_on = draw(st.lists(st.sampled_from(nodes), unique=True)) if nodes else []
    return {"object_id": oid, "size": draw(st.integers(0, 10_000)),
            "state": draw(st.sampled_from(["STORE", "INLINE", "PENDING"])),
            "owner": draw(st.sampled_from(HEX)), "nodes": nodes,
            "spilled": bool(spilled_on) if detail else None,
            "spilled_on": spilled_on if detail else None,
            "ref_holders": [{"kind": "driver", "id": "d1", "at": draw(st.sampled_from(HEX))}]
            if detail else None, "detail": detail}


LISTINGS = st.lists(st.lists(records(), max_size=6).map(lambda rs: {"objects": rs}),
                    max_size=3)


@settings(max_examples=200, deadline=None)
@given(LISTINGS)
def test_merge_keeps_one_record_per_object_with_everything_known(listings):
    merged = memview.merge(listings)
    seen = [r for answer in listings for r in answer["objects"]]
    assert sorted(r["object_id"] for r in merged) == sorted({r["object_id"] for r in seen})
    for m in merged:
        parts = [r for r in seen if r["object_id"] == m["object_id"]]
        assert set(m["nodes"]) == {n for r in parts for n in r["nodes"]}
        assert m["size"] == max(r["size"] for r in parts)
        detailed = [r for r in parts if r["detail"]]
        assert m["detail"] == bool(detailed)
        if detailed:
            assert set(m["spilled_on"]) == {n for r in detailed for n in r["spilled_on"]}
            assert m["spilled"] == bool(m["spilled_on"])
            assert len(m["ref_holders"]) == sum(len(r["ref_holders"]) for r in detailed)
        else:
            assert m["spilled"] is None and m["ref_holders"] is None


@settings(max_examples=200, deadline=None)
@given(LISTINGS, st.sampled_from(memview.SORT_KEYS))
def test_sorting_and_grouping_lose_nothing_and_add_up(listings, by):
    merged = memview.merge(listings)
    ordered = memview.sort_records(merged, by)
    assert sorted(map(id, ordered)) == sorted(map(id, merged))
    if by == "size":
        assert [r["size"] for r in ordered] == sorted((r["size"] for r in merged), reverse=True)
    else:
        firsts = [memview.placed_on(r)[0] for r in ordered]
        assert firsts == sorted(firsts)
    groups = memview.group_by_node(merged)
    for node, g in groups.items():
        assert g["count"] == len(g["objects"]) and g["bytes"] == sum(r["size"] for r in g["objects"])
        assert g["spilled_bytes"] == sum(r["size"] for r in g["objects"]
                                         if r["spilled_on"] and node in r["spilled_on"])
        assert all(node in memview.placed_on(r) for r in g["objects"])
    assert sum(g["count"] for g in groups.values()) == sum(len(memview.placed_on(r))
                                                           for r in merged)


def test_an_unknown_sort_key_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot sort objects by 'colour'"):
        memview.sort_records([], "colour")
