"""core/activity.py: the ring of recent task failures, counts by function, and
what a node publishes of them and reads of its peers' (no sockets, no clock)."""
from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import records
from zfabric.core.activity import ERRORS_PER_BATCH, Activity, TaskErrors
from zfabric.core.gcs import Gcs
from zfabric.core.timeline import Timeline, pack_batch

ME, PEER = b"m" * 16, b"p" * 16


class FakeScheduler:
    """What Activity reads of the scheduler: its timeline, its ring, its live tasks."""

    def __init__(self, capacity: int = 5, text_max: int = 50):
        self.timeline = Timeline(ME, 1000)
        self.errors = TaskErrors(capacity, text_max)
        self.tasks: dict = {}


def fail(sched: FakeScheduler, i: int, message: str = "boom", tb: str = "Traceback...") -> None:
    tid = i.to_bytes(16, "big")
    record = records.make("ValueError", f"{message} {i}", traceback=tb, function="f")
    sched.timeline.record("f", tid, "w1", float(i), float(i) + 0.5, 1, float(i), i + 0.5, 7)
    sched.errors.record("f", tid, "w1", float(i) + 0.5, record)


def test_the_ring_keeps_the_newest_failures_and_cuts_long_texts():
    sched = FakeScheduler(capacity=3, text_max=10)
    for i in range(5):
        fail(sched, i, message="m", tb="x" * 100)
    assert [e[5] for e in sched.errors.entries] == ["m 2", "m 3", "m 4"]
    assert sched.errors.total == 5
    name, tid, worker, when, kind, message, tb = sched.errors.entries[-1]
    assert (name, tid, worker, when, kind) == ("f", (4).to_bytes(16, "big"), "w1", 4.5,
                                               "ValueError")
    assert tb == "x" * 10 + " [...]"
    assert [e[5] for e in sched.errors.since(3)] == ["m 3", "m 4"]
    assert sched.errors.since(5) == []


def test_a_record_that_does_not_read_is_still_a_failure():
    ring = TaskErrors(4, 100)
    for junk in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"type": 7}) + b"extra"):
        ring.record("g", b"t" * 16, "w2", 1.0, junk)
    assert [(e[4], e[5], e[6]) for e in ring.entries] == [("Error", "", "")] * 4


def test_published_counts_and_failures_reach_a_peer():
    sched = FakeScheduler()
    gcs = Gcs(ME)
    activity = Activity(ME, sched, gcs, stream_per_node=10)
    for i in range(3):
        sched.timeline.record("ok", i.to_bytes(16, "big"), "w1", float(i), i + 0.1, 0, i, i, 7)
    fail(sched, 7)
    activity.publish()
    # a peer's replica of our shard, through the same records the wire carries
    peer_gcs = Gcs(PEER)
    for record in gcs.updates_for({}):
        peer_gcs.apply(record)
    peer = Activity(PEER, FakeScheduler(), peer_gcs, stream_per_node=10)
    counts = {f["name"]: (f["finished"], f["failed"]) for f in peer.tasks({})["functions"]}
    assert counts == {"ok": (3, 0), "f": (0, 1)}
    [err] = peer.errors()
    assert (err["node_id"], err["function"], err["type"], err["message"]) == (
        ME.hex(), "f", "ValueError", "boom 7")


def test_published_failures_stay_bounded():
    sched = FakeScheduler(capacity=5)
    gcs = Gcs(ME)
    activity = Activity(ME, sched, gcs, stream_per_node=10)
    for rnd in range(10):
        for i in range(3):
            fail(sched, rnd * 3 + i)
        activity.publish()
        kept = [e for _shard, _k, v in gcs.items("err") for e in v]
        assert len(kept) <= 5 + 3   # the ring, and at most one batch past it
    # a burst: at most ERRORS_PER_BATCH of it goes out per publish, the newest
    sched = FakeScheduler(capacity=100)
    gcs = Gcs(ME)
    activity = Activity(ME, sched, gcs, stream_per_node=10)
    for i in range(100, 100 + 3 * ERRORS_PER_BATCH):
        fail(sched, i)
    activity.publish()
    newest = max(gcs.items("err"), key=lambda item: int(item[1]))[2]
    assert len(newest) == ERRORS_PER_BATCH and newest[-1][5] == f"boom {99 + 3 * ERRORS_PER_BATCH}"


garbage = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats()
                       | st.text(max_size=5) | st.binary(max_size=20),
                       lambda inner: st.lists(inner, max_size=8)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                       max_leaves=30)


@settings(max_examples=100, deadline=None)
@given(err=garbage, fn=garbage, tl=garbage)
def test_what_a_peer_wrote_that_is_malformed_is_left_out(err, fn, tl):
    gcs = Gcs(ME)
    items = [[t, k, v] for t, k, v in (("err", "1", err), ("fn", "counts", fn), ("tl", "1", tl))
             if v is not None]
    gcs.apply(["s", PEER, 1, items])
    sched = FakeScheduler()
    fail(sched, 1)
    activity = Activity(ME, sched, gcs, stream_per_node=10)
    activity.publish()
    tasks = activity.tasks({PEER: {"queued": fn, "running": 2}})
    errors = activity.errors()
    assert errors[0]["node_id"] == ME.hex() and errors[0]["message"] == "boom 1"
    assert all(type(e["message"]) is str and type(e["time"]) is float for e in errors)
    assert tasks["states"]["running"] == 2 and tasks["states"]["failed"] >= 1
    for row in tasks["functions"]:
        assert all(type(row[k]) is int and row[k] >= 0 for k in row if k != "name")
    assert all(r["status"] in ("finished", "failed", "cancelled") for r in tasks["stream"])


def test_the_stream_is_the_newest_runs_of_each_node_oldest_first():
    sched = FakeScheduler()
    for i in range(30):
        sched.timeline.record("f", i.to_bytes(16, "big"), f"w{i % 2}", float(i), i + 0.5, 0,
                              float(i), i + 0.5, 7)
    activity = Activity(ME, sched, Gcs(ME), stream_per_node=8)
    stream = activity.tasks({})["stream"]
    assert [r["start"] for r in stream] == [float(i) for i in range(22, 30)]
    assert {r["worker"] for r in stream} == {"w0", "w1"}


def test_the_stream_has_each_peers_newest_runs_as_they_come():
    peer = Gcs(PEER)
    mine = Gcs(ME)

    def runs(batch: int) -> bytes:
        return pack_batch([["g", batch.to_bytes(16, "big"), "w3", float(batch), batch + 0.25,
                            0, float(batch), batch + 0.25, 4242]])

    for batch in range(1, 51):
        peer.put("tl", str(batch), runs(batch))
    for record in peer.updates_for({}):
        mine.apply(record)
    activity = Activity(ME, FakeScheduler(), mine, stream_per_node=8)
    stream = activity.tasks({})["stream"]
    assert [r["start"] for r in stream] == [float(b) for b in range(43, 51)]
    assert {(r["node_id"], r["worker"], r["status"]) for r in stream} == {
        (PEER.hex(), "w3", "finished")}
    seen = mine.vector()
    for batch in range(51, 54):   # new batches, and the oldest deleted, as a node does
        peer.put("tl", str(batch), runs(batch))
        peer.delete("tl", str(batch - 50))
    for record in peer.updates_for(seen):
        mine.apply(record)
    stream = activity.tasks({})["stream"]
    assert [r["start"] for r in stream] == [float(b) for b in range(46, 54)]
