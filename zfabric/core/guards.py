"""Does a well-formed message make sense, coming from whom it comes from?

`protocol.decode` checks what a message may hold; this checks it against
the scheduler's state, before its handler runs (`Scheduler._dispatch`):

    client or peer message --> client_problem / peer_problem --> "" : the handler runs
                                                             '-> why not: refused as
                                                                 nonsense (Nonsense effect),
                                                                 nothing changed

A refusal here is never a legitimate race (a late answer, a cancel of a
task that just ended): those still reach their handlers, which ignore
them. What is refused: a worker's report about a task it is not running,
a message only a worker sends from a client that is not one, a task id or
return ids already in use, a Cancel of an object nobody knows, a peer's
answer about a task we never sent it, a peer cancelling a task it does not
own. Checks the handlers do themselves (Put, Refs, Spill) are in their
modules, as the refusal changes their reply. Read only.
"""
from __future__ import annotations

from .. import ids
from .. import protocol as p
from . import resources as rs
from .objects import peer_client
from .tasks import TaskState


def client_problem(sched, client: bytes, msg) -> str:
    """Why a local client's message makes no sense, or ""."""
    check = _CLIENT.get(type(msg))
    return check(sched, client, msg) if check is not None else ""


def peer_problem(sched, sender: bytes, msg) -> str:
    """Why a peer's message makes no sense, or ""."""
    check = _PEER.get(type(msg))
    return check(sched, sender, msg) if check is not None else ""


def _hello(sched, client: bytes, msg: p.Hello) -> str:
    if msg.role != "worker":
        return ""
    worker = sched.pool.workers.get(msg.worker_id or "")
    if worker is None or worker.client != client:
        return f"a Hello from unknown worker {msg.worker_id!r}"
    return ""


def _submit(sched, client: bytes, msg: p.Submit) -> str:
    if msg.opts and "lease" in msg.opts:
        why = _direct_problem(sched, client, msg)
        if why:
            return why
    if msg.task_id in sched.tasks:
        return "a Submit of a task id in use"
    entries = sched.objects.entries
    tid = msg.task_id
    for i in range(msg.num_returns):   # ids.return_ids, without the list (every submit)
        if tid + i.to_bytes(4, "big") in entries:
            return "a Submit whose return ids are objects that exist"
    return ""


def _direct_problem(sched, client: bytes, msg: p.Submit) -> str:
    """A driver's notice of a task it sent its leased worker (core/leases.py)."""
    lease = sched.leases.book.by_client.get(client)
    if lease is None or lease.wid != msg.opts["lease"]:
        return "a Submit naming a worker not leased to its sender"
    worker = sched.pool.workers.get(lease.wid)
    if worker is not None and worker.task is not None:
        return "a Submit naming a leased worker that runs another task"
    if msg.deps or msg.contained or rs.to_units(msg.resources) != sched.leases.demand:
        return "a direct task with arguments to resolve or other resources"
    return ""


def _running(sched, client: bytes, task_id: bytes, what: str) -> str:
    worker = sched.pool.of_client(client) or sched.leases.worker_of(client)
    if worker is None:
        return f"a {what} from a client that is not a worker"
    if worker.task is None or worker.task.spec.task_id != task_id:
        return f"a {what} for a task the worker is not running"
    return ""


def _task_done(sched, client: bytes, msg: p.TaskDone) -> str:
    return _running(sched, client, msg.task_id, "TaskDone")


def _blocked(sched, client: bytes, msg) -> str:
    return _running(sched, client, msg.task_id, type(msg).__name__)


def _revoked(sched, client: bytes, msg: p.Revoked) -> str:
    if sched.pool.of_client(client) is None:
        return "a Revoked from a client that is not a worker"
    return ""


def _cancel(sched, client: bytes, msg: p.Cancel) -> str:
    if ids.task_of(msg.oid) not in sched.tasks and msg.oid not in sched.objects.entries:
        return "a Cancel of an object that does not exist"
    return ""


def _not_sent_there(sched, sender: bytes, task_id: bytes, what: str) -> str:
    """A peer answers about one of our live tasks: had we ever sent it there?"""
    task = sched.tasks.get(task_id)
    if task is None or task.remote_owner is not None:
        return ""   # ended (a late answer) or not ours to send
    if task.state == TaskState.SPILLED and task.node == sender:
        return ""
    if sender in task.tried:
        return ""   # a late answer: it came back from there and went on
    return f"a {what} about a task we never sent it"


def _task_result(sched, sender: bytes, msg: p.TaskResult) -> str:
    return _not_sent_there(sched, sender, msg.task_id, "TaskResult")


def _refuse(sched, sender: bytes, msg: p.Refuse) -> str:
    return _not_sent_there(sched, sender, msg.task_id, "Refuse")


def _peer_cancel(sched, sender: bytes, msg: p.Cancel) -> str:
    task = sched.tasks.get(ids.task_of(msg.oid))
    if task is not None and task.owner != peer_client(sender):
        return "a Cancel of a task it does not own"
    return ""


_CLIENT = {p.Hello: _hello, p.Submit: _submit, p.TaskDone: _task_done,
           p.Blocked: _blocked, p.Unblocked: _blocked, p.Revoked: _revoked,
           p.Cancel: _cancel}
_PEER = {p.TaskResult: _task_result, p.Refuse: _refuse, p.Cancel: _peer_cancel}
