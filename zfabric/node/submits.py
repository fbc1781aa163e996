"""Submitting a task: the Submit a driver's or a worker's Client sends.

    RemoteFunction.remote (api.py) --> Client.submit --> submit() here
        task id and return ids made here, ObjectRefs for the returns
        Submit(task, fn code the first time this client sends it, args) --> node

The node holds the submitter as the returns' holder from the Submit on (no
reference change is reported for them) and pushes each return's value to
it unasked when it is made or kept on this node (`ObjectDirectory.
object_ready`); a return kept on another node is announced instead, and the
client asks for it only if it gets it (node/client.py). So a get of one's
own returns sends nothing. Called by Client.submit; large arguments were
put before (node/puts.py). A driver holding a worker lease sends an
eligible task to that worker instead (node/lease.py).
"""
from __future__ import annotations

from .. import protocol as p
from ..ids import new_task_id, return_ids
from ..ref import ObjectRef


def submit(client, *, name: str, fn_id: bytes, fn_blob: bytes, num_returns: int,
           resources: dict, max_retries: int, retry_exceptions: bool, retry_blob: bytes,
           deps: list, contained: list, args_blob: bytes,
           opts: dict | None = None) -> list[ObjectRef]:
    """Send a task to `client`'s node; the ObjectRefs of its returns."""
    tid = new_task_id()
    rids = return_ids(tid, num_returns)
    refs = [ObjectRef(oid, client) for oid in rids]
    client.expect_pushes(rids)
    job = client.job
    if job:
        opts = {**opts, "job": job} if opts else {"job": job}
    lane = client.lane
    if lane is not None and lane.wid is not None and not deps:   # a leased worker: lease.py
        with client._send_lock:
            if lane.run(tid, name, fn_id, fn_blob, num_returns, resources, max_retries,
                        retry_exceptions, retry_blob, contained, args_blob, opts or {}):
                return refs
    if fn_id in client.sent_functions:
        fn_blob = b""
    else:
        client.sent_functions.add(fn_id)
    depth = client.current_depth + (client.current_task_id is not None)
    client.send(p.Submit(tid, name, fn_id, num_returns, resources, max_retries,
                         retry_exceptions, depth, client.current_task_id or b"", deps,
                         contained, fn_blob, args_blob, retry_blob, opts or {}))
    if lane is not None and lane.wid is not None:   # (a recall, or our direct task's end:
        client.take_arrived()                       # the worker goes back to the node)
    return refs
