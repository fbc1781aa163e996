"""The GCS replica of one node: every shard's state, and how shards travel.

Each node is the only writer of its own *shard* (keyed by its node id) and
keeps a replica of every other node's shard (docs/architecture.md; the zguide "Clone"
pattern: snapshot + sequenced deltas). A shard maps (table, key) to a value;
its writer numbers each change, a *delta*, 1, 2, 3...

    node: put / delete ---------> Gcs (own shard)
    Gcs.take_new() -------------> ["d", ...] pushed eagerly to peers (GcsUpdate)
    peer's vector (Gossip) -----> Gcs.updates_for(vector) -> records sent back
    records from peers ---------> Gcs.apply(record) -> [Change] for the node

Pure state: no I/O, no clock. The fabric (core/fabric.py) moves the records,
answers gossip with `updates_for`, and drops the shard of a member that left
and was forgotten (`drop_shard`; records a peer still sends of it are skipped).

Per shard, at every replica, with `applied` the number of its deltas applied:
- a delta with seq <= applied is a duplicate (ignored), applied + 1 applies,
  anything later is a *gap*: nothing is applied, and the shard wants a
  snapshot until the replica has caught up with the seq the gap revealed;
- a snapshot at seq s replaces the shard only if s > applied. So a replica
  never moves backwards and only ever shows its owner's state after exactly
  `applied` writes: a prefix of the owner's history, never a mix;
- the last `log_capacity` deltas are kept, so that any node can serve any
  shard to a peer; a peer behind what the log holds gets a snapshot.

Wire records (msgpack-safe lists; value None = deleted):
    ["d", shard, [[seq, table, key, value], ...]]   consecutive seqs
    ["s", shard, seq, [[table, key, value], ...]]   the whole shard after seq writes
A version vector maps shard -> applied. `wanted_vector()` writes a gapped
shard as -(applied + 1): "send me a snapshot newer than `applied`".
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice

from ..ids import NODE_ID_SIZE

DELTAS, SNAPSHOT = "d", "s"
# GCS values are small records. msgpack decodes ~1000 levels of nesting, more
# than checking them recursively can take; deeper values are refused.
MAX_VALUE_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Change:
    """One entry whose value changed at this replica; None = absent."""
    shard: bytes
    table: str
    key: bytes | str
    old: object
    new: object


class _Replica:
    __slots__ = ("seq", "state", "log", "gap")

    def __init__(self, log_capacity: int):
        self.seq = 0                          # deltas applied
        self.state: dict[tuple, object] = {}  # (table, key) -> value, never None
        self.log: deque = deque(maxlen=log_capacity)  # (seq, table, key, value), ending at seq
        self.gap = 0                          # highest seq a gap revealed; gapped while > seq

    def first_logged(self) -> int:
        """The oldest seq the log holds (seq + 1 when it holds none)."""
        return self.seq - len(self.log) + 1


class Gcs:
    def __init__(self, node_id: bytes, *, log_capacity: int = 10_000, max_batch: int = 1_000):
        if not _is_shard_id(node_id):
            raise ValueError(f"node id must be {NODE_ID_SIZE} bytes")
        if log_capacity < 1 or max_batch < 1:
            raise ValueError("log_capacity and max_batch must be >= 1")
        self.node_id = node_id
        self.log_capacity = log_capacity
        self.max_batch = max_batch
        self.malformed = 0      # records and vectors from peers that were ignored
        self._own = _Replica(log_capacity)
        self._replicas: dict[bytes, _Replica] = {node_id: self._own}
        self._pushed = 0        # own seq already handed out by take_new()
        # table -> key -> {shard: value}: for lookup() and items()
        self._index: dict[str, dict[object, dict[bytes, object]]] = {}

    # -- writing: own shard only ---------------------------------------------

    def put(self, table: str, key, value, *, checked: bool = False) -> None:
        """Set (value None: delete) an entry of our shard; a no-op if unchanged.
        `checked`: the caller built the value of parts known to be msgpack-safe
        (the timeline's entries: fields of checked messages), so it is not
        walked again here."""
        if type(table) is not str or type(key) not in (bytes, str) or not (
                checked or _is_value(value)):
            raise TypeError(f"bad GCS entry {table!r}/{key!r}: "
                            "table str, key bytes or str, value msgpack-safe")
        own = self._own
        if _same(own.state.get((table, key)), value):
            return
        own.seq += 1
        own.log.append((own.seq, table, key, value))
        self._set(self.node_id, own, table, key, value)

    def delete(self, table: str, key) -> None:
        self.put(table, key, None)

    # -- reading --------------------------------------------------------------

    def get(self, table: str, key, shard: bytes | None = None):
        replica = self._replicas.get(self.node_id if shard is None else shard)
        return None if replica is None else replica.state.get((table, key))

    def lookup(self, table: str, key) -> dict[bytes, object]:
        """{shard: value} of every shard that holds (table, key)."""
        return dict(self._index.get(table, {}).get(key, {}))

    def items(self, table: str) -> list[tuple[bytes, object, object]]:
        """(shard, key, value) of every entry of `table`, across shards."""
        return [(shard, key, value)
                for key, by_shard in self._index.get(table, {}).items()
                for shard, value in by_shard.items()]

    def vector(self) -> dict[bytes, int]:
        return {shard: r.seq for shard, r in self._replicas.items()}

    def shards(self) -> list[bytes]:
        return list(self._replicas)

    # -- replication ------------------------------------------------------------

    def take_new(self) -> list:
        """Our deltas since the last call as one record, or [] if none.

        If the log no longer holds them all (more than log_capacity writes
        since the last call) the record is a snapshot instead.
        """
        if self._own.seq == self._pushed:
            return []
        record = self._record(self.node_id, self._own, self._pushed)
        self._pushed = self._own.seq
        return record

    def updates_for(self, vector: dict, only=None) -> list[list]:
        """The records a peer at `vector` lacks: one per shard we are ahead on
        (of the shards `only(shard)` accepts, if given: those the peer replicates).

        A shard missing from `vector` counts as 0. A negative entry -(a + 1)
        asks for a snapshot newer than a. At most max_batch deltas per shard;
        the next exchange sends the rest. A malformed vector is counted and
        answered with nothing.
        """
        if type(vector) is not dict or not all(
                _is_shard_id(s) and type(v) is int for s, v in vector.items()):
            self.malformed += 1
            return []
        records = []
        for shard, replica in self._replicas.items():
            if only is not None and not only(shard):
                continue
            theirs = vector.get(shard, 0)
            wants_snapshot = theirs < 0
            since = -theirs - 1 if wants_snapshot else theirs
            if replica.seq > since:
                records.append(self._record(shard, replica, since, snapshot=wants_snapshot,
                                            limit=self.max_batch))
        return records

    def apply(self, record: list, *, skip=()) -> list[Change]:
        """Apply one record from a peer; one Change per entry it changed.

        old is the entry before the record, new after it: an entry set and
        deleted again within one record is no Change.

        A malformed record, or one about our own shard (we are its only
        writer), is counted in `malformed` and changes nothing; one about a
        shard in `skip` (a dropped shard a peer still sends) changes nothing.
        """
        if not _is_record(record) or record[1] == self.node_id:
            self.malformed += 1
            return []
        if record[1] in skip:
            return []
        if record[0] == DELTAS:
            return self._apply_deltas(record[1], record[2])
        return self._apply_snapshot(record[1], record[2], record[3])

    def wanted_vector(self) -> dict[bytes, int]:
        """Our vector for gossip: a gapped shard is -(applied + 1), asking for a snapshot."""
        return {shard: -r.seq - 1 if r.gap > r.seq else r.seq
                for shard, r in self._replicas.items()}

    def drop_shard(self, shard: bytes) -> list[Change]:
        """Forget a shard (a node that left the cluster); the deletions this makes.

        A peer that still holds the shard will send it again: the caller
        passes the shards it dropped to `apply` as `skip`.
        """
        if shard == self.node_id:
            raise ValueError("cannot drop our own shard")
        replica = self._replicas.get(shard)
        if replica is None:
            return []
        changes = [self._set(shard, replica, table, key, None)
                   for table, key in list(replica.state)]
        del self._replicas[shard]
        return changes

    def validate(self) -> None:
        """Invariants, for tests: logs end at their seq, the index matches the shards."""
        assert self._replicas.get(self.node_id) is self._own
        assert self._own.gap == 0 and 0 <= self._pushed <= self._own.seq
        index: dict = {}
        for shard, r in self._replicas.items():
            assert _is_shard_id(shard) and r.seq >= 0 and r.gap >= 0
            assert len(r.log) <= self.log_capacity and r.first_logged() >= 1
            assert [d[0] for d in r.log] == list(range(r.first_logged(), r.seq + 1))
            for (table, key), value in r.state.items():
                assert value is not None
                index.setdefault(table, {}).setdefault(key, {})[shard] = value
        assert index == self._index, "index out of step with the shards"

    # -- helpers ----------------------------------------------------------------

    def _replica(self, shard: bytes) -> _Replica:
        replica = self._replicas.get(shard)
        if replica is None:
            replica = self._replicas[shard] = _Replica(self.log_capacity)
        return replica

    def _record(self, shard: bytes, replica: _Replica, since: int, *,
                snapshot: bool = False, limit: int | None = None) -> list:
        """Deltas after `since` if the log holds them all and no snapshot is
        asked for, else a snapshot. At most `limit` deltas."""
        first = replica.first_logged()
        if snapshot or since + 1 < first:
            return [SNAPSHOT, shard, replica.seq,
                    [[table, key, value] for (table, key), value in replica.state.items()]]
        start = since + 1 - first
        stop = None if limit is None else start + limit
        return [DELTAS, shard, [list(d) for d in islice(replica.log, start, stop)]]

    def _apply_deltas(self, shard: bytes, deltas: list) -> list[Change]:
        replica = self._replicas.get(shard)
        applied = 0 if replica is None else replica.seq
        first, last = deltas[0][0], deltas[-1][0]
        if last <= applied:
            return []                                  # all duplicates
        replica = self._replica(shard)   # an unknown shard too, so that we ask for it
        if first > applied + 1:
            # A gap: we lack seqs between. Apply nothing; want a snapshot
            # (or the missing deltas, from any peer) that reaches `last`.
            replica.gap = max(replica.gap, last)
            return []
        olds = {}     # entry -> its value before this record: one net Change per entry
        for seq, table, key, value in deltas[applied + 1 - first:]:
            olds.setdefault((table, key), replica.state.get((table, key)))
            replica.seq = seq
            replica.log.append((seq, table, key, value))
            self._set(shard, replica, table, key, value)
        news = {entry: replica.state.get(entry) for entry in olds}
        return [Change(shard, table, key, old, news[table, key])
                for (table, key), old in olds.items() if not _same(old, news[table, key])]

    def _apply_snapshot(self, shard: bytes, seq: int, items: list) -> list[Change]:
        replica = self._replicas.get(shard)
        if seq <= (0 if replica is None else replica.seq):
            return []                                  # never move backwards
        replica = self._replica(shard)
        new = {(table, key): value for table, key, value in items}
        changes = []
        for table, key in [k for k in replica.state if k not in new]:
            changes.append(self._set(shard, replica, table, key, None))
        for (table, key), value in new.items():
            change = self._set(shard, replica, table, key, value)
            if change is not None:
                changes.append(change)
        replica.seq = seq
        replica.log.clear()            # the log restarts after the snapshot's seq
        return changes

    def _set(self, shard: bytes, replica: _Replica, table: str, key, value) -> Change | None:
        """Set one entry of a replica and the index; the Change, or None if unchanged."""
        old = replica.state.get((table, key))
        if _same(old, value):
            return None
        by_key = self._index.setdefault(table, {})
        if value is None:
            del replica.state[(table, key)]
            holders = by_key[key]
            del holders[shard]
            if not holders:
                del by_key[key]
                if not by_key:
                    del self._index[table]
        else:
            replica.state[(table, key)] = value
            by_key.setdefault(key, {})[shard] = value
        return Change(shard, table, key, old, value)


# -- checks on what arrives (never trusted) and what is written ----------------

def _is_shard_id(x) -> bool:
    return type(x) is bytes and len(x) == NODE_ID_SIZE   # a shard is keyed by its node id


def _is_seq(x) -> bool:
    return type(x) is int and x >= 1      # type(), not isinstance(): True is no seq


def _is_entry(table, key, value) -> bool:
    return type(table) is str and type(key) in (bytes, str) and _is_value(value)


_SCALARS = frozenset((type(None), bool, float, str, bytes))
_INT_MIN, _INT_END = -2**63, 2**64   # msgpack's ints


def _is_value(v, depth: int = MAX_VALUE_DEPTH) -> bool:
    """Does `v` travel through msgpack and come back equal (no tuples, no int keys)?
    (Scalars in a list or dict are looked at in place, not by a call each: a
    peer's timeline batch is thousands of them.)"""
    t = type(v)
    if t in _SCALARS:
        return True
    if t is int:
        return _INT_MIN <= v < _INT_END
    if t is list:
        items = v
    elif t is dict:
        if not all(type(k) is str or type(k) is bytes for k in v):
            return False
        items = v.values()
    else:
        return False
    if depth <= 0:
        return False
    for x in items:
        t = type(x)
        if t in _SCALARS:
            continue
        if t is int:
            if not _INT_MIN <= x < _INT_END:
                return False
        elif not _is_value(x, depth - 1):
            return False
    return True


def _is_record(r) -> bool:
    if type(r) is not list or len(r) < 3 or not _is_shard_id(r[1]):
        return False
    if r[0] == DELTAS and len(r) == 3 and type(r[2]) is list and r[2]:
        deltas = r[2]
        if not all(type(d) is list and len(d) == 4 and _is_seq(d[0]) and _is_entry(*d[1:])
                   for d in deltas):
            return False
        return all(b[0] == a[0] + 1 for a, b in zip(deltas, deltas[1:]))
    if r[0] == SNAPSHOT and len(r) == 4 and _is_seq(r[2]) and type(r[3]) is list:
        items = r[3]
        if not all(type(i) is list and len(i) == 3 and _is_entry(*i) and i[2] is not None
                   for i in items):
            return False
        return len({(i[0], i[1]) for i in items}) == len(items)   # no entry twice
    return False


def _same(a, b) -> bool:
    """Equal and of the same types: 1, 1.0 and True are three different values."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(x, b[k]) for k, x in a.items())
    return a == b
