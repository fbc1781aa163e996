"""Pipelining (core/feed.py `Feed.pipeline`): a task whose missing arguments
are all being made on one busy worker is prefetched there, behind the tasks
making them; the worker hands it their values (their Execute states say
PENDING), or gives it back if one of them failed.

Uses the `Node` harness of tests/harness/scheduler.py (a bare Scheduler,
validate() after every step; FakeWorkers that give back what they cannot run).
"""
from __future__ import annotations

from zfabric import protocol as p
from zfabric.core.tasks import TaskState
from zfabric.protocol import ObjectState

from tests.harness.scheduler import (DRIVER, INLINE, STORE, Node, error_for, only, rid, submit_msg,
                                     summary, tid, user_error)

PENDING = int(ObjectState.PENDING)


def quick_done(node: Node, wid: str, n: int) -> list:
    return node.done(wid, n, payloads=[b"val-%d" % n], states=[INLINE], sizes=[5], took=0.0001)


def pipelining_node(cpus: float = 1, depth: int = 4) -> Node:
    node = Node(cpus=cpus)
    pool = node.s.pool
    pool.prefetch_max_task_seconds = 0.005
    pool.prefetch_queue_seconds, pool.prefetch_max_depth = 0.002, depth
    for n in (101, 102, 103):         # teaches the node that FN is quick
        node.submit(n)
        quick_done(node, on(node, n), n)
    return node


def on(node: Node, n: int) -> str:
    """The worker task `n` runs (or waits) on."""
    return node.s.tasks[tid(n)].worker


def executes(effects: list) -> list:
    return [e for e in summary(effects) if e[0] == "execute"]


def execute_of(effects: list, n: int) -> p.Execute:
    (ex,) = [m for m in only(effects, p.Execute) if m.task_id == tid(n)]
    return ex


def test_a_chain_is_sent_to_the_worker_making_its_first_link():
    node = pipelining_node()
    node.submit(1)
    out = node.submit(2, deps=[rid(1)])
    assert summary(out) == [("execute", "w1", 2)]          # before 1 ended
    assert execute_of(out, 2).dep_states == [PENDING]
    assert execute_of(node.submit(3, deps=[rid(2)]), 3).dep_states == [PENDING]
    assert node.s.stats["pipelined"] == 2
    out = quick_done(node, "w1", 1)      # the worker ran 2 on 1's value itself
    assert ("execute", "w1", 2) not in summary(out)
    assert node.s.tasks[tid(2)].state == TaskState.RUNNING
    assert not node.s.tasks[tid(2)].missing
    quick_done(node, "w1", 2)
    out = quick_done(node, "w1", 3)
    assert ("ready", DRIVER, rid(3), "INLINE") in summary(out)
    assert not node.s.tasks and node.cpu() == 1.0


def test_a_chain_longer_than_the_queue_keeps_streaming_to_its_worker():
    node = pipelining_node(depth=2)
    node.submit(1)
    node.submit(2, deps=[rid(1)])
    node.submit(3, deps=[rid(2)])
    assert summary(node.submit(4, deps=[rid(3)])) == []     # the worker's queue is full
    node.submit(5, deps=[rid(4)])
    out = quick_done(node, "w1", 1)      # room again: 4 follows 3, before 3 ends
    assert executes(out) == [("execute", "w1", 4)]
    assert execute_of(out, 4).dep_states == [PENDING]
    assert executes(quick_done(node, "w1", 2)) == [("execute", "w1", 5)]
    for n in (3, 4):
        quick_done(node, "w1", n)
    assert ("ready", DRIVER, rid(5), "INLINE") in summary(quick_done(node, "w1", 5))


def test_a_failed_link_fails_the_tasks_pipelined_behind_it():
    node = pipelining_node()
    node.submit(1, max_retries=0)
    node.submit(2, deps=[rid(1)])
    node.submit(3, deps=[rid(2)])
    record = user_error("link 1 broke")
    out = node.fail("w1", 1, record)     # the worker gives 2 and 3 back, unstarted
    assert node.workers["w1"].current is None
    err = error_for(out, rid(3))         # the error of 1, through both arguments
    assert isinstance(err, ValueError) and "link 1 broke" in str(err)
    assert str(err).count("an input of f() could not be computed") == 2
    assert not node.s.tasks and node.cpu() == 1.0


def test_a_link_retried_elsewhere_is_waited_for():
    node = pipelining_node(cpus=2)
    node.submit(1, retry_exceptions=True)
    node.submit(2, deps=[rid(1)])
    assert node.s.tasks[tid(2)].state == TaskState.ASSIGNED
    out = node.fail(on(node, 1), 1, user_error("flaky"), retryable=True)
    two = node.s.tasks[tid(2)]
    assert two.state == TaskState.WAITING and two.missing == {rid(1)}
    assert node.s.tasks[tid(1)].state == TaskState.RUNNING
    quick_done(node, on(node, 1), 1)
    assert node.s.tasks[tid(2)].state == TaskState.RUNNING
    assert summary(out).count(("execute", "w1", 2)) == 0


def test_a_fan_out_is_not_pipelined_while_a_worker_is_idle():
    node = pipelining_node(cpus=2)
    node.submit(1)
    w = on(node, 1)
    assert summary(node.submit(2, deps=[rid(1)])) == [("execute", w, 2)]   # one waits
    node.submit(3, deps=[rid(1)])
    assert node.s.tasks[tid(3)].state == TaskState.WAITING                  # two: no
    out = quick_done(node, w, 1)
    other = ({"w1", "w2"} - {w}).pop()
    assert ("execute", other, 3) in summary(out)     # they run side by side


def test_a_task_with_arguments_from_two_workers_waits():
    node = pipelining_node(cpus=2)
    node.submit(1)
    node.submit(2)
    assert {on(node, 1), on(node, 2)} == {"w1", "w2"}
    assert summary(node.submit(3, deps=[rid(1), rid(2)])) == []
    assert node.s.tasks[tid(3)].state == TaskState.WAITING


def test_a_dying_worker_takes_no_pipelined_task_with_it():
    node = pipelining_node()
    node.submit(1, max_retries=2)
    node.submit(2, deps=[rid(1)])
    node.exit("w1")
    assert node.s.tasks[tid(2)].state == TaskState.WAITING   # 1 is made again first
    out = node.hello(node.s.tasks[tid(1)].worker or "w2")
    one = node.s.tasks[tid(1)]
    assert one.state == TaskState.RUNNING, summary(out)
    quick_done(node, one.worker, 1)
    assert node.s.tasks[tid(2)].state == TaskState.RUNNING


def test_the_driver_sees_no_difference():
    """A pipelined chain's last value reaches the driver once, like any task's."""
    node = pipelining_node()
    node.submit(1)
    node.send(DRIVER, submit_msg(2, deps=[rid(1)]))
    node.send(DRIVER, p.Refs([], [rid(1)]))      # the driver keeps only the last ref
    quick_done(node, "w1", 1)
    out = quick_done(node, "w1", 2)
    assert [m.oid for m in only(out, p.ObjectReady)] == [rid(2)]


def test_no_pipelining_behind_a_function_that_returns_stored_values():
    """The worker hands on inline values only (the node may refuse a stored one
    for want of room): behind a function whose last value went to the store,
    the next link waits for the node."""
    node = pipelining_node()
    node.submit(1)
    node.done("w1", 1, payloads=[b""], states=[STORE], sizes=[10], took=0.0001)
    node.submit(2)
    assert summary(node.submit(3, deps=[rid(2)])) == []
    assert node.s.tasks[tid(3)].state == TaskState.WAITING
    out = quick_done(node, "w1", 2)      # inline again: the next chain pipelines
    assert ("execute", "w1", 3) in summary(out)
    assert summary(node.submit(4, deps=[rid(3)])) == [("execute", "w1", 4)]
