"""Calls sent to the cluster as tasks, at most `limit` in flight, each completing a Future.

    Executor / Pool --submit(remote_fn, args)--> Dispatcher --.remote()--> cluster
                                                    |   ^
        Future.set_result / set_exception  <--------'   | client.watch(oid, sink)
           (on the dispatcher's thread)             the dispatcher's thread waits on the sink

A call beyond `limit` waits in `_queued` (a Future still PENDING, so it can be
cancelled); a call sent to the cluster is RUNNING. One thread completes the
futures of every call in flight: it starts with the first call sent and ends
once none has been in flight for LINGER seconds, so an idle Executor or Pool
holds no thread, and a burst of maps does not start one per map (a thread's
start costs a context switch, up to milliseconds on a loaded machine). A
thread per future (ObjectRef.future()) would cost 10,000 threads for 10,000
calls, all woken by every message.

If the node goes away (or zf.shutdown() closes the client) while calls are in
flight, each of their futures gets the error: no caller is left hanging.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from .. import api
from ..node import client as client_mod

LINGER = 2.0   # seconds the completing thread waits for new calls before it ends


class Dispatcher:
    def __init__(self, limit: int | None):
        self.limit = limit
        self._lock = threading.Lock()
        self._queued: deque = deque()          # (future, remote_fn, args, kwargs) not sent yet
        self._inflight: dict[bytes, tuple] = {}   # oid -> (future, ref)
        self._direct: dict[int, tuple] = {}       # run_now calls: id -> (slots, their refs)
        self._sink: deque = deque()
        self._client = None
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition(self._lock)   # in flight or queued changed

    def submit(self, remote_fn, args: tuple, kwargs: dict) -> Future:
        """A Future of remote_fn.remote(*args, **kwargs): sent now, or queued
        while `limit` calls are in flight. Errors of .remote() (bad arguments,
        zfabric not initialized) raise here when the call is sent at once."""
        return self.submit_many(remote_fn, [args], kwargs)[0]

    def submit_many(self, remote_fn, arglist: list, kwargs: dict | None = None) -> list:
        """submit() of remote_fn for each args in arglist; the calls sent now are
        watched with one message to the node, not one each."""
        futures, sent = [], []
        with self._lock:
            try:
                for args in arglist:
                    fut: Future = Future()
                    futures.append(fut)
                    if not self._room(1):
                        self._queued.append((fut, remote_fn, args, kwargs or {}))
                        continue
                    fut.set_running_or_notify_cancel()
                    sent.append(self._send(fut, remote_fn, args, kwargs or {}))
            finally:
                self._watch(sent)
        return futures

    def _room(self, n: int) -> bool:
        """Whether n more calls may go out now (caller holds _lock)."""
        if self.limit is None:
            return True
        busy = len(self._inflight) + sum(slots for slots, _refs in self._direct.values())
        return busy + n <= self.limit

    def run_now(self, remote_fn, arglist: list) -> list | None:
        """The values of remote_fn.remote(*args) for each args in arglist, in order,
        waited for in the caller's thread (no hand-off to the dispatcher's thread:
        a blocking Pool.map of a few chunks); None if the bound leaves no room for
        them all, and nothing was sent. The first error raises, as zf.get's."""
        key = object()
        with self._lock:
            if not self._room(len(arglist)):
                return None
            refs = []
            self._direct[id(key)] = (len(arglist), refs)
        try:
            for args in arglist:
                refs.append(remote_fn.remote(*args))
            return api.get(refs)
        finally:
            with self._lock:
                del self._direct[id(key)]
                self._changed.notify_all()
            self._send_queued()

    def _send(self, fut: Future, remote_fn, args, kwargs) -> bytes:
        """Submit the task; its oid, in flight (caller holds _lock, then watches it)."""
        client = client_mod.current()
        ref = remote_fn.remote(*args, **kwargs)
        self._inflight[ref._id] = (fut, ref)
        self._client = client
        return ref._id

    def _watch(self, oids: list) -> None:
        """Have the client tell us when oids are ready; start the completing
        thread if none runs (caller holds _lock)."""
        if not oids:
            return
        self._client.watch(oids, self._sink)
        self._changed.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._complete_loop, daemon=True,
                                            name="zfabric-util-dispatch")
            self._thread.start()

    def _complete_loop(self) -> None:
        """(the dispatcher's thread) Complete futures as their refs become ready."""
        sink = self._sink
        while True:
            with self._lock:
                self._changed.notify_all()
                if not self._changed.wait_for(lambda: self._inflight, LINGER):
                    self._thread = None
                    return
                client = self._client
            try:
                client.wait_watched(sink, None, block=False)
            except Exception as e:   # the node died, or zf.shutdown() closed the client
                self._fail_all(e)
                continue
            while sink:
                oid = sink.popleft()
                with self._lock:
                    entry = self._inflight.pop(oid, None)
                if entry is not None:
                    self._complete(client, oid, *entry)

    def _complete(self, client, oid: bytes, fut: Future, ref) -> None:
        try:
            value = client.get_values([oid], None)[0]
        except BaseException as e:
            fut.set_exception(e)
        else:
            fut.set_result(value)
        del ref
        self._send_queued()

    def _send_queued(self) -> None:
        with self._lock:
            sent = []
            while self._queued and self._room(1):
                fut, remote_fn, args, kwargs = self._queued.popleft()
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    sent.append(self._send(fut, remote_fn, args, kwargs))
                except Exception as e:   # e.g. zf.shutdown() meanwhile: its future says so
                    fut.set_exception(e)
            self._watch(sent)

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            running = [fut for fut, _ref in self._inflight.values()]
            queued = [q[0] for q in self._queued]
            self._inflight.clear()
            self._queued.clear()
            self._changed.notify_all()
        for fut in running + [f for f in queued if f.set_running_or_notify_cancel()]:
            fut.set_exception(error)

    def cancel_queued(self) -> int:
        """Cancel the calls not sent yet; returns how many."""
        with self._lock:
            queued = list(self._queued)
            self._queued.clear()
            self._changed.notify_all()
        for fut, *_ in queued:
            fut.cancel()
        return len(queued)

    def cancel_inflight(self) -> None:
        """Ask the cluster to cancel every call in flight (their futures get
        TaskCancelledError, or their result if they finish first)."""
        with self._lock:
            refs = [ref for _fut, ref in self._inflight.values()]
            refs += [ref for _slots, direct in self._direct.values() for ref in direct]
        for ref in refs:
            api.cancel(ref, force=True)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no call is queued or in flight; False if timeout passes first."""
        with self._lock:
            return self._changed.wait_for(lambda: not (self._inflight or self._queued
                                                       or self._direct),
                                       timeout)
