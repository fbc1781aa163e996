"""The node's child processes: the zygotes, the workers they fork, and pidfds.

    NodeLoop --SpawnWorker--> Processes.spawn --"spawn w7\\n"--> zygote stdin --fork--> w7
    zygote report pipe --"ready 4240" / "started w7 4242" / "exited 4242 -9"
        --> WorkerExited --> dispatch
    zygote report pipe --EOF (the zygote died)--> ZygoteDied; every worker it forked:
        SIGKILL, and a WorkerExited each --> dispatch; the spare (or a new zygote)
        forks their replacements
    NodeLoop --StopWorker / KillWorker--> SIGTERM / SIGKILL by pidfd
    NodeLoop --InterruptWorker--> {session}/cancel/{wid} := task id hex, then SIGUSR1
    NodeLoop --WatchClient--> pidfd --exit--> the caller's callback (ClientGone)
    NodeLoop --every Tick--> on_tick: a zygote whose restart was held back; the spare

Owns the zygote that forks workers (started on the first spawn, or started
early by node/__main__.py with `start_zygote`, before the node's imports, and
handed in: it waits as the spare until the first spawn), the spare
zygote a node keeps once its zygote died, each worker's pid and pidfd
(known once the zygote reports it; signals go through the pidfd, so a
recycled pid is never hit), the cancel dir (a worker interrupted by SIGUSR1
reads there which task to interrupt, and only interrupts that one), and
every fd it registers with the loop's poller: each zygote's report pipe and
one pidfd per watched process. The loop calls `on_readable(fd)` when one of
them is readable; what happened goes back through `dispatch` (an event for
the fabric).

The zygote's death is an event, not the node's end: its workers die with
it (PR_SET_PDEATHSIG) and are killed here by pidfd to be sure, and each one
(also one asked for but not yet reported started) goes to the fabric as a
WorkerExited, so their tasks are retried. The spawns that follow make the
spare fork (it has imported everything already: no second of imports with
no worker), or start a new zygote; from the first death on, `on_tick` keeps
a spare started behind the zygote (also while that one is still importing:
under a killer, two starting zygotes get one ready sooner than one does).
A zygote that exits or crashes by itself (at its imports, or because it
cannot fork) again before one forked a worker, or that cannot be started,
is restarted only after a backoff (doubling from `restart_backoff` to
`restart_backoff_max`), and no spare is kept meanwhile; one killed by
SIGKILL (from outside: a user, the OOM killer) is restarted at once. Spawns
asked for meanwhile wait in `_held` and go out when `on_tick` starts one.
`stop_all` stops everything on the way out.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import zmq

from ..core import events as ev
from . import forking, zygote
from .pids import alive


class _Zygote:
    """One fork server process: its Popen, the pipe it reads spawns from, the
    pipe it reports on, and whether it said "ready"."""

    def __init__(self, popen: subprocess.Popen, report_r: int):
        self.popen = popen
        self.pid = popen.pid
        self.stdin = popen.stdin.fileno()
        self.report_r = report_r
        self.buf = b""
        self.ready = False

    def close(self) -> None:
        """Kill it and let go of its pipes (one no Processes took: the node did not start)."""
        os.close(self.report_r)
        self.popen.kill()
        self.popen.wait()
        self.popen.stdin.close()


def raise_fd_limit(want: int = 1 << 16) -> None:
    """Open files: up to `want` (at most the hard limit), for max_workers workers;
    before the first zygote starts, so that its workers have it too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def start_zygote(preload: str = "", fork: bool = False) -> _Zygote:
    """Start a zygote (it needs nothing of the node until its setup line, so a
    node starts its first one before its own imports); OSError if it cannot be.
    `preload`: more modules for it to import, comma-separated (config.zygote_preload).
    `fork`: fork it from this process (only while it has a single thread and
    no zmq context: a node's first one, node/__main__.py), else exec it."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    try:
        if fork and forking.safe_to_fork():
            cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
            try:
                proc = forking.fork(lambda: zygote.serve(report_w, preload),
                                    args=["zfabric.node.zygote"], keep_fds=(report_w,),
                                    stdin_fd=cmd_r)
            except OSError:
                os.close(cmd_w)
                raise
            finally:
                os.close(cmd_r)
            proc.stdin = os.fdopen(cmd_w, "wb", buffering=0)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", "zfabric.node.zygote", str(report_w), preload],
                stdin=subprocess.PIPE, pass_fds=(report_w,), close_fds=True)
    except OSError:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    return _Zygote(proc, report_r)


class Processes:
    def __init__(self, poller: zmq.Poller, dispatch, *, ipc_endpoint: str, session_dir: str,
                 log_dir: str, stop_grace: float,
                 restart_backoff: float = 0.1, restart_backoff_max: float = 5.0,
                 clock=time.monotonic, on_worker_gone=None, preload: str = "",
                 zygote: _Zygote | None = None):
        self.poller = poller
        self.dispatch = dispatch              # dispatch(event): to the fabric, now
        self.ipc_endpoint = ipc_endpoint
        self.log_dir = log_dir                # workers write their stdout/stderr there
        self.stop_grace = stop_grace
        self.restart_backoff = restart_backoff
        self.restart_backoff_max = restart_backoff_max
        self.clock = clock                    # the backoff's clock (monotonic seconds)
        self.on_worker_gone = on_worker_gone  # (pid) a worker is gone: clear up after it
        self.session_dir = session_dir
        self.cancel_dir = os.path.join(session_dir, "cancel")
        os.makedirs(self.cancel_dir, exist_ok=True)
        self.zygote: _Zygote | None = None    # the one that forks our workers
        self.spare: _Zygote | None = None     # kept once one died, to take over at once
        self._pids: dict[str, int | None] = {}     # worker id -> pid (None: not forked yet)
        self._wid_of: dict[int, str] = {}          # pid -> worker id
        self._pidfds: dict[str, int] = {}          # worker id -> pidfd (signals go there)
        self._fd_handlers: dict[int, object] = {}  # fd we polled -> what to do when readable
        self._held: list[str] = []    # spawns waiting for a zygote (held back by the backoff)
        self._not_before = 0.0        # monotonic time before which no zygote is started
        self._failures = 0            # own zygote deaths / failed starts since one forked
        self._actives = 0             # zygotes that forked for us (started or promoted)
        self.preload = preload        # more modules each zygote imports (config.zygote_preload)
        self._setup = ("setup " + json.dumps({"log_dir": log_dir, "env": {
            "ZFABRIC_NODE_ENDPOINT": ipc_endpoint, "ZFABRIC_CANCEL_DIR": self.cancel_dir,
            "ZFABRIC_SESSION_DIR": session_dir}}) + "\n").encode()
        if zygote is not None:   # started before the node's imports: the first spawn takes it
            self.spare = self._adopt(zygote)

    def on_readable(self, fd: int) -> None:
        self._fd_handlers[fd]()

    # -- workers: forked by the zygote -------------------------------------------------

    def spawn(self, wid: str) -> None:
        self._pids[wid] = None   # pid known once the zygote reports it
        if self.zygote is None and not self._activate():
            self._held.append(wid)
            return
        self._ask_fork(wid)

    def _ask_fork(self, wid: str) -> None:
        try:
            os.write(self.zygote.stdin, f"spawn {wid}\n".encode())
        except OSError:
            pass   # it just died: its report pipe's EOF reports `wid` exited

    def on_tick(self) -> None:
        """Start a zygote whose restart was held back, once the backoff is over;
        start the spare a node keeps once its zygote died."""
        if self._held and self.zygote is None and self._activate():
            held, self._held = self._held, []
            for wid in held:
                if wid in self._pids:   # (not stopped meanwhile)
                    self._ask_fork(wid)
        if self._actives > 1 and self.spare is None and self.zygote is not None \
                and not self._failures:   # (no spare for zygotes that fail by themselves)
            self.spare = self._start_zygote()

    def _activate(self) -> bool:
        """Make a zygote the one that forks: the spare if there is one, else a new
        one (not before the backoff is over). False if there is none yet."""
        if self.spare is not None:
            self.zygote, self.spare = self.spare, None
        elif self.clock() >= self._not_before:
            self.zygote = self._start_zygote()
        if self.zygote is None:
            return False
        self._actives += 1
        self.dispatch(ev.ZygoteStarted(self.zygote.pid, restart=self._actives > 1))
        return True

    def _start_zygote(self) -> _Zygote | None:
        """Start a zygote; None (reported as ZygoteStartFailed) if it cannot be."""
        try:
            return self._adopt(start_zygote(self.preload))
        except OSError as e:
            return self._start_failed(e)

    def _adopt(self, zygote: _Zygote) -> _Zygote:
        """Watch its report pipe; tell it where workers connect and write."""
        self._fd_handlers[zygote.report_r] = lambda: self._on_zygote_report(zygote)
        self.poller.register(zygote.report_r, zmq.POLLIN)
        try:
            os.write(zygote.stdin, self._setup)
        except OSError:
            pass   # it died already: its report pipe's EOF says so
        return zygote

    def _start_failed(self, error: OSError) -> None:
        delay = self._backoff()
        self.dispatch(ev.ZygoteStartFailed(f"{type(error).__name__}: {error}", delay))
        return None

    def _backoff(self, failed: bool = True) -> float:
        """How long to wait before the next start, counting one more zygote
        failure if it `failed` (else: no wait)."""
        self._failures += failed
        delay = 0.0 if self._failures <= 1 or not failed else min(
            self.restart_backoff_max, self.restart_backoff * 2 ** (self._failures - 2))
        self._not_before = self.clock() + delay
        return delay

    def _on_zygote_report(self, zygote: _Zygote) -> None:
        chunk = os.read(zygote.report_r, 65536)
        if not chunk:
            self._on_zygote_died(zygote)
            return
        zygote.buf += chunk
        while b"\n" in zygote.buf:
            line, zygote.buf = zygote.buf.split(b"\n", 1)
            what, *args = line.decode().split()
            if what == "started":
                self._on_started(args[0], int(args[1]))
            elif what == "exited":
                self._on_exited(int(args[0]), int(args[1]))
            elif what == "ready":   # it imported what workers need
                zygote.ready = True

    def _on_started(self, wid: str, pid: int) -> None:
        self._failures = 0   # a zygote that forks works: the next death restarts at once
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:      # it exited already (its "exited" report follows)
            pidfd = -1
        if wid not in self._pids:   # stopped before it was even started: do not leave it
            _send(pidfd, None, signal.SIGKILL)
            _close(pidfd)
            return
        self._pids[wid] = pid
        self._wid_of[pid] = wid
        if pidfd >= 0:
            self._pidfds[wid] = pidfd

    def _on_exited(self, pid: int, exitcode: int) -> None:
        wid = self._wid_of.pop(pid, None)
        if wid is not None and self._pids.pop(wid, None) is not None:
            self._forget(wid, pid)
            self.dispatch(ev.WorkerExited(wid, exitcode))

    def _forget(self, wid: str, pid: int) -> None:
        """Close a gone worker's pidfd, remove its cancel file, and let the
        node clear up what it left (half-written store files)."""
        if self.on_worker_gone is not None:
            self.on_worker_gone(pid)
        _close(self._pidfds.pop(wid, -1))
        try:
            os.unlink(os.path.join(self.cancel_dir, wid))
        except FileNotFoundError:
            pass

    def _on_zygote_died(self, zygote: _Zygote) -> None:
        """Reap a zygote. The spare: start another one later. The one that forks:
        kill what it forked, report each of them exited, and let the spare (if
        any) or a new zygote take over (after a backoff if it keeps failing)."""
        self._close_zygote(zygote)
        exitcode = zygote.popen.returncode
        # SIGKILL comes from outside (a user, the OOM killer): it says nothing about
        # whether the next zygote can start, so it is restarted at once
        failed = exitcode != -signal.SIGKILL
        if zygote is self.spare:
            self.spare = None
            self.dispatch(ev.ZygoteDied(exitcode, 0, self._backoff(failed), spare=True))
            return
        self.zygote = None
        doomed = [wid for wid in self._pids if wid not in self._held]
        for wid in doomed:    # they die with it (PDEATHSIG); make sure, by pidfd
            _send(self._pidfds.get(wid, -1), None, signal.SIGKILL)
        delay = self._backoff(failed)
        for wid in doomed:
            pid = self._pids.pop(wid)
            self._wid_of.pop(pid, None)
            self._forget(wid, pid)
        self.dispatch(ev.ZygoteDied(exitcode, len(doomed), 0.0 if self.spare else delay))
        for wid in doomed:   # (their replacements' spawns make the spare or a new one fork)
            self.dispatch(ev.WorkerExited(wid, -signal.SIGKILL))

    def _close_zygote(self, zygote: _Zygote) -> None:
        """Stop polling its report pipe, close its stdin, reap it (killing it if needed)."""
        self.poller.unregister(zygote.report_r)
        del self._fd_handlers[zygote.report_r]
        os.close(zygote.report_r)
        try:
            zygote.popen.stdin.close()
        except OSError:
            pass
        try:
            zygote.popen.wait(timeout=self.stop_grace)
        except subprocess.TimeoutExpired:   # it closed the pipe yet lives: not ours any more
            zygote.popen.kill()
            zygote.popen.wait()

    def stop(self, wid: str) -> None:
        self.send_signal(wid, signal.SIGTERM)

    def kill(self, wid: str) -> None:
        self.send_signal(wid, signal.SIGKILL)

    def send_signal(self, wid: str, sig: int) -> None:
        pid = self._pids.get(wid)
        if pid is None and sig in (signal.SIGTERM, signal.SIGKILL) and wid in self._pids:
            del self._pids[wid]  # not forked yet: the "started" report will kill it
            if wid in self._held:
                self._held.remove(wid)
            self.dispatch(ev.WorkerExited(wid, -sig))
            return
        if pid is not None:
            _send(self._pidfds.get(wid, -1), pid, sig)

    def interrupt(self, wid: str, task_id: bytes) -> None:
        """Interrupt `task_id` on a worker (it checks the cancel file names that task)."""
        path = os.path.join(self.cancel_dir, wid)
        with open(path + ".tmp", "w") as f:
            f.write(task_id.hex())
        os.rename(path + ".tmp", path)
        self.send_signal(wid, signal.SIGUSR1)

    # -- other processes ---------------------------------------------------------------

    def watch_pid(self, pid: int, on_exit) -> None:
        """Call on_exit() once `pid` has exited (at once if it already has)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            on_exit()
            return

        def fire():
            self.poller.unregister(fd)
            del self._fd_handlers[fd]
            os.close(fd)
            on_exit()

        self._fd_handlers[fd] = fire
        self.poller.register(fd, zmq.POLLIN)

    # -- stopping ----------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every worker and the zygote: TERM, then KILL after the grace;
        close every fd we polled or held."""
        pids = {wid: pid for wid, pid in self._pids.items() if pid is not None}
        for wid, pid in pids.items():
            _send(self._pidfds.get(wid, -1), pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for wid, pid in pids.items():
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if alive(pid):
                _send(self._pidfds.get(wid, -1), pid, signal.SIGKILL)
        self._pids.clear()
        self._held.clear()
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        for zygote in (self.zygote, self.spare):
            if zygote is not None:   # its children are gone; it holds nothing
                zygote.popen.kill()
                zygote.popen.wait()
                zygote.popen.stdin.close()
        self.zygote = self.spare = None
        for fd in list(self._fd_handlers):
            os.close(fd)
        self._fd_handlers.clear()


def _send(pidfd: int, pid: int | None, sig: int) -> None:
    """Signal a process through its pidfd (never a recycled pid), else by pid."""
    try:
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, sig)
        elif pid is not None:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)
