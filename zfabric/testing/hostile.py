"""Hypothesis strategies for hostile input: every wire message, and frames.

For tests and benchmarks only (it imports hypothesis, a test dependency:
nothing in the package imports this module). The core's hostile-input
tests, the node's port fuzzer and bench/fuzz.py draw from here:

    message(cls, known)  instances of one message class that pass
                         protocol.decode's checks (schema-valid; they may
                         still make no sense to the node that gets them)
    messages(known, classes=None)   any (or one of those) message class
    frames(known)        bytes for a socket: valid encodings, mutated ones
                         (bit flips, truncation, a wrong kind byte, junk,
                         oversize fields), msgpack bombs, random bytes
    mutated(data)        mutations of one encoding
    Known                ids a fabric knows, so that drawn messages name
                         them often (`Known.of_fabric(fabric)`)

What `frames` draws, decoded, either raises protocol.ProtocolError or is a
message `message()` could have built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
from hypothesis import strategies as st

from .. import ids
from .. import protocol as p
from .. import protocol_checks as pc

FUNCTION_BLOBS = (b"code of f", b"code of g")   # what `Known` offers as functions


@dataclass
class Known:
    """Ids a fabric knows: drawn messages name them about half the time."""
    task_ids: list = field(default_factory=list)
    object_ids: list = field(default_factory=list)
    node_ids: list = field(default_factory=list)
    functions: dict = field(default_factory=lambda: {ids.function_id(b): b for b in FUNCTION_BLOBS})
    addresses: list = field(default_factory=lambda: ["tcp://127.0.0.1:7000"])
    worker_ids: list = field(default_factory=list)

    @classmethod
    def of_fabric(cls, fabric) -> "Known":
        """What a core.fabric.Fabric knows now: its tasks, objects, members, functions."""
        s = fabric.scheduler
        members = list(fabric.membership.members.values())
        known = cls(task_ids=list(s.tasks), object_ids=list(s.objects.entries),
                    node_ids=[m.node_id for m in members],
                    addresses=[m.address for m in members] or ["tcp://127.0.0.1:7000"],
                    worker_ids=list(s.pool.workers))
        known.functions.update(s.functions.code)
        return known


def _one_of_known(values, fresh):
    return st.one_of(st.sampled_from(values), fresh) if values else fresh


def task_id(known: Known) -> st.SearchStrategy:
    return _one_of_known(known.task_ids, st.binary(min_size=ids.TASK_ID_SIZE,
                                                   max_size=ids.TASK_ID_SIZE))


def object_id(known: Known) -> st.SearchStrategy:
    fresh = st.one_of(
        st.binary(min_size=ids.OBJECT_ID_SIZE, max_size=ids.OBJECT_ID_SIZE),
        st.builds(lambda t, i: ids.object_id(t, i), task_id(known), st.integers(0, 3)),
        st.builds(lambda t: t + ids.PUT_INDEX_FLAG.to_bytes(4, "big"), task_id(known)))
    return _one_of_known(known.object_ids, fresh)


def node_id(known: Known) -> st.SearchStrategy:
    return _one_of_known(known.node_ids, st.binary(min_size=ids.NODE_ID_SIZE,
                                                   max_size=ids.NODE_ID_SIZE))


def address(known: Known) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(known.addresses),
                     st.integers(1, 65535).map(lambda port: f"tcp://10.0.0.1:{port}"))


def function(known: Known) -> st.SearchStrategy:
    """(fn_id, fn_blob): a known function with or without its code, or new code."""
    return st.one_of(
        st.sampled_from(sorted(known.functions.items())),
        st.sampled_from(sorted(known.functions)).map(lambda f: (f, b"")),
        st.binary(max_size=16).map(lambda b: (ids.function_id(b"new " + b), b"new " + b)),
        st.binary(min_size=16, max_size=16).map(lambda f: (f, b"")))


INT64 = st.integers(-2**63, 2**63 - 1)
TEXT = st.text(max_size=12)
BLOB = st.binary(max_size=24)
AMOUNTS = st.dictionaries(st.sampled_from(["CPU", "GPU", "mem", "x"]),
                          st.floats(0, 8, allow_nan=False), max_size=3)


def _ids(strategy, max_size: int = 4) -> st.SearchStrategy:
    return st.lists(strategy, max_size=max_size)


def _row(known: Known) -> st.SearchStrategy:
    """A membership row (core/membership.py), sometimes a malformed one."""
    good = st.tuples(node_id(known), address(known), st.integers(0, 5), st.integers(0, 50),
                     st.integers(0, 3), st.dictionaries(st.sampled_from(
                         ["queued", "total", "available", "object_address"]),
                         st.one_of(st.integers(0, 9), TEXT, AMOUNTS), max_size=3)).map(list)
    return st.one_of(good, st.lists(st.one_of(st.none(), INT64, TEXT, BLOB), max_size=7))


def _gcs_record(known: Known) -> st.SearchStrategy:
    """A GCS record (core/gcs.py), sometimes a malformed one."""
    entry = st.tuples(st.sampled_from(["node", "loc", "obj", "tl"]),
                      st.one_of(TEXT, object_id(known)),
                      st.one_of(st.none(), st.integers(0, 100), TEXT, st.lists(INT64, max_size=3)))
    deltas = st.tuples(st.integers(1, 20), st.lists(entry, min_size=1, max_size=4)).map(
        lambda a: [[a[0] + i, *e] for i, e in enumerate(a[1])])
    return st.one_of(
        st.tuples(node_id(known), deltas).map(lambda a: ["d", a[0], a[1]]),
        st.tuples(node_id(known), st.integers(1, 30), st.lists(entry, max_size=4)).map(
            lambda a: ["s", a[0], a[1], [list(e) for e in {e[:2]: e for e in a[2]
                                                          if e[2] is not None}.values()]]),
        st.lists(st.one_of(st.none(), TEXT, BLOB, INT64), max_size=4))


@st.composite
def _returns(draw, known: Known) -> dict:
    n = draw(st.integers(0, 3))
    return {"states": draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
            "sizes": draw(st.lists(st.integers(0, 1 << 20), min_size=n, max_size=n)),
            "contained": draw(st.lists(_ids(object_id(known), 2), min_size=n, max_size=n)),
            "payloads": draw(st.lists(BLOB, min_size=n, max_size=n + 1)),
            "status": draw(st.integers(0, 2))}


@st.composite
def _deps(draw, known: Known, holders: bool) -> dict:
    dep_ids = draw(_ids(object_id(known), 3))
    n = len(dep_ids)
    out = {"dep_ids": dep_ids,
           "dep_states": draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
           "dep_payloads": draw(st.lists(BLOB, min_size=n, max_size=n))}
    if holders:
        out["dep_sizes"] = draw(st.lists(st.integers(0, 1 << 20), min_size=n, max_size=n))
        out["dep_holders"] = draw(st.lists(_ids(node_id(known), 2), min_size=n, max_size=n))
    return out


def _fields(cls, known: Known, covered: set) -> dict:
    """A strategy per field of `cls` not in `covered`, by its name or type."""
    oid, tid, nid = object_id(known), task_id(known), node_id(known)
    by_name = {
        "task_id": tid, "oid": oid, "parent": st.one_of(st.just(b""), tid),
        "sender": nid, "owner": nid, "node_id": nid,
        "num_returns": st.integers(0, 3), "max_retries": st.integers(-1, 3),
        "depth": st.integers(0, 4), "resources": AMOUNTS, "available": AMOUNTS,
        "deps": _ids(oid), "contained": _ids(oid), "ids": _ids(oid), "incs": _ids(oid),
        "decs": _ids(oid), "task_ids": _ids(tid),
        "state": st.integers(0, 3), "status": st.integers(0, 2), "size": st.integers(0, 1 << 20),
        "role": st.sampled_from(["driver", "worker", "tool"]),
        "pid": st.integers(1, 1 << 20), "node_pid": st.integers(1, 1 << 20),
        "worker_id": st.one_of(st.none(), st.sampled_from(known.worker_ids or ["w1"]), TEXT),
        "req_id": st.integers(0, 50), "workers": st.just(1), "wid": st.sampled_from(["w1", "w2"]),
        "endpoint": st.sampled_from(["ipc:///tmp/s/w1.sock", "ipc:///tmp/s/d.sock"]),
        "why": st.sampled_from(["recall", "died"]), "rows": st.lists(_row(known), max_size=3),
        "vector": st.dictionaries(nid, st.integers(-5, 30), max_size=3),
        "records": st.lists(_gcs_record(known), max_size=3),
        "reply_to": st.one_of(st.just(""), address(known)), "address": address(known),
        "what": st.sampled_from(["nodes", "resources", "timeline", "status", "junk"]),
        "start": st.floats(0, 1e6), "end": st.floats(0, 1e6),
        "offset": st.integers(0, 1 << 30), "length": st.integers(0, 1 << 20),
        "config": st.just("{}"), "data": st.recursive(
            st.one_of(st.none(), st.integers(-10, 10), TEXT, BLOB),
            lambda inner: st.one_of(st.lists(inner, max_size=3),
                                    st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6),
        "messages": st.lists(st.builds(lambda t: p.encode(p.Blocked(t)), tid), max_size=3),
        "job": st.builds(ids.job_id, nid, st.binary(min_size=ids.CLIENT_ID_SIZE,
                                                    max_size=ids.CLIENT_ID_SIZE)),
        "output": st.lists(st.tuples(TEXT, st.integers(1, 1 << 20), st.sampled_from([1, 2]),
                                     st.lists(TEXT, max_size=3), st.integers(0, 5)
                                     ).map(list), max_size=3),
    }
    by_type = {"bytes": BLOB, "str": TEXT, "bool": st.booleans(), "int": st.integers(0, 100),
               "float": st.floats(0, 100), "list": st.just([]), "dict": st.just({})}
    hints = cls.__annotations__
    return {name: by_name[name] if name in by_name else by_type[hints[name]] for name in hints
            if name not in covered}


# Fields drawn together (they must agree), and the strategy that draws each group.
_GROUPS = (
    ("fn_id", {"fn_id", "fn_blob"}, lambda cls, k: function(k).map(
        lambda f: {"fn_id": f[0], "fn_blob": f[1]})),
    ("dep_ids", {"dep_ids", "dep_states", "dep_sizes", "dep_holders", "dep_payloads"},
     lambda cls, k: _deps(k, holders="dep_holders" in cls.__annotations__)),
    ("states", {"states", "sizes", "contained", "payloads", "status"},
     lambda cls, k: _returns(k)),
)


@st.composite
def _message(draw, cls, fields: dict, joint: list):
    values = {}
    for strategy in joint:
        values.update(draw(strategy))
    for name, strategy in fields.items():
        values[name] = draw(strategy)
    return cls(**values)


def message(cls, known: Known | None = None) -> st.SearchStrategy:
    """Instances of message class `cls` that pass protocol.decode's checks."""
    known = known or Known()
    covered: set = set()
    joint = []
    for key, names, strategy in _GROUPS:
        if key in cls.__annotations__:
            covered |= names
            joint.append(strategy(cls, known))
    return _message(cls, _fields(cls, known, covered), joint)


def messages(known: Known | None = None, classes=None) -> st.SearchStrategy:
    """Any message (of `classes`, default every class in protocol.MESSAGES)."""
    known = known or Known()
    classes = sorted(classes or p.MESSAGES.values(), key=lambda c: c.KIND_BYTE)
    return st.one_of([message(cls, known) for cls in classes])


# -- frames ---------------------------------------------------------------------------

@st.composite
def mutated(draw, data: bytes) -> bytes:
    """One mutation of an encoding: bit flips, truncation, another kind, junk after."""
    how = draw(st.sampled_from(["flip", "truncate", "kind", "append", "splice"]))
    if how == "flip" and data:
        b = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b)
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "kind":
        return bytes([draw(st.sampled_from(sorted(p.MESSAGES) + [0, 255]))]) + data[1:]
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=8))
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(max_size=8)) + data[i:]


def _packed(kind: int, values) -> bytes:
    return bytes([kind]) + msgpack.packb(values, use_bin_type=True)


@st.composite
def oversize(draw, known: Known) -> bytes:
    """A message with one field past its limit (a long text, too many returns or rows)."""
    msg = draw(messages(known))
    cls = type(msg)
    values = [getattr(msg, n) for n in cls.__slots__]
    i = draw(st.integers(0, len(values) - 1))
    v = values[i]
    if type(v) is str:
        values[i] = "x" * (pc.MAX_TEXT + 1)
    elif type(v) is int:
        values[i] = draw(st.sampled_from([pc.MAX_RETURNS + 1, -1, 2**63 - 1, -2**63]))
    elif type(v) is list:
        values[i] = v * 0 + [v[0] if v else b""] * (pc.MAX_ROWS + 1)
    elif type(v) is dict:
        values[i] = {f"r{k}": 1.0 for k in range(pc.MAX_RESOURCES + 1)}
    elif type(v) is float:
        values[i] = draw(st.sampled_from([float("nan"), float("inf"), -1e300]))
    return _packed(cls.KIND_BYTE[0], values)


def bombs() -> st.SearchStrategy:
    """msgpack that claims much more than it holds, or nests deeply."""
    kinds = st.sampled_from(sorted(p.MESSAGES))
    return st.one_of(
        st.builds(lambda k: bytes([k]) + b"\xdd\xff\xff\xff\xff", kinds),   # array32: 4e9 items
        st.builds(lambda k: bytes([k]) + b"\xdf\xff\xff\xff\xff", kinds),   # map32
        st.builds(lambda k: bytes([k]) + b"\xc6\xff\xff\xff\xff" + b"x", kinds),   # bin32
        st.builds(lambda k, n: bytes([k]) + b"\x91" * n + b"\xc0", kinds,
                  st.integers(100, 5000)),                                   # deep nesting
        st.builds(lambda k: bytes([k]) + b"\xc7\x01\x05x", kinds))          # ext type


def frames(known: Known | None = None) -> st.SearchStrategy:
    """Bytes as they could arrive on a socket: valid, mutated, oversize, bombs, random."""
    known = known or Known()
    valid = messages(known).map(p.encode)
    return st.one_of(valid, valid.flatmap(mutated), oversize(known), bombs(),
                     st.binary(max_size=64))
