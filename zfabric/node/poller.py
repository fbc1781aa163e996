"""The node loop's poller: zmq.Poller's interface at the cost of one poll(2) a wait.

    NodeLoop, Processes, Pulls --register(socket or fd)--> Poller
    NodeLoop._poll --poll(timeout)--> [(socket or fd, POLLIN), ...]

`zmq.Poller` (libzmq's zmq_poll) asks every ZeroMQ socket it holds for its
events twice a call (a first pass that does not wait, then the wait), and
each ask is a system call of its own: with the node's half a dozen sockets
(client, peer and object ROUTERs, the ZAP handler, the handshake monitors,
pull DEALERs), a sync round trip cost the node some thirty system calls.
This one polls each socket's `ZMQ_FD` with the plain fds in one poll(2) and
asks a socket for its events only when its fd says something happened, or
when the socket may hold a message its fd will not announce again:

- `ZMQ_FD` is readable when the socket has news to process (most often: a
  message came), not while a message waits. Once something processes that news (asking the events, a
  send, a receive), a message still waiting is announced by nothing. So a
  socket this returns as ready is asked again at the next call (its reader
  may not have taken everything: the loop reads at most `RECV_BATCH`), and
  so is every *busy* socket, one the node may send on at any moment (the
  client ROUTER, pull DEALERs): `register(..., quiet=False)`, the default.
- A *quiet* socket (`quiet=True`) is one the node only reads, or answers
  only when it is read (the peer and object ROUTERs, the ZAP handler,
  monitors): asked only when its fd fires, and at the call after it was
  returned.

Single-threaded, like the loop that owns it.
"""
from __future__ import annotations

import select

import zmq

from .sockets import EVENTS, POLLIN

_READ = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class Poller:
    def __init__(self):
        self._poll = select.poll()
        self._fd_of: dict = {}            # what was registered -> its fd
        self._socket_at: dict = {}        # fd -> zmq socket
        self._plain_at: dict = {}         # fd -> the fd or object registered
        self._busy: list = []             # sockets asked before every wait
        self._quiet: set = set()          # sockets asked when their fd fires
        self._again: list = []            # quiet sockets returned last time: ask again

    def register(self, what, flags: int = zmq.POLLIN, *, quiet: bool = False) -> None:
        """Watch a zmq socket, or an fd (an int or an object with fileno()), for input."""
        if what in self._fd_of:
            return
        if isinstance(what, zmq.Socket):
            fd = what.get(zmq.FD)
            self._socket_at[fd] = what
            if quiet:
                self._quiet.add(what)
                self._again.append(what)   # (it may hold messages already)
            else:
                self._busy.append(what)
        else:
            fd = what if isinstance(what, int) else what.fileno()
            self._plain_at[fd] = what
        self._fd_of[what] = fd
        self._poll.register(fd, _READ)

    def unregister(self, what) -> None:
        fd = self._fd_of.pop(what, None)
        if fd is None:
            return
        self._poll.unregister(fd)
        self._plain_at.pop(fd, None)
        sock = self._socket_at.pop(fd, None)
        if sock is not None:
            self._quiet.discard(sock)
            self._busy = [s for s in self._busy if s is not sock]
            self._again = [s for s in self._again if s is not sock]

    def poll(self, timeout_ms: int | None = None) -> list:
        """[(socket or fd as registered, POLLIN)] to read, waiting up to `timeout_ms`
        (None: for ever) if none is ready at once. A socket whose fd fired is
        returned without asking its events (a system call of its own): its
        news is most often a message, and its reader's first receive processes
        it; a reader must take zmq.Again as "nothing after all"."""
        ready = []
        for sock in self._busy:
            if sock.get(EVENTS) & POLLIN:
                ready.append((sock, POLLIN))
        for sock in self._again:
            if sock.get(EVENTS) & POLLIN:
                ready.append((sock, POLLIN))
        socket_at = self._socket_at
        for fd, _ in self._poll.poll(0 if ready else timeout_ms):
            sock = socket_at.get(fd)
            if sock is None:
                ready.append((self._plain_at.get(fd, fd), POLLIN))
            elif all(s is not sock for s, _ in ready):   # (its reader takes zmq.Again)
                ready.append((sock, POLLIN))
        quiet = self._quiet
        self._again = [s for s, _ in ready if s in quiet] if quiet else []
        return ready
