"""`zfabric memory`, `status` and `timeline` on two real nodes (LocalCluster),
as a user runs them from the shell: objects listed with their size, the node
holding them, their reference holders and whether they are spilled; pending
demands while tasks wait; the timeline a valid Chrome trace with the spans of
fetching a large argument and storing a large result.

The CLI finds the nodes through ZFABRIC_TEMP_DIR, set before the cluster starts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import zfabric as zf
from tests.harness.trace import check_trace, process_names, thread_names
from zfabric.core.timeline import FETCH_SPAN, STORE_SPAN
from zfabric.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
ARRAY = MiB   # float64s: 8 MiB


@pytest.fixture
def two(fresh, tmp_path, monkeypatch):
    """Two 1-CPU nodes with 40 MiB stores (the second also offers resource "b"), this
    driver attached to the first; the CLI sees them."""
    monkeypatch.setenv("ZFABRIC_TEMP_DIR", str(tmp_path))
    with LocalCluster(nodes=1, num_cpus=1, object_store_memory=40 * MiB) as cluster:
        cluster.add_node(num_cpus=1, resources={"b": 1}, object_store_memory=40 * MiB)
        zf.init(address=cluster.address)
        yield cluster
        zf.shutdown()


def cli(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "zfabric.node", *args], env=dict(os.environ),
                         capture_output=True, text=True, timeout=60)
    return out


def cli_json(*args: str):
    out = cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(ask, check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = ask()
        if check(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}; last: {got!r}")
        time.sleep(0.1)


@zf.remote(resources={"b": 1})
def doubled(a):
    return a * 2


@zf.remote
def hold(path: str) -> int:
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def test_memory_lists_objects_on_their_nodes_with_holders_and_spills(two):
    first, second = (h.node_id for h in two.nodes)
    refs = [zf.put(np.full(ARRAY, i, dtype=np.float64)) for i in range(7)]   # 56 MiB > 40
    made = doubled.remote(refs[0])            # runs on the second node, stays in its store
    assert zf.wait([made], timeout=30)[0] == [made]

    def listing():
        objects = {r["object_id"]: r for r in cli_json("memory")["objects"]}
        return objects, two.own_status(two.nodes[0])

    def settled(answers):   # every put and the result listed, no spill under way
        objects, own = answers
        return all(r.hex() in objects for r in refs + [made]) and \
            objects[made.hex()]["state"] == "STORE" and \
            sum(1 for o in objects.values() if o["spilled"]) == own["spilled_objects"]
    objects, own = wait_for(listing, settled, "the puts and the result listed")
    puts = [objects[r.hex()] for r in refs]
    assert first in puts[0]["nodes"] and set(puts[0]["nodes"]) <= {first, second}   # pulled
    for r in puts:
        assert r["owner"] == first and r["state"] == "STORE"
        assert r["nodes"] == [first] or r is puts[0]
        assert 8 * MiB <= r["size"] < 8 * MiB + 4096
        assert any(h["kind"] == "driver" and h["pid"] == os.getpid() for h in r["ref_holders"])
    spilled = [r for r in puts if r["spilled"]]
    assert spilled and all(r["spilled_on"] == [first] for r in spilled)
    result = objects[made.hex()]
    assert result["owner"] == first and second in result["nodes"]
    assert result["size"] >= 8 * MiB and result["detail"]

    grouped = cli_json("memory", "--group-by", "node")["nodes"]
    assert {r["object_id"] for r in grouped[first]["objects"]} >= {r.hex() for r in refs}
    assert made.hex() in {r["object_id"] for r in grouped[second]["objects"]}
    assert grouped[first]["spilled_objects"] == len(spilled)
    assert grouped[first]["bytes"] == sum(r["size"] for r in grouped[first]["objects"])

    text = cli("memory", "--sort-by", "node", "--group-by", "node")
    assert text.returncode == 0, text.stderr
    asked = min(first, second)   # the CLI asks the first node record, by node id
    assert f"node {asked[:12]} (this node): " in text.stdout
    assert f"driver pid {os.getpid()}" in text.stdout
    assert f"{own['spilled_objects']} objects spilled to disk" in text.stdout

    bad = cli("memory", "--sort-by", "colour")
    assert bad.returncode == 2 and "invalid choice: 'colour'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert cli("memory", "--group-by", "task").returncode == 2
    del refs, made


def test_status_shows_pending_demands_while_tasks_wait(two, tmp_path):
    gate = str(tmp_path / "gate")
    waiting = [hold.remote(gate) for _ in range(6)]          # 2 run, 4 wait for a CPU

    def demands():
        return cli_json("status")["demands"]
    got = wait_for(demands, lambda d: d == [{"resources": {"CPU": 1.0}, "tasks": 4}],
                   "4 tasks waiting for {'CPU': 1}")
    status = cli_json("status")
    assert sum(d["tasks"] for row in status["nodes"] for d in row["demands"]) == 4
    text = cli("status")
    assert text.returncode == 0, text.stderr
    assert "  {'CPU': 1}: 4 tasks waiting" in text.stdout.splitlines()
    assert "cluster: 2 node(s) alive of 2" in text.stdout
    open(gate, "w").close()
    assert len(zf.get(waiting, timeout=60)) == 6
    wait_for(demands, lambda d: d == [], "no demand left")
    assert got


def test_timeline_is_a_valid_trace_with_fetch_and_store_spans(two, tmp_path):
    arg = zf.put(np.ones(2 * ARRAY))                 # 16 MiB: pulled by the second node
    result = doubled.remote(arg)
    assert zf.get(result)[0] == 2.0
    second = two.nodes[1].node_id
    trace_path = tmp_path / "trace.json"

    def trace():
        out = cli("timeline", "-o", str(trace_path))
        assert out.returncode == 0, out.stderr
        return json.loads(trace_path.read_text())

    def has_run(events):
        return any(e.get("args", {}).get("task_id") == result.task_id() for e in events)
    events = wait_for(trace, has_run, "the task on the timeline")
    by_phase = check_trace(events)
    tid = result.task_id()
    task = [e for e in by_phase["X"] if e["cat"] == "task" and e["args"]["task_id"] == tid]
    assert len(task) == 1 and task[0]["name"].endswith("doubled")
    task = task[0]
    assert process_names(events)[task["pid"]] == f"node {second}"
    assert thread_names(events)[(task["pid"], task["tid"])].startswith(
        f"worker {task['args']['worker']} (pid ")
    spans = {e["name"]: e for e in by_phase["X"]
             if e["cat"] != "task" and e["args"]["task_id"] == tid}
    assert set(spans) == {FETCH_SPAN, STORE_SPAN}
    for span in spans.values():
        assert (span["pid"], span["tid"]) == (task["pid"], task["tid"])
        assert task["ts"] <= span["ts"] <= span["ts"] + span["dur"] <= task["ts"] + task["dur"]
    assert spans[FETCH_SPAN]["ts"] + spans[FETCH_SPAN]["dur"] <= spans[STORE_SPAN]["ts"]
    check_trace(zf.timeline())   # the API gives the same kind of trace
