"""Our sockets to other nodes, and batching of what we send in one loop turn.

    NodeLoop --PeerSend--> Peers.send --> batcher --flush--> DEALER per peer address
                                                            (identity: node id + b"^")
    NodeLoop --JoinSend--> Peers.join_send ---------------> DEALER per seed address
                                                            (identity: node id + b"+")
    NodeLoop <-- PeerUnreachable / PeerSendBlocked (what a send did) --> Fabric

Owns the peer DEALERs (one per control address, opened on first use and
closed by `forget` when the peer died or left), the join DEALERs (one per
address we were given, closed once we joined), and the `Batcher`: messages
queued per destination during one loop turn and sent as one frame each
(a `Batch` when there are several). The loop uses a `Batcher` for its
local clients too, so batching lives here alone.

Sends never block. A send that fails is not retried here: it comes back
from `flush` / `join_send` as an event for the fabric to count. A turn's
messages to a peer are split into frames of at most `PEER_BATCH_BYTES`
(sockets.py), and a single message over `PEER_FRAME_MAX` is not sent: the
peer's ROUTER would drop our connection for it (its limit also bounds what
a stranger can make a node buffer before the handshake fails).
"""
from __future__ import annotations

import zmq

from .. import protocol as p
from ..core import events as ev
from . import sockets


class Batcher:
    """Encoded messages queued per destination, each queue later sent as one frame."""

    def __init__(self):
        self._queues: dict = {}

    def __bool__(self) -> bool:
        return bool(self._queues)

    def put(self, to, msg) -> None:
        queue = self._queues.get(to)
        if queue is None:
            self._queues[to] = [p.encode(msg)]
        else:
            queue.append(p.encode(msg))

    def discard(self, to) -> None:
        """Drop what is queued for `to`."""
        self._queues.pop(to, None)

    def take(self, max_bytes: int | None = None) -> list[tuple[object, bytes, int]]:
        """Empty it: (destination, one frame, how many messages it holds) each; with
        `max_bytes`, a destination's messages go in as many frames as keep each
        under it (a single bigger message gets a frame of its own)."""
        queues, self._queues = self._queues, {}
        if max_bytes is None:
            return [(to, msgs[0] if len(msgs) == 1 else p.encode(p.Batch(msgs)), len(msgs))
                    for to, msgs in queues.items()]
        out = []
        for to, msgs in queues.items():
            for part in _split(msgs, max_bytes):
                out.append((to, part[0] if len(part) == 1 else p.encode(p.Batch(part)),
                            len(part)))
        return out


def _split(msgs: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """Consecutive runs of `msgs` of at most `max_bytes` each (order kept)."""
    parts, part, size = [], [], 0
    for m in msgs:
        if part and size + len(m) > max_bytes:
            parts.append(part)
            part, size = [], 0
        part.append(m)
        size += len(m)
    if part:
        parts.append(part)
    return parts


class Peers:
    """The DEALERs to other nodes' scheduler ROUTERs, by address."""

    def __init__(self, ctx: zmq.Context, node_id: bytes, key=None):
        self.ctx = ctx
        self.key = key   # the cluster key (auth.ClusterKey), None: no authentication
        self.node_id = node_id
        self.batcher = Batcher()
        self._socks: dict[str, zmq.Socket] = {}        # control address -> DEALER
        self._join_socks: dict[str, zmq.Socket] = {}   # seed address -> DEALER (joining)

    def send(self, address: str, msg) -> None:
        """Queue a message for a peer; `flush` sends each peer's queue as one frame."""
        self.batcher.put(address, msg)

    def flush(self) -> list:
        """Send what is queued; returns an event per peer whose frame was dropped."""
        failed = []
        for address, frame, count in self.batcher.take(sockets.PEER_BATCH_BYTES):
            if len(frame) > sockets.PEER_FRAME_MAX:   # the peer would cut us off for it
                failed.append(ev.PeerUnreachable(address, count, (
                    f"a message of {len(frame)} bytes is over the "
                    f"{sockets.PEER_FRAME_MAX}-byte limit of a peer's port")))
                continue
            sock = self._socks.get(address)
            if sock is None:
                try:
                    sock = self._socks[address] = sockets.peer_dealer(
                        self.ctx, self.node_id, address, self.key)
                except zmq.ZMQError as e:
                    failed.append(ev.PeerUnreachable(address, count, e.strerror))
                    continue
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:   # at the high-water mark: that peer is down or far behind
                failed.append(ev.PeerSendBlocked(address, count))
        return failed

    def join_send(self, address: str, msg):
        """Send a join message to a seed address at once; returns an event if it
        was dropped, else None (an unanswered join times out in the fabric)."""
        sock = self._join_socks.get(address)
        try:
            if sock is None:
                sock = self._join_socks[address] = sockets.peer_dealer(
                    self.ctx, self.node_id, address, self.key, join=True)
            sock.send(p.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return ev.PeerSendBlocked(address, 1)
        except zmq.ZMQError as e:   # e.g. a malformed address
            return ev.PeerUnreachable(address, 1, e.strerror)
        return None

    def close_join_sockets(self) -> None:
        """We joined: the seed addresses' sockets are done (with their linger)."""
        for sock in self._join_socks.values():
            sock.close()
        self._join_socks.clear()

    @property
    def has_join_sockets(self) -> bool:
        return bool(self._join_socks)

    def forget(self, address: str) -> None:
        """The peer died or left: drop what we queued for it and close its socket
        (a later send opens a new one)."""
        self.batcher.discard(address)
        sock = self._socks.pop(address, None)
        if sock is not None:
            sock.close(0)

    def close(self) -> None:
        for sock in list(self._socks.values()) + list(self._join_socks.values()):
            sock.close()   # with its linger: a goodbye just sent still goes out
        self._socks.clear()
        self._join_socks.clear()
