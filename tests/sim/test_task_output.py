"""Task output across nodes (core/logroute.py in a FabricSim): lines a peer's
workers print reach the listener of the job's driver; a driver that left, or
a job of no driver, gets nothing, and what is dropped is counted; a node
gossip has not told of yet is reached by the address its Spill came with."""
from __future__ import annotations

import cloudpickle

from zfabric import ids
from zfabric import protocol as p
from zfabric.core import events as ev
from zfabric.testing.sim import FabricSim

DRIVER, LISTENER = b"d" + b"\x01" * 7, b"l" + b"\x02" * 7


def two_nodes_with_a_listening_driver():
    sim = FabricSim([{"CPU": 1}, {"CPU": 1}])
    assert sim.run_until(sim.converged, 5)
    job = ids.job_id(sim.nodes[0].node_id, DRIVER)
    sim.send(0, DRIVER, p.Hello("driver", 4242, None))
    sim.send(0, LISTENER, p.Listen(job, True))
    assert sim.nodes[0].received(LISTENER, p.LogLines) == [p.LogLines(sim.nodes[0].node_id,
                                                                      job, [])]
    return sim, job


def output(sim, i: int, job: bytes, *lines: str, pid: int = 77):
    sim.handle(i, ev.WorkerOutput(((job, "work", pid, 1, list(lines), 0),)))


def test_lines_printed_on_a_peer_reach_the_jobs_listener_in_order():
    sim, job = two_nodes_with_a_listening_driver()
    output(sim, 1, job, "one", "two")
    output(sim, 1, job, "three")
    output(sim, 0, job, "local")
    sim.run(0.1)
    got = sim.nodes[0].received(LISTENER, p.LogLines)[1:]
    remote = [(m.sender, run) for m in got if m.sender == sim.nodes[1].node_id
              for run in m.output]
    assert [line for _, run in remote for line in run[3]] == ["one", "two", "three"]
    assert all(run[:3] == ["work", 77, 1] for _, run in remote)
    assert any(m.sender == sim.nodes[0].node_id and m.output[0][3] == ["local"] for m in got)
    assert sim.nodes[1].fabric.stats["log_lines"] == 3


def test_after_the_listener_leaves_or_the_driver_goes_lines_are_dropped_and_counted():
    sim, job = two_nodes_with_a_listening_driver()
    sim.send(0, LISTENER, p.Listen(job, False))
    output(sim, 1, job, "nobody hears this")
    sim.run(0.1)
    assert len(sim.nodes[0].received(LISTENER, p.LogLines)) == 2   # the two answers only
    assert sim.nodes[0].fabric.stats["log_lines_dropped"] == 1
    sim.send(0, LISTENER, p.Listen(job, True))
    sim.client_gone(0, DRIVER)
    output(sim, 0, job, "nor this")
    assert sim.nodes[0].fabric.stats["log_lines_dropped"] == 2


def test_a_listen_for_a_job_of_no_driver_here_is_refused_as_nonsense():
    sim, job = two_nodes_with_a_listening_driver()
    before = sim.nodes[1].fabric.stats["rejected_nonsense"]
    sim.send(1, LISTENER, p.Listen(job, True))                         # another node's job
    sim.send(0, LISTENER, p.Listen(ids.job_id(sim.nodes[0].node_id, b"d" * 8), True))
    assert sim.nodes[1].fabric.stats["rejected_nonsense"] == before + 1
    assert sim.nodes[1].received(LISTENER) == []
    assert len(sim.nodes[0].received(LISTENER)) == 1


def test_lines_for_a_node_known_only_by_the_task_it_spilled_here_reach_it():
    """A node that just joined spills a task to a peer gossip has not told about
    it yet: the peer answers its output to the address the Spill came with."""
    sim = FabricSim([{"CPU": 1}, {"CPU": 1}])
    first, second = sim.nodes
    assert first.node_id not in second.fabric.membership.members   # (no gossip yet)
    job = ids.job_id(first.node_id, DRIVER)
    sim.send(0, DRIVER, p.Hello("driver", 4242, None))
    sim.send(0, LISTENER, p.Listen(job, True))
    blob = cloudpickle.dumps(lambda: None)
    sim.handle(1, ev.PeerMessage(first.node_id, p.Spill(
        first.node_id, first.address, ids.new_task_id(), "work", ids.function_id(blob), 1,
        {"CPU": 1.0}, 0, False, 0, False, [], [], [], [], blob, b"", b"", [], {"job": job})))
    output(sim, 1, job, "printed before gossip told of the job's node")
    assert second.fabric.stats["log_lines_dropped"] == 0
    sim.run(0.1)
    lines = [line for m in first.received(LISTENER, p.LogLines) for run in m.output
             for line in run[3]]
    assert lines == ["printed before gossip told of the job's node"]
