"""Every ZeroMQ socket zfabric makes is made here, and the Unix sockets of a
driver's direct line to its leased worker (node/direct.py).

Who may reach which socket:
- Local clients (drivers, workers, the CLI) use the *client ROUTER*, bound on
  ipc in the node's session dir (mode 0700: only its user gets in). It never
  listens on a network; a message there is a client's, whatever routing id
  the sender chose.
- Other nodes use the *peer ROUTER* (scheduler messages) and the *object
  ROUTER* (chunk pulls), both on TCP and both CURVE servers with the cluster
  key; our DEALERs to them are CURVE clients with the same key (auth.py). A
  process without the key never completes a handshake. With no key (a node
  started with --insecure-no-auth), the TCP sockets are plain.
- ROUTERs that send set ROUTER_MANDATORY: a message to a peer that is gone
  raises EHOSTUNREACH instead of vanishing, and the node turns that into an event.
- The client and peer ROUTERs set ROUTER_HANDOVER: a peer that reconnects (after a
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
"""
from __future__ import annotations

import os
import socket
import struct

import zmq

LINGER_MS = 200
DIRECT_BACKLOG = 8   # drivers' connects a worker's listener queues (one lease at a time)
# A direct line's frame is read whole once it began (node/direct.py): one that stalls
# this long midway (a peer that died, hung, or speaks something else) breaks the line.
# A write waits while the reader's buffer is full (a frame larger than it: code that
# is megabytes; the reader pumps at least every ref_flush_interval), at most this long.
DIRECT_READ_TIMEOUT = struct.pack("ll", 5, 0)    # struct timeval: 5 s
DIRECT_WRITE_TIMEOUT = struct.pack("ll", 60, 0)
# A socket's events as plain ints: `sock.get(EVENTS) & POLLIN` says a message is
# waiting. (pyzmq's enum constants cost microseconds an `&`: these are on the
# path of every message.)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
RECONNECT_IVL_MS = 10
RECONNECT_IVL_MAX_MS = 1000


# A client connects two DEALERs; their routing ids are its id plus one of
# these suffixes, so the node can always tell which socket a frame came from
# and where replies go, whatever bytes the id itself holds.
TX_SUFFIX = b">"   # the client's sending socket
RX_SUFFIX = b"<"   # the client's receiving socket
PEER_SUFFIX = b"^"  # another node's DEALER: its routing id is its node id + this
JOIN_SUFFIX = b"+"  # a joining node's DEALER to the address it was given (see peer_dealer)

# The largest frame each TCP ROUTER takes. libzmq applies it before
# authentication too: without it, a stranger's handshake frame can claim any
# size, and the node buffers whatever it sends until the handshake times out.
OBJECT_REQUEST_MAX = 64 << 10   # pull requests are ~40 bytes
PEER_FRAME_MAX = 256 << 20      # a peer's frame: one message, or a batch split at
PEER_BATCH_BYTES = 16 << 20     # ... this many bytes (peers.Batcher); a single message
                                # over PEER_FRAME_MAX is not sent (peers.Peers.flush)
HANDSHAKE_IVL_MS = 10_000       # a TCP handshake not done by then is dropped (libzmq: 30 s)
PEER_HWM = 1_000            # frames queued to one peer before sends are refused (a frame
                            # carries everything due to that peer in one loop turn)
TCP_KEEPALIVE_IDLE_S = 10   # a silent dead TCP link is noticed by gossip first anyway


ZAP_DOMAIN = b"zfabric"    # what our CURVE servers ask the ZAP handler (auth.Gate) about
# `key` below is an auth.ClusterKey (its Z85 `public` and `secret`), or None: a
# node started with --insecure-no-auth, whose TCP sockets are plain.


def make_server(sock: zmq.Socket, key) -> None:
    """A TCP socket that accepts connections: CURVE server, checked by the ZAP handler."""
    if key is None:
        return
    sock.curve_server = True
    sock.curve_secretkey = key.secret
    sock.zap_domain = ZAP_DOMAIN


def make_client(sock: zmq.Socket, key) -> None:
    """A TCP socket that connects to another node: CURVE client with the cluster key."""
    if key is None:
        return
    sock.curve_serverkey = key.public
    sock.curve_publickey = key.public
    sock.curve_secretkey = key.secret


def _attach(sock: zmq.Socket, bind_or_connect, endpoint: str) -> zmq.Socket:
    """`sock.bind(endpoint)` or `sock.connect(endpoint)`; a socket that cannot is closed."""
    try:
        bind_or_connect(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


def context() -> zmq.Context:
    return zmq.Context()


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def client_router(ctx: zmq.Context, ipc_endpoint: str) -> zmq.Socket:
    """The node's ROUTER for local clients (drivers, workers, the CLI), bound on
    ipc in the session dir: only the node's user can enter that dir, and nothing
    that arrives here came over a network."""
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    return _attach(sock, sock.bind, ipc_endpoint)


def peer_router(ctx: zmq.Context, host: str, port: int,
                key) -> tuple[zmq.Socket, str]:
    """The node's scheduler ROUTER for other nodes, on TCP (port 0 picks one): a
    CURVE server that only holders of the cluster key get through. Returns it
    and its endpoint."""
    sock = _tcp(ctx.socket(zmq.ROUTER))   # receive-only: peers answer through their DEALERs
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, PEER_FRAME_MAX)
    return _bind_tcp(sock, host, port, key)


def _bind_tcp(sock: zmq.Socket, host: str, port: int,
              key) -> tuple[zmq.Socket, str]:
    make_server(sock, key)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    _attach(sock, sock.bind, f"tcp://{host}:{port or '*'}")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def direct_listener(path: str) -> socket.socket:
    """(a worker) Where the driver that leases it connects its direct line
    (node/direct.py): a Unix stream socket in the session dir, which only the
    node's user enters. Accepting does not block (its pump polls it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(path)   # (left by a dead worker of the same id: not ours to keep)
        except FileNotFoundError:
            pass
        sock.bind(path)
        sock.listen(DIRECT_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def direct_line(path: str) -> socket.socket:
    """(a driver granted a lease) Its direct line to the worker listening at `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return _line(sock)


def direct_accept(listener: socket.socket) -> socket.socket:
    """(a worker) The line of a driver that connected (OSError: none did after all)."""
    sock, _ = listener.accept()
    sock.setblocking(True)
    return _line(sock)


def _line(sock: socket.socket) -> socket.socket:
    """A direct line blocks (no Python timeout: no poll before each read), but a
    read or write that stalls fails (the kernel's timeouts, above)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, DIRECT_READ_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, DIRECT_WRITE_TIMEOUT)
    return sock


def client_dealer(ctx: zmq.Context, identity: bytes, endpoint: str,
                  recv_timeout_ms: int = -1) -> zmq.Socket:
    """A local client's DEALER to its node (`recv_timeout_ms`: a blocking receive
    raises zmq.Again after that long; -1: it waits for ever)."""
    sock = _common(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.RCVTIMEO, recv_timeout_ms)
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


def peer_dealer(ctx: zmq.Context, node_id: bytes, address: str, key,
                join: bool = False) -> zmq.Socket:
    """Our DEALER to another node's scheduler ROUTER (send-only: it answers
    through its own DEALER to us). A join goes out on a socket of its own
    (`join`): the address we were given may be another name of the node we
    later reach at its advertised address: two live connections with one
    identity would take the routing id from each other (ROUTER_HANDOVER)."""
    sock = _tcp(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IDENTITY, node_id + (JOIN_SUFFIX if join else PEER_SUFFIX))
    make_client(sock, key)
    return _attach(sock, sock.connect, address)


def object_router(ctx: zmq.Context, host: str, port: int,
                  key) -> tuple[zmq.Socket, str]:
    """The node's object ROUTER, serving chunk pulls (a CURVE server like the
    scheduler's); returns it and its endpoint."""
    sock = _tcp(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 0)  # bounded by the pullers' credit windows
    sock.setsockopt(zmq.MAXMSGSIZE, OBJECT_REQUEST_MAX)   # a bigger one is cut off, unread
    return _bind_tcp(sock, host, port, key)


def pull_dealer(ctx: zmq.Context, address: str, key) -> zmq.Socket:
    """A DEALER to a holder's object ROUTER, for chunk requests and their answers."""
    sock = _tcp(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.SNDHWM, 0)  # at most `window` requests per pull are in flight
    make_client(sock, key)
    sock.connect(address)
    return sock


def zap_handler(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """The REP socket libzmq asks whether a CURVE client may in (auth.Gate answers)."""
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    return _attach(sock, sock.bind, endpoint)


def probe_dealer(ctx: zmq.Context, key) -> zmq.Socket:
    """A throwaway DEALER that only shakes hands with a node (auth.probe)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    make_client(sock, key)
    return sock


def stranger(ctx: zmq.Context, socket_type: int, curve=None) -> zmq.Socket:
    """A socket of any type as someone else would make it, to aim at a node's
    ports (zfabric.testing.portfuzz): plain, or with `curve` = (the server's
    public key, a key pair of its own) a CURVE client. Never used by a node."""
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        server_public, own = curve
        sock.curve_serverkey = server_public
        sock.curve_publickey = own.public
        sock.curve_secretkey = own.secret
    return sock
