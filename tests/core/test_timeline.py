"""core/timeline.py: finished tasks on the timeline, beside the status query
(tests/harness/scheduler.py).
"""
from __future__ import annotations

from tests.harness.scheduler import Node


# -- queries and control ------------------------------------------------------------------------

def test_status_and_timeline():
    node = Node(cpus=2, resources={"gpu": 1})
    node.submit(1)
    status = node.s.status()
    assert status["Resources"] == {"CPU": 2.0, "gpu": 1.0}
    assert status["available"] == {"CPU": 1.0, "gpu": 1.0} and status["tasks_running"] == 1
    node.now = 3.0
    node.done("w2", 1)
    [event] = node.s.timeline.trace_events()
    assert event["name"] == "f" and event["tid"] == "w2" and event["args"]["status"] == "ok"
    assert node.s.timeline.since(0) == list(node.s.timeline.entries) and node.s.timeline.since(1) == []
    status = node.s.status()
    assert status["stats"]["finished"] == 1 and status["available"] == {"CPU": 2.0, "gpu": 1.0}
