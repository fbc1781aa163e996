"""`Executor`: a concurrent.futures.Executor whose calls run as zfabric tasks.

    Executor.submit(fn, *args) --> calls.remote_for(fn) --> Dispatcher --> cluster
    Executor.map(fn, *its, chunksize=n) --> one ChunkCall task per n items

It is the Executor interface of ProcessPoolExecutor, with the cluster's
workers in place of local processes; `dispatch.Dispatcher` sends the tasks
and completes the futures.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time

from .. import api
from . import calls
from .dispatch import Dispatcher


class Executor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` that runs each call as a zfabric task.

    `submit(fn, *args, **kwargs)` sends `fn(*args, **kwargs)` to the cluster
    and returns a `concurrent.futures.Future` of its value; an exception the
    call raised is the future's exception (a `TaskError` that is also an
    instance of the original class, so `except ValueError` works). As with
    `.remote()`, ObjectRef arguments at the top level arrive as their values.

    max_workers: how many calls may be in flight on the cluster at once; more
    wait here, cancellable, until one finishes. None (the default): no bound
    of our own; the cluster queues what it cannot run yet, as it does for
    `.remote()` calls.

    `map(fn, *iterables, timeout=None, chunksize=1)` is ProcessPoolExecutor's:
    results in input order, `chunksize` items per task, `timeout` from the
    call (TimeoutError). `shutdown(wait=True, cancel_futures=False)`: no new
    calls after it; cancel_futures cancels the calls not sent yet; wait waits
    for the rest. Calls `zf.init()` first if zfabric is not initialized.
    """

    def __init__(self, max_workers: int | None = None):
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if not api.is_initialized():
            api.init()
        self._max_workers = max_workers
        self._dispatcher = Dispatcher(max_workers)
        self._shutdown = False
        self._shutdown_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._dispatcher.submit(calls.remote_for(fn), args, kwargs)

    def map(self, fn, *iterables, timeout: float | None = None, chunksize: int = 1):
        """fn over the iterables' items (zip), results in order, as an iterator.
        The iterables are read and every task sent at this call."""
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, got {chunksize!r}")
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + timeout
        runner = calls.chunk_remote(fn, star=True)
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            futures = self._dispatcher.submit_many(
                runner, [(chunk,) for chunk in calls.chunks(zip(*iterables), chunksize)])
        return _results(futures, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            self._dispatcher.cancel_queued()
        if wait:
            self._dispatcher.wait_idle()


def _results(futures: list, end: float | None):
    """Each future's list of values in turn, flattened; the futures not reached
    are cancelled when the iterator is closed or fails (as the stdlib does)."""
    futures.reverse()
    try:
        while futures:
            fut = futures[-1]
            left = None if end is None else end - time.monotonic()
            if left is not None and left < 0 and not fut.done():
                raise concurrent.futures.TimeoutError()
            _seconds, values = fut.result(left)
            futures.pop()
            yield from values
    finally:
        for fut in futures:
            fut.cancel()
