"""The cluster key, and who may talk to a node over TCP.

A cluster shares one CURVE key pair, the *cluster key*, kept in a file of
mode 0600 (`start --head` writes it; `--cluster-key FILE` names one). Every
TCP socket of a node is a CURVE server with the cluster's secret key (its
scheduler and object ROUTERs) or a CURVE client that presents the cluster's
key pair (its DEALERs to peers and holders). CURVE encrypts and
authenticates the link; the node's ZAP handler (`Gate`) then admits a client
only if the public key it proved it holds is the cluster's. So a process
without the key file cannot complete a handshake: nothing it sends reaches
the node's decoder, let alone the unpickler.

    key file ("cluster.key", 0600):
        # zfabric cluster key: whoever can read this file can run code on the cluster.
        zfabric-cluster-key-1 <secret key, Z85>

Local processes (drivers, workers, the CLI) never use TCP: they reach their
node over ipc in the session dir, which only its user can enter.

`probe(address, key)` answers, before anything starts, whether the node at
an address admits a key; `find_key_for(address, records)` picks the key of a
local node of the same cluster, so a process of the same user on a machine
that already runs a node joins without being given the file.

The ZAP handler runs in the node's own poll loop (RFC 27: one REP socket on
`inproc://zeromq.zap.01`, bound before any TCP socket, since libzmq admits
everyone while no handler is bound). pyzmq's `zmq.auth` authenticators run
asyncio in a thread; the node keeps to its single loop instead.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
import time
from dataclasses import dataclass

import zmq
from zmq.utils import z85

from ..exceptions import AuthenticationError
from . import sockets

log = logging.getLogger("zfabric.node")

KEY_FILE_NAME = "cluster.key"
MAGIC = "zfabric-cluster-key-1"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
PROBE_TIMEOUT = 5.0     # seconds to wait for a node to answer a handshake


@dataclass(frozen=True)
class ClusterKey:
    """The cluster's CURVE key pair (both Z85-encoded, 40 bytes each)."""
    public: bytes
    secret: bytes = b""

    @property
    def fingerprint(self) -> str:
        """A short name of the key for logs and messages (a hash of its public half)."""
        return hashlib.blake2b(self.public, digest_size=4).hexdigest()

    def __repr__(self) -> str:   # the secret never lands in a log or a traceback
        return f"ClusterKey({self.fingerprint})"


def curve_available() -> bool:
    return bool(zmq.has("curve"))


def generate() -> ClusterKey:
    public, secret = zmq.curve_keypair()
    return ClusterKey(public, secret)


def create(path: str) -> ClusterKey:
    """Write a new key to `path` (mode 0600, never over an existing file)."""
    return write(path, generate())


def write(path: str, key: ClusterKey) -> ClusterKey:
    """Write `key` to a new file `path` (mode 0600, never over an existing file)."""
    text = ("# zfabric cluster key: whoever can read this file can run code on the cluster.\n"
            f"{MAGIC} {key.secret.decode()}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return key


def read(path: str) -> ClusterKey:
    """The key in `path`; AuthenticationError (one line) if it is not one, or if
    other users may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise AuthenticationError(f"no cluster key file at {path}") from None
    except OSError as e:
        raise AuthenticationError(f"cannot read the cluster key file {path}: "
                                  f"{e.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise AuthenticationError(f"the cluster key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise AuthenticationError(
                f"the cluster key {path} is readable by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}): `chmod 600 {path}` and try again")
        text = f.read(4096)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == MAGIC:
            secret = parts[1].encode()
            try:
                return ClusterKey(zmq.curve_public(secret), secret)
            except (zmq.ZMQError, ValueError):
                break
    raise AuthenticationError(f"{path} is not a zfabric cluster key file")


def load_or_create(path: str) -> tuple[ClusterKey, bool]:
    """The key in `path`, made there first if the file is missing; (key, created)."""
    try:
        return create(path), True
    except FileExistsError:
        return read(path), False


class Gate:
    """The node's ZAP handler: admits a CURVE client only if it proved it holds
    the cluster key.

    Construct it (it binds) before any CURVE server socket binds. The loop polls
    `socket` and calls `serve()` when it is readable; `serve` answers and
    returns the refusals as (client address, reason) pairs.
    """

    def __init__(self, ctx: zmq.Context, key: ClusterKey):
        self._public = z85.decode(key.public)
        self.socket = sockets.zap_handler(ctx, ZAP_ENDPOINT)

    def serve(self) -> list[tuple[str, str]]:
        """Answer every pending ZAP request; returns the refusals."""
        denied = []
        while True:
            try:
                request = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return denied
            self.socket.send_multipart(self._answer(request, denied))

    def _answer(self, request: list[bytes], denied: list) -> list[bytes]:
        if len(request) < 6:   # only libzmq writes here: cannot happen, answer anyway
            return [b"1.0", request[1] if len(request) > 1 else b"", b"500",
                    b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if (version == b"1.0" and domain == sockets.ZAP_DOMAIN and mechanism == b"CURVE"
                and credentials == [self._public]):
            return [b"1.0", request_id, b"200", b"OK", b"peer", b""]
        reason = "wrong cluster key" if mechanism == b"CURVE" else \
            f"no cluster key ({mechanism.decode(errors='replace')})"
        denied.append((address.decode(errors="replace"), reason))
        return [b"1.0", request_id, b"400", b"not a holder of the cluster key", b"", b""]

    def close(self, linger: int = 0) -> None:
        self.socket.close(linger)


HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "not a ZMTP/CURVE handshake",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused by the cluster key check",
}


class HandshakeWatch:
    """Handshake failures on a server socket (bytes that are not a CURVE
    handshake with our key never reach our code: this is how they are counted).
    The loop polls `socket` and calls `take()` for (endpoint, reason) pairs.
    Failures the Gate refused are left to the Gate (it knows the address)."""

    _count = 0

    def __init__(self, sock: zmq.Socket, name: str):
        HandshakeWatch._count += 1
        events = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        self.socket = sock.get_monitor_socket(
            events, addr=f"inproc://zfabric-watch-{os.getpid()}-{HandshakeWatch._count}")
        self._watched = sock
        self.name = name

    def take(self) -> list[tuple[str, str]]:
        out = []
        while True:
            try:
                event = _monitor_event(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                return out
            reason = HANDSHAKE_FAILURES.get(event)
            if reason:
                out.append((self.name, reason))

    def close(self) -> None:
        try:
            self._watched.disable_monitor()
        except zmq.ZMQError:
            pass
        self.socket.close(0)


def _monitor_event(mon: zmq.Socket, flags: int = 0) -> int:
    """The event id of the next message on a monitor socket: a 6-byte frame (event
    id u16, value u32), then the endpoint. (zmq.utils.monitor does the same, but
    importing it imports asyncio: 15 ms more for every node.)"""
    frames = mon.recv_multipart(flags)
    if len(frames) != 2 or len(frames[0]) != 6:
        return -1   # (not a monitor event: nothing libzmq sends)
    return struct.unpack("=hi", frames[0])[0]


# -- before joining --------------------------------------------------------------------------

def probe(ctx: zmq.Context, address: str, key: ClusterKey | None,
          timeout: float = PROBE_TIMEOUT) -> None:
    """Does the node at `address` admit `key` (None: no authentication)?

    Returns if a handshake succeeded; AuthenticationError if the node refused
    it; ConnectionError if nothing answered within `timeout`. Sends nothing
    beyond the handshake.
    """
    sock = sockets.probe_dealer(ctx, key)
    HandshakeWatch._count += 1
    mon = sock.get_monitor_socket(addr=f"inproc://zfabric-probe-{os.getpid()}-"
                                       f"{HandshakeWatch._count}")
    connected = False
    deadline = time.monotonic() + timeout
    try:
        sock.connect(address)
        while mon.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            event = _monitor_event(mon)
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_CONNECTED:
                connected = True
            elif event in HANDSHAKE_FAILURES:
                if key is None:
                    raise AuthenticationError(
                        f"the cluster at {address} requires a cluster key: pass "
                        f"--cluster-key FILE (init(cluster_key=FILE)); the first node wrote "
                        f"it to {KEY_FILE_NAME} in its session dir")
                raise AuthenticationError(
                    f"the cluster at {address} refused our cluster key ({key.fingerprint}): "
                    "wrong key, or that cluster runs without authentication")
            if time.monotonic() >= deadline:
                break
        if connected:
            raise AuthenticationError(f"the node at {address} did not complete a handshake "
                                      f"within {timeout:g} s")
        raise ConnectionError(f"no zfabric node answered at {address} within {timeout:g} s")
    finally:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        mon.close(0)
        sock.close(0)


def find_key_for(ctx: zmq.Context, address: str, records: list[dict]) -> str | None:
    """The key file of a node on this machine (`records`, this user's) that the
    node at `address` admits; None if there is none."""
    tried = set()
    for info in sorted(records, key=lambda r: r.get("address") != address):
        path = info.get("cluster_key")
        if not path or path in tried:
            continue
        tried.add(path)
        try:
            probe(ctx, address, read(path), timeout=2.0)
        except (AuthenticationError, ConnectionError):
            continue
        return path
    return None
