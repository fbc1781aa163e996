"""The objects a node knows, for `memory` and the dashboard's /api/objects.

`listing` answers a client's "memory" Request (through core/views.py) from
what this node knows, read only:

- each object in this node's books (core/objects.py), in full: its state,
  size, owner, the nodes holding a copy (in the store or on disk), whether
  this node's copy is on disk (`spilled_on`), and who holds a reference to
  it here: drivers, workers (and the task each runs), peers whose tasks use
  the copy kept here (`node`), tasks that need it (`task`), stored objects
  whose value holds a ref to it (`object`);
- each STORE object another node owns, as the GCS replica says ("obj": its
  size and owner, "loc": the nodes holding a copy): the owner alone knows
  its reference holders and whether a copy is on disk, so those are None
  (`detail` False).

The largest `limit` records are kept (`total` says how many there were);
`merge`, `sort_records` and `group_by_node` are the pure helpers
the command line and the dashboard share for showing them.
"""
from __future__ import annotations

from ..protocol import ObjectState
from .objects import PEER_PREFIX, ObjectEntry

SORT_KEYS = ("size", "node")
_STATES = {int(s): s.name for s in ObjectState}


def listing(node_id: bytes, scheduler, gcs, limit: int) -> dict:
    """{"self", "total", "objects": [record, ...]} (largest first, at most `limit`)."""
    entries = scheduler.objects.entries
    pinned_by = _pinned_by(scheduler.tasks.values(), entries)
    contained_by: dict[bytes, list[bytes]] = {}
    for e in entries.values():
        for c in e.contains:
            contained_by.setdefault(c, []).append(e.oid)
    holders = _Holders(scheduler)
    records = [_own_record(node_id, e, gcs, holders.describe(e, pinned_by.get(e.oid, ()),
                                                             contained_by.get(e.oid, ())))
               for e in entries.values()]
    for shard, oid, value in gcs.items("obj"):
        if shard != node_id and oid not in entries and type(oid) is bytes \
                and isinstance(value, dict) and _is_size(value.get("size")):
            records.append(_gcs_record(node_id, shard, oid, value["size"], gcs))
    total = len(records)
    records.sort(key=lambda r: (-r["size"], r["object_id"]))
    return {"self": node_id.hex(), "total": total, "objects": records[:max(limit, 0)]}


def _pinned_by(tasks, entries) -> dict[bytes, list[bytes]]:
    """Object id -> the tasks here that need it (an argument, or nested in them)."""
    out: dict[bytes, list[bytes]] = {}
    for task in tasks:
        spec = task.spec
        for oid in dict.fromkeys(list(spec.deps) + list(spec.contained)):
            if oid in entries:
                out.setdefault(oid, []).append(spec.task_id)
    return out


class _Holders:
    """Who a holder id is: a driver (its pid), a worker (its task), a peer node."""

    def __init__(self, scheduler):
        self.drivers = scheduler.drivers
        self.workers = {w.client: w for w in scheduler.pool.workers.values()}
        self.task_names = {tid: t.name for tid, t in scheduler.tasks.items()}

    def describe(self, e: ObjectEntry, tasks, containers) -> list[dict]:
        out = [self._holder(h) for h in sorted(e.holders)]
        out += [{"kind": "task", "id": tid.hex(), "name": self.task_names.get(tid, "")}
                for tid in tasks]
        out += [{"kind": "object", "id": oid.hex()} for oid in containers]
        return out

    def _holder(self, client: bytes) -> dict:
        if client.startswith(PEER_PREFIX):
            return {"kind": "node", "id": client[len(PEER_PREFIX):].hex()}
        worker = self.workers.get(client)
        if worker is not None:
            task = worker.task
            return {"kind": "worker", "id": worker.wid, "pid": worker.pid,
                    "task": task.spec.task_id.hex() if task is not None else None,
                    "name": task.name if task is not None else ""}
        pid = self.drivers.get(client)
        return {"kind": "driver", "id": client.hex(), "pid": pid}


def _own_record(node_id: bytes, e: ObjectEntry, gcs, ref_holders: list) -> dict:
    me = node_id.hex()
    if e.state == ObjectState.STORE:
        here = [node_id] if (e.local or e.spilled) else []
        nodes = sorted(set(here + list(e.remote) + _located(gcs, e.oid)))
    else:   # an inline value or an error lives in the memory of the nodes that know it
        nodes = [node_id] if e.state != ObjectState.PENDING else []
    return {"object_id": e.oid.hex(), "size": e.size, "state": _STATES.get(int(e.state), "?"),
            "owner": e.owner_node.hex() if e.owner_node is not None else me,
            "nodes": [n.hex() for n in nodes], "spilled": e.spilled,
            "spilled_on": [me] if e.spilled else [],
            "ref_holders": [{**h, "at": me} for h in ref_holders], "detail": True}


def _gcs_record(node_id: bytes, owner: bytes, oid: bytes, size: int, gcs) -> dict:
    return {"object_id": oid.hex(), "size": size, "state": "STORE", "owner": owner.hex(),
            "nodes": [n.hex() for n in _located(gcs, oid)], "spilled": None,
            "spilled_on": None, "ref_holders": None, "detail": False}


def _located(gcs, oid: bytes) -> list[bytes]:
    return sorted(n for n in gcs.lookup("loc", oid) if type(n) is bytes)


def _is_size(v) -> bool:
    return type(v) is int and v >= 0


# -- showing listings (the command line, the dashboard) ---------------------------------

def merge(listings: list[dict]) -> list[dict]:
    """The records of several nodes' listings as one list, one record per object:
    the nodes, disk copies and reference holders each node knows, together."""
    by_oid: dict[str, dict] = {}
    for answer in listings:
        for r in answer.get("objects", ()):
            known = by_oid.get(r["object_id"])
            by_oid[r["object_id"]] = dict(r) if known is None else _merged(known, r)
    return list(by_oid.values())


def _merged(a: dict, b: dict) -> dict:
    if b["detail"] and not a["detail"]:
        a, b = b, a   # the first in full, the other adds what it knows
    out = dict(a)
    out["size"] = max(a["size"], b["size"])
    out["nodes"] = sorted(set(a["nodes"] + b["nodes"]))
    if b["detail"]:
        out["spilled_on"] = sorted(set(a["spilled_on"] + b["spilled_on"]))
        out["spilled"] = bool(out["spilled_on"])
        out["ref_holders"] = a["ref_holders"] + b["ref_holders"]
        if a["state"] == "PENDING":   # (a node that waits for it, another that has it)
            out["state"] = b["state"]
    return out


def sort_records(records: list[dict], by: str) -> list[dict]:
    """Largest first ("size"), or by the first node holding it, then largest first."""
    if by not in SORT_KEYS:
        raise ValueError(f"cannot sort objects by {by!r}: one of {', '.join(SORT_KEYS)}")
    if by == "size":
        return sorted(records, key=lambda r: (-r["size"], r["object_id"]))
    return sorted(records, key=lambda r: (placed_on(r)[0], -r["size"], r["object_id"]))


def placed_on(record: dict) -> list[str]:
    """The nodes a record is shown under: those with a copy, else its owner."""
    return record["nodes"] or [record["owner"]]


def group_by_node(records: list[dict]) -> dict[str, dict]:
    """Node -> {"objects", "count", "bytes", "spilled_objects", "spilled_bytes"}:
    each object under every node holding a copy (else its owner)."""
    groups: dict[str, dict] = {}
    for r in records:
        for node in placed_on(r):
            g = groups.setdefault(node, {"objects": [], "count": 0, "bytes": 0,
                                         "spilled_objects": 0, "spilled_bytes": 0})
            g["objects"].append(r)
            g["count"] += 1
            g["bytes"] += r["size"]
            if r["spilled_on"] and node in r["spilled_on"]:
                g["spilled_objects"] += 1
                g["spilled_bytes"] += r["size"]
    return dict(sorted(groups.items()))

