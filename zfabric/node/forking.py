"""Starting zfabric's own processes by fork instead of exec, where that is safe.

Two processes start this way:

- the node `init()` starts for its driver (launch.spawn_node), forked from the
  driver: no interpreter start and no re-import of what the driver imported;
- a node's first worker fork server (zygote), forked from the node process
  before it made a thread or a ZeroMQ context (node/__main__.py).

A fresh interpreter costs tens of milliseconds before it imports anything,
and a node used to start two of them one after the other (itself, then its
zygote): forking both cuts `init()` to a little over half. A zygote that dies is
replaced by exec (processes.start_zygote): by then the node has threads.

Fork is safe only from a process with a single thread: another thread may
hold a lock (of the allocator, of logging, of a C library) that would stay
held forever in the child. `safe_to_fork` says so, and `launch.spawn_node`
execs `python -m zfabric.node` otherwise (and when the config's
`fork_embedded_node` is off). The child is then made to look like a process
that exec started (`_like_exec`): stdin from /dev/null or a given pipe,
only the file descriptors it is given (those of its parent closed, as
`close_fds` does), default signal handlers, fresh sys.std* objects, no
logging handlers, tracers, hooks or warning filters of its parent, and its
parent's objects frozen out of the garbage collector (never finalized
here). It never returns into its parent's code: it ends with `os._exit`.

`Forked` is the part of subprocess.Popen's interface zfabric uses (pid,
poll, wait with a timeout, signals, stdin), for such a child.
"""
from __future__ import annotations

import faulthandler
import gc
import os
import signal
import sys
import threading
import warnings

from . import pids

# Process names (set_name): forked processes share their parent's command line.
NODE_NAME = "zfabric-node"
ZYGOTE_NAME = "zfabric-zygote"    # a worker fork server
WORKER_NAME = "zfabric-worker"

# Modules that patch threads, sockets and select: a child forked under them
# would run the node on their loop. Exec gives it the real ones.
_PATCHERS = ("gevent", "eventlet")


def safe_to_fork(max_rss: int | None = None) -> bool:
    """May this process fork a zfabric process? Only on Linux, with one thread
    (the OS's count: C libraries start threads Python does not know of), no
    green-thread library patching the standard library, and (if `max_rss` is
    given) at most that many bytes resident: a child shares its parent's
    pages, which stay allocated, and counted in each child's RSS, for as
    long as the child lives, even once the parent frees them."""
    if sys.platform != "linux" or any(m in sys.modules for m in _PATCHERS):
        return False
    try:
        if len(os.listdir("/proc/self/task")) != 1:
            return False
        if max_rss is not None:
            with open("/proc/self/statm") as f:
                resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            return resident <= max_rss
    except (OSError, ValueError, IndexError):
        return False
    return True


def set_name(name: str) -> None:
    """Name this process (its `comm`, which ps, top and psutil.Process.name
    show; at most 15 characters): forked processes share their parent's
    command line, so the name tells a node, a zygote and a worker apart."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


class Forked:
    """A child this process forked, with Popen's interface as zfabric uses it."""

    def __init__(self, pid: int, args: list[str], stdin=None):
        self.pid = pid
        self.args = args          # (what subprocess.TimeoutExpired names)
        self.stdin = stdin        # a binary file on the pipe to its stdin, or None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(os.WNOHANG)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and timeout is not None:
            if pids.wait_for_exit(self.pid, timeout) is False:   # (None: reaped already)
                import subprocess
                raise subprocess.TimeoutExpired(self.args, timeout)
        while self.returncode is None:
            self._reap(0)
        return self.returncode

    def _reap(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:   # reaped by someone else: its code is lost
            self.returncode = 255
            return
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork(run, *, args: list[str], keep_fds: tuple[int, ...] = (), stdin_fd: int | None = None,
         env: dict | None = None, name: str = "") -> Forked:
    """Fork a child that runs `run()` and exits with what it returns (an int;
    1 if it raised, after printing the traceback to stderr). Only where
    `safe_to_fork()`. The child keeps fds 0-2 and `keep_fds`; its stdin is
    `stdin_fd` (else /dev/null); `env` is added to its environment; `name`
    is its process name. `args` describe it (as a Popen's would). OSError
    if it cannot fork."""
    for stream in (sys.stdout, sys.stderr):   # (else the child holds a copy of what is buffered)
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    pid = os.fork()
    if pid:
        return Forked(pid, args)
    code = 1
    try:
        _like_exec(keep_fds, stdin_fd, env or {})
        if name:
            set_name(name)
        result = run()
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _like_exec(keep_fds: tuple[int, ...], stdin_fd: int | None, env: dict) -> None:
    """Make this just-forked child what an exec'd process would be (module docstring)."""
    gc.freeze()                 # the parent's objects: never collected (nor finalized) here
    sys.settrace(None)          # (a debugger's or coverage's tracer)
    sys.setprofile(None)
    threading.settrace(None)
    threading.setprofile(None)
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():   # caught signals: default, as exec does (ignored stay so)
        try:
            handler = signal.getsignal(sig)
        except ValueError:
            continue
        if callable(handler) or sig == signal.SIGINT and handler != signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
    if faulthandler.is_enabled():   # (it may write to a descriptor closed below)
        faulthandler.disable()
    if stdin_fd is None:
        stdin_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin_fd, 0)
    keep = sorted({0, 1, 2, *keep_fds})
    for low, high in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
        os.closerange(low + 1, high)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False,
                                       errors="backslashreplace")
    if "faulthandler" in sys._xoptions or os.environ.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()
    _fresh_logging()
    warnings.resetwarnings()   # the default filters of a release build
    for category in (ImportWarning, ResourceWarning, PendingDeprecationWarning,
                     DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    os.environ.update(env)


def _fresh_logging() -> None:
    """No handler, level or filter the parent configured: logging as imported."""
    import logging
    logging.disable(logging.NOTSET)
    root = logging.getLogger()
    root.handlers.clear()
    root.filters.clear()
    root.setLevel(logging.WARNING)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.filters.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
            logger.disabled = False
