"""The tasks this node ran, for the cluster's Chrome trace (`zf.timeline()`).

The scheduler records each task a local worker ended, with the times its
TaskDone carries: the worker took it (`start`), had its function and
arguments (`fetched`), the function returned (`end`), the results were
stored (`stored`). The fabric publishes new entries in its GCS shard (table
"tl", one msgpack blob a batch: `pack_batch`) so every node can answer for
the whole cluster, and `trace_events`
turns the entries of every node into one Chrome trace (the JSON array
format, which Perfetto and chrome://tracing open):

- each node is a process, each worker a thread in it: "M" events name them
  (process_name "node {id}", thread_name "worker {id} (pid {pid})"); pids
  and tids are small integers, the same for one node or worker throughout;
- each task run is one complete event ("X", cat "task": ts and dur in
  microseconds, from `start` to `stored`), with two complete events inside
  it on the same thread: "fetch arguments" (cat "fetch": `start` to
  `fetched`, loading the function's code included) and "store results"
  (cat "store": `end` to `stored`).
"""
from __future__ import annotations

from collections import deque

import msgpack

STATUS_NAMES = {0: "ok", 1: "error", 2: "cancelled"}   # protocol.TaskStatus
FETCH_SPAN, STORE_SPAN = "fetch arguments", "store results"


class Timeline:
    def __init__(self, node_id: bytes, capacity: int):
        self.node_id = node_id
        self.capacity = capacity
        self.entries: deque = deque(maxlen=capacity)   # the newest `capacity` entries
        self.total = 0                                 # entries ever recorded

    def record(self, name: str, task_id: bytes, worker: str, start: float, end: float,
               status: int, fetched: float, stored: float, pid: int) -> None:
        """A task ended on worker `worker` (process `pid`, 0 if unknown). Every
        field is a msgpack scalar from a checked message: the fabric publishes
        entries to the GCS without walking them again."""
        self.entries.append((name, task_id, worker, start, end, status, fetched, stored, pid))
        self.total += 1

    def since(self, seen: int) -> list:
        """Entries recorded after the first `seen` (those still kept)."""
        entries = self.entries
        n = len(entries)
        new = min(self.total - seen, n)   # (indexed from the newest end: not a copy of all)
        return [entries[i] for i in range(n - new, n)] if new > 0 else []

    def trace_events(self) -> list[dict]:
        return trace_events({self.node_id: self.entries})


def trace_events(by_node: dict) -> list[dict]:
    """Chrome trace events for timeline entries (name, task id, worker, start, end,
    status, fetched, stored, pid) by node id: processes numbered in node id order."""
    events: list[dict] = []
    for pid, node in enumerate(sorted(by_node), start=1):
        events.append(_meta("process_name", pid, 0, f"node {node.hex()}"))
        threads: dict[tuple, int] = {}
        for entry in by_node[node]:
            worker = (entry[2], entry[8])
            tid = threads.get(worker)
            if tid is None:
                tid = threads[worker] = len(threads) + 1
                name = f"worker {worker[0]}" + (f" (pid {worker[1]})" if worker[1] else "")
                events.append(_meta("thread_name", pid, tid, name))
            events += _task_events(pid, tid, node, entry)
    return events


def _meta(what: str, pid: int, tid: int, name: str) -> dict:
    return {"name": what, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def _task_events(pid: int, tid: int, node: bytes, entry) -> list[dict]:
    name, task_id, worker, start, end, status, fetched, stored, _ = entry
    t0, t3 = _us(start), _us(max(stored, end, start))
    t2 = min(max(_us(end), t0), t3)
    t1 = min(max(_us(fetched), t0), t2)   # start <= fetched <= end <= stored
    task = {"name": name, "cat": "task", "ph": "X", "pid": pid, "tid": tid, "ts": t0,
            "dur": t3 - t0, "args": {"task_id": task_id.hex(), "node": node.hex(),
                                     "worker": worker,
                                     "status": STATUS_NAMES.get(status, "?")}}
    return [task,
            {"name": FETCH_SPAN, "cat": "fetch", "ph": "X", "pid": pid, "tid": tid, "ts": t0,
             "dur": t1 - t0, "args": {"task_id": task_id.hex()}},
            {"name": STORE_SPAN, "cat": "store", "ph": "X", "pid": pid, "tid": tid, "ts": t2,
             "dur": t3 - t2, "args": {"task_id": task_id.hex()}}]


def _us(t: float) -> int:
    """Seconds as whole microseconds: spans nest exactly (no float rounding)."""
    return int(round(t * 1e6))


def is_entry(e) -> bool:
    """Is `e` a timeline entry (name, task id, worker, start, end, status, fetched,
    stored, pid), as a peer's "tl" batch holds them (views.py, activity.py)?"""
    return (type(e) is list and len(e) == 9 and type(e[0]) is str and type(e[1]) is bytes
            and type(e[2]) is str and all(type(x) in (int, float) and x == x and abs(x) < 1e11
                                          for x in (e[3], e[4], e[6], e[7]))
            and type(e[5]) is int and type(e[8]) is int)


def pack_batch(entries: list) -> bytes:
    """One tick's entries as the value of a "tl" batch: a single msgpack blob.
    Every peer holding our shard stores it and passes it on as one bytes
    value, not thousands of scalars to check (a burst of tiny tasks makes
    thousands a second); entries are unpacked, and checked, only where they
    are read (`unpack_batch`)."""
    return msgpack.packb(entries)


def unpack_batch(blob) -> list:
    """The timeline entries in a "tl" batch (`is_entry` ones; a peer's value is
    not trusted); [] for a value that is not a batch."""
    if type(blob) is not bytes:
        return []
    try:
        entries = msgpack.unpackb(blob)
    except (ValueError, TypeError, msgpack.UnpackException):   # (garbage: not a batch)
        return []
    return [e for e in entries if is_entry(e)] if type(entries) is list else []
