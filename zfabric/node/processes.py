"""The node's child processes: the zygote, the workers it forks, and pidfds.

    NodeLoop --SpawnWorker--> Processes.spawn --"spawn w7\\n"--> zygote stdin --fork--> w7
    zygote report pipe --"started w7 4242" / "exited 4242 -9"--> WorkerExited --> dispatch
    NodeLoop --StopWorker / KillWorker--> SIGTERM / SIGKILL by pid
    NodeLoop --InterruptWorker--> {session}/cancel/{wid} := task id hex, then SIGUSR1
    NodeLoop --WatchClient--> pidfd --exit--> the caller's callback (ClientGone)

Owns the zygote (started on the first spawn), each worker's pid (known once
the zygote reports it), the cancel dir (a worker interrupted by SIGUSR1
reads there which task to interrupt, and only interrupts that one), and
every fd it registers with the loop's poller: the zygote's report pipe and
one pidfd per watched process. The loop calls `on_readable(fd)` when one
of them is readable; what happened goes back through `dispatch` (an event
for the fabric). `stop_all` stops everything by pid on the way out.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import zmq

from ..core import events as ev


class Processes:
    def __init__(self, poller: zmq.Poller, dispatch, *, ipc_endpoint: str, session_dir: str,
                 worker_output: str | None, stop_grace: float):
        self.poller = poller
        self.dispatch = dispatch              # dispatch(event): to the fabric, now
        self.ipc_endpoint = ipc_endpoint
        self.worker_output = worker_output    # None: inherit the node's stdout/stderr
        self.stop_grace = stop_grace
        self.cancel_dir = os.path.join(session_dir, "cancel")
        os.makedirs(self.cancel_dir, exist_ok=True)
        self.zygote: subprocess.Popen | None = None
        self._pids: dict[str, int | None] = {}     # worker id -> pid (None: not forked yet)
        self._wid_of: dict[int, str] = {}          # pid -> worker id
        self._fd_handlers: dict[int, object] = {}  # fd we polled -> what to do when readable
        self._zygote_in = -1
        self._report_r = -1
        self._report_buf = b""

    def on_readable(self, fd: int) -> None:
        self._fd_handlers[fd]()

    # -- workers: forked by the zygote -------------------------------------------------

    def spawn(self, wid: str) -> None:
        if self.zygote is None:
            self._start_zygote()
        os.write(self._zygote_in, f"spawn {wid}\n".encode())
        self._pids[wid] = None   # pid known once the zygote reports it

    def _start_zygote(self) -> None:
        env = dict(os.environ)
        env.update(ZFABRIC_NODE_ENDPOINT=self.ipc_endpoint, ZFABRIC_CANCEL_DIR=self.cancel_dir)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.zygote = subprocess.Popen(
                [sys.executable, "-m", "zfabric.node.zygote", str(report_w),
                 self.worker_output or ""],
                env=env, stdin=subprocess.PIPE, pass_fds=(report_w,), close_fds=True)
        finally:
            os.close(report_w)
        self._zygote_in = self.zygote.stdin.fileno()
        self._report_r = report_r
        self._fd_handlers[report_r] = self._on_zygote_report
        self.poller.register(report_r, zmq.POLLIN)

    def _on_zygote_report(self) -> None:
        chunk = os.read(self._report_r, 65536)
        if not chunk:
            raise RuntimeError("the worker fork server (zygote) died")
        self._report_buf += chunk
        while b"\n" in self._report_buf:
            line, self._report_buf = self._report_buf.split(b"\n", 1)
            what, a, b = line.decode().split()
            if what == "started":
                self._on_started(a, int(b))
            elif what == "exited":
                self._on_exited(int(a), int(b))

    def _on_started(self, wid: str, pid: int) -> None:
        if wid in self._pids:
            self._pids[wid] = pid
            self._wid_of[pid] = wid
        else:  # stopped before it was even started: do not leave it behind
            os.kill(pid, signal.SIGKILL)

    def _on_exited(self, pid: int, exitcode: int) -> None:
        wid = self._wid_of.pop(pid, None)
        if wid is not None and self._pids.pop(wid, None) is not None:
            try:
                os.unlink(os.path.join(self.cancel_dir, wid))
            except FileNotFoundError:
                pass
            self.dispatch(ev.WorkerExited(wid, exitcode))

    def stop(self, wid: str) -> None:
        self.send_signal(wid, signal.SIGTERM)

    def kill(self, wid: str) -> None:
        self.send_signal(wid, signal.SIGKILL)

    def send_signal(self, wid: str, sig: int) -> None:
        pid = self._pids.get(wid)
        if pid is None and sig in (signal.SIGTERM, signal.SIGKILL) and wid in self._pids:
            del self._pids[wid]  # not forked yet: the "started" report will kill it
            self.dispatch(ev.WorkerExited(wid, -sig))
            return
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

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
        """Stop every worker and the zygote, by PID: TERM, then KILL after the grace;
        close every fd we polled."""
        pids = [pid for pid in self._pids.values() if pid is not None]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_grace
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._pids.clear()
        if self.zygote is not None:
            self.zygote.kill()   # its children are gone; it holds nothing
            self.zygote.wait()
            self.zygote.stdin.close()
            self.zygote = None
        for fd in list(self._fd_handlers):
            os.close(fd)
        self._fd_handlers.clear()


def _alive(pid: int) -> bool:
    """Is `pid` still running (not a zombie)? Workers are the zygote's children."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
