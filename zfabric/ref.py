"""ObjectRef: a reference to an object that a task will produce or `put` made.

An ObjectRef counts itself: creating one tells the process's client
(`node/client.py`) that this process holds the object; the last one to go
tells it the hold is over. The client batches those changes to its node,
which frees an object once nobody holds it and no pending task needs it.

This module is in the wire layer and imports nothing above it: it does not
know the client. `node/client.py` registers, when it is imported, how to
find the process's client (`set_client_lookup(current_or_none)`); until
then (a process that never connected) refs are made uncounted.

Pickled inside a value, an ObjectRef notes itself (`serialization.note_ref`)
so the node keeps it alive as long as the value that contains it.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Callable

from . import ids, serialization


def _no_client():
    return None


_client_lookup: Callable[[], object] = _no_client


def set_client_lookup(lookup: Callable[[], object] | None) -> None:
    """Tell ObjectRef how to find this process's client (None: there is none).

    `lookup()` returns the client (an object with `add_ref`, `drop_ref` and
    `get_values`) or None. `node/client.py` registers its `current_or_none`.
    """
    global _client_lookup
    _client_lookup = lookup if lookup is not None else _no_client


def _current_client():
    return _client_lookup()


class ObjectRef:
    __slots__ = ("_id", "_client", "__weakref__")

    def __init__(self, oid: bytes, client=None, *, counted: bool = True):
        if type(oid) is not bytes or len(oid) != ids.OBJECT_ID_SIZE:
            raise TypeError(f"ObjectRef ids are {ids.OBJECT_ID_SIZE} bytes")
        self._id = oid
        if counted:
            client = client if client is not None else _current_client()
            if client is not None:
                client.add_ref(oid)
        self._client = client if counted else None

    def __del__(self):
        client = self._client
        if client is not None:
            try:
                client.drop_ref(self._id)
            except Exception:  # interpreter shutdown: nothing left to tell
                pass

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> str:
        return ids.task_of(self._id).hex()

    def __eq__(self, other) -> bool:
        return type(other) is ObjectRef and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        serialization.note_ref(self._id)
        return (_rebuild, (self._id,))

    def __copy__(self):
        return ObjectRef(self._id)

    def __deepcopy__(self, memo):
        return ObjectRef(self._id)

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that completes with the object's value."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        client = self._client or _current_client()
        if client is None:
            raise RuntimeError("zfabric is not initialized: call zf.init() first")

        def resolve(ref=self):
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(client.get_values([ref._id], None)[0])
            except BaseException as e:  # the future carries it to its waiter
                fut.set_exception(e)

        threading.Thread(target=resolve, name=f"zfabric-future-{self.hex()[:8]}",
                         daemon=True).start()
        return fut

    def as_future(self, loop=None):
        """An asyncio.Future on `loop` (default: the running loop) that completes
        with the object's value or its error; `asyncio.gather` and `asyncio.wait`
        take it. RuntimeError if no loop is given and none is running."""
        import asyncio
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError("as_future() needs a running event loop, or "
                                   "as_future(loop=...)") from None
        return asyncio.wrap_future(self.future(), loop=loop)

    def __await__(self):
        return self.as_future().__await__()


def _rebuild(oid: bytes) -> ObjectRef:
    return ObjectRef(oid)


class DepMarker:
    """Stands for the top-level argument a task receives as a resolved value."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (DepMarker, (self.index,))


serialization.register_plain(DepMarker)
