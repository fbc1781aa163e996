"""core/timeline.py: finished tasks on the timeline, beside the status query
(tests/harness/scheduler.py).
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.scheduler import Node
from tests.harness.trace import check_trace, process_names, thread_names
from zfabric.core.timeline import (FETCH_SPAN, STORE_SPAN, pack_batch, trace_events,
                                   unpack_batch)


# -- queries and control ------------------------------------------------------------------------

def test_status_and_timeline():
    node = Node(cpus=2, resources={"gpu": 1})
    node.submit(1)
    status = node.s.status()
    assert status["Resources"] == {"CPU": 2.0, "gpu": 1.0}
    assert status["available"] == {"CPU": 1.0, "gpu": 1.0} and status["tasks_running"] == 1
    node.now = 3.0
    node.done("w2", 1)
    by_phase = check_trace(node.s.timeline.trace_events())
    [event] = [e for e in by_phase["X"] if e["cat"] == "task"]
    assert event["name"] == "f" and event["args"]["worker"] == "w2"
    assert event["args"]["status"] == "ok"
    assert thread_names(by_phase["M"])[(event["pid"], event["tid"])] == "worker w2 (pid 1000)"
    assert node.s.timeline.since(0) == list(node.s.timeline.entries) and node.s.timeline.since(1) == []
    status = node.s.status()
    assert status["stats"]["finished"] == 1 and status["available"] == {"CPU": 2.0, "gpu": 1.0}


def test_a_run_s_spans_come_from_its_taskdone():
    node = Node(cpus=1)
    node.submit(1)
    msg = node.worker("w1").done(node.worker("w1").current_id, payloads=[b"v"], start=10.0,
                                 fetched=10.25, end=11.0, stored=11.5)
    node.report("w1", 1, msg)
    spans = {e["name"]: (e["ts"], e["dur"]) for e in check_trace(node.s.timeline.trace_events())["X"]}
    assert spans == {"f": (10_000_000, 1_500_000), FETCH_SPAN: (10_000_000, 250_000),
                     STORE_SPAN: (11_000_000, 500_000)}


NODES = [bytes([65 + i]) * 16 for i in range(3)]
GAP = st.floats(0, 100, allow_nan=False)


@st.composite
def node_runs(draw):
    """One node's timeline entries as its workers report them: each worker runs one
    task at a time; a worker's `fetched` may be anywhere (a peer's figures are
    not to be trusted): the trace keeps start <= fetched <= end <= stored."""
    runs = []
    for worker, pid in draw(st.lists(st.sampled_from([("w1", 0), ("w2", 4242), ("w3", 4243)]),
                                     unique=True, max_size=3)):
        t = draw(st.floats(0, 1e4, allow_nan=False))
        for _ in range(draw(st.integers(0, 4))):
            start = t + draw(GAP)
            end = start + draw(GAP)
            stored = end + draw(GAP)
            fetched = draw(st.floats(start - 10, stored + 10, allow_nan=False))
            task_id = draw(st.binary(min_size=16, max_size=16))
            runs.append((draw(st.sampled_from(["f", "g"])), task_id, worker, start, end,
                         draw(st.integers(0, 2)), fetched, stored, pid))
            t = max(stored, fetched)
    return runs


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(NODES), node_runs(), max_size=3))
def test_any_entries_make_a_valid_trace_with_one_task_event_per_run(by_node):
    events = trace_events(by_node)
    by_phase = check_trace(events)
    tasks = [e for e in by_phase["X"] if e["cat"] == "task"]
    assert len(tasks) == sum(len(v) for v in by_node.values())
    names = process_names(events)
    assert sorted(names.values()) == sorted(f"node {n.hex()}" for n in by_node)
    threads = thread_names(events)
    for e, (node, run) in zip(tasks, [(n, r) for n in sorted(by_node) for r in by_node[n]]):
        name, task_id, worker, start, end, _status, _fetched, stored, pid = run
        assert (e["name"], e["args"]["task_id"], e["args"]["worker"]) == (
            name, task_id.hex(), worker)
        assert names[e["pid"]] == f"node {node.hex()}"
        assert threads[(e["pid"], e["tid"])] == f"worker {worker}" + (
            f" (pid {pid})" if pid else "")
        assert abs(e["ts"] - start * 1e6) <= 1 and abs(e["ts"] + e["dur"] - stored * 1e6) <= 1
    spans = [e for e in by_phase["X"] if e["cat"] != "task"]
    assert len(spans) == 2 * len(tasks)
    for task, fetch, store in zip(tasks, spans[0::2], spans[1::2]):
        assert (fetch["name"], store["name"]) == (FETCH_SPAN, STORE_SPAN)
        for span in (fetch, store):
            assert (span["pid"], span["tid"], span["args"]["task_id"]) == (
                task["pid"], task["tid"], task["args"]["task_id"])
            assert task["ts"] <= span["ts"] <= span["ts"] + span["dur"] <= task["ts"] + task["dur"]
        assert fetch["ts"] + fetch["dur"] <= store["ts"]


# -- a published batch ("tl"): one blob, unpacked where read -------------------------------

@settings(max_examples=200, deadline=None)
@given(node_runs(), st.lists(st.one_of(st.none(), st.integers(-2**63, 2**64 - 1),
                                       st.text(max_size=3),
                                       st.lists(st.integers(-9, 9), max_size=9)), max_size=3))
def test_a_batch_comes_back_as_its_entries_and_anything_else_in_it_is_left_out(runs, junk):
    assert unpack_batch(pack_batch(runs)) == [list(r) for r in runs]
    assert unpack_batch(pack_batch(junk + list(runs))) == [list(r) for r in runs]


@given(st.one_of(st.binary(max_size=40), st.none(), st.integers(), st.text(max_size=5),
                 st.lists(st.integers(), max_size=3)))
def test_a_value_that_is_not_a_batch_has_no_entries(value):
    assert unpack_batch(value) == []
