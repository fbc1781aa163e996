"""A node whose worker fork server (zygote) dies carries on: the workers it
forked are killed and reported exited, their tasks are retried, a new zygote
forks their replacements (from then on the node keeps a spare, which takes
over the next time), and the node counts it all in its `status` stats.

Real node processes (LocalCluster); every process is stopped by PID when the
test ends, also when it fails.
"""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import zfabric as zf
from zfabric.testing import LocalCluster

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def node(fresh):
    """One 2-CPU node, this driver attached to it."""
    with LocalCluster(nodes=1, num_cpus=2) as cluster:
        zf.init(address=cluster.address)
        yield cluster, cluster.nodes[0]
        zf.shutdown()


@zf.remote
def square_after_first_attempt(x: int, marks: str) -> tuple[int, int]:
    """x * x; its first attempt writes a mark and then sleeps long (to be killed)."""
    first = not os.listdir(marks)
    with open(os.path.join(marks, str(os.getpid())), "w"):
        pass
    if first:
        time.sleep(60)
    return x * x, os.getpid()


@zf.remote
def square(x: int) -> int:
    return x * x


def own_stats(cluster, handle) -> dict:
    return cluster.own_status(handle)["stats"]


def wait_for(what, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.02)
    return what()


def gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def kill_zygote(cluster, handle) -> tuple[int, list[int]]:
    """SIGKILL the node's zygote; returns its pid and the pids of its workers."""
    zygote = cluster.zygote_pid(handle)
    assert zygote is not None
    workers = [c.pid for c in psutil.Process(zygote).children()]
    os.kill(zygote, signal.SIGKILL)
    return zygote, workers


def test_a_task_running_when_the_zygote_dies_is_retried_and_the_node_carries_on(node, tmp_path):
    cluster, handle = node
    marks = tmp_path / "marks"
    marks.mkdir()
    ref = square_after_first_attempt.remote(7, str(marks))
    assert wait_for(lambda: os.listdir(marks)), "the task never started"
    (first_pid,) = map(int, os.listdir(marks))
    zygote, workers = kill_zygote(cluster, handle)
    assert first_pid in workers

    value, ran_in = zf.get(ref, timeout=30)
    assert value == 49 and ran_in != first_pid and ran_in not in workers
    assert sorted(map(int, os.listdir(marks))) == sorted([first_pid, ran_in])
    assert psutil.pid_exists(handle.pid) and handle.proc.poll() is None
    assert wait_for(lambda: gone(workers + [zygote])), "the old zygote's workers live on"
    new_zygote = cluster.zygote_pid(handle)
    assert new_zygote not in (None, zygote)
    assert zf.get([square.remote(i) for i in range(50)], timeout=30) == \
        [i * i for i in range(50)]
    stats = own_stats(cluster, handle)
    assert (stats["zygote_deaths"], stats["zygote_restarts"],
            stats["zygote_start_failures"]) == (1, 1, 0)
    assert stats["retried"] >= 1


def test_an_idle_node_replaces_its_killed_zygote_and_keeps_a_spare_from_then_on(node):
    cluster, handle = node
    assert zf.get(square.remote(3)) == 9
    assert len(cluster.zygote_pids(handle)) == 1   # no spare while none died
    zygote, workers = kill_zygote(cluster, handle)
    assert len(workers) == 2
    # the pool refills at once, without a task asking for it: a new zygote, two workers
    new_zygote = wait_for(lambda: (z := cluster.zygote_pid(handle)) not in (None, zygote) and z)
    assert new_zygote
    assert wait_for(lambda: len(psutil.Process(new_zygote).children()) == 2)
    assert wait_for(lambda: gone(workers + [zygote]))
    assert own_stats(cluster, handle)["zygote_restarts"] == 1
    assert zf.get([square.remote(i) for i in range(50)], timeout=30) == \
        [i * i for i in range(50)]
    # from now on the node keeps a spare, which takes over when the zygote dies again
    spare = wait_for(lambda: [p for p in cluster.zygote_pids(handle) if p != new_zygote])
    assert len(spare) == 1
    kill_zygote(cluster, handle)
    assert wait_for(lambda: cluster.zygote_pid(handle) == spare[0])
    assert zf.get([square.remote(i) for i in range(20)], timeout=30) == \
        [i * i for i in range(20)]
    stats = own_stats(cluster, handle)
    assert (stats["zygote_deaths"], stats["zygote_restarts"]) == (2, 2)
    assert handle.proc.poll() is None
