"""The node's poll loop: bytes and time in, effects out.

    client ROUTER (ipc) --decode--> ClientMessage(s) --------------------------+
    peer ROUTER (tcp, CURVE) --decode--> PeerMessage --------------------------+
    ZAP gate, handshake watches --> MessageRejected (unauthenticated) ----------+
    a frame that does not decode --> MessageRejected (malformed) ---------------+
    pulls.py: pull DEALERs --chunk written--> ChunkArrived / ChunkFailed -----+
    processes.py: zygote reports, pidfds --> WorkerExited / ClientGone / -----+--> Fabric.handle
                  ZygoteStarted / ZygoteDied / ZygoteStartFailed -----------+        |
    peers.py: a peer send that failed --> PeerUnreachable / PeerSendBlocked --+        |
    logmon.py: workers' log files (every tick; a worker's at its TaskDone while
               there are peers, and at its exit; all when a listener leaves)
               --> WorkerOutput ---------------------------------------------+        |
    timer -----> processes.on_tick (a held-back zygote restart), then Tick ---+        |
                 (every tick_interval; idle_tick[0] while idle: see _next_tick)
    effects <--------------------------------------------------------------------------'
      one handler per effect type (NodeLoop.effect_handlers):
      Send -> client Batcher -> scheduler ROUTER    PeerSend / JoinSend / ForgetPeer -> peers.py
      RequestChunk / SealPull / AbortPull -> pulls.py   DeleteObject -> recycle.py, objserver.py
      SpillObject / RestoreObject / DeleteSpilled -> spiller.py (a thread; its outcomes
        come back through a pipe the poller watches: ObjectSpilled / SpillFailed /
        ObjectRestored / RestoreFailed)
      SpawnWorker (its log files first: logmon.py) / StopWorker / KillWorker /
        InterruptWorker / WatchClient -> processes.py
      StopNode -> leave the loop                   Log -> the node's log
    object ROUTER (tcp, CURVE): PullChunk --> objserver.py answers from the store
                                               (stateless, no event)

Roles come from the socket, never from what a sender says: a message on the
client ROUTER is a local client's (it came through the session dir's ipc
socket); one on the peer ROUTER is a node's that proved it holds the cluster
key (auth.py), and its routing id must be a node id.

Owns the poller, the signal wake-up pipe, the timer (one Tick every
`tick_interval`), decoding what arrives on the two ROUTERs, the client
batcher (what one loop turn owes each local client, sent as one frame), and
the table from effect type to handler. It never reads the fabric's state:
it asks `Fabric.ready()`, `joining()` and `expects_chunk()`. node.py's
`serve` builds it, runs it, and stops and closes it.

Single-threaded: only this loop touches the node's state. An unexpected
exception stops the node loudly (the caller logs it and cleans up); a
malformed message is dropped and handed to the fabric as MessageRejected,
which counts it and logs it once per sender.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import zmq

from .. import ids
from .. import protocol as p
from ..core import effects as fx
from ..core import events as ev
from . import sockets, store
from .objserver import ObjectServer
from .peers import Batcher, Peers
from .poller import Poller
from .processes import Processes
from .pulls import Pulls
from .recycle import Freer
from .spiller import Spiller

log = logging.getLogger("zfabric.node")
RECV_BATCH = 512   # messages taken from a ROUTER per wake-up
_CLIENT_SUFFIXES = (sockets.TX_SUFFIX, sockets.RX_SUFFIX)
_PEER_SUFFIXES = (sockets.PEER_SUFFIX, sockets.JOIN_SUFFIX)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class NodeLoop:
    def __init__(self, fabric, *, ctx: zmq.Context, client_router: zmq.Socket,
                 peer_router: zmq.Socket, object_router: zmq.Socket, key, gate, watches: list,
                 node_id: bytes, ipc_endpoint: str,
                 session_dir: str, store_dir: str, spill_dir: str, spill_copy_chunk: int,
                 recycle: tuple[int, float], tick_interval: float, logs, stop_grace: float,
                 idle_tick: tuple[float, float] | None = None,
                 zygote_backoff: tuple[float, float] = (0.1, 5.0),
                 embedded_driver_pid: int | None = None, on_ready=None,
                 zygote=None, zygote_preload: str = ""):
        self.fabric = fabric
        self.router = client_router
        self.peer_router = peer_router
        self.object_router = object_router
        self.gate = gate          # auth.Gate (None: no authentication)
        self.watches = watches    # auth.HandshakeWatch per CURVE server socket
        self._auth_socks = frozenset([w.socket for w in watches]
                                     + ([gate.socket] if gate is not None else []))
        self.store_dir = store_dir
        self.tick_interval = tick_interval
        # (interval, after): tick every `interval` once `after` seconds passed with no
        # work (_worked); None: always every tick_interval
        self.idle_tick = idle_tick
        self._worked = float("-inf")   # (monotonic) the last sign of work
        self.embedded_driver_pid = embedded_driver_pid
        self.on_ready = on_ready   # called once, when the pre-started workers are up
        self.poller = Poller()
        self.clients = Batcher()    # local client id -> what this turn owes it
        self.peers = Peers(ctx, node_id, key)
        self.pulls = Pulls(ctx, self.poller, store_dir, key,
                           on_reject=lambda source, reason: self._reject(source, "malformed",
                                                                         reason))
        self.objects = ObjectServer(object_router, store_dir, spill_dir,
                                    on_reject=lambda source, reason: self._reject(
                                        source, "malformed", reason))
        self.spiller = Spiller(store_dir, spill_dir, chunk=spill_copy_chunk)
        # (max bytes, seconds) of freed store files kept to be written over
        self.freer = Freer(store_dir, max_bytes=recycle[0], seconds=recycle[1])
        self.logs = logs          # logmon.LogMonitor: the workers' log files
        self.processes = Processes(self.poller, self._process_event, ipc_endpoint=ipc_endpoint,
                                   session_dir=session_dir, log_dir=logs.log_dir,
                                   stop_grace=stop_grace, restart_backoff=zygote_backoff[0],
                                   restart_backoff_max=zygote_backoff[1],
                                   on_worker_gone=lambda pid: store.remove_partials(store_dir,
                                                                                    pid),
                                   preload=zygote_preload, zygote=zygote)
        self.running = False
        self.stop_reason = ""
        self._draining = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.effect_handlers = self._effect_table()

    def _effect_table(self) -> dict:
        """Effect type -> what carries it out (every effect that leaves the fabric)."""
        clients, peers, pulls, processes = self.clients, self.peers, self.pulls, self.processes
        return {
            fx.Send: lambda e: clients.put(e.to, e.msg),
            fx.PeerSend: lambda e: peers.send(e.address, e.msg),
            fx.JoinSend: self._join_send,
            fx.ForgetPeer: self._forget_peer,
            fx.RequestChunk: self._request_chunk,
            fx.SealPull: lambda e: pulls.seal(e.oid),
            fx.AbortPull: lambda e: pulls.abort(e.oid),
            fx.DeleteObject: self._delete_object,
            fx.SpillObject: self._spill_object,
            fx.RestoreObject: lambda e: self.spiller.restore(e.oid),
            fx.DeleteSpilled: self._delete_spilled,
            fx.SpawnWorker: self._spawn_worker,
            fx.StopWorker: lambda e: processes.stop(e.worker_id),
            fx.KillWorker: lambda e: processes.kill(e.worker_id),
            fx.InterruptWorker: lambda e: processes.interrupt(e.worker_id, e.task_id),
            fx.WatchClient: self._watch_client,
            fx.StopNode: self._stop_node,
            fx.Log: lambda e: log.log(logging.getLevelName(e.level.upper()), "%s", e.text),
        }

    # -- running --------------------------------------------------------------------

    def run(self) -> str:
        """Run until a signal, a StopNode or the embedded driver's exit; returns why."""
        self.running = True
        old_wakeup = self._listen()
        try:
            self.execute(self.fabric.start(time.monotonic()))
            self._flush_sends()
            next_tick = time.monotonic() + self.tick_interval
            while self.running:
                self._check_ready()
                self._poll(max(0.0, next_tick - time.monotonic()))
                now = time.monotonic()
                if now >= next_tick:
                    self.processes.on_tick()
                    self._worker_output(self.logs.read_all())
                    self.execute(self.fabric.handle(ev.Tick(), now))
                    self._flush_sends()
                    next_tick = now + self._next_tick(now)
                elif next_tick - now > self.tick_interval and not self._idle(now):
                    next_tick = now + self.tick_interval   # work came: the short tick again
        finally:
            signal.set_wakeup_fd(old_wakeup)
        return self.stop_reason

    def _idle(self, now: float) -> bool:
        """Nothing to do for a while: no sign of work for idle_tick[1] seconds, the
        pre-started workers up and the node not joining."""
        return (self.idle_tick is not None and now - self._worked > self.idle_tick[1]
                and self.on_ready is None and not self.fabric.joining())

    def _next_tick(self, now: float) -> float:
        return self.idle_tick[0] if self._idle(now) else self.tick_interval

    def _listen(self) -> int:
        """Register the sockets and signals; returns the previous wake-up fd."""
        self.poller.register(self.router, zmq.POLLIN)   # (busy: we send on it any time)
        self.poller.register(self.peer_router, zmq.POLLIN, quiet=True)
        self.poller.register(self.object_router, zmq.POLLIN, quiet=True)
        for sock in self._auth_socks:
            self.poller.register(sock, zmq.POLLIN, quiet=True)
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.poller.register(self.spiller.fileno(), zmq.POLLIN)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        if self.embedded_driver_pid:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.processes.watch_pid(self.embedded_driver_pid, self._on_embedded_driver_exit)
        else:
            signal.signal(signal.SIGINT, self._on_signal)
        return old_wakeup

    def _check_ready(self) -> None:
        if self.on_ready is not None and self.fabric.ready():
            self.on_ready()
            self.on_ready = None
        if self.peers.has_join_sockets and not self.fabric.joining():
            self.peers.close_join_sockets()

    def _poll(self, timeout: float) -> None:
        for sock, _ in self.poller.poll(int(timeout * 1000) + 1):
            if sock is self.router:
                self._drain_router(sock, peer=False)
            elif sock is self.peer_router:
                self._drain_router(sock, peer=True)
            elif sock is self.object_router:
                self.objects.serve()
            elif sock in self.pulls:
                self._receive_chunks(sock)
            elif sock == self._wake_r:
                self._drain_wakeups()
            elif sock == self.spiller.fileno():
                for event in self.spiller.take_events():
                    self.dispatch(event)
            elif sock in self._auth_socks:
                self._take_auth_failures()
            else:
                self.processes.on_readable(sock)
            if not self.running:
                break

    def _on_signal(self, signum, frame) -> None:
        self.running = False
        self.stop_reason = f"signal {signal.Signals(signum).name}"

    def _on_embedded_driver_exit(self) -> None:
        self.running = False
        self.stop_reason = "its driver exited"

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # -- what arrives -----------------------------------------------------------------

    def _drain_router(self, sock: zmq.Socket, peer: bool) -> None:
        if not peer:
            self._worked = time.monotonic()   # (a peer's: unless it is only gossip, below)
        self._draining = True
        try:
            self._drain_router_batch(sock, peer)
        finally:
            self._draining = False
            self._flush_sends()

    def _drain_router_batch(self, sock: zmq.Socket, peer: bool) -> None:
        """Hand up to RECV_BATCH messages from a ROUTER to the fabric: a peer's one
        by one; a client's messages in a row (its frames, and the messages of a
        Batch) as one event, so that the scheduler schedules once after them."""
        now = time.monotonic()
        suffixes = _PEER_SUFFIXES if peer else _CLIENT_SUFFIXES
        recv, get = sock.recv, sock.get   # (recv_multipart's flag enums cost more)
        run_from, run = None, []          # a client's messages in a row, not handed on yet
        for _ in range(RECV_BATCH):
            try:
                frames = [recv(_NOBLOCK)]
            except zmq.Again:
                break
            frames.append(recv(_NOBLOCK))   # (a ROUTER's message: a routing id, then >= 1
            while get(_RCVMORE):            # frame, all there at once; an option read
                frames.append(recv(_NOBLOCK))   # costs an enum in pyzmq: one a message)
            more = get(sockets.EVENTS) & sockets.POLLIN   # (cheaper than a last zmq.Again)
            ident = frames[0]
            sender = ident[:-1]   # the routing id without its suffix (see sockets.py)
            if ident[-1:] not in suffixes or (peer and len(sender) != ids.NODE_ID_SIZE):
                self._reject(ident.hex()[:16], "malformed", "not a zfabric routing id")
                continue
            inner = self._decode(sender, frames)
            if peer:
                for msg in inner:
                    if type(msg) is not p.Gossip:
                        self._worked = now
                    self.execute(self.fabric.handle(ev.PeerMessage(sender, msg), now))
                    if not self.running:
                        return
            elif inner:
                if sender != run_from:
                    if run and not self._client_run(run_from, run, now):
                        return
                    run_from, run = sender, []
                run += inner
            if not more:
                break
        if run:
            self._client_run(run_from, run, now)

    def _client_run(self, sender: bytes, msgs: list, now: float) -> bool:
        """Hand a client's messages in a row to the fabric; is the node still running?"""
        self._read_output_before(sender, msgs)
        self.execute(self.fabric.handle(ev.ClientMessage(sender, msgs[0]) if len(msgs) == 1
                                        else ev.ClientMessages(sender, tuple(msgs)), now))
        return self.running

    def _read_output_before(self, sender: bytes, msgs) -> None:
        """A task's printed lines go out before its result; a Listen first gets
        everything printed so far."""
        kinds = {type(m) for m in msgs} if len(msgs) > 1 else (type(msgs[0]),)
        if p.TaskDone in kinds and self._lines_go_elsewhere(msgs):
            self._worker_output(self.logs.read_worker(sender))
        if p.Listen in kinds:
            self._worker_output(self.logs.read_all(drain=True))

    def _lines_go_elsewhere(self, msgs) -> bool:
        """Does a task these reports end print for a job of another node? (A job
        of ours gets its lines from the tick's reads, or all of them when its
        listener leaves.)"""
        elsewhere = self.fabric.output_elsewhere
        return any(type(m) is p.TaskDone and elsewhere(m.task_id) for m in msgs)

    def _decode(self, sender: bytes, frames: list) -> tuple | list:
        """The messages in one frame from `sender` (several, in order, for a Batch);
        none if it is malformed (handed to the fabric to count and log)."""
        try:
            if len(frames) != 2:
                raise p.ProtocolError(f"expected one frame, got {len(frames) - 1}")
            msg = p.decode(frames[1])
            if type(msg) is not p.Batch:
                return (msg,)
            return [p.decode(m) for m in msg.messages]
        except p.ProtocolError as e:
            self._reject(ids.short(sender), "malformed", str(e))
            return ()

    def _reject(self, source: str, what: str, reason: str) -> None:
        self.execute(self.fabric.handle(ev.MessageRejected(source, what, reason),
                                        time.monotonic()))

    def _take_auth_failures(self) -> None:
        """Answer the ZAP requests; count every refused handshake."""
        failures = self.gate.serve() if self.gate is not None else []
        for watch in self.watches:
            failures += watch.take()
        for source, reason in failures:
            self._reject(source, "unauthenticated", reason)
        self._flush_sends()

    def _receive_chunks(self, sock: zmq.Socket) -> None:
        self._worked = time.monotonic()
        fabric = self.fabric
        for event in self.pulls.receive(sock, fabric.expects_chunk):
            self.execute(fabric.handle(event, time.monotonic()))
        self._flush_sends()

    def _worker_output(self, runs: list) -> None:
        if runs:
            self._worked = time.monotonic()
            self.execute(self.fabric.handle(ev.WorkerOutput(tuple(runs)), time.monotonic()))

    def _process_event(self, event) -> None:
        """An event from processes.py; a worker that exited: its last lines first."""
        if type(event) is ev.WorkerExited:
            self._worker_output(self.logs.remove(event.worker_id))
        self.dispatch(event)

    def dispatch(self, event) -> None:
        """Hand an event to the fabric now and carry out its effects."""
        self._worked = time.monotonic()
        self.execute(self.fabric.handle(event, time.monotonic()))
        if not self._draining:
            self._flush_sends()

    # -- effects ---------------------------------------------------------------------------

    def execute(self, effects: list) -> None:
        handlers = self.effect_handlers
        for effect in effects:
            handler = handlers.get(type(effect))
            if handler is None:   # the fabric made what no shell carries out: a bug
                raise TypeError(f"unknown effect {effect!r}")
            handler(effect)

    def _spawn_worker(self, e: fx.SpawnWorker) -> None:
        self.logs.add(e.worker_id)
        self.processes.spawn(e.worker_id)

    def _join_send(self, e: fx.JoinSend) -> None:
        failed = self.peers.join_send(e.address, e.msg)
        if failed is not None:
            self.dispatch(failed)

    def _forget_peer(self, e: fx.ForgetPeer) -> None:
        """It died or left: drop what we queued for it and close our sockets to it."""
        self._worked = time.monotonic()
        self.peers.forget(e.address)
        self.pulls.forget(e.node_id)

    def _request_chunk(self, e: fx.RequestChunk) -> None:
        failed = self.pulls.request(e)
        if failed is not None:
            self.dispatch(failed)

    def _delete_object(self, e: fx.DeleteObject) -> None:
        self.objects.forget(e.oid)
        self.freer.free(e.oid)   # (renamed now, its pages kept or freed off the loop)

    def _spill_object(self, e: fx.SpillObject) -> None:
        self.spiller.spill(e.oid)
        self.freer.pressure()    # (the store is full: kept pages go back first)

    def _delete_spilled(self, e: fx.DeleteSpilled) -> None:
        self.objects.forget(e.oid)
        self.spiller.delete(e.oid)

    def _watch_client(self, e: fx.WatchClient) -> None:
        if e.pid != self.embedded_driver_pid:
            client = e.client
            self.processes.watch_pid(e.pid, lambda: self.dispatch(ev.ClientGone(client)))

    def _stop_node(self, e: fx.StopNode) -> None:
        self.running = False
        self.stop_reason = e.reason

    def _flush_sends(self) -> None:
        """Send what this turn owes each client and peer, one frame each. A peer
        send that failed goes to the fabric as an event; what it answers goes out
        here too."""
        while True:
            self._flush_clients()
            failed = self.peers.flush() if self.peers.batcher else ()
            if not failed:
                return
            now = time.monotonic()
            for event in failed:
                self.execute(self.fabric.handle(event, now))

    def _flush_clients(self) -> None:
        send = self.router.send   # (two sends: send_multipart's flag enums cost more)
        for to, frame, count in self.clients.take():
            try:
                send(to + sockets.RX_SUFFIX, _MORE_NOBLOCK)
                send(frame, _NOBLOCK)
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                # its exit arrives as an event of its own (WorkerExited / ClientGone / Goodbye)
                log.debug("client %r is gone; dropped %d message(s)", to, count)

    # -- stopping --------------------------------------------------------------------------

    def say_goodbye(self, effects: list) -> None:
        """Send the last messages (leaving the cluster) before the sockets close."""
        self.execute(effects)
        self._flush_sends()

    def stop_workers(self) -> None:
        """Stop every worker and the zygote, by PID (see processes.py)."""
        self.processes.stop_all()

    def close(self) -> None:
        """Close the sockets to peers and holders, drop partial pulls, close the wake pipe."""
        self.peers.close()
        self.pulls.close()
        self.objects.close()
        for watch in self.watches:
            watch.close()
        self.spiller.close()
        self.freer.close()
        self.logs.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
