"""core/logroute.py on its own: output split into LogLines of bounded size,
every line kept in order."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zfabric import ids
from zfabric import protocol as p
from zfabric.core import effects as fx
from zfabric.core.logroute import LogRouter, goes_elsewhere
from zfabric.protocol_checks import MAX_LOG_LINES

ME, PEER = b"\x01" * 16, b"\x02" * 16


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * MAX_LOG_LINES // 2), st.integers(0, 3)),
                min_size=1, max_size=4))
def test_big_output_is_split_into_checked_messages_keeping_every_line(runs):
    stats: dict = {}
    router = LogRouter(ME, lambda node: "tcp://10.0.0.2:7000" if node == PEER else None, stats)
    job = ids.job_id(PEER, b"d" * 8)
    lines = [[f"{r}:{i}" for i in range(n)] for r, (n, _) in enumerate(runs)]
    out = router.output([(job, "f", 9, 1, ls, dropped)
                         for ls, (_, dropped) in zip(lines, runs)])
    assert all(type(e) is fx.PeerSend and e.address == "tcp://10.0.0.2:7000" for e in out)
    for e in out:   # each passes the wire's checks
        assert p.decode(p.encode(e.msg)) == e.msg
    assert [line for e in out for run in e.msg.output for line in run[3]] == sum(lines, [])
    assert sum(run[4] for e in out for run in e.msg.output) == sum(d for _, d in runs)
    assert stats["log_lines"] == sum(len(ls) for ls in lines) + sum(d for _, d in runs)


def test_output_for_a_node_not_alive_is_dropped_and_counted():
    stats: dict = {}
    router = LogRouter(ME, lambda node: None, stats)
    assert router.output([(ids.job_id(PEER, b"d" * 8), "f", 9, 2, ["x", "y"], 1)]) == []
    assert stats == {"log_lines": 0, "log_lines_dropped": 3}


def test_only_a_job_of_another_node_sends_its_lines_elsewhere():
    """(what a node reads a worker's files for at its TaskDone, node/loop.py)"""
    here, there = ids.new_node_id(), ids.new_node_id()
    client = b"c" * (ids.JOB_ID_SIZE - ids.NODE_ID_SIZE)
    assert goes_elsewhere(here, {"job": ids.job_id(there, client)})
    assert not goes_elsewhere(here, {"job": ids.job_id(here, client)})
    assert not goes_elsewhere(here, {})          # no job: lines stay in the log files
    assert not goes_elsewhere(here, None)
