"""The node's process shell (node/processes.py) on its own, with real zygotes:
a zygote that dies reports every worker it was asked for as exited (also
those it never reported started), a zygote that keeps dying or cannot be
started at all is retried after a growing backoff, never in a hot loop, and
each of these is an event, not an exception.

The backoff's clock is a fake one the test moves; zygotes are real processes,
stopped by `stop_all` (by PID) whatever happens.
"""
from __future__ import annotations

import signal
import sys
import time

import pytest
import zmq

from zfabric.core import events as ev
from zfabric.node.processes import Processes, start_zygote

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def shell(tmp_path):
    """(Processes, the events it dispatched, its poller, the fake clock)."""
    events: list = []
    poller = zmq.Poller()
    clock = Clock()
    procs = Processes(poller, events.append, ipc_endpoint=f"ipc://{tmp_path}/none.sock",
                      session_dir=str(tmp_path), log_dir=str(tmp_path), stop_grace=1.0,
                      restart_backoff=30.0, restart_backoff_max=45.0, clock=clock)
    yield procs, events, poller, clock
    procs.stop_all()


def pump(procs: Processes, poller: zmq.Poller, events: list, until, timeout: float = 20.0):
    """Carry out what the zygote reports until `until(events)` holds."""
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"not within {timeout} s: {events}"
        for fd, _ in poller.poll(50):
            procs.on_readable(fd)


def of(kind, events: list) -> list:
    return [e for e in events if type(e) is kind]


def shadow_zfabric(tmp_path, monkeypatch, code: str) -> None:
    """Zygotes started from here run `code` instead of starting (a `zfabric`
    package in the working directory shadows the real one)."""
    fake = tmp_path / "cwd" / "zfabric"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(code)
    monkeypatch.chdir(fake.parent)


@pytest.fixture
def broken_zygote(tmp_path, monkeypatch):
    """Zygotes started from here exit at once with code 3, before reading a spawn."""
    shadow_zfabric(tmp_path, monkeypatch, "raise SystemExit(3)\n")


def test_a_dying_zygote_reports_unstarted_workers_exited_and_backs_off(shell, broken_zygote):
    procs, events, poller, clock = shell
    procs.spawn("w1")   # the zygote dies before it could report w1 started (its pid is None)
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    assert events == [ev.ZygoteStarted(events[0].pid, restart=False),
                      ev.ZygoteDied(3, 1, 0.0), ev.WorkerExited("w1", -signal.SIGKILL)]
    procs.spawn("w2")   # the first death is restarted at once...
    pump(procs, poller, events, lambda e: len(of(ev.ZygoteDied, e)) == 2)
    assert of(ev.ZygoteDied, events)[1] == ev.ZygoteDied(3, 1, 30.0)   # ...the next is not
    assert of(ev.WorkerExited, events)[-1] == ev.WorkerExited("w2", -signal.SIGKILL)
    del events[:]
    procs.spawn("w3")
    procs.on_tick()
    assert events == [] and procs.zygote is None   # held back: no new zygote yet
    clock.now += 29.0
    procs.on_tick()
    assert events == []
    clock.now += 2.0
    procs.on_tick()   # the backoff is over: it starts and w3 is asked for
    assert events == [ev.ZygoteStarted(procs.zygote.pid, restart=True)]
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    assert events[1:] == [ev.ZygoteDied(3, 1, 45.0), ev.WorkerExited("w3", -signal.SIGKILL)]


def test_a_zygote_that_cannot_start_is_an_event_and_is_tried_again(shell, monkeypatch):
    procs, events, poller, clock = shell
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    procs.spawn("w1")
    procs.spawn("w2")
    procs.spawn("w3")
    failed = of(ev.ZygoteStartFailed, events)
    assert [f.retry_in for f in failed] == [0.0, 30.0] and events == failed
    assert "FileNotFoundError" in failed[0].reason
    procs.stop("w2")     # one of them is not wanted any more
    assert events[-1] == ev.WorkerExited("w2", -signal.SIGTERM)
    monkeypatch.undo()
    procs.on_tick()
    assert procs.zygote is None   # still held back
    clock.now += 30.0
    procs.on_tick()
    assert procs.zygote is not None
    pump(procs, poller, events, lambda e: set(procs._wid_of.values()) == {"w1", "w3"})
    # a zygote that forked works: even a death of its own is restarted at once
    procs.zygote.popen.send_signal(signal.SIGTERM)
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    assert of(ev.ZygoteDied, events) == [ev.ZygoteDied(-signal.SIGTERM, 2, 0.0)]
    assert of(ev.WorkerExited, events)[-2:] == [ev.WorkerExited("w1", -signal.SIGKILL),
                                                ev.WorkerExited("w3", -signal.SIGKILL)]


def test_a_zygote_killed_from_outside_before_it_is_ready_is_restarted_at_once(
        shell, tmp_path, monkeypatch):
    procs, events, poller, clock = shell
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    procs.spawn("w1")
    procs.spawn("w2")   # two failed starts: the next one would wait 30 s...
    monkeypatch.undo()
    shadow_zfabric(tmp_path, monkeypatch, "import time\ntime.sleep(60)\n")   # never ready
    clock.now += 30.0
    procs.on_tick()
    assert procs.zygote is not None
    procs.zygote.popen.send_signal(signal.SIGKILL)
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    # ...but a SIGKILL (a user, the OOM killer) says nothing of the next start
    assert of(ev.ZygoteDied, events) == [ev.ZygoteDied(-signal.SIGKILL, 2, 0.0)]
    procs.spawn("w3")
    assert of(ev.ZygoteStarted, events)[-1].restart and procs.zygote is not None


def test_once_a_zygote_died_a_spare_is_kept_and_takes_over_the_next_time(shell):
    procs, events, poller, clock = shell
    procs.spawn("w1")
    pump(procs, poller, events, lambda e: procs.zygote.ready)
    procs.on_tick()
    assert procs.spare is None   # none died yet: no spare
    procs.zygote.popen.send_signal(signal.SIGKILL)
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    procs.spawn("w2")            # (what the pool does when w1 is reported exited)
    second = procs.zygote
    pump(procs, poller, events, lambda e: second.ready and "w2" in procs._wid_of.values())
    procs.on_tick()
    spare = procs.spare
    assert spare is not None and spare.pid != second.pid
    pump(procs, poller, events, lambda e: spare.ready)
    del events[:]
    second.popen.send_signal(signal.SIGKILL)
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    assert events == [ev.ZygoteDied(-signal.SIGKILL, 1, 0.0),
                      ev.WorkerExited("w2", -signal.SIGKILL)]
    procs.spawn("w3")            # the spare forks it at once, no new zygote to wait for
    assert procs.zygote is spare and procs.spare is None
    assert events[-1] == ev.ZygoteStarted(spare.pid, restart=True)
    pump(procs, poller, events, lambda e: "w3" in procs._wid_of.values())
    procs.on_tick()              # and a new spare is started behind it
    assert procs.spare is not None and procs.spare is not spare


def test_a_spawn_asked_of_a_zygote_that_just_died_is_reported_exited(shell, broken_zygote):
    procs, events, poller, clock = shell
    procs.spawn("w1")
    procs.zygote.popen.wait()   # dead, and its report pipe's EOF not read yet
    procs.spawn("w2")           # written into a pipe nobody reads: no exception
    pump(procs, poller, events, lambda e: of(ev.ZygoteDied, e))
    assert of(ev.ZygoteDied, events) == [ev.ZygoteDied(3, 2, 0.0)]
    assert of(ev.WorkerExited, events) == [ev.WorkerExited("w1", -signal.SIGKILL),
                                           ev.WorkerExited("w2", -signal.SIGKILL)]


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


@pytest.mark.parametrize("preload", ["", "numpy"])
def test_a_zygote_started_ahead_forks_the_first_workers_with_what_it_preloads(tmp_path, preload):
    """A node starts its first zygote before its own imports (node/__main__.py):
    Processes adopts it, tells it where workers go (the setup line), and the
    first spawn makes it fork, as a first start. Its workers hold the modules
    every worker needs, numpy only when it is preloaded."""
    events: list = []
    poller = zmq.Poller()
    early = start_zygote(preload)
    procs = Processes(poller, events.append, ipc_endpoint=f"ipc://{tmp_path}/none.sock",
                      session_dir=str(tmp_path), log_dir=str(tmp_path), stop_grace=1.0,
                      zygote=early, preload=preload)
    try:
        assert events == [] and procs.zygote is None
        procs.spawn("w1")
        assert procs.zygote is early and events == [ev.ZygoteStarted(early.pid, restart=False)]
        pump(procs, poller, events, lambda e: "w1" in procs._wid_of.values())
        [pid] = [p for p, w in procs._wid_of.items() if w == "w1"]
        maps = _maps(pid)
        assert "_zmq" in maps                                  # what every worker needs
        assert ("numpy" in maps) == (preload == "numpy")
        deadline = time.monotonic() + 20   # its log files: where setup said (once it runs)
        while not (tmp_path / "worker-w1.err").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        procs.stop_all()
