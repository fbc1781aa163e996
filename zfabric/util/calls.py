"""What Executor and Pool send as tasks: a function, or a function mapped over a chunk.

`remote_for(function)` turns a callable into a RemoteFunction once and keeps it
(a small cache keyed by identity), so the function is pickled once, not per
call, and travels to the node once per process (its blob is content-addressed).
`ChunkCall` is one task's work for `Pool.map`/`Executor.map`: the function
mapped over a list of arguments, returning the seconds it took and the list
of results.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict

from .. import api

CACHE_SIZE = 256    # distinct callables kept pickled; a miss only costs pickling again
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()
_initialized: set = set()   # (in a worker) the pools whose initializer ran in this process


class Call:
    """function(*args, **kwargs), for callables @zf.remote refuses (classes)."""

    def __init__(self, function):
        self.function = function
        self.__qualname__ = _name(function)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)


class ChunkCall:
    """One task's share of a map: [function(x) for x in chunk]; with star=True
    function(*x); with star="apply" function(*args, **kwargs) for (args, kwargs).
    `init`: (pool token, initializer, initargs), run once per worker process first."""

    def __init__(self, function, star: bool | str = False, init: tuple | None = None):
        self.function = function
        self.star = star
        self.init = init

    def __call__(self, chunk: list) -> tuple[float, list]:
        """(seconds the calls took, their values): the Pool sizes the next map's
        chunks of this function from the seconds."""
        start = time.perf_counter()
        if self.init is not None and self.init[0] not in _initialized:
            token, initializer, initargs = self.init
            initializer(*initargs)
            _initialized.add(token)
        f = self.function
        if self.star == "apply":
            values = [f(*args, **kwargs) for args, kwargs in chunk]
        elif self.star:
            values = [f(*args) for args in chunk]
        else:
            values = [f(x) for x in chunk]
        return time.perf_counter() - start, values


def remote_for(function, name: str | None = None):
    """The RemoteFunction that runs `function` (kept for the next call with it)."""
    key = (id(function), name)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is function:
            _cache.move_to_end(key)
            return hit[1]
    target = function if _is_plain(function) else Call(function)
    remote_fn = api.remote(name=name or _name(function))(target)
    with _cache_lock:
        _cache[key] = (function, remote_fn)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return remote_fn


def chunk_remote(function, star: bool | str = False, init: tuple | None = None):
    """The RemoteFunction of one map call: a ChunkCall, named after `function`."""
    return api.remote(name=_name(function))(ChunkCall(function, star, init))


def _is_plain(function) -> bool:
    return callable(function) and not isinstance(function, type)


def _name(function) -> str:
    return getattr(function, "__qualname__", None) or type(function).__qualname__


def chunks(iterable, size: int):
    """Lists of `size` items (the last may be shorter) from `iterable`, cut by
    slicing (a C loop), not item by item: 10,000 items cost ~0.1 ms, not ~2 ms.
    A range is cut into ranges, which travel as three numbers."""
    if type(iterable) is range:
        for i in range(0, len(iterable), size):
            yield iterable[i:i + size]
        return
    it = iter(iterable)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk
