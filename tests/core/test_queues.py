"""core/queues.py: the ready queues, one per resource shape; dispatch takes the
deepest task first, then the oldest, across shapes (tests/harness/scheduler.py).
"""
from __future__ import annotations

from tests.harness.scheduler import DRIVER, Node, rid, summary


# -- resources and priority --------------------------------------------------------------------

def test_deeper_task_first_then_oldest():
    node = Node(cpus=1)
    node.submit(1)
    node.submit(2, depth=0)
    node.submit(3, depth=2)
    node.submit(4, depth=1)
    node.submit(5, depth=2)
    order = []
    for n in (1, 3, 5, 4):
        order += [e[2] for e in summary(node.done("w1", n)) if e[0] == "execute"]
    assert order == [3, 5, 4, 2]


def test_priority_across_resource_shapes():
    node = Node(cpus=1, num_workers=1)
    node.submit(1)
    node.submit(2, cpu=0.5, depth=0)
    node.submit(3, cpu=1, depth=1)
    assert summary(node.done("w1", 1)) == [("ready", DRIVER, rid(1), "INLINE"),
                                           ("execute", "w1", 3)]


def test_fractional_cpus_share_one_cpu():
    node = Node(cpus=1, num_workers=5)
    out = []
    for n in range(1, 6):
        out += node.submit(n, cpu=0.25)
    assert [e[2] for e in summary(out)] == [1, 2, 3, 4]
    assert node.cpu() == 0 and node.s.queues.count == 1


def test_a_blocked_shape_does_not_hold_back_another():
    node = Node(cpus=2, resources={"gpu": 1})
    node.submit(1, resources={"gpu": 1})             # w2
    assert summary(node.submit(2, resources={"gpu": 1})) == []
    assert summary(node.submit(3)) == [("execute", "w1", 3)]
    assert node.s.pool.available["gpu"] == 0


def test_infeasible_task_waits_and_status_reports_it():
    node = Node(cpus=1)
    assert summary(node.submit(1, resources={"tpu": 1})) == []
    status = node.s.status()
    assert status["tasks_queued"] == 1
    assert status["pending_demand"] == [{"CPU": 1.0, "tpu": 1.0}]
    assert summary(node.submit(2)) == [("execute", "w1", 2)]


def test_zero_cpu_task_needs_no_cpu():
    node = Node(cpus=1, num_workers=2)
    node.submit(1)
    assert summary(node.submit(2, cpu=0)) == [("execute", "w1", 2)]
