"""The library API on one embedded node: what the node tells (nodes, resources,
runtime context, timeline), custom resources, task output, where an embedded
node listens (docs/cli.md, docs/cluster.md).
"""
from __future__ import annotations

import os
import time

import pytest

import zfabric as zf
from zfabric.exceptions import GetTimeoutError

pytestmark = pytest.mark.timeout(60)


# -- cluster information ---------------------------------------------------------------------

def test_nodes_resources_context_timeline(cluster, tmp_path):
    nodes = zf.nodes()
    assert len(nodes) == 1
    n = nodes[0]
    assert n["Alive"] and n["NodeID"] == cluster["node_id"]
    assert n["Resources"]["CPU"] == 4.0
    assert n["NodeManagerAddress"] == "127.0.0.1" and n["NodeManagerPort"] > 0
    assert zf.cluster_resources()["CPU"] == 4.0
    assert 0 <= zf.available_resources()["CPU"] <= 4.0

    @zf.remote
    def where():
        ctx = zf.get_runtime_context()
        return ctx.get_node_id(), ctx.get_task_id()

    ref = where.remote()
    node_id, task_id = zf.get(ref)
    assert node_id == cluster["node_id"] and task_id == ref.task_id()
    assert zf.get_runtime_context().get_node_id() == cluster["node_id"]

    events = zf.timeline()
    assert any(e["name"].endswith("where") and e["ph"] == "X" for e in events)
    out = tmp_path / "trace.json"
    zf.timeline(str(out))
    assert out.read_text().startswith("[")


def test_custom_resources_gate_tasks(fresh):
    zf.init(num_cpus=2, resources={"gpu": 1})
    assert zf.cluster_resources() == {"CPU": 2.0, "gpu": 1.0}

    @zf.remote(resources={"gpu": 1}, num_cpus=0)
    def on_gpu(delay):
        time.sleep(delay)
        return time.monotonic()

    a, b = on_gpu.remote(0.5), on_gpu.remote(0.5)
    ta, tb = zf.get([a, b])
    assert abs(ta - tb) >= 0.45    # one gpu: they ran one after the other

    r = on_gpu.options(resources={"tpu": 1}).remote(0)
    with pytest.raises(GetTimeoutError):
        zf.get(r, timeout=0.5)     # infeasible: it waits, it does not fail


def test_an_embedded_node_joining_another_machine_listens_where_it_can_be_reached():
    """...on the one interface that routes to that machine, never on every one."""
    from zfabric.api import _embedded_host
    from zfabric.node.launch import route_address
    assert _embedded_host("127.0.0.1", None) == "127.0.0.1"                 # alone: loopback
    assert _embedded_host("127.0.0.1", "tcp://127.0.0.1:7380") == "127.0.0.1"
    assert _embedded_host("127.0.0.1", "tcp://localhost:7380") == "127.0.0.1"
    joining = _embedded_host("127.0.0.1", "tcp://10.0.0.1:7380")            # must be reachable
    assert joining == route_address("10.0.0.1") and joining not in ("0.0.0.0", "::", "*")
    assert _embedded_host("10.0.0.5", "tcp://10.0.0.1:7380") == "10.0.0.5"  # as configured
