"""Ray-shaped records of the cluster, for `nodes()`, `cluster_resources()`,
`available_resources()`, `status`, `memory` (core/memview.py) and `timeline()`;
the dashboard's "tasks" and "errors" are answered by core/activity.py through
`add_answers`.

The fabric answers a client's Request here, from what this node knows:
membership (who is in the cluster, alive or not, and each peer's gossiped
view), the GCS replica (each node's static record and timeline batches)
and, for this node itself, the scheduler's live figures and the fabric's
counters (peer sends that failed, messages refused: `rejected_*`). Read
only. What peers gossip or replicate is theirs to say and may be garbage:
a malformed part of it is left out here, never an error for the asker.
"""
from __future__ import annotations

from . import memview
from .membership import LIVE, MemberState
from .timeline import trace_events, unpack_batch


class ClusterView:
    def __init__(self, node_id: bytes, scheduler, membership, gcs, fabric_stats: dict,
                 memory_max_objects: int):
        self.node_id = node_id
        self.memory_max_objects = memory_max_objects
        self.fabric_stats = fabric_stats
        self.scheduler = scheduler
        self.membership = membership
        self.gcs = gcs
        self._answers = {"nodes": self.nodes, "resources": self.resources,
                         "status": self.status, "timeline": self.timeline,
                         "memory": self.memory}

    def add_answers(self, **handlers) -> None:
        """More queries, answered by their owners (e.g. core/activity.py)."""
        self._answers.update(handlers)

    def answer(self, what: str):
        """The data of a Request; ValueError for an unknown one."""
        handler = self._answers.get(what)
        if handler is None:
            raise ValueError(f"unknown query {what!r}")
        return handler()

    def nodes(self) -> list[dict]:
        return [self._node_record(m) for m in self._members()]

    def resources(self) -> dict:
        total: dict[str, float] = {}
        available: dict[str, float] = {}
        for m in self._members():
            if m.state not in LIVE:
                continue
            view = self._view(m)
            for k, v in _amounts(view.get("total")).items():
                total[k] = total.get(k, 0.0) + v
            for k, v in _amounts(view.get("available")).items():
                available[k] = available.get(k, 0.0) + v
        return {"total": total, "available": available}

    def status(self) -> dict:
        rows = []
        for m in self._members():
            row = self._node_record(m)
            if m.node_id == self.node_id:
                row.update(self.scheduler.status())
                row["stats"].update(self.fabric_stats)
            else:
                view = m.info
                row.update(available=view.get("available", {}),
                           tasks_queued=view.get("queued", 0),
                           tasks_running=view.get("running", 0),
                           store_used=view.get("store_used", 0),
                           store_capacity=view.get("store_capacity", 0),
                           spilled_bytes=view.get("spilled_bytes", 0),
                           spilled_objects=view.get("spilled_objects", 0),
                           pending_demand=[], demands=view.get("demands"))
            row["demands"] = _demands(row.get("demands"))
            rows.append(row)
        return {"self": self.node_id.hex(), "nodes": rows,
                "demands": pending_demands([r["demands"] for r in rows if r["Alive"]])}

    def memory(self) -> dict:
        return memview.listing(self.node_id, self.scheduler, self.gcs, self.memory_max_objects)

    def timeline(self) -> list[dict]:
        """Ours as it is now, the others' as replicated (core/timeline.py)."""
        by_node: dict[bytes, list] = {self.node_id: list(self.scheduler.timeline.entries)}
        for shard, _batch, blob in self.gcs.items("tl"):
            if shard != self.node_id:
                by_node.setdefault(shard, []).extend(unpack_batch(blob))
        return trace_events(by_node)

    def _members(self) -> list:
        me = self.node_id
        return sorted(self.membership.members.values(),
                      key=lambda m: (m.node_id != me, m.node_id))

    def _view(self, member) -> dict:
        if member.node_id == self.node_id:
            return self.scheduler.resource_view()
        return member.info

    def _node_record(self, member) -> dict:
        static = self.gcs.get("node", member.node_id, shard=member.node_id)
        if not isinstance(static, dict):
            static = member.info
        view = self._view(member)
        # a suspected node is alive until declared dead (Ray's "Alive" is not dead)
        return {"NodeID": member.node_id.hex(), "Alive": member.state in LIVE,
                "State": MemberState(member.state).name,
                "NodeManagerAddress": static.get("host", ""),
                "NodeManagerPort": static.get("port", 0),
                "Resources": _amounts(view.get("total")),
                "ObjectStoreAddress": static.get("object_address", ""),
                "Address": static.get("address", member.address),
                # "curve": TCP is authenticated and encrypted; "none": --insecure-no-auth
                "auth": static.get("auth", "curve")}


def _amounts(d) -> dict:
    """A gossiped resource map, without what is not name -> number."""
    if not isinstance(d, dict):
        return {}
    return {k: v for k, v in d.items()
            if type(k) is str and type(v) in (int, float) and v == v}


def pending_demands(per_node: list[list[dict]]) -> list[dict]:
    """Nodes' queued tasks by resource shape ({"resources", "tasks"} records),
    summed over the nodes: the busiest shape first."""
    total: dict[tuple, int] = {}
    for demands in per_node:
        for d in demands:
            key = tuple(sorted(d["resources"].items()))
            total[key] = total.get(key, 0) + d["tasks"]
    return [{"resources": dict(k), "tasks": n}
            for k, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))]


def _demands(d) -> list[dict]:
    """A node's queued tasks by resource shape ([[shape, tasks], ...], as it gossips
    them) as records {"resources", "tasks"}, without what is malformed."""
    if type(d) is not list:
        return []
    return [{"resources": _amounts(x[0]), "tasks": x[1]} for x in d
            if type(x) is list and len(x) == 2 and isinstance(x[0], dict)
            and type(x[1]) is int and x[1] > 0]

