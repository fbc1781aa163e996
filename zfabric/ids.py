"""Identifiers: NodeID, TaskID, ObjectID — raw bytes on the hot path.

- A TaskID is 16 bytes: an 8-byte random prefix chosen once per process (and
  again in a forked child: `os.register_at_fork`) and an 8-byte counter, so a
  driver or worker names its tasks without asking anyone and two processes
  never collide.
- An ObjectID is 20 bytes: the TaskID that creates it and a 4-byte return
  index. `put` objects come from a per-process "put task" counter and index
  0x80000000 | n, so an object's creating task is always its first 16 bytes.
- A NodeID is 16 random bytes.
- A function id is the 16-byte BLAKE2b digest of the function's serialized code.
- A job id is 24 bytes: the node id of a driver's node and the driver's
  8-byte client id there (`job_id`); it names where its tasks' output goes.
Nothing else in zfabric builds or slices an id by hand (logs show `short(id)`).

Hex forms are what users see (`ObjectRef.hex()`, `nodes()[i]["NodeID"]`) and
what store file names use.
"""
from __future__ import annotations

import hashlib
import itertools
import os

TASK_ID_SIZE = 16
OBJECT_ID_SIZE = 20
NODE_ID_SIZE = 16
FUNCTION_ID_SIZE = 16
CLIENT_ID_SIZE = 8           # a driver's client id: b"d" + 7 random bytes (node/client.py)
JOB_ID_SIZE = NODE_ID_SIZE + CLIENT_ID_SIZE
PUT_INDEX_FLAG = 0x80000000

_prefix = os.urandom(8)        # this process's task id prefix: new in a forked child
_counter = itertools.count(1)


def _new_prefix() -> None:
    """A process's own task ids: a fresh prefix and counter (at import, and in
    every child os.fork makes, which would otherwise repeat the parent's ids)."""
    global _prefix, _counter
    _prefix = os.urandom(8)
    _counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)


def new_task_id() -> bytes:
    return _prefix + next(_counter).to_bytes(8, "big")


def object_id(task_id: bytes, index: int) -> bytes:
    """The id of return `index` of a task."""
    return task_id + index.to_bytes(4, "big")


def return_ids(task_id: bytes, num_returns: int) -> list[bytes]:
    """The ids of a task's returns (`object_id` of each index; inlined: every
    submit calls this)."""
    return [task_id + i.to_bytes(4, "big") for i in range(num_returns)]


def new_put_id() -> bytes:
    return new_task_id() + PUT_INDEX_FLAG.to_bytes(4, "big")


def is_put(oid: bytes) -> bool:
    """Was the object made by `put` (not returned by a task)?"""
    return bool(int.from_bytes(oid[TASK_ID_SIZE:], "big") & PUT_INDEX_FLAG)


def task_of(oid: bytes) -> bytes:
    """The task that creates an object (for a put object, its put counter)."""
    return oid[:TASK_ID_SIZE]


def function_id(code: bytes) -> bytes:
    """A function's id: the digest of its serialized code."""
    return hashlib.blake2b(code, digest_size=FUNCTION_ID_SIZE).digest()


def new_node_id() -> bytes:
    return os.urandom(NODE_ID_SIZE)


def job_id(node_id: bytes, client_id: bytes) -> bytes:
    """A job: the driver whose tasks (and their nested tasks) these are, named
    by its node and its client id there. Task output goes to it."""
    return node_id + client_id


def job_node(job: bytes) -> bytes:
    """The node a job's driver is attached to."""
    return job[:NODE_ID_SIZE]


def job_client(job: bytes) -> bytes:
    """A job's driver, as its node knows it (its client id)."""
    return job[NODE_ID_SIZE:]


def short(raw: bytes) -> str:
    """An id as logs and messages show it: the first 12 hex digits."""
    return raw[:6].hex()


def worker_endpoint(session_dir: str, worker_id: str) -> str:
    """Where a worker takes Executes from the driver it is leased to: ipc://PATH,
    PATH its direct line's Unix socket (node/direct.py) in the session dir,
    which only the node's user can enter."""
    return f"ipc://{session_dir}/{worker_id}.sock"
