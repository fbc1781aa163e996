"""A driver's direct line to its leased worker: one Unix stream socket between
the two processes, no ZeroMQ I/O thread on either side (core/leases.py has the
design; node/lease.py is the driver's side, node/worker.py the worker's).

    worker: listens at its lease endpoint's path (`ids.worker_endpoint`,
            ipc://PATH in the session dir), from before it says Hello
    driver --connect (when granted a lease)--> worker (accepted by its pump)
    driver --frame: Execute--> worker        worker --frame: TaskDone--> driver

A ZeroMQ message crosses two I/O threads (the sender's and the receiver's),
each a thread to wake, and their CPU, on every round trip; here the kernel
wakes the reader itself. A frame is the message's length (4 bytes,
little-endian) then the message (protocol.encode). A frame is written whole
(sendall, which blocks only while the other side's buffer is full: one
Execute or TaskDone is in flight at a time) and read whole once poll says
it began; a reader seeing the line closed, or broken mid-frame, closes its end.
A frame stalled midway for `sockets.DIRECT_READ_TIMEOUT` (a peer dead, hung,
or speaking something else) breaks the line the same way, so a pump never hangs.

`Lines` is what a client's pump (Client._pump) polls beside its rx socket:
the worker's listener and the lines accepted on it, or the driver's line to
its leased worker. Only the pump reads or closes them; another thread that is
done with one retires it (`retire`), and the next pump closes it (a socket
closed while another thread polls it could be a new socket by then).
"""
from __future__ import annotations

import socket
import struct

import zmq

from . import sockets

HEAD = struct.Struct("<I")
MAX_FRAME = (1 << 32) - 1


def endpoint_path(endpoint: str) -> str:
    """The socket file of a lease endpoint (`ipc://PATH`)."""
    return endpoint[len("ipc://"):]


def send(sock: socket.socket, data: bytes) -> None:
    """Write one frame (OSError if the line is closed or broken)."""
    if len(data) > MAX_FRAME:
        raise ValueError(f"a frame of {len(data)} bytes does not fit a direct line")
    sock.sendall(HEAD.pack(len(data)) + data)


def _read(sock: socket.socket, n: int) -> bytes | None:
    """Exactly n bytes; None if the line closed first (a signal may cut a read short)."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got, socket.MSG_WAITALL)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def recv(sock: socket.socket) -> bytes | None:
    """Read one frame; None if the line is closed or broken."""
    try:
        head = _read(sock, HEAD.size)
        if head is None:
            return None
        n = HEAD.unpack(head)[0]   # (a stream that is not ours: the read stalls, and fails)
        return _read(sock, n) if n else b""
    except OSError:
        return None


class Lines:
    """The direct sockets a client's pump polls beside its rx (see the module doc)."""

    def __init__(self, poller: zmq.Poller, listener: socket.socket | None = None):
        self.poller = poller   # (it answers a native socket's events by its fd)
        self.listener = listener
        self.lines: dict[int, socket.socket] = {}   # fd -> line
        self.retired: list[socket.socket] = []
        if listener is not None:
            poller.register(listener.fileno(), zmq.POLLIN)

    def __bool__(self) -> bool:
        return bool(self.listener is not None or self.lines or self.retired)

    def add(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        self.lines[fd] = sock
        self.poller.register(fd, zmq.POLLIN)

    def retire(self, sock: socket.socket) -> None:
        """(any thread) Stop polling `sock`; the next pump closes it."""
        fd = sock.fileno()
        if self.lines.get(fd) is sock:
            del self.lines[fd]
            self.poller.unregister(fd)
        self.retired.append(sock)

    def receive(self, rx: zmq.Socket, timeout: float) -> list:
        """(the pump) Frames that came, waiting up to `timeout`: [(frame, line)],
        line None for rx's. A worker takes a frame waiting on rx first, without a poll."""
        while self.retired:
            self.retired.pop().close()
        listener = self.listener   # (a worker's rx often holds its next tasks: prefetched)
        if listener is not None and rx.get(sockets.EVENTS) & sockets.POLLIN:
            return [(rx.recv(zmq.NOBLOCK), None)]
        out = []
        for which, _ in self.poller.poll(int(timeout * 1000)):
            if which is rx:
                try:
                    out.append((rx.recv(zmq.NOBLOCK), None))
                except zmq.Again:
                    pass
            elif listener is not None and which == listener.fileno():
                self._accept()
            else:
                sock = self.lines.get(which)   # (retired meanwhile by another thread: None)
                if sock is None:
                    continue
                data = recv(sock)
                if data is None:   # (the other end left: a leased worker's death
                    self.retire(sock)   # reaches a driver from its node)
                else:
                    out.append((data, sock))
        return out

    def _accept(self) -> None:
        try:
            sock = sockets.direct_accept(self.listener)
        except OSError:   # (the driver gave up connecting meanwhile)
            return
        self.add(sock)

    def close(self) -> None:
        for sock in [*self.lines.values(), *self.retired] + (
                [self.listener] if self.listener else []):
            sock.close()
        self.lines, self.retired, self.listener = {}, [], None
