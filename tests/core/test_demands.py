"""Pending demands for `status`: a node's queued tasks by resource shape
(core/queues.py `demands`, kept as counts per shape and checked against the
task table by `validate` after every step), summed over the cluster's nodes
(core/views.py `pending_demands`), and a peer's gossiped figures read without
trusting them.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.scheduler import Node
from zfabric.core import views


def test_queued_tasks_are_counted_by_shape_as_they_queue_start_and_end():
    node = Node(cpus=1)
    for n in range(1, 5):
        node.submit(n)                                   # 1 runs, 3 wait
    node.submit(5, cpu=0.5)
    node.submit(6, cpu=0.5)
    assert node.s.status()["demands"] == [[{"CPU": 1.0}, 3], [{"CPU": 0.5}, 2]]
    node.cancel(3)                                       # a queued one ends
    node.done("w1", 1)                                   # the next one starts
    assert node.s.status()["demands"] == [[{"CPU": 0.5}, 2], [{"CPU": 1.0}, 1]]


SHAPES = [{"CPU": 1.0}, {"CPU": 4.0}, {"CPU": 0.5, "gpu": 1.0}, {}]
DEMANDS = st.lists(st.lists(st.tuples(st.sampled_from(range(len(SHAPES))), st.integers(1, 50)),
                            max_size=4, unique_by=lambda x: x[0]), max_size=5)


@settings(max_examples=200, deadline=None)
@given(DEMANDS)
def test_the_cluster_sum_has_each_shape_once_with_every_node_s_tasks(per_node):
    records = [[{"resources": dict(SHAPES[i]), "tasks": n} for i, n in node]
               for node in per_node]
    summed = views.pending_demands(records)
    for i, shape in enumerate(SHAPES):
        want = sum(n for node in per_node for j, n in node if j == i)
        got = [d["tasks"] for d in summed if d["resources"] == shape]
        assert got == ([want] if want else [])
    counts = [d["tasks"] for d in summed]
    assert counts == sorted(counts, reverse=True)


def test_a_peer_s_malformed_demands_are_left_out():
    gossiped = [[{"CPU": 2.0}, 4], [{"CPU": "x", "gpu": 1}, 2], ["CPU", 3], [{"CPU": 1}, -1],
                [{"CPU": 1}, True], [{"CPU": 1}], 7]
    assert views._demands(gossiped) == [{"resources": {"CPU": 2.0}, "tasks": 4},
                                        {"resources": {"gpu": 1}, "tasks": 2}]
    assert views._demands("nonsense") == [] and views._demands(None) == []
