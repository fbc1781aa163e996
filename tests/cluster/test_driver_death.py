"""Drivers and the nodes under them die: a driver process SIGKILLed mid-job on a
3-node LocalCluster (every node drops what it held for it: tasks queued, running
or spilled there; objects in its store), and a get without timeout whose task's
node dies (it raises, it does not hang)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import zfabric as zf
from zfabric import ids
from zfabric.config import Config
from zfabric.testing import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Attached to the first node: 3 MB puts (in its store), 1 MB results of tasks that
# ran on all three nodes (in their stores), then tasks that keep every CPU busy and
# a queue behind them; it says "busy" when every node runs one of them.
JOB = textwrap.dedent("""
    import sys, time
    import numpy as np
    import zfabric as zf

    zf.init(address=sys.argv[1])

    @zf.remote(num_cpus=1)
    def block(i, seconds):
        time.sleep(seconds)
        return np.full(1 << 17, i, dtype=np.float64), zf.get_runtime_context().get_node_id()

    kept = [zf.put(np.ones(3 << 17)) for _ in range(4)]
    done = [block.remote(i, 0.2) for i in range(9)]
    ran_on = {node for _, node in zf.get(done)}
    assert len(ran_on) == 3, ran_on
    busy = [block.remote(i, 60) for i in range(30)]
    print("busy", flush=True)
    time.sleep(120)
""")



def leftovers(cluster) -> dict:
    """What each node still holds: tasks in any state, store bytes, store files."""
    out = {}
    for handle in cluster.nodes:
        s = cluster.own_status(handle)
        held = {k: s[k] for k in ("tasks_queued", "tasks_running", "tasks_waiting",
                                  "tasks_spilled", "store_used") if s[k]}
        files = os.listdir(handle.info["store_dir"])
        if files:
            held["files"] = files
        if held:
            out[handle.node_id[:12]] = held
    return out


def test_a_killed_driver_leaves_no_task_and_no_object_on_any_node():
    if zf.is_initialized():
        zf.shutdown()
    config = Config.from_env().replace(failure_timeout=1.5)
    with LocalCluster(nodes=3, num_cpus=1, config=config) as cluster:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-c", JOB, cluster.address],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            line = proc.stdout.readline()
            assert line == b"busy\n", (line, proc.stderr.read() if proc.poll() is not None
                                       else "")
            # every node runs one of its tasks (the first node, two CPUs' worth queued too)
            deadline = time.monotonic() + 20
            while not all(cluster.own_status(h)["tasks_running"] for h in cluster.nodes):
                assert time.monotonic() < deadline, leftovers(cluster)
                time.sleep(0.05)
            held = leftovers(cluster)
            assert all(held.get(h.node_id[:12], {}).get("store_used") for h in cluster.nodes), held
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        deadline = time.monotonic() + 15
        while leftovers(cluster):
            assert time.monotonic() < deadline, leftovers(cluster)
            time.sleep(0.1)
        # and the cluster still works for the next driver
        zf.init(address=cluster.address)
        try:
            @zf.remote(num_cpus=1)
            def one():
                return 1
            assert zf.get([one.remote() for _ in range(6)], timeout=30) == [1] * 6
        finally:
            zf.shutdown()


@zf.remote(resources={"there": 1}, max_retries=0)
def sleep_there(seconds: float) -> str:
    time.sleep(seconds)
    return zf.get_runtime_context().get_node_id()


def test_a_get_without_timeout_of_a_task_on_a_node_that_dies_raises():
    """Every wait has a bound: the only node that can run the task dies while
    running it (no retries left): the get, without a timeout, raises
    NodeDiedError once the node is declared dead, and a get of an object the
    node does not know raises ObjectLostError at once."""
    if zf.is_initialized():
        zf.shutdown()
    config = Config.from_env().replace(failure_timeout=1.5)
    with LocalCluster(nodes=1, num_cpus=1, config=config) as cluster:
        there = cluster.add_node(num_cpus=1, resources={"there": 1})
        zf.init(address=cluster.address)
        try:
            ref = sleep_there.remote(600)
            deadline = time.monotonic() + 20
            while not cluster.own_status(there)["tasks_running"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            cluster.kill_node(there)
            with pytest.raises(zf.exceptions.NodeDiedError, match="sleep_there"):
                zf.get(ref)
            stranger = zf.ObjectRef(bytes(ids.OBJECT_ID_SIZE))   # never made anywhere
            with pytest.raises(zf.exceptions.ObjectLostError, match="does not exist"):
                zf.get(stranger)
        finally:
            zf.shutdown()
