"""Every ZeroMQ socket zfabric makes is made here.

Settings live in one place so that authentication and encryption of the
cluster (CURVE) can later be a change to this module alone:
- ROUTERs set ROUTER_MANDATORY: a message to a peer that is gone raises
  EHOSTUNREACH instead of vanishing, and the node turns that into an event.
- Local (ipc) sockets have no high-water mark: every message on them is
  bounded by the number of tasks and objects the user created, and a
  dropped control message would hang a caller.
- Linger is short: a process that exits does not wait on peers that are gone.
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
