"""A process's connection to its local node: the driver's, or a worker's.

    driver/worker process                     node process
    ---------------------                     ------------
    tx DEALER (id+">")  -- Submit, Put, Subscribe, Refs, ... -->  ROUTER
    rx DEALER (id+"<")  <-- Welcome, ObjectReady, Reply, Execute --
    store files         <-- mmap (read-only) / write+rename --> /dev/shm/zfabric-{node}/

Two sockets, because ZeroMQ sockets are not thread-safe: any thread may
send (under `_send_lock`), and whichever thread waits first becomes the
*pump* that receives for everyone (leader/follower on `_cond`, a condition
on `_lock`). A single-threaded driver therefore sends and receives on its own
thread with no hand-off, which keeps the round trip short; nobody waits on
`_cond` then, and nobody is notified (`_waiting`).

Reference counting: ObjectRefs report creation and death by appending to a
lock-free deque (`ObjectRef.__del__` may run in any thread, inside any
code); the client folds those into per-object counts and, after each
message it sends (and every `ref_flush_interval` when idle), tells the node
the *net* change since the last report. The node applies a client's
message before the reference changes that follow it, so an object handed
to a task or nested in a result is never freed in between.

Whatever the node socket (or a direct line) delivers, the pump keeps going: a
frame that does not decode (or a Batch holding one) is dropped and counted in
`malformed`; a message that makes no sense here (news of an object we hold no
ref to, a reply nobody waits for, an Execute on a driver, on a line anything
but an Execute to a worker or a TaskDone to a driver) is dropped, counted in
`unexpected`. The first of each is logged. An object's entry that cannot be
used (an unknown state, an error record that does not read) becomes the error
of the get that asks for that object.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

import zmq

from .. import protocol as p
from .. import records
from .. import ref as ref_mod
from ..config import Config
from ..exceptions import GetTimeoutError, NodeDiedError, ZFabricError
from ..protocol import ObjectState
from ..ref import ObjectRef
from . import direct, gets, lease, pids, puts, sockets, submits

log = logging.getLogger("zfabric.client")

_current: "Client | None" = None
PUMP_SLICE = 1.0   # seconds a pump waits before checking the node is alive
MAX_PID = 1 << 22  # above Linux's pid_max: a Welcome naming another pid is nonsense
READY_STATES = (ObjectState.INLINE, ObjectState.STORE, ObjectState.ERROR)


def current() -> "Client":
    if _current is None:
        raise RuntimeError("zfabric is not initialized: call zf.init() first")
    return _current


def current_or_none() -> "Client | None":
    return _current


def set_current(client: "Client | None") -> None:
    global _current
    _current = client


# ObjectRefs (zfabric/ref.py, below this layer) find the client through this hook
ref_mod.set_client_lookup(current_or_none)


class Client:
    def __init__(self, endpoint: str, role: str, *, identity: bytes | None = None,
                 worker_id: str | None = None, connect_timeout: float = 30.0,
                 listener=None):
        self.role = role
        self.id = identity or (b"d" + os.urandom(7))
        self.ctx = sockets.context()
        self.rx = sockets.client_dealer(self.ctx, self.id + sockets.RX_SUFFIX, endpoint,
                                        recv_timeout_ms=int(PUMP_SLICE * 1000))
        self._rx_poller = zmq.Poller()
        self._rx_poller.register(self.rx, zmq.POLLIN)
        self.tx = sockets.client_dealer(self.ctx, self.id + sockets.TX_SUFFIX, endpoint)
        self.lines = direct.Lines(self._rx_poller, listener)   # a worker's `listener`, lines
        self.direct_from: dict = {}              # (workers) direct task id -> its line
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()            # (taken directly: `with self._lock`)
        self._cond = threading.Condition(self._lock)
        self._waiting = 0                        # threads in a wait on _cond: notified
        self._pumping = self._closed = False
        # state guarded by _lock
        self._ready: dict[bytes, tuple] = {}     # oid -> (state, size, payload)
        self._counts: dict[bytes, int] = {}
        self._reported: set[bytes] = set()
        self._dirty: set[bytes] = set()
        self._subscribed: set[bytes] = set()
        # our tasks' returns, which the node pushes to us unasked (submits.py); one it
        # says is on another node leaves the set, and is subscribed to if awaited
        self._pushed: set[bytes] = set()
        self._awaited: dict[bytes, int] = {}     # pushed oid -> getters waiting for it
        self._to_subscribe: list[bytes] = []     # pushed oids elsewhere that are awaited
        self._watchers: dict[bytes, list] = {}   # oid -> sinks to tell when it is ready
        self._replies: dict[int, object] = {}
        self._awaiting: dict[int, type] = {}     # req id -> the reply kind it waits for
        self.malformed = 0                       # frames from the node that did not decode
        self.unexpected = 0                      # messages that made no sense here
        self._warned: set[str] = set()
        self.executes: deque = deque()
        self._revoked: deque = deque()           # prefetched tasks dropped: tell the node
        self.fn_blobs: dict[bytes, bytes] = {}   # (workers) function code not yet loaded
        self._ref_ops: deque = deque()           # (+1 | -1, oid), appended lock-free
        self._held, self._held_keep, self._held_since = [], [], 0.0   # (workers) Client.report
        self._req = 0
        self._errors_seen = 0
        self.sent_functions: set[bytes] = set()
        # set by a worker while it runs a task (and its GPU ids); `job` (ids.job_id):
        # where the output of tasks this process submits goes: a driver's own
        # (api.init), a task's (Worker.run), or b"": none
        self.current_task_id: bytes | None = None
        self.current_depth = 0
        self.current_gpus: list[int] = []
        self.job = b""
        self.welcome: p.Welcome | None = None
        self.lane: lease.Lane | None = None      # (drivers) a leased worker: node/lease.py
        self.lease_keep: list = []               # (workers) direct results kept: node/worker.py
        self._connect(endpoint, worker_id, connect_timeout)
        if role == "driver":
            self.lane = lease.Lane(self)
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                         name="zfabric-ref-flush")
        self._flusher.start()

    def _connect(self, endpoint: str, worker_id: str | None, timeout: float) -> None:
        """Hello, and the node's Welcome: its id, dirs, pid and Config."""
        self.rx.send(p.encode(p.Hello(self.role, os.getpid(), worker_id)))
        if not self._wait_for(lambda: self.welcome is not None, timeout, check_node=False):
            self._close_sockets()
            raise ConnectionError(f"no zfabric node answered at {endpoint} "
                                  f"within {timeout:g} s")
        w = self.welcome
        self.node_id: bytes = w.node_id
        self.store_dir: str = w.store_dir
        self.node_pid: int = w.node_pid
        try:
            if not 0 <= w.node_pid < MAX_PID:
                raise ValueError(f"node_pid {w.node_pid}")
            self.config = Config.from_json(w.config)
        except (ValueError, TypeError) as e:
            self._close_sockets()
            raise ConnectionError(f"the zfabric node at {endpoint} sent a bad Welcome "
                                  f"({type(e).__name__}: {e})") from None
        self.inline_threshold = self.config.inline_threshold

    # -- sending ----------------------------------------------------------------

    def send(self, msg) -> None:
        data = p.encode(msg)
        with self._send_lock:
            if self._closed:
                raise RuntimeError("zfabric client is closed (zf.shutdown() was called)")
            self._send_frame([data])

    def report(self, done: p.TaskDone, keep) -> None:
        """(workers) Send a finished task's TaskDone. While prefetched tasks wait here,
        hold it and `keep` (its result) for one frame with the next ones, before
        anything else we send: at most half of prefetch_max_depth (the node then
        hears of the tasks run, and sends more, while the rest of a full queue
        run here: a lone worker never waits on the node's turn), and at most
        prefetch_queue_seconds."""
        data, now, config = p.encode(done), time.monotonic(), self.config
        with self._send_lock:
            if not self._held:
                self._held_since = now
            self._held.append(data)
            self._held_keep.append(keep)
            if not (self.executes and len(self._held) < config.prefetch_max_depth // 2
                    and now - self._held_since < config.prefetch_queue_seconds):
                self._send_frame([])

    def _send_frame(self, msgs: list) -> None:
        """Send encoded `msgs` in one frame: after the reports held (workers), and
        followed by the net reference changes, which the node applies after the
        messages before them. Caller holds _send_lock."""
        if self._held:
            msgs = self._held + msgs
        lane = self.lane
        if lane is not None and lane.pending:
            msgs = lane.take_pending() + msgs   # (the node hears of direct tasks first)
        if self._ref_ops or self._dirty:
            refs = self._ref_changes()
            if refs is not None:
                msgs.append(refs)
        if msgs:
            self.tx.send(msgs[0] if len(msgs) == 1 else p.encode(p.Batch(msgs)))
        self._held, self._held_keep = [], []   # (refs inside the results may die now)

    def _ref_changes(self) -> bytes | None:
        """The net reference changes since the last report, encoded (caller holds
        _send_lock); None if there are none."""
        with self._lock:
            self._apply_ref_ops()
            incs, decs = [], []
            reported = self._reported
            for oid in self._dirty:
                held = oid in self._counts
                if held and oid not in reported:
                    incs.append(oid)
                    reported.add(oid)
                elif not held and oid in reported:
                    decs.append(oid)
                    reported.discard(oid)
            self._dirty.clear()
        return p.encode(p.Refs(incs, decs)) if incs or decs else None

    def _flush_loop(self) -> None:
        interval = self.config.ref_flush_interval
        while not self._closed:
            time.sleep(interval)
            lane = self.lane
            if lane is not None and lane.wid is not None:
                self.take_arrived()   # (a recall heard though nobody waits: returned)
            if lane is not None and lane.wid is not None and not lane.pending:
                with self._send_lock:
                    lane.idle_check(time.monotonic())
            if self._ref_ops or self._dirty or self._held or (lane and lane.pending):
                with self._send_lock:
                    if self._closed:
                        return
                    try:   # (held reports too: at most this late, whatever runs)
                        self._send_frame([])
                    except zmq.ZMQError:
                        return

    def request(self, what: str, timeout: float | None = 30.0):
        req = self._new_request(p.Reply)
        self.send(p.Request(req, what))
        msg = self._await_reply(req, timeout)
        if msg.error:
            raise ValueError(msg.error)
        return msg.data

    def _new_request(self, reply_kind: type) -> int:
        """A request id; only a reply of `reply_kind` with it will be taken."""
        with self._lock:
            self._req += 1
            self._awaiting[self._req] = reply_kind
            return self._req

    def _await_reply(self, req: int, timeout: float | None):
        try:
            self._wait_for(lambda: req in self._replies, timeout)
        finally:
            with self._lock:   # from now on a reply to req is dropped, not kept forever
                self._awaiting.pop(req, None)
                reply = self._replies.pop(req, None)
        if reply is None:
            raise GetTimeoutError(f"the node did not answer within {timeout} s")
        return reply

    # -- references -------------------------------------------------------------

    def add_ref(self, oid: bytes) -> None:
        self._ref_ops.append((1, oid))

    def drop_ref(self, oid: bytes) -> None:
        self._ref_ops.append((-1, oid))

    def _apply_ref_ops(self) -> None:
        """Fold queued ref births/deaths into counts (caller holds _lock)."""
        ops, counts, dirty = self._ref_ops, self._counts, self._dirty
        while ops:
            delta, oid = ops.popleft()
            n = counts.get(oid, 0) + delta
            if n > 0:
                counts[oid] = n
            else:
                counts.pop(oid, None)
                self._ready.pop(oid, None)
                self._subscribed.discard(oid)
                self._pushed.discard(oid)
                self._watchers.pop(oid, None)
            dirty.add(oid)

    # -- receiving -----------------------------------------------------------------

    def _wait_for(self, pred, timeout: float | None, check_node: bool = True) -> bool:
        """Wait until pred() (evaluated under _lock) holds; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                while True:
                    if pred():
                        return True
                    remaining = PUMP_SLICE if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    if not self._pumping:
                        self._pumping = True
                        break
                    self._waiting += 1
                    try:
                        self._cond.wait(min(remaining, PUMP_SLICE))
                    finally:
                        self._waiting -= 1
            try:
                got = self._pump(min(remaining, PUMP_SLICE))
            finally:
                with self._lock:
                    self._pumping = False
                    if self._waiting:
                        self._cond.notify_all()
            if not got and check_node:
                if not self.node_alive():
                    raise NodeDiedError(f"the zfabric node (pid {self.node_pid}) died")
                self._subscribe_elsewhere(overdue=True)

    def take_arrived(self) -> None:
        """Take what has arrived, without waiting, unless a thread pumps already:
        a driver holding a lease hears of a recall, or of its direct task's end,
        while it submits or between its gets (node/lease.py)."""
        with self._lock:
            if self._pumping or self._closed:
                return
            self._pumping = True
        try:
            while self._pump(0.0):
                pass
        finally:
            with self._lock:
                self._pumping = False
                if self._waiting:
                    self._cond.notify_all()

    def _pump(self, timeout: float) -> bool:
        """Receive one frame (waiting up to timeout); True if one came. A whole
        slice waits in one blocking receive (rx has PUMP_SLICE as its receive
        timeout); a frame already there returns at once, so the next call takes
        the next frame (cheaper than asking the socket's events after each).
        With direct lines to read as well (a worker's, or a driver's holding a
        lease: node/direct.py), rx and they are polled together."""
        rx, lines = self.rx, self.lines
        try:
            if lines:
                frames = lines.receive(rx, timeout)
                if not frames:
                    return False
            elif timeout >= PUMP_SLICE:
                frames = [(rx.recv(), None)]
            elif self._rx_poller.poll(int(timeout * 1000)):
                frames = [(rx.recv(zmq.NOBLOCK), None)]
            else:
                return False
        except zmq.Again:
            return False
        decoded = [(self._decode(data), data, line) for data, line in frames]
        with self._lock:
            for messages, data, line in decoded:
                if len(messages) == 1:
                    self._on_message(messages[0], data, line)
                else:
                    for msg in messages:
                        self._on_message(msg, None, line)
            if self._waiting:
                self._cond.notify_all()
        if self.lane is not None and self.lane.incoming:
            self.lane.process()
        while self._revoked:
            self.send(p.Revoked(self._revoked.popleft()))
        if self._to_subscribe:
            self._subscribe_elsewhere()
        return True

    def _decode(self, data: bytes) -> list:
        """The messages in one frame (several for a Batch); a frame, or a message
        in a Batch, that does not decode is dropped and counted."""
        try:
            msg = p.decode(data)
        except Exception as e:   # the decoder's verdict on bytes the node sent
            self._reject("malformed", f"{type(e).__name__}: {e}")
            return []
        if type(msg) is not p.Batch:
            return [msg]
        messages = []
        for inner in msg.messages:   # (a Batch holds no Batch: its check says so)
            messages += self._decode(inner)
        return messages

    def _reject(self, what: str, reason: str) -> None:
        """Count a dropped frame ("malformed") or message ("unexpected"); log the
        first of each kind (a flood of them must not flood the log)."""
        setattr(self, what, getattr(self, what) + 1)
        if what not in self._warned:
            self._warned.add(what)
            log.warning("zfabric client %s dropped a message from its node (%s): %s "
                        "(further ones are only counted, in Client.%s)",
                        self.id.hex(), what, reason, what)
        else:
            log.debug("dropped a message from the node (%s): %s", what, reason)

    def _on_message(self, msg, raw: bytes | None = None, line=None) -> None:
        """Take one message from the node, or from a direct `line` (caller holds
        _lock; `raw`: the frame it came alone in); never raises."""
        kind = type(msg)
        if line is not None and kind is not (p.Execute if self.role == "worker" else p.TaskDone):
            return self._reject("unexpected", f"a {kind.__name__} on a direct line")
        if kind is p.ObjectReady:
            self._on_object_ready(msg)
        elif kind is p.Execute:
            if self.role != "worker":
                return self._reject("unexpected", f"an Execute of {msg.name}() on a {self.role}")
            if msg.fn_blob:  # kept apart: a Revoke may drop this Execute, not the code
                self.fn_blobs[msg.fn_id] = msg.fn_blob
            if line is not None:   # (a direct task: its TaskDone goes back on that line)
                self.direct_from[msg.task_id] = line
            self.executes.append(msg)
        elif kind is p.Revoke:  # (workers) drop a prefetched task we have not started
            for ex in self.executes:
                if ex.task_id == msg.task_id:
                    self.executes.remove(ex)
                    self._revoked.append(msg.task_id)
                    break
            else:   # started, done, or never ours: the node hears TaskDone from us
                log.debug("a Revoke of task %s, which is not waiting here", msg.task_id.hex())
        elif kind is p.TaskDone or kind is p.LeaseGrant or kind is p.LeaseEnd:
            if self.lane is not None:   # (node/lease.py; a worker drops what it kept)
                self.lane.on_message(msg, raw)
            elif kind is p.LeaseEnd and self.role == "worker":
                self.lease_keep.clear()
            else:
                self._reject("unexpected", f"a {kind.__name__} on a {self.role}")
        elif kind is p.Reply or kind is p.PutReply:
            if self._awaiting.get(msg.req_id) is not kind or msg.req_id in self._replies:
                return self._reject("unexpected", f"a {kind.__name__} to no request "
                                    f"({msg.req_id!r})")
            self._replies[msg.req_id] = msg
        elif kind is p.Welcome and self.welcome is None:
            self.welcome = msg
        else:
            self._reject("unexpected", f"a {kind.__name__}")

    def _on_object_ready(self, msg: p.ObjectReady) -> None:
        self._apply_ref_ops()
        oid = msg.oid
        self._subscribed.discard(oid)
        if oid not in self._counts:
            return   # we dropped our last ref meanwhile (or never had one)
        if oid in self._pushed:
            self._pushed.discard(oid)
            if msg.state == ObjectState.PENDING:   # our return, kept on another node
                if oid in self._awaited or oid in self._watchers:
                    self._to_subscribe.append(oid)  # (sent by the pump: it is brought here)
                return
        if msg.state not in READY_STATES:
            self._reject("unexpected", f"object {oid.hex()} in state {msg.state!r}")
            record = records.system_error_record(
                ZFabricError, f"the node sent object {oid.hex()} in an unknown "
                f"state ({msg.state!r})")
            self._ready[oid] = (ObjectState.ERROR, 0, record)
        else:
            self._ready[oid] = (ObjectState(msg.state), msg.size, msg.payload)
        if self._ready[oid][0] == ObjectState.ERROR:
            self._errors_seen += 1
        for sink in self._watchers.pop(oid, ()):
            sink.append(oid)

    def node_alive(self) -> bool:
        """Is our node's process running? (A zombie, an embedded node its driver has
        not reaped yet, is not.)"""
        return not self.node_pid or pids.alive(self.node_pid)

    # -- objects ----------------------------------------------------------------------

    def _subscribe_elsewhere(self, overdue: bool = False) -> None:
        """Subscribe to our awaited returns the node said are on another node; with
        `overdue` (nothing came for a pump slice), to every awaited return not here
        yet: a Submit the node refused is then answered that the object does not
        exist, instead of a get that never ends."""
        with self._lock:
            want, self._to_subscribe = self._to_subscribe, []
            if overdue:
                want += [o for o in [*self._awaited, *self._watchers]
                         if o in self._pushed and o not in self._ready]
                self._pushed.difference_update(want)
            want = [o for o in dict.fromkeys(want) if o not in self._subscribed]
            self._subscribed.update(want)
        if want:
            self.send(p.Subscribe(want))

    def wait_objects(self, oids: list[bytes], timeout: float | None,
                     fail_fast: bool = True) -> dict:
        """Entries for every oid (or raise GetTimeoutError); stop early on an error."""
        return gets.wait_objects(self, oids, timeout, fail_fast)

    def wait_some(self, oids: list[bytes], num_returns: int, timeout: float | None) -> set:
        return gets.wait_some(self, oids, num_returns, timeout)

    def watch(self, oids: list[bytes], sink: deque) -> None:
        gets.watch(self, oids, sink)

    def wait_watched(self, sink: deque, timeout: float | None, block: bool = True) -> bool:
        return gets.wait_watched(self, sink, timeout, block)

    def _block(self) -> bool:
        if self.current_task_id is None:
            return False
        self.send(p.Blocked(self.current_task_id))
        return True

    def _unblock(self) -> None:
        self.send(p.Unblocked(self.current_task_id))

    def get_values(self, oids: list[bytes], timeout: float | None) -> list:
        return gets.values(self, oids, timeout)

    def forget_entry(self, oid: bytes, entry: tuple) -> None:
        """What we heard of an object is stale (its store file is gone)."""
        with self._lock:
            if self._ready.get(oid) is entry:
                del self._ready[oid]

    def put(self, value, in_store: bool = False) -> ObjectRef:
        """Put a value (node/puts.py)."""
        return puts.put(self, value, in_store)

    def hold(self, oid: bytes, entry: tuple | None) -> None:
        """A new object of ours, announced by the next message we send: the node
        counts us as its holder from that message on, so no ref change is
        reported for it. `entry`: its (state, size, payload), if known."""
        with self._lock:
            self._reported.add(oid)
            self._apply_ref_ops()
            if entry is not None:
                self._ready[oid] = entry

    def call(self, make, reply_kind: type, timeout: float | None):
        """Send `make(req_id)` and wait for its reply of `reply_kind`."""
        req = self._new_request(reply_kind)
        self.send(make(req))
        return self._await_reply(req, timeout)

    # -- tasks -----------------------------------------------------------------------------

    # Send a task; the refs of its returns (node/submits.py: a method of ours, called
    # with its keywords as they are, not packed into a dict and out again)
    submit = submits.submit

    def expect_pushes(self, rids: list[bytes]) -> None:
        """Our new task's returns: held from its Submit on (no ref change reported)
        and pushed to us by the node, so a get of them sends no Subscribe."""
        with self._lock:
            self._reported.update(rids)
            self._pushed.update(rids)

    def cancel(self, oid: bytes, force: bool, recursive: bool) -> None:
        self.send(p.Cancel(oid, force, recursive))

    def next_execute(self) -> p.Execute:
        """(workers) Wait for the node's next Execute."""
        self._wait_for(lambda: bool(self.executes), None)
        with self._lock:
            return self.executes.popleft()

    # -- closing ---------------------------------------------------------------------------

    def close(self, shutdown_node: bool = False, reason: str = "") -> None:
        with self._send_lock:
            if self._closed:
                return
            try:
                if self.lane is not None and self.lane.pending:
                    self._send_frame([])   # (the node books our direct tasks first)
                msg = p.Shutdown(reason) if shutdown_node else p.Goodbye(reason)
                self.tx.send(p.encode(msg), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._closed = True
        with self._lock:   # (a pump under way -- the flush thread's take_arrived -- ends first)
            self._waiting += 1
            try:
                self._cond.wait_for(lambda: not self._pumping, timeout=PUMP_SLICE)
            finally:
                self._waiting -= 1
        self._close_sockets()

    def _close_sockets(self) -> None:
        self.lines.close()
        self.rx.close(sockets.LINGER_MS)
        self.tx.close(sockets.LINGER_MS)
        self.ctx.term()
