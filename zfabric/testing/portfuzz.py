"""Hostile traffic at a node's TCP ports, and what came of it.

    Shot: one connection -- raw TCP bytes, or a ZeroMQ socket of any type,
          plain, CURVE with a key pair of its own ("own key") or CURVE with
          the cluster key -- and the messages it sends
      --fire--> the node's scheduler ROUTER ("peer") or object ROUTER ("object")
    fire waits until the node's stats counted what it must have dropped
    (`expected`, from the shots alone), then returns a `Report`: what was
    sent, what the node counted, and anything it answered.

What a node must do with each (docs/architecture.md, node/auth.py): bytes
without the cluster key never reach its code, are counted as
`rejected_unauthenticated` and are never answered; with the key they reach
the decoder, and what does not decode is counted as `rejected_malformed`.

`volleys()` draws shots with hypothesis (a test dependency, as in
hostile.py: nothing in the package imports this module); tests/node/
test_fuzz_ports.py and bench/fuzz.py fire them at real nodes.
"""
from __future__ import annotations

import hashlib
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import zmq
from hypothesis import strategies as st

from .. import ids
from .. import protocol as p
from ..node import auth, sockets

SOCKET_TYPES = ("REQ", "REP", "DEALER", "ROUTER", "PUB", "SUB", "XPUB", "XSUB",
                "PUSH", "PULL", "PAIR", "STREAM")
# REP cannot send before it received, SUB and PULL cannot send at all: they
# connect, shake hands (or fail to) and listen.
LISTEN_ONLY = frozenset({"REP", "SUB", "PULL"})
# The only types a ROUTER accepts (ZMTP's socket-type check): with the key,
# their messages reach the decoder; the others fail the handshake.
REACH_ROUTER = frozenset({"DEALER", "REQ", "ROUTER"})
MODES = ("plain", "own key", "cluster key")
UNAUTHENTICATED = ("plain", "own key")
# raw TCP: random bytes (kept open), a whole ZMTP 3 greeting with a garbled
# mechanism and tail, a greeting cut short then closed, connect and close, a
# CURVE greeting then a handshake frame that claims to be huge
RAW = ("bytes", "greeting", "truncated", "close", "oversize")
PORTS = ("peer", "object")
SIGNATURE = b"\xff" + b"\0" * 8 + b"\x7f"
CURVE_MECHANISM = b"CURVE".ljust(20, b"\0")
GREETING_SIZE = 64
COUNTERS = ("rejected_malformed", "rejected_unauthenticated", "rejected_nonsense")
SETTLE_POLL = 0.2       # seconds between looks at the node's counters
GRACE = 0.3             # seconds more listening for answers once they are reached
NODE_END = b"node"      # what our ROUTER and STREAM sockets call the node's end


@dataclass
class Shot:
    port: str             # "peer" or "object"
    mode: str             # "raw", or one of MODES
    kind: str             # a socket type, or one of RAW
    messages: list        # each a list of frames (raw: [[bytes]])
    identity: bytes = b""  # the routing id it presents (DEALER, ROUTER), b"": libzmq's


@dataclass
class Target:
    """A node's two TCP ports and what a stranger may know of it."""
    address: str
    object_address: str
    key: auth.ClusterKey | None   # the cluster key: its public half is the server's key

    def endpoint(self, port: str) -> str:
        return self.address if port == "peer" else self.object_address


@dataclass
class Report:
    sent: Counter = field(default_factory=Counter)         # (mode, kind) -> messages
    connections: Counter = field(default_factory=Counter)  # (port, mode) -> connections
    answered_unauthenticated: list = field(default_factory=list)  # (port, mode, kind, bytes)
    answers: int = 0            # messages the node sent to holders of the key
    expected: dict = field(default_factory=dict)   # counter -> at least this much more
    uncertain: dict = field(default_factory=dict)  # counter -> and at most this much on top
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    settled: bool = False       # the counters reached before + expected

    def grew(self, counter: str) -> int:
        return self.after[counter] - self.before[counter]


# -- what the node must count ----------------------------------------------------------

def _decodes(frame: bytes, port: str) -> bool:
    """Would the node's decoder take this frame (node/loop.py, node/objserver.py)?"""
    try:
        msg = p.decode(frame)
        if port == "object":
            return type(msg) is p.PullChunk
        if type(msg) is p.Batch:
            for inner in msg.messages:
                p.decode(inner)
        return True
    except p.ProtocolError:
        return False


def _routing_id_ok(identity: bytes) -> bool:
    return (identity[-1:] in (sockets.PEER_SUFFIX, sockets.JOIN_SUFFIX)
            and len(identity) == ids.NODE_ID_SIZE + 1)


def expected(shots: list[Shot]) -> tuple[dict, dict]:
    """How much each rejected_* counter must grow at least once these shots
    landed, and how much more it may grow (what libzmq may or may not drop)."""
    least, more = dict.fromkeys(COUNTERS, 0), dict.fromkeys(COUNTERS, 0)
    for shot in shots:
        if shot.mode == "raw":
            least["rejected_unauthenticated"] += _raw_reported(shot)
        elif shot.mode in UNAUTHENTICATED:
            least["rejected_unauthenticated"] += shot.kind != "STREAM"   # STREAM: raw TCP
        elif shot.kind in REACH_ROUTER:
            n = sum(_malformed(shot, frames) for frames in shot.messages)
            (more if _over_limit(shot) else least)["rejected_malformed"] += n
    return least, more


def _over_limit(shot: Shot) -> bool:
    """Does the shot send a frame over the object port's limit? libzmq drops the
    connection there and then (not counted); what the socket sends after it
    may or may not get through on its next connection."""
    return shot.port == "object" and any(
        len(f) > sockets.OBJECT_REQUEST_MAX for frames in shot.messages for f in frames)


def _raw_reported(shot: Shot) -> bool:
    """Does libzmq report this raw connection as a failed handshake (so that the
    node counts it)? It does for a hang-up during a ZMTP 3 greeting and for a
    mechanism other than CURVE. It drops without a word -- only a disconnect,
    which the node cannot tell from a peer leaving -- bytes that are not ZMTP,
    ZMTP 1.0/2.0 greetings, and handshake frames it cannot parse: after a CURVE
    greeting the junk that follows is one of those, or not."""
    data = shot.messages[0][0]
    if shot.kind == "close":
        return True
    if shot.kind == "oversize":   # refused (object port) or buffered: no event either way
        return False
    if not data.startswith(b"\xff"):
        return False
    if len(data) > 10 and data[10] < 3:
        return False
    if len(data) < GREETING_SIZE:
        return shot.kind == "truncated"   # a greeting kept open waits for the rest
    return data[12:32] != CURVE_MECHANISM


def _malformed(shot: Shot, frames: list[bytes]) -> bool:
    if shot.kind == "REQ":   # REQ puts an empty delimiter first: never one frame
        return True
    if shot.port == "peer" and not _routing_id_ok(shot.identity):
        return True
    return len(frames) != 1 or not _decodes(frames[0], shot.port)


# -- firing ----------------------------------------------------------------------------

def fire(ctx: zmq.Context, target: Target, shots: list[Shot], stats,
         timeout: float = 30.0, until=None) -> Report:
    """Open every shot's connection, send, listen; return once the node's
    counters (`stats()`: its stats dict) grew by `expected(shots)` -- or
    once `until(report)` holds, if given -- (then GRACE more), or after
    `timeout`. Closes everything it opened."""
    report = Report()
    report.expected, report.uncertain = expected(shots)
    report.before = _counters(stats())
    zsocks, raws = [], []
    try:
        for shot in shots:
            report.connections[(shot.port, shot.mode)] += 1
            if shot.mode == "raw":
                raws.append(_Raw(target, shot, report))
            else:
                zsocks.append(_Zmq(ctx, target, shot, report))
        _listen(zsocks, raws, report, stats, timeout, until or _counted)
    finally:
        for conn in zsocks + raws:
            conn.close()
    return report


def _counters(s: dict) -> dict:
    return {c: s.get(c, 0) for c in COUNTERS}


def _listen(zsocks, raws, report: Report, stats, timeout: float, until) -> None:
    poller = zmq.Poller()
    for z in zsocks:
        poller.register(z.sock, zmq.POLLIN)
    by_sock = {z.sock: z for z in zsocks}
    deadline = time.monotonic() + timeout
    settle_at = None
    next_look = 0.0
    while time.monotonic() < (settle_at or deadline):
        for z in zsocks:
            z.send_pending()
        for sock, _ in poller.poll(20):
            by_sock[sock].receive()
        readable = [r.sock for r in raws if r.sock is not None]
        if readable:
            for s in select.select(readable, [], [], 0)[0]:
                next(r for r in raws if r.sock is s).receive()
        if settle_at is None and time.monotonic() >= next_look:
            next_look = time.monotonic() + SETTLE_POLL
            report.after = _counters(stats())
            if not any(z.pending and z.must_land for z in zsocks) and until(report):
                report.settled = True
                settle_at = time.monotonic() + GRACE
    report.after = _counters(stats())


def _counted(report: Report) -> bool:
    return all(report.grew(c) >= n for c, n in report.expected.items())


class _Zmq:
    """One ZeroMQ socket of a shot."""

    def __init__(self, ctx: zmq.Context, target: Target, shot: Shot, report: Report):
        self.shot, self.report = shot, report
        curve = None
        if shot.mode == "own key":
            curve = (target.key.public, auth.generate())
        elif shot.mode == "cluster key":
            curve = (target.key.public, target.key)
        self.sock = sockets.stranger(ctx, getattr(zmq, shot.kind), curve)
        if shot.identity and shot.kind in ("DEALER", "ROUTER"):
            self.sock.setsockopt(zmq.ROUTING_ID, shot.identity)
        if shot.kind in ("ROUTER", "STREAM"):
            # name the node's end ourselves (the first frame of each send)
            self.sock.setsockopt(zmq.CONNECT_ROUTING_ID, NODE_END)
        if shot.kind == "ROUTER":
            # a ROUTER drops what it cannot route yet: its sends wait for the
            # handshake (ROUTER_MANDATORY says when it is not done)
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.connect(target.endpoint(shot.port))
        self.pending = [] if shot.kind in LISTEN_ONLY else list(shot.messages)
        # what must reach the node's decoder; the rest may stay unsent (a socket
        # whose handshake failed refuses sends, or queues them for a reconnect)
        self.must_land = (shot.mode == "cluster key" and shot.kind in REACH_ROUTER
                          and not _over_limit(shot))
        self.stream = b""   # what a STREAM socket received: raw ZMTP from the node
        self.send_pending()

    def send_pending(self) -> None:
        while self.pending:
            frames = self.pending[0]
            if self.shot.kind == "ROUTER":
                frames = [NODE_END] + frames
            elif self.shot.kind == "STREAM":   # one frame of raw bytes a send
                frames = [NODE_END, b"".join(frames)]
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError as e:   # not routable yet (ROUTER), or at the mark
                if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                    return
                raise
            self.report.sent[(self.shot.mode, self.shot.kind)] += 1
            self.pending.pop(0)
            if self.shot.kind == "REQ":   # one request, then it waits for a reply
                self.pending.clear()

    def receive(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.shot.kind == "STREAM":   # [routing id, raw bytes from the node]
                self.stream += b"".join(frames[1:])
                answer = _beyond_handshake(self.stream)
                if answer:
                    self.report.answered_unauthenticated.append(
                        (self.shot.port, self.shot.mode, "STREAM", answer[:64]))
                    self.stream = b""
            elif self.shot.mode == "cluster key":
                self.report.answers += 1
            else:
                self.report.answered_unauthenticated.append(
                    (self.shot.port, self.shot.mode, self.shot.kind, b"".join(frames)[:64]))

    def close(self) -> None:
        self.sock.close(0)


class _Raw:
    """One raw TCP connection of a shot."""

    def __init__(self, target: Target, shot: Shot, report: Report):
        self.shot, self.report = shot, report
        self.got = b""
        host, port = target.endpoint(shot.port).removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        data = shot.messages[0][0] if shot.messages else b""
        report.sent[("raw", shot.kind)] += 1
        try:
            self.sock.sendall(data)
        except OSError:   # dropped while we sent (a frame over the node's limit)
            self.close()
            return
        if shot.kind in ("truncated", "close"):
            self.close()
        else:
            self.sock.setblocking(False)

    def receive(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:   # reset: the node dropped us
            chunk = b""
        if not chunk:
            self.close()
            return
        self.got += chunk
        answer = _beyond_handshake(self.got)
        if answer:
            self.report.answered_unauthenticated.append(
                (self.shot.port, "raw", self.shot.kind, answer[:64]))
            self.got = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _beyond_handshake(data: bytes) -> bytes:
    """The first message frame (not a greeting or a ZMTP command) in what a
    ZMTP server sent us; b"" if there is none (yet)."""
    if len(data) <= GREETING_SIZE:
        return b""
    i = GREETING_SIZE
    while i < len(data):
        flags = data[i]
        size_len = 8 if flags & 0x02 else 1
        if i + 1 + size_len > len(data):
            return b""
        size = int.from_bytes(data[i + 1:i + 1 + size_len], "big")
        if not flags & 0x04:   # not a command: a message
            return data[i:]
        i += 1 + size_len + size
    return b""


# -- drawing shots -----------------------------------------------------------------------

GARBAGE = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 64 - 1), st.floats(),
                    st.text(max_size=8), st.binary(max_size=24),
                    st.lists(st.integers(-3, 3), max_size=3))


def garbage_frames() -> st.SearchStrategy:
    """Frames that mostly do not decode: random bytes, a real kind byte followed
    by junk, a real kind byte and a msgpack list of the wrong things."""
    kinds = st.sampled_from(sorted(p.MESSAGES))
    return st.one_of(
        st.binary(max_size=64),
        st.builds(lambda k, b: bytes([k]) + b, kinds, st.binary(max_size=48)),
        st.builds(lambda k, v: bytes([k]) + msgpack.packb(v, use_bin_type=True), kinds,
                  st.lists(GARBAGE, max_size=12)))


def greetings() -> st.SearchStrategy:
    """A ZMTP greeting (signature, version, mechanism, as-server, filler) with a
    garbled mechanism and tail; mostly version 3, sometimes 1.0 or 2.0."""
    mechanism = st.one_of(st.sampled_from([b"NULL", b"PLAIN", b"CURVE", b"GSSAPI"]),
                          st.binary(max_size=20)).map(lambda m: m[:20].ljust(20, b"\0"))
    major = st.one_of(st.just(3), st.integers(0, 2))
    return st.builds(lambda v, minor, mech, rest: SIGNATURE + bytes([v, minor]) + mech + rest,
                     major, st.integers(0, 255), mechanism, st.binary(min_size=32, max_size=96))


def raw_payload(kind: str) -> st.SearchStrategy:
    if kind == "bytes":   # anything but a ZMTP signature's first byte
        return st.binary(min_size=1, max_size=256).filter(lambda b: b[0] != 0xff)
    if kind == "greeting":
        return greetings()
    if kind == "truncated":
        return greetings().flatmap(lambda g: st.integers(1, len(g) - 1).map(lambda n: g[:n]))
    if kind == "oversize":
        return st.builds(lambda size, junk: oversize_head(size) + junk,
                         st.integers(1 << 16, 1 << 40), st.binary(max_size=4096))
    return st.just(b"")


def oversize_head(size: int) -> bytes:
    """A CURVE greeting, then the head of a handshake command frame of `size` bytes."""
    greeting = SIGNATURE + bytes([3, 0]) + CURVE_MECHANISM + b"\0" * 32
    return greeting + b"\x06" + size.to_bytes(8, "big")


def oversize_accepted(target: Target, port: str, claim: int, send: int) -> int:
    """Bytes of a `claim`-byte handshake frame a node took in before it dropped
    the connection (up to `send`): a stranger's memory in the node."""
    host, tcp_port = target.endpoint(port).removeprefix("tcp://").rsplit(":", 1)
    sent = 0
    with socket.create_connection((host, int(tcp_port)), timeout=10) as sock:
        try:
            sock.sendall(oversize_head(claim))
            chunk = b"\0" * (1 << 20)
            while sent < send:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:   # reset: refused
            pass
    return sent


def _identity(draw, index: int) -> bytes:
    """A routing id, unique in its volley (two connections with one id would
    take it from each other: the node's ROUTER hands it over)."""
    how = draw(st.sampled_from(["peer", "join", "junk"]))
    if how == "junk":
        return draw(st.binary(min_size=1, max_size=24)) + b"#" + index.to_bytes(2, "big")
    seed = draw(st.binary(max_size=8)) + index.to_bytes(2, "big")
    sender = hashlib.blake2b(seed, digest_size=ids.NODE_ID_SIZE).digest()
    return sender + (sockets.PEER_SUFFIX if how == "peer" else sockets.JOIN_SUFFIX)


@st.composite
def volleys(draw, frame=None, modes=MODES, types=SOCKET_TYPES, ports=PORTS,
            raw: bool = True, per_socket: int = 4) -> list[Shot]:
    """One shot per port, mode and socket type (and raw kind): the frames each
    sends from `frame` (default `garbage_frames()`)."""
    frame = frame if frame is not None else garbage_frames()
    message = st.one_of(frame.map(lambda f: [f]), st.lists(frame, min_size=2, max_size=3))
    shots = []
    for port in ports:
        for mode in modes:
            for kind in types:
                if kind == "STREAM" and mode != "plain":
                    continue   # STREAM speaks raw TCP: it has no CURVE
                msgs = [] if kind in LISTEN_ONLY else draw(
                    st.lists(message, min_size=1, max_size=1 if kind == "REQ" else per_socket))
                shots.append(Shot(port, mode, kind, msgs, _identity(draw, len(shots))))
        for kind in RAW if raw else ():
            shots.append(Shot(port, "raw", kind, [[draw(raw_payload(kind))]]))
    return shots
