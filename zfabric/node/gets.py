"""Waiting for objects, and a get's values, on top of the client's pump.

    zf.get (api.py), ObjectRef.future --> Client.get_values --> values() here
        wait_objects (Client.wait_objects): entries (state, size, payload) of every oid
        INLINE: unpickled from the payload; STORE: the store file mapped read-only
        (store.read); ERROR: the error record raised (serialization.error_of_object)
    zf.wait (api.py) --> Client.wait_some --> wait_some() here
    zfabric.util (as_completed, Executor) --> Client.watch / wait_watched --> here

A store object spilled to disk since the client heard of it has no store
file: the client forgets the entry and asks the node again, which restores
it first. The waits work on the client's books (`_ready`, `_watchers`) under
its lock, as Client's own methods do; the client's methods of the same
names are their only callers (and this module alone subscribes to what a
wait needs: `subscribe_missing`).
"""
from __future__ import annotations

import time
from collections import deque

from .. import protocol as p
from .. import serialization
from ..exceptions import GetTimeoutError
from ..protocol import ObjectState
from . import store


def wait_objects(client, oids: list[bytes], timeout: float | None,
                 fail_fast: bool = True) -> dict:
    """Entries for every oid (or raise GetTimeoutError); stop early on an error."""
    with client._lock:
        client._apply_ref_ops()
        ready = client._ready
        missing = deque(o for o in dict.fromkeys(oids) if o not in ready)
    if missing:
        own = subscribe_missing(client, missing)
        if own and client.lane is not None and len(client._pushed) == len(own):
            client.lane.sync_get()   # (only our own return awaited: node/lease.py)
        total = len(missing)

        def done():  # amortized O(1): each oid leaves the front once
            while missing:
                entry = ready.get(missing[0])
                if entry is None:
                    break
                missing.popleft()
                if fail_fast and entry[0] == ObjectState.ERROR:
                    return True
            if not missing:
                return True
            return fail_fast and client._errors_seen > errors_before and any(
                ready.get(o, (0,))[0] == ObjectState.ERROR for o in missing)

        errors_before = client._errors_seen
        blocked = client._block()
        try:
            if not client._wait_for(done, timeout):
                raise GetTimeoutError(
                    f"get timed out after {timeout} s: {len(missing)} of {total} "
                    "objects are not ready")
        finally:
            unawait(client, own)
            if blocked:
                client._unblock()
    with client._lock:
        return {o: client._ready[o] for o in oids if o in client._ready}


def values(client, oids: list[bytes], timeout: float | None) -> list:
    """The values of `oids`, in order; the first error among them raised."""
    deadline = None if timeout is None else time.monotonic() + timeout
    entries = client.wait_objects(oids, timeout)
    for o in oids:  # fail at once if any failed
        entry = entries.get(o)
        if entry is not None and entry[0] == ObjectState.ERROR:
            raise serialization.error_of_object(o, entry[2])
    return [_value(client, o, entries[o], deadline) for o in oids]


def _value(client, oid: bytes, entry: tuple, deadline: float | None):
    """An object's value, asked of the node again while its store file is gone."""
    while True:
        try:
            return materialize(client.store_dir, oid, entry)
        except FileNotFoundError:
            if entry[0] != ObjectState.STORE:
                raise
        client.forget_entry(oid, entry)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        entry = client.wait_objects([oid], left)[oid]
        if entry[0] == ObjectState.ERROR:
            raise serialization.error_of_object(oid, entry[2])


def materialize(store_dir: str, oid: bytes, entry: tuple):
    state, _size, payload = entry
    if state == ObjectState.INLINE:
        return serialization.deserialize(payload)
    if state == ObjectState.STORE:
        return store.read(store_dir, oid)
    if state == ObjectState.ERROR:
        raise serialization.error_of_object(oid, payload)
    raise RuntimeError(f"object {oid.hex()} is not ready")


def wait_some(client, oids: list[bytes], num_returns: int, timeout: float | None) -> set:
    """The set of oids that are ready once num_returns are, or timeout passes. The
    oids not ready yet are watched (as `watch` does): O(1) an arrival, whatever
    the number of oids and of frames they come in."""
    own = subscribe_missing(client, oids)
    sink: deque = deque()
    with client._lock:
        ready, watchers = client._ready, client._watchers
        pending = []
        for o in dict.fromkeys(oids):
            if o in ready:
                sink.append(o)
            else:
                watchers.setdefault(o, []).append(sink)
                pending.append(o)
    try:
        if len(sink) < num_returns and timeout != 0:
            blocked = client._block()
            try:
                client._wait_for(lambda: len(sink) >= num_returns, timeout)
            finally:
                if blocked:
                    client._unblock()
    finally:
        unawait(client, own)
        with client._lock:
            for o in pending:   # (this wait's sink leaves the watchers still waiting)
                sinks = watchers.get(o)
                if sinks is not None:
                    sinks[:] = [s for s in sinks if s is not sink]
                    if not sinks:
                        del watchers[o]
    with client._lock:
        return {o for o in oids if o in ready}


def watch(client, oids: list[bytes], sink: deque) -> None:
    """Append each oid to `sink` once it is ready (at once if it is), in O(1) an
    arrival (zfabric.util's results as they come). Ends with the oid's last ref."""
    subscribe_missing(client, oids, awaited=False)   # (our returns: as _watchers says)
    with client._lock:
        for o in oids:
            if o in client._ready:
                sink.append(o)
            else:
                client._watchers.setdefault(o, []).append(sink)


def wait_watched(client, sink: deque, timeout: float | None, block: bool = True) -> bool:
    """Wait until `sink` (see watch) holds an oid; False if timeout passes first."""
    blocked = not sink and block and client._block()
    try:
        return client._wait_for(lambda: bool(sink), timeout)
    finally:
        if blocked:
            client._unblock()


def subscribe_missing(client, oids, awaited: bool = True) -> list:
    """Subscribe to the objects not here, but our own returns, which the node
    pushes: those are returned, counted as `awaited` (the caller takes them
    back with `unawait`) so that the pump asks for one kept elsewhere."""
    with client._lock:
        client._apply_ref_ops()
        ready, subscribed, pushed = client._ready, client._subscribed, client._pushed
        want, own = [], []
        for o in dict.fromkeys(oids):
            if o in ready or o in subscribed:
                continue
            (own if o in pushed else want).append(o)
        if awaited:
            counts = client._awaited
            for o in own:
                counts[o] = counts.get(o, 0) + 1
        subscribed.update(want)
    if want:
        client.send(p.Subscribe(want))
    return own


def unawait(client, own: list) -> None:
    if own:
        with client._lock:
            counts = client._awaited
            for o in own:
                n = counts.pop(o, 1) - 1
                if n > 0:
                    counts[o] = n
