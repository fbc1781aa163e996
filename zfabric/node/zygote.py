"""The worker fork server: one pre-imported process that forks workers on demand.

    node --"setup {json}\n"--> zygote (stdin, first: the node's endpoint, dirs)
    node --"spawn w7\n"--> zygote (stdin)      zygote --fork--> worker w7
    node <--"ready 4240\n"-- zygote (report pipe; it has imported what workers need)
    node <--"started w7 4242\n"-- zygote (report pipe)
    node <--"exited 4242 -11\n"-- zygote (it reaps its children)

Starting a Python worker from scratch costs ~150 ms of CPU (interpreter,
zmq, cloudpickle, the worker's modules); forking a process that has already
imported them costs ~2 ms, so `init(num_cpus=8)` is ready at once and a
crashed worker is replaced before the retry is dispatched. The zygote imports
modules but never creates a zmq context, so children start clean. A worker's
stdout and stderr (fds 1 and 2, so C-level output too) go to
`worker-{id}.out` and `.err` in the node's log dir, which the node reads
(node/logmon.py).

The zygote needs nothing of the node to start (the node's endpoint and dirs
come in the `setup` line), so a node forks its first zygote before its own
imports, while it has a single thread (node/__main__.py, node/forking.py:
`serve`): both import at once. A zygote started after a death is exec'd
(`main`). Zygote and workers name themselves (forking.set_name). It imports what every
worker needs and no more: numpy, say, is imported by the first task of a
worker that uses it, unless the zygote preloads it (config.zygote_preload,
ZFABRIC_ZYGOTE_PRELOAD=numpy,...: faster first tasks, more memory per
worker; a node init() starts preloads what its driver imported of zfabric's
API, which tasks call, and of numpy: launch.driver_preload).
Each child reseeds numpy's global RNG if the zygote imported numpy: forked
children would otherwise all draw the same "random" numbers.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys

from . import forking

PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> None:
    import ctypes
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        pass


def _preload(extra: list[str]) -> None:
    import cloudpickle  # noqa: F401
    import msgpack  # noqa: F401
    import zmq  # noqa: F401

    from . import client, store, worker  # noqa: F401
    for name in extra:   # (ZFABRIC_ZYGOTE_PRELOAD; one that fails to import: the worker's problem)
        try:
            importlib.import_module(name)
        except Exception as e:
            print(f"zfabric zygote: cannot preload {name}: {type(e).__name__}: {e}",
                  file=sys.stderr)


def _child(worker_id: str, report_fd: int, wake_r: int, wake_w: int, log_dir: str,
           zygote_pid: int) -> None:
    for fd in (report_fd, wake_r, wake_w):
        os.close(fd)
    if not log_dir:   # (a spawn before the setup line: the node never sends one)
        return
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, ext in ((1, "out"), (2, "err")):
        out = os.open(os.path.join(log_dir, f"worker-{worker_id}.{ext}"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, fd)
        os.close(out)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    forking.set_name(forking.WORKER_NAME)
    from . import worker
    os.environ["ZFABRIC_WORKER_ID"] = worker_id
    worker.main(zygote_pid=zygote_pid)   # (not getppid(): we may be orphaned already)


def main() -> None:
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")


def serve(report_fd: int, preload: str) -> None:
    """Be a zygote until the node closes our stdin: report on `report_fd`,
    import `preload` (comma-separated) first. Started by exec (main) or forked
    from a node that has not made a thread yet (processes.start_zygote)."""
    forking.set_name(forking.ZYGOTE_NAME)
    preload = [m for m in preload.split(",") if m]
    log_dir = ""   # (the setup line says where)
    _die_with_parent(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload(preload)
    os.write(report_fd, f"ready {os.getpid()}\n".encode())   # (a restart that got this far works)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stdin = sys.stdin.fileno()
    me = os.getpid()
    buf = b""
    while True:
        ready, _, _ = select.select([stdin, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(report_fd)
        if stdin in ready:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return  # the node closed our stdin: it is gone or stopping
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd, _, arg = line.decode().partition(" ")
                if cmd == "setup":   # where workers connect and write (inherited at fork)
                    setup = json.loads(arg)
                    log_dir = setup["log_dir"]
                    os.environ.update(setup["env"])
                elif cmd == "spawn":
                    pid = os.fork()
                    if pid == 0:
                        try:
                            _child(arg, report_fd, wake_r, wake_w, log_dir, me)
                        finally:
                            os._exit(1)
                    os.write(report_fd, f"started {arg} {pid}\n".encode())


def _reap(report_fd: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        os.write(report_fd, f"exited {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    main()
