"""What Pool's methods return: ApplyResult, MapResult and IMapIterator.

Each wraps the Futures the dispatcher completes (dispatch.py) and behaves as
multiprocessing.pool's class of the same name: get(timeout) raises
multiprocessing.TimeoutError when the time runs out and the task's exception
when it failed; callbacks run on the dispatcher's thread before get() returns.
A future the pool cancelled (terminate) reads as TaskCancelledError.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import multiprocessing
import threading
import time

from ..exceptions import TaskCancelledError

log = logging.getLogger("zfabric.util")


def _outcome(fut: concurrent.futures.Future) -> tuple[bool, object]:
    """(True, values) or (False, exception) of a done future of a ChunkCall."""
    if fut.cancelled():
        return False, TaskCancelledError("the pool was terminated before this work ran")
    error = fut.exception()
    return (True, fut.result()[1]) if error is None else (False, error)


def _run_callback(callback, arg) -> None:
    try:
        callback(arg)
    except Exception:   # nobody to raise to: the pool's thread carries on
        log.exception("a zfabric.util.Pool callback raised")


class ApplyResult:
    """The result of apply_async: get(timeout), wait(timeout), ready(), successful()."""

    def __init__(self, future, callback=None, error_callback=None):
        self._event = threading.Event()
        self._callback, self._error_callback = callback, error_callback
        self._success, self._value = False, None
        future.add_done_callback(self._on_done)

    def _on_done(self, fut) -> None:
        ok, value = _outcome(fut)
        self._set(ok, value[0] if ok else value)   # a chunk of one call

    def _set(self, ok: bool, value) -> None:
        self._success, self._value = ok, value
        if ok and self._callback is not None:
            _run_callback(self._callback, value)
        if not ok and self._error_callback is not None:
            _run_callback(self._error_callback, value)
        self._event.set()

    def ready(self) -> bool:
        return self._event.is_set()

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        self._event.wait(timeout)

    def get(self, timeout: float | None = None):
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of map_async: the chunks' values joined in order; the first
    chunk that fails makes it ready with that chunk's error."""

    def __init__(self, futures: list, callback=None, error_callback=None):
        self._chunks: list = [None] * len(futures)
        self._left = len(futures)
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callback, self._error_callback = callback, error_callback
        self._success, self._value = False, None
        if not futures:
            self._set(True, [])
        for i, fut in enumerate(futures):
            fut.add_done_callback(lambda f, i=i: self._on_chunk(i, f))

    def _on_chunk(self, i: int, fut) -> None:
        ok, value = _outcome(fut)
        with self._lock:
            if self._event.is_set() or self._left == 0:
                return
            if ok:
                self._chunks[i] = value
                self._left -= 1
                if self._left:
                    return
                value = [x for chunk in self._chunks for x in chunk]
            else:
                self._left = 0
        self._set(ok, value)


class IMapIterator:
    """The iterator of imap (ordered) and imap_unordered: next(timeout) raises
    multiprocessing.TimeoutError when the time runs out; a failed chunk raises
    its error in its place, and the iterator goes on after it."""

    def __init__(self, futures: list, ordered: bool):
        self._futures = collections.deque(futures if ordered else ())
        self._left = len(futures)
        self._ordered = ordered
        self._buffer: collections.deque = collections.deque()
        self._done: collections.deque = collections.deque()
        self._cond = threading.Condition()
        if not ordered:
            for fut in futures:
                fut.add_done_callback(self._on_done)

    def _on_done(self, fut) -> None:
        with self._cond:
            self._done.append(fut)
            self._cond.notify_all()

    def __iter__(self) -> "IMapIterator":
        return self

    def next(self, timeout: float | None = None):
        while not self._buffer:
            if not self._left:
                raise StopIteration
            fut = self._next_done(timeout)
            self._left -= 1
            ok, value = _outcome(fut)
            if not ok:
                raise value
            self._buffer.extend(value)
        return self._buffer.popleft()

    __next__ = next

    def _next_done(self, timeout: float | None):
        """The next chunk's future (in order, or the next to finish), once done."""
        if self._ordered:
            fut = self._futures[0]
            try:
                fut.exception(timeout)
            except concurrent.futures.TimeoutError:
                raise multiprocessing.TimeoutError from None
            except concurrent.futures.CancelledError:
                pass
            return self._futures.popleft()
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._done:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise multiprocessing.TimeoutError
                self._cond.wait(left)
            return self._done.popleft()
