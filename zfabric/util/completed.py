"""Results as they come: `as_completed(refs)` yields ObjectRefs in the order they finish.

    as_completed(refs) --watch(oids, sink)--> Client (node/client.py)
         ^                                      | the pump appends each oid to the
         '-------- popleft, yield ref <-- sink -' sink when its ObjectReady arrives

The client appends an oid to the iterator's sink when the node says the
object is ready, so each arrival costs O(1), not a scan of every pending ref
(10,000 refs: no 10,000 x 10,000 `wait` calls). `zfabric.as_completed` is
this function; `zfabric.util` (Pool.imap_unordered, progress) uses it too.
"""
from __future__ import annotations

import time
from collections import deque

from .. import api
from ..exceptions import GetTimeoutError
from ..node import client as client_mod
from ..ref import ObjectRef


def as_completed(refs, timeout: float | None = None) -> "AsCompleted":
    """Yield the ObjectRefs of `refs` in the order they finish.

    Refs already finished come first, in input order; a failed or cancelled
    task counts as finished (as in `zf.wait`): `zf.get` on the ref yielded
    raises its error. `timeout` (seconds, from this call) bounds the whole
    iteration: once it has passed and no remaining ref is ready, `next()`
    raises `zfabric.exceptions.GetTimeoutError`; every ref that was ready
    by then has been yielded, and `.pending` lists those that were not.

    `refs` is checked as `zf.wait` checks it, at this call: a list or tuple
    of distinct ObjectRefs (else TypeError / ValueError). `len()` of the
    iterator is the number of refs not yet yielded, so
    `tqdm(zf.as_completed(refs))` knows its total.
    """
    return AsCompleted(refs, timeout)


class AsCompleted:
    """The iterator `as_completed` returns; `.pending` holds the refs not yet yielded."""

    def __init__(self, refs, timeout: float | None):
        refs = api.check_refs(refs, "as_completed")
        api._check_timeout(timeout)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self._pending = {r._id: r for r in refs}   # input order; holds the refs alive
        self._sink: deque = deque()
        self._client = client_mod.current() if refs else None
        if refs:
            self._client.watch(list(self._pending), self._sink)

    @property
    def pending(self) -> list:
        """The refs not yet yielded, in input order."""
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> "AsCompleted":
        return self

    def __next__(self) -> ObjectRef:
        pending, sink = self._pending, self._sink
        while True:
            while sink:
                ref = pending.pop(sink.popleft(), None)
                if ref is not None:
                    return ref
            if not pending:
                raise StopIteration
            left = None if self._deadline is None else self._deadline - time.monotonic()
            if left is None or left > 0:
                if self._client.wait_watched(sink, left) or sink:
                    continue
            raise GetTimeoutError(
                f"as_completed timed out after {self._timeout} s: {len(pending)} of "
                "the refs are not ready (the iterator's .pending lists them)")
