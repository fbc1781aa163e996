"""Task output from other nodes reaches the driver, with that node's id and
the worker's pid (core/logroute.py: LogLines between nodes)."""
from __future__ import annotations

import os

import pytest

import zfabric as zf
from zfabric import ids
from zfabric.testing import LocalCluster

pytestmark = pytest.mark.timeout(120)


@zf.remote(resources={"far": 1})
def far(text):
    print(text)
    return zf.get_runtime_context().get_node_id(), os.getpid()


@zf.remote
def near():
    print("near says hi")
    return zf.get(far.remote("nested far says hi")), os.getpid()


def prefix(name: str, node_hex: str, pid: int) -> str:
    return f"({name} pid={pid} node={ids.short(bytes.fromhex(node_hex))}) "


@pytest.mark.parametrize("embedded", [False, True], ids=["attached", "embedded-joined"])
def test_a_line_printed_on_another_node_reaches_the_driver(fresh, capfd, embedded):
    with LocalCluster(nodes=1, num_cpus=1) as cluster:
        other = cluster.add_node(num_cpus=1, resources={"far": 1})
        if embedded:   # the driver's own node joins the cluster (a job of a node not started by it)
            zf.init(address=cluster.address.replace("127.0.0.1", "localhost"), num_cpus=1,
                    cluster_key=cluster.key_path)
        else:
            zf.init(address=cluster.address)
        node_hex, pid = zf.get(far.remote("far says hi"), timeout=60)
        assert node_hex == other.node_id
        (nested_node, nested_pid), near_pid = zf.get(near.remote(), timeout=60)
        driver_node = zf.get_runtime_context().get_node_id()
        zf.shutdown()
        out = capfd.readouterr().out
    assert out.count(prefix("far", other.node_id, pid) + "far says hi\n") == 1, out
    assert nested_node == other.node_id   # a nested task's lines go to the driver of its job
    assert out.count(prefix("far", nested_node, nested_pid) + "nested far says hi\n") == 1, out
    assert "near says hi" in out and f"pid={near_pid} " in out
    assert driver_node != other.node_id
