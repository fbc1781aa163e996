"""Pulling objects from other nodes' stores into ours, chunk by chunk.

    NodeLoop --RequestChunk--> Pulls.request --PullChunk--> pull DEALER --> holder's object ROUTER
    pull DEALER --Chunk--> Pulls.receive: write at its offset --> ChunkArrived / ChunkFailed
    NodeLoop --SealPull / AbortPull--> the partial file becomes a store object / goes

Owns one pull DEALER per holder node (registered with the loop's poller,
closed by `forget` when that node died or left) and the partial file of
every object being pulled (`.{hex}.pull.tmp`, see store.py). Which chunks
to ask for, and when a pull is done or failed, is the fabric's business
(core/transfer.py): this module only moves bytes, and asks the fabric
(`expects`) before writing a chunk. The answering side is objserver.py.

An answer that is not a Chunk (or whose data frame disagrees with its
header) is counted in `malformed`; one we did not ask for (or no longer
want: a chunk of a cancelled pull still on its way) in `unexpected`. Both
are dropped; a malformed one is handed to `on_reject(source, reason)`
(source: the holder's short node id), an unexpected one only logged at
debug level (late chunks of a cancelled pull are normal). Nothing a holder sends is written unless the
fabric expects exactly that chunk from exactly that holder.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import zmq

from .. import ids
from .. import protocol as p
from ..core import effects as fx
from ..core import events as ev
from . import sockets, store

log = logging.getLogger("zfabric.node")

RECV_BATCH = 512   # chunks taken from one holder per wake-up


class Pulls:
    def __init__(self, ctx: zmq.Context, poller: zmq.Poller, store_dir: str, key=None,
                 on_reject: Callable[[str, str], None] | None = None):
        self.ctx = ctx
        self.key = key   # the cluster key (auth.ClusterKey), None: no authentication
        self.poller = poller
        self.store_dir = store_dir
        self.on_reject = on_reject
        self.malformed = 0    # answers that are not a well-formed Chunk
        self.unexpected = 0   # well-formed chunks we did not ask for (or no longer want)
        self._socks: dict[bytes, zmq.Socket] = {}    # holder node id -> DEALER
        self._holder: dict[zmq.Socket, bytes] = {}   # pull DEALER -> holder node id
        self._partials: dict[bytes, int] = {}        # oid -> fd of the file being pulled into
        self._started: dict[bytes, tuple] = {}       # oid -> (size, when), for the log

    def __contains__(self, sock) -> bool:
        """Is this (polled) socket one of our pull DEALERs?"""
        return sock in self._holder

    def request(self, req: fx.RequestChunk):
        """Ask the holder for a chunk; returns a ChunkFailed if it cannot be asked, else None."""
        sock = self._socks.get(req.holder)
        if sock is None:
            try:
                sock = sockets.pull_dealer(self.ctx, req.object_address, self.key)
            except zmq.ZMQError as e:
                return ev.ChunkFailed(req.holder, req.oid, f"cannot connect: {e.strerror}")
            self._socks[req.holder] = sock
            self._holder[sock] = req.holder
            self.poller.register(sock, zmq.POLLIN)
        if req.oid not in self._partials:
            self._partials[req.oid] = store.open_partial(self.store_dir, req.oid, req.size)
            self._started[req.oid] = (req.size, time.monotonic())
        sock.send(p.encode(p.PullChunk(req.oid, req.offset, req.length)), zmq.NOBLOCK)
        return None

    def receive(self, sock: zmq.Socket, expects):
        """Chunks arriving from a holder: write each at its offset and yield its
        event (the caller handles each before the next chunk is read).
        `expects(holder, oid, offset, length)`: did we ask for this chunk?"""
        holder = self._holder[sock]
        for _ in range(RECV_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                head, data = p.decode_chunk(frames)
            except p.ProtocolError as e:
                self.malformed += 1
                self._reject(holder, f"a malformed chunk: {e}", logging.WARNING)
                continue
            if head.oid not in self._partials:
                self.unexpected += 1
                self._reject(holder, f"a chunk of {ids.short(head.oid)}, which we are "
                             "not pulling", logging.DEBUG)
            elif head.error:
                yield ev.ChunkFailed(holder, head.oid, head.error)
            elif not expects(holder, head.oid, head.offset, head.length):
                self.unexpected += 1
                self._reject(holder, f"a chunk of {ids.short(head.oid)} at {head.offset} "
                             f"(+{head.length}) that we did not ask it for", logging.DEBUG)
            else:
                store.write_at(self._partials[head.oid], data, head.offset)
                yield ev.ChunkArrived(holder, head.oid, head.offset, head.length)

    def _reject(self, holder: bytes, reason: str, level: int) -> None:
        """A malformed answer goes to `on_reject`; a chunk we no longer want (a
        race with a cancelled or finished pull, not a fault) only to the debug log."""
        source = ids.short(holder)
        if self.on_reject is not None and level >= logging.WARNING:
            self.on_reject(source, reason)
        else:
            log.log(level, "dropped %s from %s", reason, source)

    def seal(self, oid: bytes) -> None:
        """Every chunk is written: the object appears in the store, whole."""
        fd = self._partials.pop(oid, None)
        if fd is None:   # an empty object: no chunk ever came
            fd = store.open_partial(self.store_dir, oid, 0)
        store.seal_partial(self.store_dir, oid, fd)
        size, began = self._started.pop(oid, (0, time.monotonic()))
        took = time.monotonic() - began
        log.info("pulled %s: %d bytes in %.3f s (%.2f GB/s)", ids.short(oid),
                 size, took, size / max(took, 1e-9) / 1e9)

    def abort(self, oid: bytes) -> None:
        store.abort_partial(self.store_dir, oid, self._partials.pop(oid, None))
        self._started.pop(oid, None)

    def forget(self, holder: bytes) -> None:
        """That node died or left: close our socket to it (a later pull reopens one)."""
        sock = self._socks.pop(holder, None)
        if sock is not None:
            self.poller.unregister(sock)
            del self._holder[sock]
            sock.close(0)

    def close(self) -> None:
        """Close every pull socket and drop every partial file."""
        for sock in self._socks.values():
            sock.close(0)
        self._socks.clear()
        self._holder.clear()
        for oid, fd in list(self._partials.items()):
            store.abort_partial(self.store_dir, oid, fd)
        self._partials.clear()
        self._started.clear()
