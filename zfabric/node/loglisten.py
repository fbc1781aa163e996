"""A driver's log listener: its tasks' output, printed in the driver's terminal.

    driver process                                      its node
    LogListener (thread "zfabric-logs")
      DEALER (id "l..." + "<") --Listen(job, on)-->       client ROUTER (core/logroute.py)
                               <--LogLines-- ...        (its own workers' lines, and the
                                                         lines peers ran for this job)
      LogFolder (core/logfold.py) --> sys.stdout / sys.stderr:
          (make_array pid=4242 node=3fa2c1d09e8b) hello

A thread and a socket of its own, beside the Client's: the client receives
only while the driver waits in get/wait, and output must appear while the
driver does anything else. A task's stdout lines go to the driver's stdout,
its stderr lines to stderr, each prefixed with the function's name, the
worker's pid and its node (`ids.short`). Lines repeated across workers are
folded (core/logfold.py), unless `dedup` is off (ZFABRIC_DEDUP_LOGS=0).

`start` waits for the node to take the Listen (so no line of a task
submitted after init is missed). `close` asks it for no more and prints
what the node had read until then (every line printed before a task on
that node ended; lines from other nodes already on their way may be
missed), then what is still folded, and closes the socket.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

import zmq

from .. import ids
from .. import protocol as p
from ..core.logfold import LogFolder
from . import sockets

log = logging.getLogger("zfabric.client")
POLL_MS = 100          # how often the thread looks at the clock while lines are folded
ANSWER_TIMEOUT = 10.0  # seconds to wait for the node's answer to a Listen


class LogListener:
    def __init__(self, ctx: zmq.Context, endpoint: str, job: bytes, *, dedup: bool,
                 window: float, alive=lambda: True):
        self.job = job
        self.alive = alive            # () -> is the node alive (don't wait for a dead one)
        self.fold = LogFolder(window, enabled=dedup)
        self.malformed = 0
        self.sock = sockets.client_dealer(ctx, b"l" + os.urandom(7) + sockets.RX_SUFFIX,
                                          endpoint)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)   # (close: at once)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self.sock.send(p.encode(p.Listen(job, True)))
        if not self._until_answer():
            self.sock.close(0)
            self._close_pipe()
            raise ConnectionError("the zfabric node did not answer the driver's log listener")
        self.thread = threading.Thread(target=self._run, daemon=True, name="zfabric-logs")
        self.thread.start()

    def close(self) -> None:
        """Print what the node still has for us, then stop."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        self.thread.join(ANSWER_TIMEOUT + 1)
        if not self.thread.is_alive():
            self._close_pipe()

    def _close_pipe(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # asleep until a message or close(); while lines are folded, the
                # clock is looked at every POLL_MS (their windows)
                ready = dict(self._poller.poll(POLL_MS if self.fold.pending() else None))
                if self.sock in ready:
                    self._take()
                self._show(self.fold.expire(time.monotonic()))
            self.sock.send(p.encode(p.Listen(self.job, False)), zmq.NOBLOCK)
            self._until_answer()
            self._show(self.fold.flush())
        except zmq.ZMQError as e:   # (the context was closed under us: nothing to print to)
            log.debug("log listener stopped: %s", e)
        finally:
            self.sock.close(0)

    def _until_answer(self) -> bool:
        """Take what arrives until the node's answer (a LogLines without output)."""
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            if self.sock.poll(POLL_MS) and self._take():
                return True
            if not self.alive():
                return False
        return False

    def _take(self) -> bool:
        """Show every message waiting; True if the node's answer was among them."""
        answered = False
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return answered
            try:
                msg = p.decode(data)
                messages = [p.decode(m) for m in msg.messages] if type(msg) is p.Batch else [msg]
            except p.ProtocolError as e:
                self._malformed(str(e))
                continue
            for msg in messages:
                if type(msg) is not p.LogLines:
                    self._malformed(f"a {type(msg).__name__}")
                elif not msg.output:
                    answered = True
                else:
                    self._lines(msg)

    def _lines(self, msg: p.LogLines) -> None:
        node = ids.short(msg.sender)
        now = time.monotonic()
        shown = []
        for name, pid, stream, lines, dropped in msg.output:
            source = (node, pid, name.rpartition(".<locals>.")[2])   # (a nested def: its name)
            if dropped:
                shown.append((source, stream, f"[zfabric: {dropped} lines dropped: the task "
                                              "printed faster than its lines travel; all are "
                                              "in its node's session dir, logs/]"))
            shown += self.fold.add(source, stream, lines, now)
        self._show(shown)

    def _malformed(self, what: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            log.warning("the driver's log listener dropped a message from its node: %s", what)

    @staticmethod
    def _show(shown: list) -> None:
        """Print (source, stream, text) items, each stream's in one write."""
        if not shown:
            return
        out, err = [], []
        for (node, pid, name), stream, text in shown:
            (out if stream == 1 else err).append(f"({name} pid={pid} node={node}) {text}\n")
        for lines, stream in ((out, sys.stdout), (err, sys.stderr)):
            if lines and stream is not None:
                try:
                    stream.write("".join(lines))
                    stream.flush()
                except (OSError, ValueError):   # closed or gone: nowhere to print
                    pass


def start(client, endpoint: str, config) -> LogListener:
    """The listener of a driver's job; from now on its tasks carry the job."""
    listener = LogListener(client.ctx, endpoint, ids.job_id(client.node_id, client.id),
                           dedup=config.dedup_logs, window=config.log_dedup_window,
                           alive=client.node_alive)
    client.job = listener.job
    return listener
