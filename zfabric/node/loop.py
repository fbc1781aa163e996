"""The node's poll loop: bytes and time in, effects out.

    scheduler ROUTER (ipc + tcp) --> decode --> ClientMessage / PeerMessage --> Fabric.handle
    pull DEALERs (one per holder) --> Chunk: write at offset --> ChunkArrived / ChunkFailed
    worker/driver pidfds --exit--> WorkerExited / ClientGone -----------------> Fabric.handle
    timer ------------------------> Tick -------------------------------------> Fabric.handle
    effects <--------------------------------------------------------------------'
      Send -> scheduler ROUTER        PeerSend -> that node's DEALER
      RequestChunk -> pull DEALER     SealPull / AbortPull / DeleteObject -> store
      SpawnWorker/StopWorker/KillWorker/InterruptWorker -> processes
      WatchClient -> pidfd            StopNode -> leave the loop
    object ROUTER: PullChunk --> answered here from the store (stateless, no event)

Single-threaded: only this loop touches the node's state. An unexpected
exception stops the node loudly (the caller logs it and cleans up); a
malformed message is counted and dropped.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import zmq

from .. import protocol as p
from ..core import effects as fx
from ..core import events as ev
from . import sockets, store

log = logging.getLogger("zfabric.node")
RECV_BATCH = 512


MAP_CACHE = 32   # store files the object server keeps mapped (most recent)


class NodeLoop:
    def __init__(self, fabric, router: zmq.Socket, *, ctx: zmq.Context,
                 object_router: zmq.Socket, node_id: bytes, ipc_endpoint: str,
                 session_dir: str, store_dir: str, tick_interval: float,
                 worker_output: str | None, stop_grace: float,
                 embedded_driver_pid: int | None = None, on_ready=None):
        self.fabric = fabric
        self.scheduler = fabric.scheduler
        self.router = router
        self.ctx = ctx
        self.object_router = object_router
        self.node_id = node_id
        self.peer_socks: dict[str, zmq.Socket] = {}      # control address -> DEALER
        self.join_socks: dict[str, zmq.Socket] = {}      # seed address -> DEALER (joining)
        self.pull_socks: dict[bytes, zmq.Socket] = {}    # holder node id -> DEALER
        self.pull_holder: dict[zmq.Socket, bytes] = {}   # pull DEALER -> holder node id
        self.partials: dict[bytes, int] = {}             # oid -> fd of the file being pulled into
        self.pull_started: dict[bytes, tuple] = {}       # oid -> (size, when), for the log
        self.maps: dict[bytes, memoryview] = {}          # oid -> mapped store file being served
        self.dropped_peer_sends = 0
        self.ipc_endpoint = ipc_endpoint
        self.session_dir = session_dir
        self.store_dir = store_dir
        self.tick_interval = tick_interval
        self.worker_output = worker_output   # None: inherit the node's stdout/stderr
        self.stop_grace = stop_grace
        self.embedded_driver_pid = embedded_driver_pid
        self.on_ready = on_ready   # called once, when the pre-started workers are up
        self.zygote: subprocess.Popen | None = None
        self.pids: dict[str, int | None] = {}     # worker id -> pid
        self.wid_of: dict[int, str] = {}          # pid -> worker id
        self.poller = zmq.Poller()
        self.fd_handlers: dict[int, object] = {}
        self.running = False
        self.stop_reason = ""
        self.malformed = 0
        self._outbox: dict[bytes, list[bytes]] = {}
        self._peer_outbox: dict[str, list[bytes]] = {}
        self._draining = False
        self.cancel_dir = os.path.join(session_dir, "cancel")
        os.makedirs(self.cancel_dir, exist_ok=True)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- running --------------------------------------------------------------------

    def run(self) -> str:
        self.running = True
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.object_router, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_signal)
        if self.embedded_driver_pid:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._watch_pid(self.embedded_driver_pid, self._on_embedded_driver_exit)
        else:
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.execute(self.fabric.start(time.monotonic()))
            self._flush_outbox()
            next_tick = time.monotonic() + self.tick_interval
            while self.running:
                if (self.on_ready is not None and not self.scheduler.pool.starting_count()
                        and self.fabric.joined):
                    self.on_ready()
                    self.on_ready = None
                if self.join_socks and self.fabric.joined:
                    for sock in self.join_socks.values():
                        sock.close()
                    self.join_socks.clear()
                timeout = max(0.0, next_tick - time.monotonic())
                for sock, _ in self.poller.poll(int(timeout * 1000) + 1):
                    if sock is self.router:
                        self._drain_router()
                    elif sock is self.object_router:
                        self._serve_chunks()
                    elif sock in self.pull_holder:
                        self._drain_pull(sock)
                    elif sock == self._wake_r:
                        self._drain_wakeups()
                    else:
                        self.fd_handlers[sock]()
                    if not self.running:
                        break
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.tick_interval
                    self.execute(self.fabric.handle(ev.Tick(), now))
                    self._flush_outbox()
        finally:
            signal.set_wakeup_fd(old_wakeup)
        return self.stop_reason

    def _on_signal(self, signum, frame) -> None:
        self.running = False
        self.stop_reason = f"signal {signal.Signals(signum).name}"

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _drain_router(self) -> None:
        self._draining = True
        try:
            self._drain_router_batch()
        finally:
            self._draining = False
            self._flush_outbox()

    def _drain_router_batch(self) -> None:
        router, fabric = self.router, self.fabric
        now = time.monotonic()
        peer_suffixes = (sockets.PEER_SUFFIX[0], sockets.JOIN_SUFFIX[0])
        for _ in range(RECV_BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident = frames[0]
            sender = ident[:-1]   # strip sockets.TX_SUFFIX / RX_SUFFIX / PEER_SUFFIX
            try:
                if len(frames) != 2:
                    raise p.ProtocolError(f"expected one frame, got {len(frames) - 1}")
                msg = p.decode(frames[1])
            except p.ProtocolError as e:
                self.malformed += 1
                log.warning("dropped a malformed message from %r: %s", sender[:16], e)
                continue
            peer = ident[-1] in peer_suffixes
            if type(msg) is p.Batch:   # several messages of one sender, in order
                try:
                    inner = [p.decode(m) for m in msg.messages]
                except p.ProtocolError as e:
                    self.malformed += 1
                    log.warning("dropped a malformed batch from %r: %s", sender[:16], e)
                    continue
            else:
                inner = (msg,)
            for msg in inner:
                event = ev.PeerMessage(sender, msg) if peer else ev.ClientMessage(sender, msg)
                self.execute(fabric.handle(event, now))
                if not self.running:
                    return

    def dispatch(self, event) -> None:
        self.execute(self.fabric.handle(event, time.monotonic()))
        if not self._draining:
            self._flush_outbox()

    # -- effects ---------------------------------------------------------------------------

    def execute(self, effects: list) -> None:
        for effect in effects:
            kind = type(effect)
            if kind is fx.Send:
                self._send(effect.to, effect.msg)
            elif kind is fx.SpawnWorker:
                self._spawn_worker(effect.worker_id)
            elif kind is fx.PeerSend:
                self._peer_send(effect.address, effect.msg)
            elif kind is fx.JoinSend:
                self._join_send(effect.address, effect.msg)
            elif kind is fx.ForgetPeer:
                self._forget_peer(effect.node_id, effect.address)
            elif kind is fx.RequestChunk:
                self._request_chunk(effect)
            elif kind is fx.SealPull:
                fd = self.partials.pop(effect.oid, None)
                if fd is None:   # an empty object: no chunk ever came
                    fd = store.open_partial(self.store_dir, effect.oid, 0)
                store.seal_partial(self.store_dir, effect.oid, fd)
                size, began = self.pull_started.pop(effect.oid, (0, time.monotonic()))
                took = time.monotonic() - began
                log.info("pulled %s: %d bytes in %.3f s (%.2f GB/s)", effect.oid.hex()[:12],
                         size, took, size / max(took, 1e-9) / 1e9)
            elif kind is fx.AbortPull:
                store.abort_partial(self.store_dir, effect.oid, self.partials.pop(effect.oid, None))
                self.pull_started.pop(effect.oid, None)
            elif kind is fx.DeleteObject:
                self.maps.pop(effect.oid, None)
                store.delete(self.store_dir, effect.oid)
            elif kind is fx.StopWorker:
                self._signal_worker(effect.worker_id, signal.SIGTERM)
            elif kind is fx.KillWorker:
                self._signal_worker(effect.worker_id, signal.SIGKILL)
            elif kind is fx.InterruptWorker:
                self._interrupt(effect.worker_id, effect.task_id)
            elif kind is fx.WatchClient:
                if effect.pid != self.embedded_driver_pid:
                    client = effect.client
                    self._watch_pid(effect.pid, lambda c=client: self.dispatch(ev.ClientGone(c)))
            elif kind is fx.StopNode:
                self.running = False
                self.stop_reason = effect.reason
            elif kind is fx.Log:
                log.log(logging.getLevelName(effect.level.upper()), "%s", effect.text)
            else:
                raise TypeError(f"unknown effect {effect!r}")

    def _send(self, to: bytes, msg) -> None:
        """Queue a message; `_flush_outbox` sends each client's queue as one frame."""
        _queue(self._outbox, to, msg)

    def _flush_outbox(self) -> None:
        outbox, self._outbox = self._outbox, {}
        send = self.router.send_multipart
        for to, msgs in outbox.items():
            data = msgs[0] if len(msgs) == 1 else p.encode(p.Batch(msgs))
            try:
                send((to + sockets.RX_SUFFIX, data), zmq.NOBLOCK)
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise
                log.debug("client %r is gone; dropped %d message(s)", to, len(msgs))
        if self._peer_outbox:
            self._flush_peers()

    # -- other nodes --------------------------------------------------------------------------

    def _peer_send(self, address: str, msg) -> None:
        """Queue a message for a peer; `_flush_peers` sends each peer's queue as one frame."""
        _queue(self._peer_outbox, address, msg)

    def _flush_peers(self) -> None:
        outbox, self._peer_outbox = self._peer_outbox, {}
        for address, msgs in outbox.items():
            sock = self.peer_socks.get(address)
            if sock is None:
                try:
                    sock = self.peer_socks[address] = sockets.peer_dealer(
                        self.ctx, self.node_id, address)
                except zmq.ZMQError as e:
                    self.dropped_peer_sends += len(msgs)
                    log.warning("cannot connect to peer %s: %s", address, e.strerror)
                    continue
            data = msgs[0] if len(msgs) == 1 else p.encode(p.Batch(msgs))
            try:
                sock.send(data, zmq.NOBLOCK)
            except zmq.Again:  # that peer is down or far behind: gossip or the owner retries
                self.dropped_peer_sends += len(msgs)
                log.warning("peer %s is not taking messages (%d dropped so far)",
                            address, self.dropped_peer_sends)

    def _join_send(self, address: str, msg) -> None:
        sock = self.join_socks.get(address)
        try:
            if sock is None:
                sock = self.join_socks[address] = sockets.peer_dealer(
                    self.ctx, self.node_id, address, join=True)
            sock.send(p.encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError as e:   # a bad address: the join times out with its message
            log.warning("cannot reach %s to join: %s", address, e.strerror)

    def _forget_peer(self, node_id: bytes, address: str) -> None:
        """It died or left: drop what we queued for it and close its sockets."""
        self._peer_outbox.pop(address, None)
        sock = self.peer_socks.pop(address, None)
        if sock is not None:
            sock.close(0)
        sock = self.pull_socks.pop(node_id, None)
        if sock is not None:
            self.poller.unregister(sock)
            del self.pull_holder[sock]
            sock.close(0)

    def say_goodbye(self, effects: list) -> None:
        """Send the last messages (leaving the cluster) before the sockets close."""
        self.execute(effects)
        self._flush_outbox()

    def _request_chunk(self, req: fx.RequestChunk) -> None:
        sock = self.pull_socks.get(req.holder)
        if sock is None:
            try:
                sock = sockets.pull_dealer(self.ctx, req.object_address)
            except zmq.ZMQError as e:
                self.dispatch(ev.ChunkFailed(req.holder, req.oid, f"cannot connect: {e.strerror}"))
                return
            self.pull_socks[req.holder] = sock
            self.pull_holder[sock] = req.holder
            self.poller.register(sock, zmq.POLLIN)
        if req.oid not in self.partials:
            self.partials[req.oid] = store.open_partial(self.store_dir, req.oid, req.size)
            self.pull_started[req.oid] = (req.size, time.monotonic())
        sock.send(p.encode(p.PullChunk(req.oid, req.offset, req.length)), zmq.NOBLOCK)

    def _drain_pull(self, sock: zmq.Socket) -> None:
        """Chunks arriving from a holder: write each at its offset, then tell the fabric."""
        holder = self.pull_holder[sock]
        for _ in range(RECV_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                head, data = p.decode_chunk(frames)
            except p.ProtocolError as e:
                self.malformed += 1
                log.warning("dropped a malformed chunk from %s: %s", holder.hex()[:12], e)
                continue
            if head.error:
                event = ev.ChunkFailed(holder, head.oid, head.error)
            else:
                fd = self.partials.get(head.oid)
                if fd is None or not self.fabric.transfers.expects(
                        holder, head.oid, head.offset, head.length):
                    continue  # the pull was dropped meanwhile, or we did not ask this
                store.write_at(fd, data, head.offset)
                event = ev.ChunkArrived(holder, head.oid, head.offset, head.length)
            self.execute(self.fabric.handle(event, time.monotonic()))
        self._flush_outbox()

    def _serve_chunks(self) -> None:
        """Answer chunk pulls from the store: stateless, like zguide's fileio3 server."""
        router = self.object_router
        for _ in range(RECV_BATCH):
            try:
                ident, frame = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:   # not exactly [ident, request]
                self.malformed += 1
                continue
            try:
                req = p.decode(frame)
                if type(req) is not p.PullChunk:
                    raise p.ProtocolError(f"unexpected {type(req).__name__} on the object socket")
            except p.ProtocolError as e:
                self.malformed += 1
                log.warning("dropped a malformed pull request: %s", e)
                continue
            try:
                view = self._mapped(req.oid)
                if req.offset + req.length > view.nbytes:
                    raise ValueError(f"range beyond its {view.nbytes} bytes")
                reply = p.encode_chunk(req.oid, req.offset,
                                       view[req.offset:req.offset + req.length])
            except (OSError, ValueError) as e:
                reply = p.encode_chunk(req.oid, req.offset, None,
                                       f"object {req.oid.hex()} cannot be served here: {e}")
            try:
                router.send_multipart([ident] + reply, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:
                if e.errno != zmq.EHOSTUNREACH:
                    raise

    def _mapped(self, oid: bytes) -> memoryview:
        view = self.maps.pop(oid, None)
        if view is None:
            view = store.map_raw(self.store_dir, oid)
            if len(self.maps) >= MAP_CACHE:
                self.maps.pop(next(iter(self.maps)))
        self.maps[oid] = view   # most recent last
        return view

    def close_sockets(self) -> None:
        for sock in list(self.peer_socks.values()) + list(self.join_socks.values()):
            sock.close()   # with its linger: a goodbye just sent still goes out
        for sock in self.pull_socks.values():
            sock.close(0)
        self.peer_socks.clear()
        self.pull_socks.clear()
        self.pull_holder.clear()
        for oid, fd in list(self.partials.items()):
            store.abort_partial(self.store_dir, oid, fd)
        self.partials.clear()
        self.maps.clear()

    # -- workers: forked by the zygote ---------------------------------------------------

    def _start_zygote(self) -> None:
        env = dict(os.environ)
        env.update(ZFABRIC_NODE_ENDPOINT=self.ipc_endpoint, ZFABRIC_CANCEL_DIR=self.cancel_dir)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.zygote = subprocess.Popen(
                [sys.executable, "-m", "zfabric.node.zygote", str(report_w),
                 self.worker_output or ""],
                env=env, stdin=subprocess.PIPE, pass_fds=(report_w,), close_fds=True)
        finally:
            os.close(report_w)
        self._zygote_in = self.zygote.stdin.fileno()
        self._report_r = report_r
        self._report_buf = b""
        self.fd_handlers[report_r] = self._on_zygote_report
        self.poller.register(report_r, zmq.POLLIN)

    def _spawn_worker(self, wid: str) -> None:
        if self.zygote is None:
            self._start_zygote()
        os.write(self._zygote_in, f"spawn {wid}\n".encode())
        self.pids[wid] = None   # pid known once the zygote reports it

    def _on_zygote_report(self) -> None:
        chunk = os.read(self._report_r, 65536)
        if not chunk:
            raise RuntimeError("the worker fork server (zygote) died")
        self._report_buf += chunk
        while b"\n" in self._report_buf:
            line, self._report_buf = self._report_buf.split(b"\n", 1)
            what, a, b = line.decode().split()
            if what == "started":
                if a in self.pids:
                    self.pids[a] = int(b)
                    self.wid_of[int(b)] = a
                else:  # stopped before it was even started: do not leave it behind
                    os.kill(int(b), signal.SIGKILL)
            elif what == "exited":
                wid = self.wid_of.pop(int(a), None)
                if wid is not None and self.pids.pop(wid, None) is not None:
                    try:
                        os.unlink(os.path.join(self.cancel_dir, wid))
                    except FileNotFoundError:
                        pass
                    self.dispatch(ev.WorkerExited(wid, int(b)))

    def _signal_worker(self, wid: str, sig: int) -> None:
        pid = self.pids.get(wid)
        if pid is None and sig in (signal.SIGTERM, signal.SIGKILL) and wid in self.pids:
            del self.pids[wid]  # not forked yet: the "started" report will kill it
            self.dispatch(ev.WorkerExited(wid, -sig))
            return
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _interrupt(self, wid: str, task_id: bytes) -> None:
        path = os.path.join(self.cancel_dir, wid)
        with open(path + ".tmp", "w") as f:
            f.write(task_id.hex())
        os.rename(path + ".tmp", path)
        self._signal_worker(wid, signal.SIGUSR1)

    def _watch_pid(self, pid: int, on_exit) -> None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            on_exit()
            return

        def fire():
            self.poller.unregister(fd)
            del self.fd_handlers[fd]
            os.close(fd)
            on_exit()

        self.fd_handlers[fd] = fire
        self.poller.register(fd, zmq.POLLIN)

    def _on_embedded_driver_exit(self) -> None:
        self.running = False
        self.stop_reason = "its driver exited"

    # -- stopping --------------------------------------------------------------------------

    def stop_workers(self) -> None:
        """Stop every worker and the zygote, by PID: TERM, then KILL after the grace."""
        pids = [pid for pid in self.pids.values() if pid is not None]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.stop_grace
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pids.clear()
        if self.zygote is not None:
            self.zygote.kill()   # its children are gone; it holds nothing
            self.zygote.wait()
            self.zygote.stdin.close()
            self.zygote = None
        for fd in list(self.fd_handlers):
            os.close(fd)
        self.fd_handlers.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _queue(outbox: dict, to, msg) -> None:
    """Append an encoded message to `to`'s queue (sent later as one frame)."""
    box = outbox.get(to)
    if box is None:
        outbox[to] = [p.encode(msg)]
    else:
        box.append(p.encode(msg))


def _alive(pid: int) -> bool:
    """Is `pid` still running (not a zombie)? Workers are the zygote's children."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
