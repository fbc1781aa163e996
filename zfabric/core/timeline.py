"""The tasks this node ran, for the cluster's Chrome trace (`zf.timeline()`).

The scheduler records each task a local worker ended; the fabric publishes
new entries in its GCS shard (table "tl") so every node can answer for the
whole cluster, and `trace_events` turns entries of any node into Chrome
trace events.
"""
from __future__ import annotations

from collections import deque

STATUS_NAMES = {0: "ok", 1: "error", 2: "cancelled"}   # protocol.TaskStatus


class Timeline:
    def __init__(self, node_id: bytes, capacity: int):
        self.node_id = node_id
        self.capacity = capacity
        self.entries: deque = deque(maxlen=capacity)   # the newest `capacity` entries
        self.total = 0                                 # entries ever recorded

    def record(self, name: str, task_id: bytes, worker: str, start: float, end: float,
               status: int) -> None:
        self.entries.append((name, task_id, worker, start, end, status))
        self.total += 1

    def since(self, seen: int) -> list:
        """Entries recorded after the first `seen` (those still kept)."""
        new = min(self.total - seen, len(self.entries))
        return list(self.entries)[len(self.entries) - new:] if new > 0 else []

    def trace_events(self) -> list[dict]:
        return trace_events(self.node_id, self.entries)


def trace_events(node_id: bytes, entries) -> list[dict]:
    """Chrome trace events for timeline entries (name, task id, worker, start, end, status)."""
    pid = f"node {node_id.hex()[:8]}"
    return [{"name": name, "cat": "task", "ph": "X", "pid": pid,
             "tid": wid, "ts": start * 1e6, "dur": max(end - start, 0) * 1e6,
             "args": {"task_id": tid.hex(), "status": STATUS_NAMES.get(status, "?")}}
            for name, tid, wid, start, end, status in entries]
