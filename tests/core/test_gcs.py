"""core/gcs.py: the replicated GCS shards under random schedules.

A simulated cluster of 2..5 `Gcs` replicas, each the writer of its own shard.
Records travel through a simulated network (every record is round-tripped
through msgpack, as on the wire) that reorders, duplicates and loses them;
they come from eager pushes (`take_new`) and anti-entropy answers
(`updates_for(wanted_vector())`). The tests keep each owner's whole history
(its shard's state after each write) and check:

1. after a final lossless anti-entropy phase every replica shows every shard
   exactly as its owner has it, vectors are equal and no gap is left;
2. along the way a replica's applied seq of a shard never goes down, and its
   state of the shard is always the owner's state after exactly that many
   writes (a prefix of the history, never a mix);
3. with a log of 1..3 deltas peers fall behind it and are sent snapshots, and
   still converge; a delta after a gap is not applied and a snapshot heals it;
4. lookup() and items() always match a brute-force recomputation from get();
5. malformed records and vectors never raise, change nothing, are counted;
6. take_new() returns each new delta exactly once; an unchanged put makes none.
Every `apply` must also return exactly the entries it changed, as `Change`s.
"""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zfabric.core.gcs import Change, Gcs

IDS = [bytes([ord("A") + i]) * 16 for i in range(5)]
A, B, C = IDS[:3]
TABLES = ["loc", "nodes"]
KEYS = [b"k1", b"k2", "k1"]          # b"k1" and "k1" are different keys
VALUES = st.one_of(                  # None deletes; 1, 1.0 and True are different values
    st.none(), st.integers(0, 2), st.booleans(), st.just(1.0),
    st.binary(max_size=1), st.lists(st.integers(0, 1), max_size=2),
    st.dictionaries(st.sampled_from(["a", b"a"]), st.integers(0, 1), max_size=1))
WRITES = st.tuples(st.sampled_from(TABLES), st.sampled_from(KEYS), VALUES)

SIM = settings(max_examples=150, deadline=None)


def gapped(g: Gcs) -> set[bytes]:
    """The shards g asks a snapshot of (a gap was seen and not caught up since)."""
    return {shard for shard, seq in g.wanted_vector().items() if seq < 0}


def wire(x):
    """As the peer receives it: packed and unpacked the way protocol.py does."""
    return msgpack.unpackb(msgpack.packb(x, use_bin_type=True), raw=False, use_list=True,
                           strict_map_key=False)


def canon(v):
    """A form where 1, 1.0 and True, or b"a" and "a", stay apart under ==."""
    if type(v) is list:
        return ("list", tuple(canon(x) for x in v))
    if type(v) is dict:
        return ("dict", tuple(sorted((canon(k), canon(x)) for k, x in v.items())))
    return (type(v).__name__, v)


def state_of(g: Gcs, shard: bytes) -> dict:
    """g's replica of `shard`, read entry by entry through get()."""
    out = {}
    for table in TABLES:
        for key in KEYS:
            value = g.get(table, key, shard)
            if value is not None:
                out[(table, key)] = canon(value)
    return out


def fingerprint(g: Gcs):
    return (g.vector(), g.wanted_vector(), gapped(g),
            {s: state_of(g, s) for s in g.shards()}, canon(g.updates_for({})))


def check_index(g: Gcs) -> None:
    """lookup() and items() agree with the shards' states read through get()."""
    states = {s: state_of(g, s) for s in g.shards()}
    for table in TABLES:
        expected_items = []
        for key in KEYS:
            expected = {s: st_[(table, key)] for s, st_ in states.items() if (table, key) in st_}
            assert {s: canon(v) for s, v in g.lookup(table, key).items()} == expected
            expected_items += [(s, canon(key), v) for s, v in expected.items()]
        got = [(s, canon(k), canon(v)) for s, k, v in g.items(table)]
        assert sorted(got) == sorted(expected_items)


class Net:
    """Replicas, their owners' histories, and the records in flight."""

    def __init__(self, n: int, check_prefix=False, check_lookup=False, **kw):
        self.ids = IDS[:n]
        self.nodes = {i: Gcs(i, **kw) for i in self.ids}
        self.history = {i: [{}] for i in self.ids}   # owner's state after each seq
        self.seen = {i: {} for i in self.ids}         # highest applied seq seen, per replica
        self.inflight: list[tuple[bytes, list]] = []
        self.sent = {"d": 0, "s": 0}
        self.check_prefix = check_prefix
        self.check_lookup = check_lookup

    def run(self, steps) -> None:
        for step in steps:
            getattr(self, step[0])(*step[1:])

    def write(self, w: int, table, key, value, push: bool) -> None:
        node = self.ids[w % len(self.ids)]
        g = self.nodes[node]
        g.put(table, key, value)
        if g.vector()[node] == len(self.history[node]):      # a new seq
            self.history[node].append(state_of(g, node))
        self.after(g)
        if push:                                              # as the node does, eagerly
            self.push(w)

    def push(self, w: int) -> None:
        node = self.ids[w % len(self.ids)]
        record = self.nodes[node].take_new()
        if record:
            for dst in self.ids:
                if dst != node:
                    self.send(dst, record)

    def gossip(self, a: int, b: int) -> None:
        """a sends its vector to b, b answers with what a lacks."""
        a, b = self.ids[a % len(self.ids)], self.ids[b % len(self.ids)]
        if a != b:
            for record in self.nodes[b].updates_for(wire(self.nodes[a].wanted_vector())):
                self.send(a, record)

    def send(self, dst: bytes, record: list) -> None:
        self.sent[record[0]] += 1
        self.inflight.append((dst, wire(record)))

    def deliver(self, i: int, keep=False) -> None:
        if self.inflight:
            dst, record = self.inflight[i % len(self.inflight)] if keep else \
                self.inflight.pop(i % len(self.inflight))
            self.receive(dst, record)

    def duplicate(self, i: int) -> None:
        self.deliver(i, keep=True)

    def lose(self, i: int) -> None:
        if self.inflight:
            self.inflight.pop(i % len(self.inflight))

    def drop(self, w: int, s: int) -> None:
        node, shard = self.ids[w % len(self.ids)], self.ids[s % len(self.ids)]
        g = self.nodes[node]
        if shard != node:
            before = state_of(g, shard)
            changes = g.drop_shard(shard)
            assert shard not in g.shards()
            assert {(c.table, c.key): (canon(c.old), c.new) for c in changes} == \
                {k: (v, None) for k, v in before.items()}
            self.seen[node].pop(shard, None)
            self.after(g)

    def receive(self, dst: bytes, record: list) -> None:
        g = self.nodes[dst]
        shard = record[1]
        before = state_of(g, shard)
        changes = g.apply(record)
        after = state_of(g, shard)
        # apply returns exactly the entries it changed
        assert all(type(c) is Change and c.shard == shard for c in changes)
        assert {(c.table, c.key): (canon(c.old) if c.old is not None else None,
                                   canon(c.new) if c.new is not None else None)
                for c in changes} == \
            {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys()
             if before.get(k) != after.get(k)}
        assert len(changes) == len({(c.table, c.key) for c in changes})
        self.after(g)

    def after(self, g: Gcs) -> None:
        g.validate()
        assert g.malformed == 0
        if self.check_prefix:
            seen = self.seen[g.node_id]
            for shard, applied in g.vector().items():
                assert applied >= seen.get(shard, 0), "a replica moved backwards"
                seen[shard] = applied
                assert state_of(g, shard) == self.history[shard][applied], \
                    "a replica shows a state its owner never had"
        if self.check_lookup:
            check_index(g)

    def settle(self) -> None:
        """Lossless anti-entropy between every pair until nothing is sent."""
        for _ in range(1000):
            quiet = True
            for a in self.ids:
                for b in self.ids:
                    if a != b:
                        wanted = wire(self.nodes[a].wanted_vector())
                        for record in self.nodes[b].updates_for(wanted):
                            quiet = False
                            self.sent[record[0]] += 1
                            self.receive(a, wire(record))
            if quiet:
                return
        raise AssertionError("anti-entropy did not settle")

    def assert_converged(self) -> None:
        owners = {i: len(self.history[i]) - 1 for i in self.ids}
        for g in self.nodes.values():
            # a shard nobody wrote to has nothing to send: absent counts as 0
            assert g.vector() == {i: seq for i, seq in owners.items() if seq or i == g.node_id}
            assert gapped(g) == set()
            for shard in self.ids:
                assert state_of(g, shard) == self.history[shard][-1]


def schedules(drops=False):
    i = st.integers(0, 99)
    write = st.tuples(st.just("write"), i, st.sampled_from(TABLES), st.sampled_from(KEYS),
                      VALUES, st.booleans())
    steps = [write] * 4 + [st.tuples(st.just(name), i) for name in
                           ("push", "deliver", "deliver", "deliver", "duplicate", "lose")]
    steps += [st.tuples(st.just("gossip"), i, i)]
    if drops:
        steps += [st.tuples(st.just("drop"), i, i)]
    return st.lists(st.one_of(steps), min_size=20, max_size=120)


# 1. convergence ------------------------------------------------------------------

@SIM
@given(n=st.integers(2, 5), steps=schedules(), max_batch=st.sampled_from([1, 2, 1000]))
def test_replicas_converge_after_lossless_anti_entropy(n, steps, max_batch):
    net = Net(n, log_capacity=64, max_batch=max_batch)
    net.run(steps)
    net.settle()
    net.assert_converged()


# 2. never backwards, only prefixes ------------------------------------------------

@SIM
@given(n=st.integers(2, 5), steps=schedules(), log_capacity=st.sampled_from([2, 64]))
def test_replica_only_shows_a_prefix_of_its_owners_history(n, steps, log_capacity):
    net = Net(n, check_prefix=True, log_capacity=log_capacity, max_batch=2)
    net.run(steps)
    net.settle()
    net.assert_converged()


# 3. gaps and small logs: snapshots --------------------------------------------------

@SIM
@given(n=st.integers(2, 4), steps=schedules(), log_capacity=st.integers(1, 3))
def test_peers_behind_a_small_log_get_snapshots_and_converge(n, steps, log_capacity):
    net = Net(n, check_prefix=True, log_capacity=log_capacity, max_batch=2)
    net.run(steps)
    net.settle()
    net.assert_converged()


def test_delta_after_a_gap_is_not_applied_until_a_snapshot_heals_it():
    a, b = Gcs(A, log_capacity=3), Gcs(B, log_capacity=3)
    a.put("loc", b"x", 1)
    b.apply(wire(a.take_new()))                        # b at seq 1
    a.put("loc", b"x", 2)
    a.take_new()                                       # seq 2: lost on the way to b
    a.put("loc", b"y", 3)
    late = wire(a.take_new())                          # seq 3
    assert late == ["d", A, [[3, "loc", b"y", 3]]]
    assert b.apply(late) == []
    assert b.vector()[A] == 1 and b.get("loc", b"x", A) == 1 and b.get("loc", b"y", A) is None
    assert gapped(b) == {A}
    assert b.wanted_vector()[A] == -2                  # snapshot newer than 1, please
    b.validate()

    # a peer that is not past seq 1 has nothing to offer; the owner sends a snapshot
    c = Gcs(C)
    c.apply(wire(["d", A, [[1, "loc", b"x", 1]]]))
    assert c.updates_for(b.wanted_vector()) == []
    answer = a.updates_for(wire(b.wanted_vector()))
    assert answer == [["s", A, 3, [["loc", b"x", 2], ["loc", b"y", 3]]]]
    changes = b.apply(wire(answer[0]))
    assert set(changes) == {Change(A, "loc", b"x", 1, 2), Change(A, "loc", b"y", None, 3)}
    assert gapped(b) == set() and b.wanted_vector()[A] == 3
    assert b.lookup("loc", b"y") == {A: 3}
    b.validate()


def test_a_gap_also_heals_when_the_missing_deltas_arrive():
    a, b = Gcs(A), Gcs(B)
    records = []
    for v in range(3):
        a.put("loc", b"x", v)
        records.append(wire(a.take_new()))
    b.apply(records[2])
    assert gapped(b) == {A}
    b.apply(records[0])
    assert gapped(b) == {A}                   # still short of seq 3
    b.apply(records[1])
    b.apply(records[2])
    assert gapped(b) == set() and b.get("loc", b"x", A) == 2


def test_updates_for_sends_deltas_the_log_holds_else_a_snapshot():
    a = Gcs(A, log_capacity=3, max_batch=2)
    for v in range(5):
        a.put("loc", b"x", v)                          # log holds seqs 3..5
    assert a.updates_for({A: 5}) == []
    assert a.updates_for({A: 2}) == [["d", A, [[3, "loc", b"x", 2], [4, "loc", b"x", 3]]]]
    assert a.updates_for({A: 4}) == [["d", A, [[5, "loc", b"x", 4]]]]
    assert a.updates_for({A: 1}) == [["s", A, 5, [["loc", b"x", 4]]]]
    assert a.updates_for({}) == [["s", A, 5, [["loc", b"x", 4]]]]
    assert a.updates_for({A: -1}) == [["s", A, 5, [["loc", b"x", 4]]]]
    assert a.updates_for({A: -6}) == []                # asks for a snapshot newer than 5


def test_a_replica_serves_shards_it_does_not_own():
    a, b, c = Gcs(A), Gcs(B), Gcs(C)
    a.put("loc", b"x", 1)
    a.put("loc", b"x", None)
    a.put("loc", b"y", 2)
    for record in a.updates_for(b.vector()):
        b.apply(wire(record))
    assert b.updates_for(c.vector()) == [["d", A, [[1, "loc", b"x", 1], [2, "loc", b"x", None],
                                                   [3, "loc", b"y", 2]]]]


# 4. lookup / items ------------------------------------------------------------------

@SIM
@given(n=st.integers(2, 4), steps=schedules(drops=True))
def test_lookup_and_items_match_the_shards(n, steps):
    net = Net(n, check_lookup=True, log_capacity=4, max_batch=3)
    net.run(steps)
    net.settle()
    for g in net.nodes.values():
        check_index(g)


def test_drop_shard_returns_the_deletions():
    a, b = Gcs(A), Gcs(B)
    a.put("loc", b"o1", True)
    a.put("nodes", "addr", "tcp://x")
    b.put("loc", b"o1", True)
    b.apply(wire(a.take_new()))
    assert b.lookup("loc", b"o1") == {A: True, B: True}
    assert set(b.drop_shard(A)) == {Change(A, "loc", b"o1", True, None),
                                    Change(A, "nodes", "addr", "tcp://x", None)}
    assert b.lookup("loc", b"o1") == {B: True} and b.items("nodes") == []
    assert b.shards() == [B] and b.drop_shard(A) == []
    with pytest.raises(ValueError):
        b.drop_shard(B)
    b.validate()


# 5. malformed input -------------------------------------------------------------------

def _valid_deltas():
    return ["d", A, [[3, "loc", b"k1", 7], [4, "loc", b"k2", 8]]]


def _valid_snapshot():
    return ["s", A, 5, [["loc", b"k1", 9], ["nodes", "k1", [1, {"a": b""}]]]]


def _set(path, value):
    def mutate(record):
        target = record
        for i in path[:-1]:
            target = target[i]
        target[path[-1]] = value
        return record
    return mutate


BROKEN = [                                        # each breaks one thing of a valid record
    _set([0], "x"), _set([0], b"d"), _set([1], A[:15]), _set([1], A.decode()),
    _set([1], B),                                 # about the receiver's own shard
    _set([1], None), _set([2], None), _set([2], {}), _set([2], "s"),
    lambda r: r + [None], lambda r: r[:-1], lambda r: r[:1], lambda r: tuple(r),
]
def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


BROKEN_DELTAS = [
    _set([2], []), _set([2, 0, 0], 0), _set([2, 0, 0], -1), _set([2, 0, 0], True),
    _set([2, 0, 0], 3.0), _set([2, 1, 0], 5), _set([2, 1, 0], 3), _set([2, 0, 1], b"loc"),
    _set([2, 0, 1], None), _set([2, 0, 2], 1), _set([2, 0, 2], None), _set([2, 0, 3], (1,)),
    _set([2, 0, 3], {1: 2}), _set([2, 0, 3], {"a": {3}}), _set([2, 0, 3], 2**64),
    _set([2, 0, 3], _nested(33)), _set([2, 0, 3], wire(_nested(1000))),
    _set([2, 0], [3, "loc", b"k1"]), _set([2, 0], (3, "loc", b"k1", 7)), _set([2, 0], None),
]
BROKEN_SNAPSHOTS = [
    _set([2], 0), _set([2], -5), _set([2], False), _set([2], "5"), _set([3], None),
    _set([3, 0, 2], None), _set([3, 1], ["loc", b"k1", 1]), _set([3, 0], ["loc", b"k1"]),
    _set([3, 1, 2], [1, (2,)]), _set([3, 0, 1], 1.5),
]

GARBAGE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
              st.text(max_size=2), st.binary(max_size=17), st.sampled_from(["d", "s", A])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=1), inner,
                                                                 max_size=2),
    max_leaves=12)


def _looks_like_a_record(r) -> bool:
    return (type(r) is list and len(r) in (3, 4) and r[0] in ("d", "s")
            and type(r[1]) is bytes and len(r[1]) == 16)


def _populated() -> Gcs:
    """B with its own entries, seq 2 of A's shard and a gap in C's."""
    a, b, c = Gcs(A), Gcs(B), Gcs(C)
    b.put("loc", b"k1", 1)
    a.put("loc", b"k1", 1)
    a.put("nodes", b"k2", "x")
    b.apply(a.take_new())
    for v in range(3):
        c.put("loc", b"k1", v)
    b.apply(["d", C, [[3, "loc", b"k1", 2]]])
    assert gapped(b) == {C} and b.malformed == 0
    return b


def test_the_records_broken_below_are_valid_when_unbroken():
    for record in (_valid_deltas(), _valid_snapshot()):
        b = _populated()
        before = fingerprint(b)
        assert b.apply(record) and fingerprint(b) != before and b.malformed == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("d"), st.sampled_from(BROKEN + BROKEN_DELTAS)),
    st.tuples(st.just("s"), st.sampled_from(BROKEN + BROKEN_SNAPSHOTS)),
    st.tuples(st.just("garbage"), GARBAGE)), min_size=1, max_size=5))
def test_malformed_records_change_nothing_and_are_counted(cases):
    b = _populated()
    before = fingerprint(b)
    for kind, how in cases:
        if kind == "garbage":
            assume(not _looks_like_a_record(how))
            record = how
        else:
            record = how(_valid_deltas() if kind == "d" else _valid_snapshot())
        assert b.apply(record) == []
    assert b.malformed == len(cases)
    assert fingerprint(b) == before
    b.validate()


@pytest.mark.parametrize("vector", [None, [], {b"x": 1}, {A: "1"}, {A: True}, {A: 1.0},
                                    {1: 2}, {A: 1, "B": 0}])
def test_malformed_vectors_are_answered_with_nothing_and_counted(vector):
    b = _populated()
    assert b.updates_for(vector) == [] and b.malformed == 1


# 6. take_new ----------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(WRITES, max_size=12), max_size=4))
def test_take_new_returns_each_new_delta_exactly_once(bursts):
    g = Gcs(A)
    model: dict = {}
    seq = 0
    for burst in bursts:
        expected = []
        for table, key, value in burst:
            g.put(table, key, value)
            old = model.get((table, key))
            if canon(old) != canon(value):
                seq += 1
                expected.append([seq, table, key, value])
                model[(table, key)] = value
        record = wire(g.take_new())
        assert canon(record) == canon(["d", A, expected] if expected else [])
        assert g.take_new() == [] and g.vector() == {A: seq}
        g.validate()


def test_putting_an_unchanged_value_makes_no_delta():
    g = Gcs(A)
    g.put("loc", b"x", 1)
    g.take_new()
    g.put("loc", b"x", 1)
    g.delete("loc", b"absent")
    assert g.take_new() == [] and g.vector() == {A: 1}
    g.put("loc", b"x", True)                           # equal to 1, but not the same value
    g.put("loc", b"x", [1, {"a": 1.0}])
    g.put("loc", b"x", [1, {"a": 1.0}])
    assert g.take_new() == ["d", A, [[2, "loc", b"x", True], [3, "loc", b"x", [1, {"a": 1.0}]]]]


def test_take_new_sends_a_snapshot_when_the_log_no_longer_holds_the_burst():
    g = Gcs(A, log_capacity=2)
    for v in range(3):
        g.put("loc", b"x", v)
    assert g.take_new() == ["s", A, 3, [["loc", b"x", 2]]]
    assert g.take_new() == []


def test_put_rejects_what_cannot_travel():
    g = Gcs(A)
    for table, key, value in [(b"loc", b"x", 1), ("loc", 1, 1), ("loc", b"x", (1,)),
                              ("loc", b"x", {1: 2}), ("loc", b"x", object()),
                              ("loc", b"x", _nested(33))]:
        with pytest.raises(TypeError):
            g.put(table, key, value)
    assert g.vector() == {A: 0}


# example-based: duplicates, old deltas and old snapshots ------------------------------------

def test_duplicate_and_old_deltas_are_ignored():
    a, b = Gcs(A), Gcs(B)
    a.put("loc", b"x", 1)
    first = wire(a.take_new())
    a.put("loc", b"x", 2)
    a.put("loc", b"y", 3)
    both = wire(a.updates_for({A: 0})[0])              # seqs 1..3
    assert b.apply(first) == [Change(A, "loc", b"x", None, 1)]
    assert b.apply(first) == []
    assert b.apply(both) == [Change(A, "loc", b"x", 1, 2), Change(A, "loc", b"y", None, 3)]
    assert b.apply(both) == [] and b.apply(first) == []
    assert b.vector() == {A: 3, B: 0} and gapped(b) == set() and b.malformed == 0
    b.validate()


def test_a_snapshot_not_newer_than_applied_is_ignored():
    a, b = Gcs(A), Gcs(B)
    a.put("loc", b"x", 1)
    old = wire(a.updates_for({A: -1})[0])              # snapshot at seq 1
    a.put("loc", b"x", 2)
    b.apply(wire(a.take_new()))                        # seqs 1..2
    assert b.apply(old) == [] and b.get("loc", b"x", A) == 2
    assert b.apply(wire(a.updates_for({A: -1})[0])) == []   # same seq: nothing new either
    assert b.vector()[A] == 2
    assert b.updates_for({}) == [["d", A, [[1, "loc", b"x", 1], [2, "loc", b"x", 2]]]]  # log kept
    b.validate()
