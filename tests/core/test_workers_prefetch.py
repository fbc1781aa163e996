"""Prefetch (core/workers.py): a busy worker gets its next short task before it
finishes the current one.

Uses the `Node` harness of tests/harness/scheduler.py (a bare Scheduler,
validate() after every step).
"""
from __future__ import annotations

from zfabric import protocol as p
from zfabric.structs import replace
from zfabric.core.tasks import TaskState
from zfabric.core.workers import TINY_RUN_SILENCE
from zfabric.exceptions import TaskCancelledError

from tests.harness.scheduler import DRIVER, INLINE, Node, submit_msg, error_for, num, only, rid, summary, tid


def quick_done(node: Node, wid: str, n: int, took: float = 0.0001) -> list:
    return node.done(wid, n, payloads=[b"val"], states=[INLINE], sizes=[3], took=took)


def prefetching_node() -> Node:
    node = Node(cpus=1)
    node.s.pool.prefetch_max_task_seconds = 0.005
    for n in (101, 102, 103):         # teaches the node that FN is quick
        node.submit(n)
        quick_done(node, "w1", n)
    return node


def test_no_prefetch_until_the_function_is_known_to_be_quick():
    node = Node(cpus=1)
    node.s.pool.prefetch_max_task_seconds = 0.005
    node.submit(1)
    assert summary(node.submit(2)) == []            # unknown duration: wait
    quick_done(node, "w1", 1)
    assert summary(node.submit(3)) == []            # one quick run is not enough
    quick_done(node, "w1", 2)
    quick_done(node, "w1", 3)
    node.submit(4)
    assert summary(node.submit(5)) == [("execute", "w1", 5)]   # three are


def test_one_slow_run_stops_prefetching_behind_that_function():
    node = prefetching_node()
    node.submit(1)
    node.submit(2)                                  # prefetched
    quick_done(node, "w1", 1, took=2.0)             # 1 was slow after all
    assert summary(node.submit(3)) == []            # not queued behind 2 any more


def test_quick_tasks_are_prefetched_and_inherit_the_resources():
    node = prefetching_node()
    node.submit(2)
    assert summary(node.submit(3)) == [("execute", "w1", 3)]   # sent while 2 runs
    assert node.s.tasks[tid(3)].state == TaskState.ASSIGNED
    assert node.cpu() == 0.0                          # 3 holds nothing yet
    out = quick_done(node, "w1", 2)
    assert ("execute", "w1", 3) not in summary(out)  # already there: no second Execute
    assert node.s.tasks[tid(3)].state == TaskState.RUNNING and node.cpu() == 0.0
    quick_done(node, "w1", 3)
    assert node.cpu() == 1.0 and not node.s.tasks


def test_blocked_worker_gives_back_its_prefetched_task():
    node = prefetching_node()
    node.submit(2)
    node.submit(3)                                    # prefetched behind 2
    out = node.send(b"w1", p.Blocked(tid(2)))
    assert [m.task_id for m in only(out, p.Revoke)] == [tid(3)]
    assert ("spawn", "w2") in summary(node.send(b"w1", p.Revoked(tid(3))))
    assert node.s.tasks[tid(3)].state == TaskState.QUEUED
    out = node.hello("w2")
    assert ("execute", "w2", 3) in summary(out)


def test_revoked_after_the_node_started_it_is_queued_again():
    node = prefetching_node()
    node.submit(2)
    node.submit(3)
    node.send(b"w1", p.Blocked(tid(2)))               # Revoke(3) goes out...
    node.send(b"w1", p.Unblocked(tid(2)))
    quick_done(node, "w1", 2)                         # ...the node starts 3 on w1,
    assert node.s.tasks[tid(3)].state == TaskState.RUNNING
    out = node.send(b"w1", p.Revoked(tid(3)))         # ...but w1 had dropped it
    assert ("execute", "w1", 3) in summary(out)       # so it is dispatched again
    assert node.s.tasks[tid(3)].attempts == 1


def test_cancel_of_a_prefetched_task_revokes_it():
    node = prefetching_node()
    node.submit(2)
    node.submit(3)
    out = node.cancel(3)
    assert [m.task_id for m in only(out, p.Revoke)] == [tid(3)]
    out = node.send(b"w1", p.Revoked(tid(3)))
    assert isinstance(error_for(out, rid(3)), TaskCancelledError)


def test_cancelled_prefetched_task_that_starts_is_interrupted():
    node = prefetching_node()
    node.submit(2)
    node.submit(3)
    node.cancel(3)
    out = quick_done(node, "w1", 2)                   # w1 moves on to 3 before the Revoke
    assert ("interrupt", "w1", 3) in summary(out)


def test_worker_death_requeues_prefetched_tasks_without_charging_them():
    node = prefetching_node()
    node.submit(2)
    node.submit(3)
    out = node.exit("w1", -9)
    assert ("spawn", "w2") in summary(out)
    node.hello("w2")
    task3 = node.s.tasks[tid(3)]
    assert task3.attempts <= 1 and task3.state in (TaskState.QUEUED, TaskState.ASSIGNED,
                                                   TaskState.RUNNING)
    assert num(task3.spec.task_id) == 3


def deep_node(queue_seconds: float = 0.002, max_depth: int = 16) -> Node:
    node = prefetching_node()
    node.s.pool.prefetch_queue_seconds = queue_seconds
    node.s.pool.prefetch_max_depth = max_depth
    return node


def test_tiny_tasks_are_prefetched_up_to_the_depth_and_run_in_order():
    node = deep_node(max_depth=4)
    node.submit(1)                                   # runs on w1
    sent = [summary(node.submit(n)) for n in range(2, 8)]
    assert sent[:4] == [[("execute", "w1", n)] for n in (2, 3, 4, 5)]
    assert sent[4:] == [[], []]                      # 6 and 7 wait at the node
    assert [t.spec.task_id for t in node.s.pool.workers["w1"].queue] == [tid(n) for n in (2, 3, 4, 5)]
    for n in range(1, 7):                            # as each ends, the next runs
        quick_done(node, "w1", n)
        assert node.s.tasks[tid(n + 1)].state == TaskState.RUNNING
    quick_done(node, "w1", 7)
    assert not node.s.tasks and node.cpu() == 1.0
    assert node.s.stats["prefetched"] == 6


def test_the_queue_holds_at_most_its_seconds_of_work():
    node = deep_node(queue_seconds=0.00025)          # FN's slowest run: 0.0001 s
    node.submit(1)
    sent = [summary(node.submit(n)) for n in range(2, 7)]
    # one task always; a second (0.0001 s queued) and a third (0.0002 s) fit; not a fourth
    assert sent == [[("execute", "w1", 2)], [("execute", "w1", 3)], [("execute", "w1", 4)], [], []]


def test_nothing_queues_behind_a_prefetched_task_of_a_function_not_known_quick():
    node = deep_node()
    node.submit(1)
    node.send(DRIVER, replace(submit_msg(2), fn_id=b"G" * 16))  # unknown: may be slow
    assert summary(node.submit(3)) == []             # would wait behind G's task
    assert [t.spec.task_id for t in node.s.pool.workers["w1"].queue] == [tid(2)]


# -- tiny functions (what spillover keeps here: core/spill.py Spillover.stays_here) -----

def test_a_function_is_tiny_by_its_mean_run_and_a_worker_runs_tiny_only_for_a_moment():
    node = Node(cpus=1)
    pool, below = node.s.pool, 2e-4
    fn = submit_msg(1).fn_id
    node.submit(1)
    quick_done(node, "w1", 1, took=5e-5)
    node.submit(2)
    quick_done(node, "w1", 2, took=5e-5)
    assert not pool.tiny(fn, below)                 # two runs are not enough
    node.submit(3)
    quick_done(node, "w1", 3, took=5e-5)
    assert pool.tiny(fn, below)
    node.submit(4)                                  # runs on w1 from now
    demand = node.s.tasks[tid(4)].demand
    assert pool.runs_tiny(demand, below, node.now)
    assert not pool.runs_tiny({**demand, "GPU": 1}, below, node.now)   # another demand
    assert not pool.runs_tiny(demand, below, node.now + TINY_RUN_SILENCE)   # gone on too long
    pool.workers["w1"].leased = {}                  # a leased worker takes no queued task
    assert not pool.runs_tiny(demand, below, node.now)
    pool.workers["w1"].leased = None
    quick_done(node, "w1", 4, took=0.01)            # one slow run moves the mean ...
    assert not pool.tiny(fn, below)                 # (its mean: 5e-5 + 0.01 / 16)
    for n in range(5, 45):                          # ... and quick runs bring it back
        node.submit(n)
        quick_done(node, "w1", n, took=5e-5)
    assert pool.tiny(fn, below)
