"""Every ZeroMQ socket zfabric makes is made here.

Settings live in one place so that authentication and encryption of the
cluster (CURVE) can later be a change to this module alone:
- ROUTERs set ROUTER_MANDATORY: a message to a peer that is gone raises
  EHOSTUNREACH instead of vanishing, and the node turns that into an event.
- The scheduler ROUTER sets ROUTER_HANDOVER: a peer that reconnects (after a
  partition, its old TCP connection never closed on our side) takes over its
  routing id at once. Without it the ROUTER refuses the new connection while
  the stale one lingers, and everything the peer sends is lost until then.
- Local (ipc) sockets have no high-water mark: every message on them is
  bounded by the number of tasks and objects the user created, and a
  dropped control message would hang a caller.
- Peer sockets have a high-water mark: a peer that is down must not make us
  queue without bound. Sends never block; a send refused at the mark is
  reported to the fabric and counted there (peers.py; gossip repeats itself,
  and the owner of a spilled task resubmits it when the peer is declared dead).
- Bulk data has its own sockets (object ROUTER, one pull DEALER per holder):
  a 1 GB transfer never delays a heartbeat. Pulls are credit-limited, so no
  unbounded stream ever hits one socket.
- Linger is short: a process that exits does not wait on peers that are gone.

Authenticating and encrypting TCP between nodes (CURVE) belongs here alone.
"""
from __future__ import annotations

import zmq

LINGER_MS = 200
RECONNECT_IVL_MS = 10
RECONNECT_IVL_MAX_MS = 1000


# A client connects two DEALERs; their routing ids are its id plus one of
# these suffixes, so the node can always tell which socket a frame came from
# and where replies go, whatever bytes the id itself holds.
TX_SUFFIX = b">"   # the client's sending socket
RX_SUFFIX = b"<"   # the client's receiving socket
PEER_SUFFIX = b"^"  # another node's DEALER: its routing id is its node id + this
JOIN_SUFFIX = b"+"  # a joining node's DEALER to the address it was given (see peer_dealer)

PEER_HWM = 1_000            # frames queued to one peer before sends are refused (a frame
                            # carries everything due to that peer in one loop turn)
TCP_KEEPALIVE_IDLE_S = 10   # a silent dead TCP link is noticed by gossip first anyway


def context() -> zmq.Context:
    return zmq.Context()


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def node_router(ctx: zmq.Context, endpoints: list[str]) -> tuple[zmq.Socket, list[str]]:
    """The node's scheduler ROUTER, bound to each endpoint ("tcp://h:0" picks a port).

    Returns the socket and the endpoints actually bound.
    """
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    bound = []
    try:
        for ep in endpoints:
            if ep.startswith("tcp://") and ep.endswith(":0"):
                ep = ep[:-2] + ":*"
            sock.bind(ep)
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock, bound


def client_dealer(ctx: zmq.Context, identity: bytes, endpoint: str) -> zmq.Socket:
    """A local client's DEALER to its node."""
    sock = _common(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.IMMEDIATE, 0)
    sock.connect(endpoint)
    return sock


def _tcp(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, PEER_HWM)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS * 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
    return sock


def peer_dealer(ctx: zmq.Context, node_id: bytes, address: str,
                join: bool = False) -> zmq.Socket:
    """Our DEALER to another node's scheduler ROUTER (send-only: it answers
    through its own DEALER to us). A join goes out on a socket of its own
    (`join`): the address we were given may be another name of the node we
    later reach at its advertised address: two live connections with one
    identity would take the routing id from each other (ROUTER_HANDOVER)."""
    sock = _tcp(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IDENTITY, node_id + (JOIN_SUFFIX if join else PEER_SUFFIX))
    try:
        sock.connect(address)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


def object_router(ctx: zmq.Context, host: str, port: int = 0) -> tuple[zmq.Socket, str]:
    """The node's object ROUTER, serving chunk pulls; returns it and its endpoint."""
    sock = _tcp(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 0)  # bounded by the pullers' credit windows
    try:
        sock.bind(f"tcp://{host}:{port or '*'}")
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def pull_dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    """A DEALER to a holder's object ROUTER, for chunk requests and their answers."""
    sock = _tcp(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.SNDHWM, 0)  # at most `window` requests per pull are in flight
    sock.connect(address)
    return sock
