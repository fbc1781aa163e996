"""core/leases.py: who holds which worker (LeaseBook, property-tested), and the
scheduler's side of leases -- grant, a driver's notices of direct tasks, recall,
a leased worker's death, messages of a task not named yet held and replayed.

A bare Scheduler (tests/harness/scheduler.py, `validate()` after every step)
played by hand: the driver's Submit naming its lease, then the worker's
TaskDone it forwards.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import protocol as p
from zfabric.core import events as ev
from zfabric.core.leases import LeaseBook, LeaseState
from zfabric.exceptions import WorkerCrashedError
from zfabric.protocol import ObjectState

from tests.harness.scheduler import (DRIVER, OTHER, Node, error_for, put_id, rid, submit_msg,
                                     summary, tid, user_error)

SESSION = "/tmp/zfabric-sessions-0/s"


# -- LeaseBook: properties --------------------------------------------------------------

CLIENTS = [b"d1", b"d2", b"d3"]
WORKERS = ["w1", "w2", "w3"]
OPS = st.lists(st.tuples(st.sampled_from(["grant", "recall", "to_recall", "died", "returned",
                                          "gone"]),
                         st.sampled_from(CLIENTS), st.sampled_from(WORKERS),
                         st.integers(0, 2), st.integers(0, 2)), max_size=40)


@settings(deadline=None, max_examples=300)
@given(OPS)
def test_a_client_and_a_worker_are_in_one_lease_at_most_and_ends_are_said_once(ops):
    book = LeaseBook()
    ended: dict = {}   # lease -> what ended it (recall / died): told the driver once
    for op, client, wid, queued, idle in ops:
        if op == "grant":
            if book.may_grant(True, client in book.by_client, idle, queued) \
                    and wid not in book.by_worker:
                lease = book.grant(client, wid)
                assert lease.state == LeaseState.ACTIVE
        elif op == "recall":
            lease = book.by_client.get(client)
            if lease is not None:
                told = book.recall(lease)
                assert told == (lease not in ended)
                if told:
                    ended[lease] = "recall"
        elif op == "to_recall":
            recalled = book.to_recall(queued, idle)
            if not queued or idle:
                assert recalled == []
            for lease in recalled:
                assert lease not in ended
                ended[lease] = "recall"
            assert all(lease.state != LeaseState.ACTIVE for lease in book.by_client.values()
                       ) or not queued or idle
        elif op == "died":
            lease = book.by_worker.get(wid)
            dead = book.worker_died(wid)
            if lease is not None and lease.state == LeaseState.DEAD:
                assert dead is None or dead is lease
            if dead is not None:
                assert ended.get(dead) != "died"
                ended[dead] = "died"
                assert book.recall(dead) is False   # a dead lease is never recalled
        elif op == "returned":
            lease = book.by_client.get(client)
            back = book.returned(client, wid)
            assert back is (lease if lease is not None and lease.wid == wid else None)
        else:
            lease = book.by_client.get(client)
            assert book.returned(client, None) is lease
            assert client not in book.by_client
        book.validate()


def test_a_lease_is_granted_only_to_a_driver_without_one_while_a_worker_idles_and_nothing_waits():
    grant = LeaseBook.may_grant
    assert grant(True, False, 1, 0)
    assert not grant(False, False, 1, 0)     # a worker or a tool
    assert not grant(True, True, 1, 0)       # one lease a driver
    assert not grant(True, False, 0, 0)      # no idle worker
    assert not grant(True, False, 2, 1)      # a task is queued: it gets the worker


# -- the scheduler's side -------------------------------------------------------------

def leased_node(cpus: float = 2) -> Node:
    node = Node(cpus=cpus)
    node.s.leases.session_dir = SESSION
    out = node.send(DRIVER, p.LeaseAsk(1))
    grant = [e.msg for e in out if type(getattr(e, "msg", None)) is p.LeaseGrant]
    assert len(grant) == 1 and grant[0].endpoint == f"ipc://{SESSION}/{grant[0].wid}.sock"
    node.wid = grant[0].wid
    return node


def notice(n: int, wid: str, **kw) -> p.Submit:
    msg = submit_msg(n, **kw)
    msg.opts = {"lease": wid}
    return msg


def report(n: int, payloads=(b"v",), status=0, states=None, contained=None) -> p.TaskDone:
    states = [int(ObjectState.INLINE)] * len(payloads) if states is None else states
    return p.TaskDone(tid(n), status, False, states, [len(x) for x in payloads],
                      contained or [[] for _ in payloads], 1.0, 2.0, 1.0, 2.0, list(payloads))


def test_a_grant_takes_an_idle_worker_and_holds_its_cpu():
    node = leased_node(cpus=2)
    assert node.cpu() == 1 and len(node.s.pool.idle) == 1
    worker = node.s.pool.workers[node.wid]
    assert worker not in node.s.pool.idle and worker.leased is not None
    assert summary(node.send(DRIVER, p.LeaseAsk(1))) == []   # one lease a driver
    assert summary(node.send(OTHER, p.LeaseAsk(1))) == []    # not a driver that said Hello


def test_a_direct_task_is_booked_from_the_drivers_notices_without_a_push_back():
    node = leased_node()
    assert summary(node.send(DRIVER, notice(1, node.wid))) == []   # runs there: no Execute
    task = node.s.tasks[tid(1)]
    assert task.worker == node.wid and "lease" not in task.spec.opts
    assert summary(node.send(DRIVER, report(1, [b"42"]))) == []      # the driver has it
    entry = node.s.objects.get(rid(1))
    assert entry.state == ObjectState.INLINE and entry.payload == b"42"
    assert node.s.stats["direct"] == 1 and node.s.stats["finished"] == 1
    assert node.cpu() == 1   # the lease holds its CPU again
    assert [e[0] for e in node.s.timeline.since(0)] == ["f"]   # (name first)


def test_a_direct_task_whose_value_the_node_seals_is_pushed_to_the_driver():
    node = leased_node()
    node.send(DRIVER, notice(1, node.wid))
    out = node.send(DRIVER, report(1, [user_error()], status=1))
    assert ("ready", DRIVER, rid(1), "ERROR") in summary(out)


def test_a_direct_value_holding_refs_is_pushed_to_the_driver():
    """The driver leaves a value holding refs to the node (node/lease.py): it
    must be pushed, or the driver's get waits until it asks."""
    node = leased_node()
    node.send(DRIVER, p.Put(put_id(1), ObjectState.INLINE, 1, [], 0, b"x"))
    node.send(DRIVER, notice(1, node.wid))
    out = node.send(DRIVER, report(1, [b"v"], contained=[[put_id(1)]]))
    assert ("ready", DRIVER, rid(1), "INLINE") in summary(out)


def test_a_notice_naming_another_workers_lease_or_with_arguments_is_nonsense():
    node = leased_node()
    other = "w1" if node.wid != "w1" else "w2"
    assert summary(node.send(DRIVER, notice(1, other))) == [("nonsense",)]
    assert summary(node.send(OTHER, notice(2, node.wid))) == [("nonsense",)]
    assert tid(1) not in node.s.tasks and tid(2) not in node.s.tasks


def test_queued_work_with_no_idle_worker_recalls_the_lease_and_its_return_frees_the_worker():
    node = leased_node(cpus=2)
    node.submit(1)                      # the other worker
    out = node.submit(2)                # queued: nobody idle
    assert ("send", DRIVER, "LeaseEnd") in summary(out)
    assert node.s.stats["leases_recalled"] == 1
    assert ("send", DRIVER, "LeaseEnd") not in summary(node.submit(3))   # once
    out = node.send(DRIVER, p.LeaseReturn(node.wid))
    assert ("execute", node.wid, 2) in summary(out)
    assert ("send", node.wid.encode(), "LeaseEnd") in summary(out)   # the worker drops its keeps
    assert node.s.leases.book.by_client == {}


def test_a_leased_worker_dying_mid_task_retries_it_and_tells_the_driver():
    node = leased_node(cpus=2)
    node.send(DRIVER, notice(1, node.wid, max_retries=1))
    out = node.exit(node.wid)
    assert ("send", DRIVER, "LeaseEnd") in summary(out)
    task = node.s.tasks[tid(1)]
    assert task.attempts == 2 and task.worker not in (None, node.wid)   # run again elsewhere
    node.send(DRIVER, p.LeaseReturn(node.wid))
    assert node.s.leases.book.by_client == {}


def test_a_task_named_after_its_leased_worker_died_is_a_crashed_attempt():
    node = leased_node(cpus=2)
    wid = node.wid
    node.exit(wid)
    out = node.send(DRIVER, notice(1, wid, max_retries=0))
    error = error_for(out, rid(1))
    assert isinstance(error, WorkerCrashedError) and "killed by signal 9" in str(error)
    node.send(DRIVER, p.LeaseReturn(wid))
    assert node.s.stats["direct"] == 1 and node.s.leases.book.by_client == {}


def test_a_leased_workers_messages_about_a_task_not_named_yet_wait_for_its_notice():
    node = leased_node(cpus=1)
    client = node.wid.encode()
    assert summary(node.send(client, p.Blocked(tid(1)))) == [("send", DRIVER, "LeaseEnd")]
    assert summary(node.send(client, submit_msg(2, parent=1))) == []   # held, in order
    assert tid(2) not in node.s.tasks
    out = node.send(DRIVER, notice(1, node.wid))   # named: Blocked lends the CPU, 2 runs
    task = node.s.tasks[tid(1)]
    assert task.blocked and tid(2) in task.children
    assert ("spawn", "w2") in summary(out)
    node.send(client, p.Unblocked(tid(1)))
    node.send(DRIVER, report(1))
    node.send(DRIVER, p.LeaseReturn(node.wid))


def test_notices_and_held_messages_in_one_frame_each_end_as_one_by_one():
    """The node hands a client's messages in a row on as one event (ClientMessages):
    a driver's notices come that way, and a leased worker's messages about a task
    not named yet are held in order all the same."""
    node = leased_node(cpus=1)
    client = node.wid.encode()
    out = node.handle(ev.ClientMessages(client, (p.Blocked(tid(1)), submit_msg(2, parent=1))))
    assert summary(out) == [("send", DRIVER, "LeaseEnd")] and tid(2) not in node.s.tasks
    out = node.handle(ev.ClientMessages(DRIVER, (notice(1, node.wid), p.Refs([], []))))
    task = node.s.tasks[tid(1)]
    assert task.blocked and tid(2) in task.children and ("spawn", "w2") in summary(out)
    node.handle(ev.ClientMessages(client, (p.Unblocked(tid(1)),)))
    out = node.handle(ev.ClientMessages(DRIVER, (report(1, [b"42"]), p.LeaseReturn(node.wid))))
    assert summary(out) == [("send", client, "LeaseEnd"), ("execute", node.wid, 2)]
    entry = node.s.objects.get(rid(1))
    assert entry.state == ObjectState.INLINE and entry.payload == b"42"
    assert node.s.leases.book.by_client == {} and node.s.stats["direct"] == 1


def test_a_drivers_cancel_of_its_direct_task_interrupts_the_leased_worker():
    node = leased_node()
    node.send(DRIVER, notice(1, node.wid))
    assert summary(node.cancel(1)) == [("interrupt", node.wid, 1)]
    out = node.send(DRIVER, report(1, [b"x"], status=2))
    assert ("ready", DRIVER, rid(1), "ERROR") in summary(out)
    assert node.s.stats["cancelled"] == 1


def test_a_driver_that_leaves_gives_its_worker_back():
    node = leased_node(cpus=1)
    node.send(DRIVER, p.Goodbye("bye"))
    assert node.s.leases.book.by_client == {} and len(node.s.pool.idle) == 1
    assert node.cpu() == 1


def test_an_ask_while_no_worker_idles_is_granted_when_one_does():
    node = Node(cpus=1)
    node.s.leases.session_dir = SESSION
    node.submit(1)
    assert summary(node.send(DRIVER, p.LeaseAsk(1))) == []
    out = node.done("w1", 1)
    assert ("send", DRIVER, "LeaseGrant") in summary(out)
    assert node.s.leases.asks == {} and node.cpu() == 0


# -- the scheduler with leases under random steps: its books stay whole -------------------

STEPS = st.lists(st.sampled_from(["ask"] * 3 + ["direct", "report"] * 4 + [
    "kill", "return", "submit", "submit", "submit", "finish", "hello", "hello", "block",
    "early"]),
    max_size=60)


@settings(deadline=None, max_examples=200)
@given(STEPS)
def test_random_leases_direct_tasks_and_deaths_keep_the_books_whole(steps):
    node = Node(cpus=2, max_workers=4)
    node.s.leases.session_dir = SESSION
    n, inflight, wid = 0, None, None   # the driver's direct task, and its lease
    for step in steps:                 # (Node runs Scheduler.validate() after each)
        lease = node.s.leases.book.by_client.get(DRIVER)
        if lease is not None:
            wid = lease.wid
        if step == "ask":
            node.send(DRIVER, p.LeaseAsk(1))
        elif step == "direct" and lease is not None and inflight is None:
            n += 1
            node.send(DRIVER, notice(n, lease.wid, max_retries=1))
            inflight = n
        elif step == "report" and inflight is not None and lease is not None:
            node.send(DRIVER, report(inflight))
            inflight = None
        elif step == "kill" and lease is not None and lease.wid in node.s.pool.workers:
            node.exit(lease.wid)
        elif step == "return" and lease is not None and inflight is None:
            node.send(DRIVER, p.LeaseReturn(lease.wid))
        elif step == "early" and inflight is None and lease is not None:
            node.send(lease.wid.encode(), p.Blocked(tid(n + 1)))   # (before its notice)
        elif step == "block" and inflight is not None and lease is not None:
            node.send(lease.wid.encode(), p.Blocked(tid(inflight)))
        elif step == "submit":
            n += 1
            node.submit(n)
        elif step == "finish":
            for w, fake in list(node.workers.items()):
                task = node.s.pool.workers[w].task if w in node.s.pool.workers else None
                if fake.current_id is not None and task is not None and task.spec.task_id == \
                        fake.current_id:
                    node.done(w, num_task(fake.current_id))
        elif step == "hello":
            for w, worker in list(node.s.pool.workers.items()):
                if worker.pid == 0:
                    node.hello(w)
    if inflight is not None and DRIVER in node.s.leases.book.by_client:
        node.send(DRIVER, report(inflight))
    if DRIVER in node.s.leases.book.by_client:
        node.send(DRIVER, p.LeaseReturn(node.s.leases.book.by_client[DRIVER].wid))
    assert node.s.leases.book.by_client == {}
    assert all(w.leased is None for w in node.s.pool.workers.values())


def num_task(task_id: bytes) -> int:
    return int.from_bytes(task_id[1:16], "big")


def test_a_direct_value_holding_refs_to_a_nested_task_keeps_them_whatever_comes_first():
    """A direct task's TaskDone comes through its driver and its nested Submit through
    the leased worker: the node may get the TaskDone first. The ref in the value still
    counts once the nested task is known, so the worker dropping its own ref after the
    lease ends frees nothing; the driver's does, once it has let go of the value."""
    node = leased_node(cpus=2)
    worker_client = node.wid.encode()
    node.send(DRIVER, notice(1, node.wid))
    node.send(DRIVER, report(1, [b"v"], contained=[[rid(2)]]))   # before the Submit of 2
    node.send(worker_client, submit_msg(2, parent=1))
    assert node.s.objects.get(rid(1)).contains == [rid(2)]
    assert node.s.objects.get(rid(2)).contained_in == 1
    node.send(DRIVER, p.LeaseReturn(node.wid))
    node.send(worker_client, p.Refs([], [rid(2)]))                # the worker lets go
    other = node.s.tasks[tid(2)].worker                           # 2 runs on the other worker
    assert other != node.wid
    node.done(other, 2)
    assert node.s.objects.get(rid(2)).ready                       # kept: 1's value holds it
    node.send(DRIVER, p.Refs([rid(2)], [rid(1)]))                 # the driver got 1's value
    assert rid(1) not in node.s.objects.entries and node.s.objects.get(rid(2)) is not None
    node.send(DRIVER, p.Refs([], [rid(2)]))
    assert node.s.objects.entries == {} and node.s.objects.table.awaited == {}
