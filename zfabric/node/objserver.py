"""The object chunk server: other nodes pull our store's objects from here.

    other node's pull DEALER --PullChunk(oid, offset, length)--> object ROUTER
    other node's pull DEALER <--Chunk head + bytes (or an error)-- ObjectServer
                                                                   | mmap
                                            /dev/shm/zfabric-{node_id}/{oid hex}

Owns the answering side of the object ROUTER (bound in node.py) and a cache
of the most recently served store files, mapped read-only (`MAP_CACHE`).
An object spilled to disk (node/spiller.py) is served from its spill file,
as it is: the holder stays stateless, and a peer's pull never makes it
restore the object (and spill others to make room for it). The spill file
was just written, so its pages are usually still in the page cache.
Stateless like zguide's fileio3 server: each request is answered on its
own, from the sealed file; the fabric never hears of it. The NodeLoop calls
`serve` when the ROUTER is readable and `forget` when an object is deleted.
The pulling side is node/pulls.py.

A request that is not one PullChunk frame is dropped, counted in `malformed`
and handed to `on_reject(source, reason)` (source: the sender's routing id,
short hex); a PullChunk for an object we do not hold, or for a range beyond
it, is answered with an error Chunk (the puller asks another holder).
"""
from __future__ import annotations

import logging
from typing import Callable

import zmq

from .. import ids
from .. import protocol as p
from . import store

log = logging.getLogger("zfabric.node")

RECV_BATCH = 512   # requests answered per wake-up
MAP_CACHE = 32     # store files kept mapped (most recent)


class ObjectServer:
    def __init__(self, router: zmq.Socket, store_dir: str, spill_dir: str,
                 on_reject: Callable[[str, str], None] | None = None):
        self.router = router
        self.store_dir = store_dir
        self.spill_dir = spill_dir
        self.on_reject = on_reject
        self.malformed = 0
        self._maps: dict[bytes, memoryview] = {}   # oid -> mapped store file, most recent last

    def serve(self) -> None:
        """Answer the pending chunk requests (up to RECV_BATCH)."""
        router = self.router
        for _ in range(RECV_BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            req = self._request(frames)
            if req is None:
                continue
            try:
                router.send_multipart([frames[0]] + self._answer(req), zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                log.debug("a puller of %s is gone; its chunk is not sent", ids.short(req.oid))

    def _request(self, frames: list) -> p.PullChunk | None:
        """The PullChunk in a request ([routing id, frame]); None if it is not one."""
        try:
            if len(frames) != 2:
                raise p.ProtocolError(f"expected one frame, got {len(frames) - 1}")
            req = p.decode(frames[1])
            if type(req) is not p.PullChunk:
                raise p.ProtocolError(f"unexpected {type(req).__name__} on the object socket")
            return req
        except p.ProtocolError as e:
            self.malformed += 1
            source = frames[0][:8].hex()
            if self.on_reject is not None:
                self.on_reject(source, str(e))
            else:
                log.warning("dropped a malformed pull request from %s: %s", source, e)
            return None

    def _answer(self, req: p.PullChunk) -> list:
        try:
            view = self._mapped(req.oid)
            if req.offset < 0 or req.length < 0 or req.offset + req.length > view.nbytes:
                raise ValueError(f"range [{req.offset}, +{req.length}) is not within "
                                 f"its {view.nbytes} bytes")
            return p.encode_chunk(req.oid, req.offset, view[req.offset:req.offset + req.length])
        except (OSError, ValueError) as e:
            return p.encode_chunk(req.oid, req.offset, None,
                                  f"object {req.oid.hex()} cannot be served here: {e}")

    def _mapped(self, oid: bytes) -> memoryview:
        view = self._maps.pop(oid, None)
        if view is None:
            try:
                view = store.map_raw(self.store_dir, oid)
            except FileNotFoundError:   # spilled: its copy on disk is the same bytes
                view = store.map_raw(self.spill_dir, oid)
            if len(self._maps) >= MAP_CACHE:
                self._maps.pop(next(iter(self._maps)))
        self._maps[oid] = view   # most recent last
        return view

    def forget(self, oid: bytes) -> None:
        """The object's store file (or spill file) is deleted: stop serving it
        from its old mapping."""
        self._maps.pop(oid, None)

    def close(self) -> None:
        self._maps.clear()
