"""`Pool`: a drop-in multiprocessing.Pool whose work runs as zfabric tasks.

    Pool.map(f, items) --> chunks of len/(4*processes) items --> one ChunkCall task each
        --> Dispatcher (at most `processes` tasks in flight) --> Futures
        --> MapResult / ApplyResult / IMapIterator (results.py) --> get() / next()

Chunking is what makes tiny calls cheap: a task costs a round trip through the
node, a chunk of 1,250 calls costs one. map's default chunk size starts as the
stdlib's (len / (4 * processes)); each chunk reports how long its calls took,
and the next map of the same function makes its chunks larger (fewer tasks,
as few as one) when the stdlib's would each hold less than CHUNK_SECONDS of
work. The results and their errors follow multiprocessing's: the same
methods, the same exception types, callbacks run on a background thread
before `get()` returns.
"""
from __future__ import annotations

import os
import threading
import warnings

from .. import api
from . import calls, results
from .dispatch import Dispatcher

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
# A task costs ~0.3-1 ms of messages and scheduling (a stdlib pool's chunk ~0.1 ms):
# a chunk of at least CHUNK_SECONDS of calls keeps that cost near a tenth or less.
CHUNK_SECONDS = 0.005
COSTS_KEPT = 256    # functions whose cost a call (and whose chunk task) a pool keeps


class Pool:
    """multiprocessing.Pool's interface on the cluster's workers.

    processes: how many chunks run at once (at most) and the chunk size
    heuristic's divisor; None: the cluster's CPUs. Calls `zf.init()` first if
    zfabric is not initialized (an embedded node, as a new user expects).
    initializer(*initargs) runs once in each worker process before its first
    call of this pool's work. maxtasksperchild and context are accepted and
    have no effect (the workers are the cluster's, shared by every task): a
    value other than None draws a warning.

    map, map_async, starmap, starmap_async, imap, imap_unordered, apply,
    apply_async, close, terminate, join and `with Pool() as p:` (which
    terminates at exit) behave as multiprocessing's. A call on a closed pool
    raises ValueError("Pool not running"). A task's exception reaches `get()`
    (and error_callback) as an instance of the original class. terminate()
    cancels the work not done: its results raise TaskCancelledError (the
    stdlib's would never complete). Arguments travel inside the chunk, so an
    ObjectRef argument arrives as an ObjectRef, as it would in a process pool.
    """

    def __init__(self, processes: int | None = None, initializer=None, initargs=(),
                 maxtasksperchild: int | None = None, context=None):
        if not api.is_initialized():
            api.init()
        if processes is None:
            processes = max(1, int(api.cluster_resources().get("CPU", 1)))
        if isinstance(processes, bool) or not isinstance(processes, int):
            raise TypeError(f"processes must be an int or None, got {processes!r}")
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
            warnings.warn("zfabric.util.Pool: maxtasksperchild has no effect (the "
                          "cluster's workers run every task)", stacklevel=2)
        if context is not None:
            warnings.warn("zfabric.util.Pool: context has no effect (work runs on the "
                          "cluster's workers)", stacklevel=2)
        self._processes = processes
        self._init = None if initializer is None else (os.urandom(8), initializer,
                                                       tuple(initargs))
        self._dispatcher = Dispatcher(processes)
        self._costs: dict = {}    # id(func) -> (func, seconds a call), learned from chunks
        self._costs_lock = threading.Lock()   # written by the caller and the pool's thread
        self._runners: dict = {}  # (id(func), star) -> (func, its ChunkCall's RemoteFunction)
        self._state = RUN
        self._lock = threading.Lock()

    # -- one call ---------------------------------------------------------------------

    def apply(self, func, args=(), kwds={}):
        """func(*args, **kwds) on a worker; its value."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None,
                    error_callback=None) -> results.ApplyResult:
        """An ApplyResult of func(*args, **kwds)."""
        runner = self._runner(func, "apply")
        with self._lock:
            self._check_running()
            fut = self._dispatcher.submit(runner, ([(tuple(args), dict(kwds))],), {})
        return results.ApplyResult(fut, callback, error_callback)

    # -- many calls ----------------------------------------------------------------------

    def map(self, func, iterable, chunksize: int | None = None) -> list:
        """[func(x) for x in iterable], computed in chunks; blocks until done."""
        return self._map(func, iterable, chunksize, False)

    def map_async(self, func, iterable, chunksize: int | None = None, callback=None,
                  error_callback=None) -> results.MapResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func, iterable, chunksize: int | None = None) -> list:
        """[func(*args) for args in iterable]."""
        return self._map(func, iterable, chunksize, True)

    def starmap_async(self, func, iterable, chunksize: int | None = None, callback=None,
                      error_callback=None) -> results.MapResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func, iterable, chunksize: int = 1) -> results.IMapIterator:
        """An iterator of func(x) for x in iterable, in order (`.next(timeout)`).
        The iterable is read, and its chunks sent, at this call."""
        return results.IMapIterator(self._imap_chunks(func, iterable, chunksize), ordered=True)

    def imap_unordered(self, func, iterable, chunksize: int = 1) -> results.IMapIterator:
        """As imap, in the order the chunks finish."""
        return results.IMapIterator(self._imap_chunks(func, iterable, chunksize),
                                    ordered=False)

    def _imap_chunks(self, func, iterable, chunksize: int) -> list:
        self._check_running()
        _check_chunksize(chunksize)
        runner = self._runner(func, False)
        return self._submit(func, runner, list(calls.chunks(iterable, chunksize)))

    def _map(self, func, iterable, chunksize, star: bool) -> list:
        """map/starmap: when the pool has room for every chunk at once, the caller's
        thread sends them and waits (no hand-off between threads); else map_async."""
        chunks = self._chunks(func, iterable, chunksize)
        if not chunks:
            return []
        runner = self._runner(func, star)
        self._check_running()
        done = self._dispatcher.run_now(runner, [(chunk,) for chunk in chunks])
        if done is None:
            return results.MapResult(self._submit(func, runner, chunks)).get()
        for chunk, (seconds, _values) in zip(chunks, done):
            self._note_cost(func, len(chunk), seconds)
        if len(done) == 1:
            return done[0][1]     # a list of its own, just deserialized
        return [value for _seconds, values in done for value in values]

    def _map_async(self, func, iterable, chunksize, star, callback, error_callback):
        chunks = self._chunks(func, iterable, chunksize)
        runner = self._runner(func, star)
        futures = self._submit(func, runner, chunks) if chunks else []
        return results.MapResult(futures, callback, error_callback)

    def _chunks(self, func, iterable, chunksize) -> list:
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        if chunksize is None:
            chunksize = max(1, self._chunksize(func, len(iterable)))
        _check_chunksize(chunksize)
        return list(calls.chunks(iterable, chunksize))

    def _runner(self, func, star):
        """The RemoteFunction that maps func over a chunk: made (and its code
        pickled) once per function, not per call."""
        key = (id(func), star)
        known = self._runners.get(key)
        if known is None or known[0] is not func:
            if len(self._runners) >= COSTS_KEPT:
                self._runners.pop(next(iter(self._runners)))
            known = self._runners[key] = (func, calls.chunk_remote(func, star, self._init))
        return known[1]

    def _chunksize(self, func, n: int) -> int:
        """The stdlib's len / (4 * processes), or larger chunks for a function whose
        calls took so little before that such chunks would be mostly overhead."""
        chunksize, extra = divmod(n, self._processes * 4)
        chunksize += 1 if extra else 0
        known = self._costs.get(id(func))
        if known is not None and known[0] is func:
            chunks = max(1, int(n * known[1] / CHUNK_SECONDS))
            chunksize = max(chunksize, -(-n // chunks))
        return chunksize

    def _note_cost(self, func, n: int, seconds: float) -> None:
        """Remember how long func's calls took (a chunk of n of them: seconds)."""
        per_call = seconds / n
        with self._costs_lock:
            known = self._costs.get(id(func))
            if known is not None and known[0] is func:
                per_call = (known[1] + per_call) / 2
            elif len(self._costs) >= COSTS_KEPT:
                self._costs.pop(next(iter(self._costs)))
            self._costs[id(func)] = (func, per_call)

    def _submit(self, func, runner, chunks: list) -> list:
        """A future for each chunk (sent, or queued behind the pool's bound)."""
        def note(fut, n):
            if not fut.cancelled() and fut.exception() is None:
                self._note_cost(func, n, fut.result()[0])

        with self._lock:
            self._check_running()
            futures = self._dispatcher.submit_many(runner, [(chunk,) for chunk in chunks])
        for fut, chunk in zip(futures, chunks):
            fut.add_done_callback(lambda f, n=len(chunk): note(f, n))
        return futures

    # -- life ------------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def close(self) -> None:
        """No more work; what was given goes on (join() waits for it)."""
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE

    def terminate(self) -> None:
        """No more work; cancel what is queued or running (its results raise
        TaskCancelledError)."""
        with self._lock:
            self._state = TERMINATE
        self._dispatcher.cancel_queued()
        if api.is_initialized():
            self._dispatcher.cancel_inflight()

    def join(self) -> None:
        """Wait until the pool's work is done; after close() or terminate()."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._dispatcher.wait_idle()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<zfabric.util.Pool state={self._state} processes={self._processes}>"


def _check_chunksize(chunksize) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")
