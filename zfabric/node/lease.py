"""A driver's lease of one worker: its direct tasks (core/leases.py has the design).

    driver (Client, this Lane)                 leased worker            node
    submit --Execute (direct line)-----------> runs it
           <--TaskDone (the same line)-------
    notices on tx, later, in one frame: Submit (opts "lease"), TaskDone ----------> books it
    anything else we send while the task runs: its Submit goes first ------------->

Asking: a get of our own return while it is the only one we await (the sync
pattern), a second time, sends LeaseAsk; a grant connects our direct line to
the worker (node/direct.py: a Unix socket at its endpoint's path,
`ids.worker_endpoint`), which our pump reads beside rx.
A task goes direct when we hold an active lease, none is in flight, and it is
eligible: no ObjectRef arguments, the default resources, no runtime_env or
strategy (nothing the node must place or resolve), from the driver (not a
task). Its returns are ours as any task's (`Client.expect_pushes`): an OK
TaskDone with inline values fills them at once; anything else (an error, a
value in the store, a value holding refs) is decided by the node, which
pushes the returns as for any task, and the lease is given back.

The node's notices (Submit, then the TaskDone) wait in `pending`, encoded,
and leave in the client's next frame, before anything else in it
(`Client._send_frame`), or with the flush thread: so the node hears of a
direct task before any message that names its returns. The Submit is made
as soon as the Execute has left, while the worker runs the task (the driver
only waits then), and queued at once: a task still running is named
whenever we send anything else. The TaskDone goes on as the worker's bytes
(checked by our decode; the node checks it again). A run of notices is
sent from `run` too, after the next Execute, not while a get waits.

The lease ends: recalled by the node (we return it once nothing is in
flight), its worker died (our task, named to the node if it was not, is the
node's to retry or fail; its late TaskDone, if any, is dropped), or we
sent it nothing for `lease_idle_seconds` (the flush thread returns it).

Threads: `on_message` runs in the pump under the client's `_lock` and only
queues; `process` runs in the pump after it, under `_send_lock` (taking
`_lock` inside, the client's lock order); `run` under `_send_lock`.
"""
from __future__ import annotations

import logging
import time
from collections import deque

from .. import ids
from .. import protocol as p
from ..protocol import ObjectState, TaskStatus
from . import direct, sockets

log = logging.getLogger("zfabric.client")

SYNC_GETS_TO_ASK = 2     # sync gets seen before we ask for a lease
ASK_AGAIN_AFTER = 256    # sync gets after an unanswered ask before we ask again (the
                         # node keeps an ask until it can grant it: this is a fallback)
MAX_PENDING = 32         # notices held before they are sent without waiting
MAX_FAILURES = 3         # grants whose worker we could not reach before we stop asking
INLINE = int(ObjectState.INLINE)
DIRECT_OPTS = frozenset({"job"})
DEFAULT_RESOURCES = {"CPU": 1.0}


class Lane:
    def __init__(self, client):
        self.client = client
        config = client.config
        self.idle_after = config.lease_idle_seconds
        self.enabled = bool(config.direct_tasks and client.role == "driver"
                            and client.welcome.session_dir)
        self.failures = 0                   # grants whose worker did not answer a connect
        self.wid: str | None = None
        self.sock = None                    # the direct line to the leased worker
        self.asked = False
        self.ending = False
        self.syncs = 0
        self.inflight: tuple | None = None  # (task id, fn id) of the direct task running
        self.known_fns: set[bytes] = set()  # code the leased worker was sent
        self.no_direct: set[bytes] = set()  # functions whose results the node must seal
        self.incoming: deque = deque()
        self.pending: list[bytes] = []      # messages for the node, encoded, in order
        self.last_used = 0.0
        self.direct = 0                     # tasks sent direct (a test reads it)

    # -- asking (the caller's thread, no lock held) --------------------------------

    def sync_get(self) -> None:
        """A get waits for our only outstanding return: perhaps ask for a lease."""
        if not self.enabled or self.wid is not None:
            return
        self.syncs += 1
        if self.syncs > (ASK_AGAIN_AFTER if self.asked else SYNC_GETS_TO_ASK - 1):
            self.syncs, self.asked = 0, True
            self.client.send(p.LeaseAsk(1))

    # -- sending a task (under _send_lock) ------------------------------------------

    def run(self, tid: bytes, name: str, fn_id: bytes, fn_blob: bytes, num_returns: int,
            resources: dict, max_retries: int, retry_exceptions: bool, retry_blob: bytes,
            contained: list, args_blob: bytes, opts: dict) -> bool:
        """Send the task (no deps: the caller saw to it) to the leased worker if it
        may go; False: send it to the node. A second task while one runs here is
        a fan-out, not a sync loop: the lease is given back once that one ends."""
        if self.inflight is not None and self.wid is not None:
            self.ending = True
        if (self.wid is None or self.ending or self.inflight is not None or contained
                or fn_id in self.no_direct or resources != DEFAULT_RESOURCES
                or not DIRECT_OPTS.issuperset(opts)
                or self.client.current_task_id is not None):
            return False
        data = p.encode(p.Execute(tid, name, fn_id, num_returns, 0, [], [],
                                  b"" if fn_id in self.known_fns else fn_blob,
                                  args_blob, retry_blob, [], opts))
        if len(data) > direct.MAX_FRAME:
            return False
        try:
            direct.send(self.sock, data)
        except OSError:   # (the worker died, or hangs: the line is done; the node has it)
            self.ending = True
            return False
        # (the worker runs it now; we make its notice meanwhile)
        self.known_fns.add(fn_id)
        sent = self.client.sent_functions   # (our notice reaches the node before
        if fn_id in sent:                   # anything we send after it)
            fn_blob = b""
        sent.add(fn_id)
        self.inflight = (tid, fn_id)
        self.pending.append(p.encode(p.Submit(
            tid, name, fn_id, num_returns, resources, max_retries, retry_exceptions, 0, b"",
            [], [], fn_blob, args_blob, retry_blob, {**opts, "lease": self.wid})))
        self.last_used = time.monotonic()
        self.direct += 1
        if len(self.pending) >= MAX_PENDING:
            self.client._send_frame([])
        return True

    def take_pending(self) -> list:
        """(Client._send_frame, under _send_lock) The notices to send before
        anything else, encoded."""
        out, self.pending = self.pending, []
        return out

    # -- what comes back ---------------------------------------------------------------

    def on_message(self, msg, raw: bytes | None = None) -> None:
        """(pump, under _lock) A LeaseGrant, LeaseEnd or TaskDone (`raw`: the frame
        it came in, if it came alone): handled in `process`."""
        self.incoming.append((msg, raw))

    def process(self) -> None:
        """(pump, after on_message) Take what came; send what must go now."""
        client = self.client
        with client._send_lock:
            urgent = False
            while self.incoming:
                msg, raw = self.incoming.popleft()
                kind = type(msg)
                if kind is p.TaskDone:
                    self._done(msg, raw)
                elif kind is p.LeaseGrant:
                    urgent |= self._granted(msg)
                elif msg.wid == self.wid:
                    urgent |= self._ended(msg.why)
            if urgent:
                client._send_frame([])

    def _done(self, msg: p.TaskDone, raw: bytes | None) -> None:
        inflight = self.inflight
        if inflight is None or inflight[0] != msg.task_id:
            log.debug("a late TaskDone of direct task %s", msg.task_id.hex())
            return
        self.pending.append(p.encode(msg) if raw is None else raw)
        self.inflight = None
        client = self.client
        if (msg.status == TaskStatus.OK and all(s == INLINE for s in msg.states)
                and not any(msg.contained)):
            with client._lock:   # (as Client._on_object_ready takes a pushed value)
                client._apply_ref_ops()
                ready, counts, watchers = client._ready, client._counts, client._watchers
                for i, (size, payload) in enumerate(zip(msg.sizes, msg.payloads)):
                    oid = ids.object_id(msg.task_id, i)
                    if oid in counts:
                        client._pushed.discard(oid)
                        ready[oid] = (ObjectState.INLINE, size, payload)
                        for sink in watchers.pop(oid, ()):
                            sink.append(oid)
                if client._waiting:
                    client._cond.notify_all()
        elif msg.status == TaskStatus.OK:   # stored, or holding refs: the node seals it
            self.no_direct.add(inflight[1])
            self.ending = True
        if self.ending:
            self._give_back()

    def _granted(self, msg: p.LeaseGrant) -> bool:
        if self.wid is not None or not self.enabled:
            self.pending.append(p.encode(p.LeaseReturn(msg.wid)))   # (one lease at a time)
            return True
        try:
            sock = sockets.direct_line(direct.endpoint_path(msg.endpoint))
        except OSError as e:   # (it died, or listens nowhere: after a few, no more leases)
            self.failures += 1
            if self.failures >= MAX_FAILURES:
                log.warning("zfabric: no worker leases for this driver (%s: %s)",
                            msg.endpoint, e)
                self.enabled = False
            self.pending.append(p.encode(p.LeaseReturn(msg.wid)))
            return True
        self.wid, self.asked, self.ending = msg.wid, False, False
        self.known_fns = set()   # (perhaps another worker: it is sent the code again)
        self.sock = sock
        self.client.lines.add(sock)
        self.last_used = time.monotonic()
        return False

    def _ended(self, reason: str) -> bool:
        if reason == "died":
            self.inflight = None   # (named already: the node retries or fails it)
        self.ending = True
        if self.inflight is None:
            self._give_back()
        return True

    def _give_back(self) -> None:
        self.pending.append(p.encode(p.LeaseReturn(self.wid)))
        self.client.lines.retire(self.sock)   # (closed by the next pump)
        self.sock, self.wid, self.ending, self.syncs = None, None, False, 0

    def idle_check(self, now: float) -> bool:
        """(flush thread, under _send_lock) Return a lease unused for a while."""
        if (self.wid is not None and self.inflight is None
                and now - self.last_used > self.idle_after):
            self._give_back()
            return True
        return False
