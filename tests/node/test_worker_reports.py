"""node/worker.py: a worker with prefetched tasks waiting sends its reports
(TaskDone) in runs, one frame for several, and never lets another message
overtake a held report. A fake node (tests/harness/fake_node.py) sends the
Executes and reads every frame the worker sends.
"""
from __future__ import annotations

import dataclasses
import os
import time

import cloudpickle
import pytest

from zfabric import ids, serialization
from zfabric import protocol as p
from zfabric.config import Config
from zfabric.protocol import TaskStatus
from zfabric.node import client as client_mod
from zfabric.node.worker import Worker
from zfabric.ref import DepMarker

from tests.harness.fake_node import messages_of


pytestmark = pytest.mark.timeout(60)


def _task(fn) -> p.Execute:
    blob = cloudpickle.dumps(fn)
    return p.Execute(ids.new_task_id(), "f", ids.function_id(blob), 1, 0, [], [], blob,
                     serialization.dumps(([], {})), b"", [])


def _frames(node, count: int) -> list[list]:
    """The next `count` frames the client sent, each as the list of its messages."""
    out = []
    while len(out) < count:
        msg = node.received.get(timeout=10)
        out.append(messages_of(msg))
    return out


def _worker(nodes, clients, tmp_path, name: bytes, **config):
    """A fake node and a worker on it. Unless `config` says otherwise, the node's
    Config lets reports be held by count alone: no time limit, and no flush by the
    client's thread while a test runs (each has its own test below)."""
    config = {"prefetch_queue_seconds": 3600.0, "ref_flush_interval": 3600.0, **config}
    welcome = p.Welcome(ids.new_node_id(), str(tmp_path), str(tmp_path), "tcp://127.0.0.1:1",
                        dataclasses.replace(Config(), **config).to_json(), os.getpid())
    node = nodes(welcome=welcome)
    client = clients(node, role="worker", identity=name, worker_id=name.decode())
    node.received.get(timeout=10)                     # its Hello
    return node, client, Worker(client, str(tmp_path / "cancel"))


def test_reports_of_a_run_of_prefetched_tasks_go_in_one_frame(nodes, clients, tmp_path):
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-run")
    tasks = [_task(lambda: 7) for _ in range(6)]
    node.push(p.encode(p.Batch([p.encode(t) for t in tasks])))   # all six here at once
    for _ in tasks:
        worker.serve_one()
    frames = _frames(node, 1)
    # held while more waited; the sixth, with none left, sent them all
    assert [[m.task_id for m in f] for f in frames] == [[t.task_id for t in tasks]]
    assert all(m.status == TaskStatus.OK and serialization.deserialize(m.payloads[0]) == 7
               for m in frames[0])
    assert not client._held and node.received.empty()   # nothing held back


def _link(fn, before: p.Execute) -> p.Execute:
    """A pipelined link: its argument is what `before` returns, PENDING."""
    blob = cloudpickle.dumps(fn)
    dep = ids.object_id(before.task_id, 0)
    return p.Execute(ids.new_task_id(), "f", ids.function_id(blob), 1, 0, [dep],
                     [int(p.ObjectState.PENDING)], blob,
                     serialization.dumps(([DepMarker(0)], {})), b"", [b""])


def test_a_chain_sends_its_reports_at_half_the_depth(nodes, clients, tmp_path):
    """A chain's links, pipelined here, are reported every half queue like any
    run (the node sends more links while the rest run); each link got the
    value the one before made here."""
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-chain")
    client.config = dataclasses.replace(client.config, prefetch_max_depth=8)
    chain = [_task(lambda: 0)]
    for _ in range(9):
        chain.append(_link(lambda x: x + 1, chain[-1]))
    node.push(p.encode(p.Batch([p.encode(t) for t in chain])))
    for _ in chain:
        worker.serve_one()
    frames = _frames(node, 3)
    assert [len(f) for f in frames] == [4, 4, 2]
    assert [serialization.deserialize(m.payloads[0]) for f in frames for m in f] == list(range(10))


def test_a_link_whose_argument_failed_here_is_given_back(nodes, clients, tmp_path):
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-broken")
    first = _task(lambda: 1 / 0)
    second = _link(lambda x: x, first)
    node.push(p.encode(p.Batch([p.encode(first), p.encode(second)])))
    worker.serve_one()
    worker.serve_one()                               # not run: Revoked, after the report
    (frame,) = _frames(node, 1)
    assert [type(m) for m in frame] == [p.TaskDone, p.Revoked]
    assert frame[0].status == TaskStatus.ERROR and frame[1].task_id == second.task_id


def test_a_run_sends_its_reports_every_half_queue(nodes, clients, tmp_path):
    """A worker holds at most half of prefetch_max_depth reports: the node hears of
    the tasks run, and sends more, while the other half of a full queue runs."""
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-deep")
    client.config = dataclasses.replace(client.config, prefetch_max_depth=4)
    tasks = [_task(lambda: None) for _ in range(9)]
    node.push(p.encode(p.Batch([p.encode(t) for t in tasks])))
    for _ in tasks:
        worker.serve_one()
    frames = _frames(node, 5)
    assert [len(f) for f in frames] == [2, 2, 2, 2, 1]
    assert [m.task_id for f in frames for m in f] == [t.task_id for t in tasks]
    assert node.received.empty()


def test_a_lone_task_is_reported_at_once(nodes, clients, tmp_path):
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-one")
    task = _task(lambda: 1)
    node.push(p.encode(task))
    worker.serve_one()                               # nothing else waits: no holding
    assert [[m.task_id for m in f] for f in _frames(node, 1)] == [[task.task_id]]


def test_a_held_report_goes_before_what_the_next_task_sends(nodes, clients, tmp_path):
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-order")
    first = _task(lambda: 1)

    def puts():   # the next task sends a Put (a nested task would send a Submit)
        client_mod.current().put(42)
        return 2

    second = _task(puts)
    node.push(p.encode(p.Batch([p.encode(first), p.encode(second)])))
    before = client_mod.current_or_none()            # (a test module's embedded node's)
    client_mod.set_current(client)                   # as a worker process's main() does
    try:
        worker.serve_one()                           # first: held (second waits)
        assert node.received.empty()
        worker.serve_one()
    finally:
        client_mod.set_current(before)
    sent = [m for f in _frames(node, 2) for m in f]  # the Put goes in the held report's frame
    kinds = [type(m).__name__ for m in sent]
    assert kinds[:3] == ["TaskDone", "Put", "TaskDone"], kinds   # the held report first
    assert [m.task_id for m in sent if type(m) is p.TaskDone] == [first.task_id, second.task_id]
    assert set(kinds[3:]) <= {"Refs"}                # (the put's ref, dropped as it returned)


def test_a_report_held_past_prefetch_queue_seconds_goes(nodes, clients, tmp_path):
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-slow",
                                   prefetch_queue_seconds=0.01)
    tasks = [_task(lambda: 1), _task(lambda: time.sleep(0.05)), _task(lambda: 3)]
    node.push(p.encode(p.Batch([p.encode(t) for t in tasks])))
    for _ in tasks:
        worker.serve_one()
    # the first was held; the second ended past the limit and sent both
    assert [[m.task_id for m in f] for f in _frames(node, 2)] == [
        [tasks[0].task_id, tasks[1].task_id], [tasks[2].task_id]]


def test_the_client_thread_sends_a_held_report_though_the_next_task_never_runs(
        nodes, clients, tmp_path):
    node, client, worker = _worker(nodes, clients, tmp_path, b"w-stuck",
                                   ref_flush_interval=0.05)
    tasks = [_task(lambda: 1), _task(lambda: 2)]
    node.push(p.encode(p.Batch([p.encode(t) for t in tasks])))
    worker.serve_one()                               # held: the second waits, not run
    assert [[m.task_id for m in f] for f in _frames(node, 1)] == [[tasks[0].task_id]]
