"""What the cluster's tasks did lately, for the dashboard: recent failures,
counts by function and state, and the stream of recent runs.

    Scheduler._on_task_done, a task raised --> TaskErrors.record  (a bounded ring)
    Fabric, every scheduler tick --> Activity.publish --> our GCS shard:
        "err" (key = batch number: the failures recorded since the last batch,
               at most `ERRORS_PER_BATCH` of them; the oldest batches deleted past
               the ring's capacity)
        "fn"  (key "counts": {function name: [finished, failed, cancelled]} of the
               runs this node's workers ended, from its timeline)
    ClusterView "tasks" / "errors" <-- Activity.tasks() / errors(): ours as they
        are now, the peers' as replicated (what a peer wrote is checked, and
        left out where malformed, as views.py does)

Pure state, no I/O: times are the workers' wall clock (the TaskDone's end),
as in the timeline. An error record is read here only for its type, message
and traceback (msgpack, never unpickled); texts are cut to `text_max`
characters so a huge traceback cannot fill the GCS.
"""
from __future__ import annotations

from collections import deque

import msgpack

from .tasks import TaskState
from .timeline import unpack_batch

ERRORS_PER_BATCH = 10     # failures published per scheduler tick (the rest stay local)
MAX_FUNCTIONS = 1000      # names counted per node; more go to OTHER
OTHER = "(other functions)"
STATES = {TaskState.WAITING: "waiting", TaskState.QUEUED: "queued",
          TaskState.ASSIGNED: "queued", TaskState.RUNNING: "running",
          TaskState.SPILLED: "spilled"}
ENDED = ("finished", "failed", "cancelled")   # timeline status 0, 1, 2


class TaskErrors:
    """The last `capacity` failures of tasks this node's workers ran:
    [function, task id, worker, time, error type, message, traceback]."""

    def __init__(self, capacity: int, text_max: int):
        self.capacity = capacity
        self.text_max = text_max
        self.entries: deque = deque(maxlen=capacity)
        self.total = 0   # failures ever recorded

    def record(self, name: str, task_id: bytes, worker: str, when: float,
               record: bytes) -> None:
        fields = _record_fields(record)
        cut = self.text_max
        self.entries.append([
            _text(name, 200), task_id, _text(worker, 100), float(when),
            _text(fields.get("type"), 200) or "Error", _text(fields.get("message"), cut),
            _text(fields.get("traceback"), cut)])
        self.total += 1

    def since(self, seen: int) -> list:
        """Failures recorded after the first `seen` (those still kept)."""
        new = min(self.total - seen, len(self.entries))
        return list(self.entries)[len(self.entries) - new:] if new > 0 else []


class Activity:
    """Publishes this node's counts and failures, and answers for the cluster."""

    def __init__(self, node_id: bytes, scheduler, gcs, stream_per_node: int):
        self.node_id = node_id
        self.scheduler = scheduler
        self.gcs = gcs
        self.stream_per_node = stream_per_node
        self.counts: dict[str, list[int]] = {}     # function -> [finished, failed, cancelled]
        self._timeline_seen = 0
        self._errors_seen = 0
        self._batches: deque = deque()             # (batch number, failures) in our shard
        self._kept = 0
        self._batch = 0
        self._tl_newest: dict[bytes, int] = {}     # peer -> its newest "tl" batch seen

    # -- writing our shard ---------------------------------------------------------------

    def publish(self) -> None:
        """Count the runs ended since the last call; publish counts and failures."""
        timeline = self.scheduler.timeline
        new = timeline.since(self._timeline_seen)
        self._timeline_seen = timeline.total
        for entry in new:
            name, status = entry[0], entry[5]
            if name not in self.counts and len(self.counts) >= MAX_FUNCTIONS:
                name = OTHER
            row = self.counts.setdefault(name, [0, 0, 0])
            if 0 <= status < 3:
                row[status] += 1
        if new:
            self.gcs.put("fn", "counts", {k: list(v) for k, v in self.counts.items()})
        self._publish_errors()

    def _publish_errors(self) -> None:
        errors = self.scheduler.errors
        new = errors.since(self._errors_seen)[-ERRORS_PER_BATCH:]
        self._errors_seen = errors.total
        if not new:
            return
        self._batch += 1
        self.gcs.put("err", str(self._batch), new)
        self._batches.append((self._batch, len(new)))
        self._kept += len(new)
        while self._kept > errors.capacity and len(self._batches) > 1:
            batch, n = self._batches.popleft()
            self.gcs.delete("err", str(batch))
            self._kept -= n

    # -- answering --------------------------------------------------------------------------

    def errors(self) -> list[dict]:
        """Recent failures across the cluster, newest first."""
        rows = [(self.node_id, e) for e in self.scheduler.errors.entries]
        for shard, _batch, entries in self.gcs.items("err"):
            if shard != self.node_id and type(entries) is list:
                rows += [(shard, e) for e in entries if _is_error_entry(e)]
        out = [{"node_id": node.hex(), "function": e[0], "task_id": e[1].hex(),
                "worker": e[2], "time": e[3], "type": e[4], "message": e[5],
                "traceback": e[6]} for node, e in rows]
        out.sort(key=lambda r: r["time"], reverse=True)
        return out

    def tasks(self, peer_live: dict[bytes, dict]) -> dict:
        """Counts by state and by function, and the stream of recent runs.
        `peer_live`: node -> the live figures its gossip carries (queued, running)."""
        functions: dict[str, dict] = {}
        states = dict.fromkeys(("waiting", "queued", "running", "spilled", *ENDED), 0)
        for t in self.scheduler.tasks.values():
            state = STATES.get(t.state)
            if state is not None:
                _row(functions, t.spec.name)[state] += 1
                states[state] += 1
        for view in peer_live.values():
            for state in ("queued", "running"):
                n = view.get(state)
                if type(n) is int and n >= 0:
                    states[state] += n
        for name, counts in self._all_counts():
            row = _row(functions, name)
            for state, n in zip(ENDED, counts):
                row[state] += n
                states[state] += n
        return {"states": states,
                "functions": sorted(functions.values(), key=lambda r: r["name"]),
                "stream": self._stream()}

    def _all_counts(self):
        yield from self.counts.items()
        for shard, _key, value in self.gcs.items("fn"):
            if shard == self.node_id or type(value) is not dict:
                continue
            for name, counts in value.items():
                if (type(name) is str and type(counts) is list and len(counts) == 3
                        and all(type(n) is int and n >= 0 for n in counts)):
                    yield name, counts

    def _stream(self) -> list[dict]:
        """The newest `stream_per_node` runs of each node, oldest first."""
        per_node = {self.node_id: list(self.scheduler.timeline.entries)[-self.stream_per_node:]}
        shards = [s for s in self.gcs.shards() if s != self.node_id]
        for shard in list(self._tl_newest):
            if shard not in shards:
                del self._tl_newest[shard]
        for shard in shards:
            per_node[shard] = self._peer_runs(shard)
        out = [{"node_id": node.hex(), "function": e[0], "task_id": e[1].hex(),
                "worker": e[2], "start": e[3], "end": e[4], "status": ENDED[e[5]]}
               for node, entries in per_node.items() for e in entries]
        out.sort(key=lambda r: r["start"])
        return out

    def _peer_runs(self, shard: bytes) -> list:
        """A peer's newest runs, from its "tl" batches. Their keys are consecutive
        batch numbers, so after one scan per peer only the newest few are read:
        scanning every batch of every node each second would cost the loop."""
        gcs, keep = self.gcs, self.stream_per_node
        newest = self._tl_newest.get(shard, 0)
        if shard not in self._tl_newest or (newest and gcs.get("tl", str(newest), shard) is None):
            newest = max((int(k) for s, k, _v in gcs.items("tl")
                          if s == shard and type(k) is str and k.isdigit() and len(k) < 19),
                         default=0)
        while gcs.get("tl", str(newest + 1), shard) is not None:
            newest += 1
        self._tl_newest[shard] = newest
        entries: list = []
        while len(entries) < keep and newest > 0:
            batch = gcs.get("tl", str(newest), shard)
            if type(batch) is not bytes:
                break
            entries[:0] = [e for e in unpack_batch(batch) if 0 <= e[5] < len(ENDED)]   # (named)
            newest -= 1
        return entries[-keep:]


def _row(functions: dict, name: str) -> dict:
    row = functions.get(name)
    if row is None:
        row = functions[name] = {"name": name, "waiting": 0, "queued": 0, "running": 0,
                                 "spilled": 0, "finished": 0, "failed": 0, "cancelled": 0}
    return row


def _record_fields(record) -> dict:
    """An error record's fields; {} for bytes that are not one."""
    try:
        fields = msgpack.unpackb(record)
    except (ValueError, TypeError, msgpack.UnpackException):
        return {}
    return fields if isinstance(fields, dict) else {}


def _text(value, limit: int) -> str:
    if type(value) is not str:
        return ""
    return value if len(value) <= limit else value[:limit] + " [...]"


def _is_error_entry(e) -> bool:
    return (type(e) is list and len(e) == 7 and type(e[1]) is bytes
            and type(e[3]) is float and e[3] == e[3]
            and all(type(e[i]) is str for i in (0, 2, 4, 5, 6)))

