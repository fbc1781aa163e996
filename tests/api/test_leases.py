"""Worker leases on one embedded node (core/leases.py, node/lease.py): a driver's
sync round trips go straight to a leased worker, and everything a task may meet
there -- a crash, a retry, a cancel, nested tasks, a stored or ref-holding
result, other work queued -- ends as it would through the node."""
from __future__ import annotations

import os
import time

import pytest

import zfabric as zf
from zfabric.exceptions import TaskCancelledError, WorkerCrashedError
from zfabric.node import client as client_mod

from tests.harness.functions import inc, slow

pytestmark = pytest.mark.timeout(90)


def lane():
    return client_mod.current().lane


def node_stats() -> dict:
    """The node's counters (the Request flushes our notices first)."""
    return client_mod.current().request("status")["nodes"][0]["stats"]


def leased(n: int = 8) -> None:
    """Sync round trips until this driver holds a lease."""
    for i in range(n):
        assert zf.get(inc.remote(i)) == i + 1
        if lane().wid is not None:
            return
    ln = lane()
    raise AssertionError(f"no lease after sync round trips (asked {ln.asked}, syncs {ln.syncs}, "
                         f"awaited returns {len(client_mod.current()._pushed)})")


@pytest.fixture
def node(fresh):
    zf.init(num_cpus=2)
    yield


@zf.remote
def crash_once(path: str) -> int:
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), 9)
    return os.getpid()


@zf.remote
def fail_once(path: str) -> int:
    if not os.path.exists(path):
        open(path, "w").close()
        raise ConnectionError("first time")
    return 7


@zf.remote
def outer(x: int) -> int:
    return zf.get(inc.remote(x))


@zf.remote
def big() -> bytes:
    return b"x" * (2 << 20)


@zf.remote
def holding() -> list:
    return [zf.put("inside")]


def test_sync_round_trips_go_direct_and_the_node_books_each(node):
    leased()
    before = lane().direct
    assert [zf.get(inc.remote(i)) for i in range(50)] == list(range(1, 51))
    assert lane().direct - before == 50
    stats = node_stats()
    assert stats["leases"] == 1 and stats["direct"] == lane().direct
    assert stats["finished"] == stats["submitted"] and stats["failed"] == 0
    names = [e["name"] for e in zf.timeline() if e.get("ph") == "X"]
    assert names.count("inc") >= 50


def test_a_worker_killed_mid_direct_task_is_retried_or_fails(node, tmp_path):
    leased()
    assert zf.get(crash_once.options(max_retries=1).remote(str(tmp_path / "a")), timeout=30)
    leased()
    with pytest.raises(WorkerCrashedError):
        zf.get(crash_once.options(max_retries=0).remote(str(tmp_path / "b")), timeout=30)
    assert node_stats()["workers_crashed"] == 2
    leased()   # a new lease, of a live worker
    assert zf.get(inc.remote(1)) == 2


def test_a_retryable_error_of_a_direct_task_is_retried_by_the_node(node, tmp_path):
    leased()
    f = fail_once.options(max_retries=1, retry_exceptions=[ConnectionError])
    assert zf.get(f.remote(str(tmp_path / "x")), timeout=30) == 7
    assert node_stats()["retried"] >= 1


def test_other_work_recalls_the_lease_and_everything_finishes(node):
    leased()
    refs = [slow.remote(i, 0.2) for i in range(6)]   # the first goes direct, the rest queue
    assert zf.get(refs, timeout=30) == list(range(6))
    assert node_stats()["leases_recalled"] >= 1
    leased()   # sync round trips lease a worker again


@zf.remote
def note_pid(path: str, i: int, seconds: float) -> int:
    time.sleep(seconds)
    open(os.path.join(path, f"{i}-{os.getpid()}"), "w").close()
    return i


def test_a_fan_out_gives_the_leased_worker_back_though_the_driver_does_not_wait(node, tmp_path):
    """A second task while a direct one runs is a fan-out: once the direct one
    ends, the worker goes back to the node and takes its share of the rest,
    also while the driver is busy elsewhere (nobody waits on the node socket)."""
    leased()
    refs = [note_pid.remote(str(tmp_path), i, 0.1) for i in range(10)]
    time.sleep(2.0)   # (the driver does not wait: its flush thread hears the end)
    ran = [name.split("-") for name in os.listdir(tmp_path)]
    leased_pid = next(pid for i, pid in ran if i == "0")   # task 0 went direct
    assert sum(pid == leased_pid for _, pid in ran) >= 2, sorted(ran)
    assert lane().wid is None
    assert zf.get(refs, timeout=30) == list(range(10))


def test_nested_tasks_in_a_direct_task_run_even_on_one_cpu(fresh):
    zf.init(num_cpus=1)
    leased()
    for i in range(5):
        assert zf.get(outer.remote(i), timeout=30) == i + 1
        leased()


def test_cancel_of_a_direct_task_interrupts_it_and_force_kills_it(node):
    leased()
    r = slow.remote(1, 30)
    assert lane().inflight is not None   # it went direct
    zf.cancel(r)
    with pytest.raises(TaskCancelledError):
        zf.get(r, timeout=10)
    leased()
    r = slow.options(max_retries=3).remote(1, 30)
    assert lane().inflight is not None
    zf.cancel(r, force=True)
    with pytest.raises(TaskCancelledError):
        zf.get(r, timeout=10)
    assert zf.get(inc.remote(1), timeout=10) == 2


def test_stored_and_ref_holding_results_are_sealed_by_the_node(node):
    leased()
    assert len(zf.get(big.remote(), timeout=30)) == 2 << 20
    leased()
    inner = zf.get(holding.remote(), timeout=30)[0]
    assert zf.get(inner, timeout=10) == "inside"
    for _ in range(20):
        zf.get(inc.remote(1))
    assert zf.get(inner, timeout=10) == "inside"   # the ref inside outlived the lease


def test_a_lease_unused_for_a_while_goes_back(node):
    leased()
    time.sleep(lane().idle_after + 0.5)
    assert lane().wid is None
    assert node_stats()["leases"] == 1
    assert client_mod.current().request("status")["nodes"][0]["idle_workers"] == 2


def test_waits_and_completion_see_direct_results(node):
    from zfabric.util import as_completed
    leased()
    r = slow.remote(3, 0.2)
    assert lane().inflight is not None
    ready, rest = zf.wait([r], num_returns=1, timeout=10)
    assert ready == [r] and rest == [] and zf.get(r) == 3
    leased()
    r = slow.remote(4, 0.2)
    assert lane().inflight is not None
    assert [zf.get(x) for x in as_completed([r], timeout=10)] == [4]


def test_direct_tasks_off_leaves_every_task_to_the_node(fresh, monkeypatch):
    monkeypatch.setenv("ZFABRIC_DIRECT_TASKS", "0")
    zf.init(num_cpus=2)
    assert [zf.get(inc.remote(i)) for i in range(20)] == list(range(1, 21))
    assert lane().direct == 0 and lane().wid is None
    assert node_stats()["leases"] == 0


def test_large_code_and_arguments_cross_the_direct_line_whole(node):
    table = os.urandom(3 << 20)   # (the function's code: more than a socket's buffer)

    @zf.remote
    def tail(arg: bytes) -> tuple:
        return table[-4:], arg[:3], len(arg)

    arg = b"abc" + os.urandom(90 << 10)   # (inline, as any argument under the threshold)
    leased()
    before = lane().direct
    for _ in range(5):
        assert zf.get(tail.remote(arg), timeout=30) == (table[-4:], b"abc", len(arg))
    assert lane().direct - before == 5


def _worker_sockets() -> list:
    session = client_mod.current().welcome.session_dir
    return sorted(os.path.join(session, n) for n in os.listdir(session)
                  if n.startswith("w") and n.endswith(".sock"))


def test_a_stranger_on_a_workers_line_does_not_stop_it(node):
    import socket
    import struct
    zf.get([inc.remote(i) for i in range(4)])   # (both workers up, no lease yet)
    strangers = []
    for path in _worker_sockets():
        for frame in (b"hello",                          # not a message: dropped
                      struct.pack("<I", 1000) + b"0123456789"):  # a frame that stalls
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.sendall(frame if len(frame) > 5 else struct.pack("<I", 5) + frame)
            strangers.append(s)
    try:
        assert [zf.get(inc.remote(i), timeout=60) for i in range(20)] == list(range(1, 21))
        assert lane().direct > 0   # (and a lease still works)
    finally:
        for s in strangers:
            s.close()


def test_a_worker_the_driver_cannot_reach_leaves_its_tasks_to_the_node(node):
    zf.get([inc.remote(i) for i in range(4)])   # (both workers up, no lease yet)
    for path in _worker_sockets():
        os.unlink(path)   # (nobody can connect: as a worker whose listener failed)
    assert [zf.get(inc.remote(i), timeout=30) for i in range(30)] == list(range(1, 31))
    assert lane().direct == 0 and lane().failures >= 1
    assert node_stats()["leases"] >= 1
