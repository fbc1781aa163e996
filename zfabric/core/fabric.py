"""One node's whole state: the local scheduler, membership, the GCS replica
and object pulls, behind one `handle(event, now) -> effects` (sans-I/O).

    node loop --event--> Fabric.handle
                          |-- ClientMessage, worker/client events --> Scheduler
                          |-- PeerMessage: Gossip --> Membership (+ GCS anti-entropy)
                          |                GcsUpdate --> Gcs
                          |                Spill, TaskResult, Refuse, Cancel,
                          |                FreeObjects --> Scheduler
                          |-- ChunkArrived / ChunkFailed --> Transfers
                          |-- WorkerOutput, LogLines (peer), Listen (client),
                          |       ClientGone --> LogRouter (task output to drivers)
                          |-- PeerUnreachable / PeerSendBlocked --> counted in `stats`, warned
                          |-- MessageRejected (and the scheduler's Nonsense effects,
                          |       a peer's forged sender, bad GCS records) --> Rejections:
                          |       counted in `stats` (rejected_*), warned once per sender
                          |-- ZygoteStarted / ZygoteDied / ZygoteStartFailed --> counted
                          |       in `stats` (zygote_restarts ...), logged
                          '-- Tick --> Membership (gossip round, failure detection),
                                       Transfers (chunk timeouts), Scheduler
    effects <-- Send, PeerSend, RequestChunk, SealPull, AbortPull, workers, store ...

The scheduler asks for what only the fabric can do through effects it
handles itself: Fetch/CancelFetch (pulls), Publish and DeleteObject
(entries of our GCS shard), FreeCopies (FreeObjects to every node
with a copy). What the fabric learns goes back to the scheduler as events:
PeerUp/PeerDown from membership, ObjectFetched/FetchFailed from pulls.

GCS tables written here: "node" (our static record: addresses, resources,
pid; key = our node id), "loc" (key = object id, value = size: this node
holds a copy in its store), "obj" (the STORE objects this node owns: size,
creating task, the node that made it) and "tl" (the tasks this node ran, for the
cluster's timeline: key = batch number, value = that tick's finished tasks;
the oldest batches are deleted past `timeline_capacity` tasks, so one
delta carries many tasks and the shard stays bounded); "err" and "fn" (recent
failures and counts by function, for the dashboard: core/activity.py). Gossip carries each
node's live view (free resources, queue) in its membership row.
"""
from __future__ import annotations

import random
from collections import deque

from .. import ids
from .. import protocol as p
from . import effects as fx
from . import events as ev
from . import resources as rs
from .activity import Activity
from .gcs import Gcs
from .logroute import LogRouter, goes_elsewhere
from .membership import LIVE, Membership, MemberState
from .rejects import Rejections, client_source, peer_source
from .replication import Replication
from .scheduler import Scheduler
from .timeline import pack_batch
from .views import ClusterView
from .workers import workers_for
from .transfer import ChunkRequest, PullDone, PullFailed, Transfers

JOIN_RETRY = 0.5   # seconds between join attempts while no seed has answered
# Resource shapes with queued tasks a heartbeat carries (the busiest): `status`
# shows the cluster's pending demands, and a row stays small whatever the queue.
GOSSIP_DEMANDS = 16
# The scheduler's effects the fabric carries out itself (the rest go to the loop).
_OWN_EFFECTS = frozenset({fx.Fetch, fx.CancelFetch, fx.Publish, fx.DeleteObject, fx.FreeCopies,
                          fx.Nonsense})


_ZYGOTE_EVENTS = frozenset({ev.ZygoteStarted, ev.ZygoteDied, ev.ZygoteStartFailed})
_OWN_CLIENT_MESSAGES = frozenset({p.Request, p.Listen})   # the rest go to the scheduler
STATIC_KEYS = ("address", "object_address", "host", "port", "pid", "auth")


def build(config, *, node_id: bytes, resources: dict, store_capacity: int, info: dict,
          seeds: list[str], now: float) -> "Fabric":
    """A node's state machines wired as the node runs them (node/node.py and
    testing/sim/ both build theirs here). `config`: a zfabric Config;
    `info`: the node's record (addresses, dirs, pid); `resources` includes CPU."""
    static = {k: info[k] for k in STATIC_KEYS if k in info}
    scheduler = Scheduler(
        node_id=node_id, resources=dict(resources), store_capacity=store_capacity,
        num_workers=workers_for(resources.get("CPU", 0)), max_workers=config.max_workers,
        idle_worker_timeout=config.idle_worker_timeout,
        timeline_capacity=config.timeline_capacity,
        prefetch_max_task_seconds=config.prefetch_max_task_seconds,
        prefetch_queue_seconds=config.prefetch_queue_seconds,
        prefetch_max_depth=config.prefetch_max_depth,
        node_info={**info, "config": config.to_json()},
        spill_depth=config.spill_depth, refuse_backoff=config.refuse_backoff,
        spill_min_task_seconds=config.spill_min_task_seconds,
        locality_min_bytes=config.locality_min_bytes,
        lineage_max_specs=config.lineage_max_specs, lineage_max_bytes=config.lineage_max_bytes,
        errors=(config.error_log_capacity, config.error_text_max))
    # our first rows (the join's) carry our resources: a peer never holds us
    # alive with no view (the live view replaces this with our first heartbeat)
    membership = Membership(node_id, info["address"], {**static, **scheduler.resource_view()},
                            now=now,
                            rng=random.Random(node_id), failure_timeout=config.failure_timeout,
                            gossip_interval=config.gossip_interval, fanout=config.gossip_fanout,
                            dead_probe_rounds=config.dead_probe_rounds,
                            pause_threshold=config.failure_timeout / 4,
                            forget_left_after=config.forget_left_after,
                            deltas_above=config.gossip_deltas_above)
    return Fabric(scheduler, membership, Gcs(node_id, log_capacity=config.gcs_log_capacity),
                  Replication(node_id, config.gcs_replicas),
                  Transfers(chunk_size=config.chunk_size, window=config.pull_window,
                            chunk_timeout=config.chunk_timeout),
                  static_info=static, seeds=list(seeds), join_timeout=config.join_timeout,
                  tick_interval=config.tick_interval,
                  dashboard_stream_tasks=config.dashboard_stream_tasks,
                  memory_max_objects=config.memory_max_objects)


class Fabric:
    def __init__(self, scheduler, membership, gcs, replication, transfers, *, static_info: dict,
                 seeds: list[str], join_timeout: float, tick_interval: float,
                 dashboard_stream_tasks: int,
                 memory_max_objects: int):
        self.scheduler = scheduler
        self.membership = membership
        self.gcs = gcs
        self.replication = replication   # which shards live where (core/replication.py)
        self.transfers = transfers
        self.node_id = scheduler.node_id
        self.static_info = static_info      # address, object_address, host, port, pid ...
        self.seeds = list(seeds)
        self.join_timeout = join_timeout
        self.tick_interval = tick_interval  # the scheduler's housekeeping period
        self.joined = not seeds
        self.join_error = ""
        self._join_deadline = 0.0
        self._next_join = 0.0
        self._next_sched_tick = 0.0
        self._seen: dict[bytes, tuple] = {}   # peer -> (incarnation, heartbeat) given to the scheduler
        self._held_dead_by: set[bytes] = set()   # peers whose last gossip held us DEAD
        self._timeline_seen = 0               # scheduler timeline entries published
        self._timeline_batches: deque = deque()   # (batch number, entries) in our shard
        self._timeline_kept = 0
        self._batch = 0
        self._events: deque = deque()
        self._out: list = []
        self._now = 0.0
        self.stats = {"peer_unreachable": 0, "peer_send_blocked": 0, "peer_messages_dropped": 0,
                      "zygote_restarts": 0, "zygote_deaths": 0, "zygote_start_failures": 0}
        self._warned_peers: set[str] = set()   # addresses warned of, until heard from again
        self.rejections = Rejections(self.stats)
        self.views = ClusterView(self.node_id, scheduler, membership, gcs, self.stats,
                                 memory_max_objects)
        self.activity = Activity(self.node_id, scheduler, gcs, dashboard_stream_tasks)
        self.views.add_answers(errors=self.activity.errors, tasks=self._tasks_view)
        self.logs = LogRouter(self.node_id, self._live_address, self.stats)

    # -- entry points ---------------------------------------------------------------

    def start(self, now: float) -> list:
        self._now = now
        self.gcs.put("node", self.node_id, self.static_info)
        self._publish_view()
        self._take(self.scheduler.start(now))
        self._join_deadline = now + self.join_timeout
        self._try_join()
        self._run_events()
        return self._flush()

    def handle(self, event, now: float) -> list:
        self._now = now
        kind = type(event)
        if kind is ev.ClientMessages:     # a frame of several: as one, unless one is ours
            if any(type(m) in _OWN_CLIENT_MESSAGES for m in event.msgs):
                return [e for m in event.msgs
                        for e in self.handle(ev.ClientMessage(event.client, m), now)]
        elif kind is not ev.ClientMessage or type(event.msg) in _OWN_CLIENT_MESSAGES:
            return self._handle_other(event, kind, now)
        # the hot path (submits, results, refs): straight to the scheduler,
        # and its effects straight out unless one is meant for us
        effects = self.scheduler.handle(event, now)
        own = _OWN_EFFECTS
        for e in effects:
            if type(e) in own:
                break
        else:
            return effects
        self._take(effects)
        self._run_events()
        self._push_gcs()
        return self._flush()

    def _handle_other(self, event, kind, now: float) -> list:
        if kind is ev.PeerMessage:
            if self._warned_peers:
                self._heard_from(event.node_id)
            self._on_peer_message(event)
        elif kind is ev.ClientMessage:
            if type(event.msg) is p.Request:
                self._on_query(event.client, event.msg)
            else:
                self._on_listen(event.client, event.msg)
        elif kind is ev.WorkerOutput:
            self._out += self.logs.output(event.runs)
        elif kind is ev.ChunkArrived:
            self._transfer(self.transfers.on_chunk(event.holder, event.oid, event.offset,
                                                   event.length, now))
        elif kind is ev.ChunkFailed:
            self._transfer(self.transfers.on_error(event.holder, event.oid, event.error, now))
        elif kind is ev.Tick:
            self._on_tick()
        elif kind is ev.MessageRejected:
            self._reject(event.source, event.what, event.reason)
        elif kind is ev.PeerUnreachable or kind is ev.PeerSendBlocked:
            self._on_peer_send_failed(event)
        elif kind in _ZYGOTE_EVENTS:
            self._on_zygote(event)
        else:
            if kind is ev.ClientGone:
                self.logs.client_gone(event.client)
            self._events.append(event)
        self._run_events()
        self._push_gcs()
        return self._flush()

    def _flush(self) -> list:
        out, self._out = self._out, []
        return out

    def _run_events(self) -> None:
        """Feed queued events to the scheduler, handling the effects meant for us."""
        while self._events:
            self._take(self.scheduler.handle(self._events.popleft(), self._now))

    def _take(self, effects: list) -> None:
        for e in effects:
            kind = type(e)
            if kind is fx.Fetch:
                self._transfer(self.transfers.start(e.oid, e.size, list(e.holders), self._now))
            elif kind is fx.CancelFetch:
                if self.transfers.pulling(e.oid):
                    self.transfers.cancel(e.oid)
                    self._out.append(fx.AbortPull(e.oid))
            elif kind is fx.Publish:
                self.gcs.put(e.table, e.key, e.value)
            elif kind is fx.DeleteObject:
                if not e.spilled:   # (a spilled copy is still ours to serve)
                    self.gcs.delete("loc", e.oid)
                self._out.append(e)
            elif kind is fx.FreeCopies:
                self._free_copies(e.oid, e.holders)
            elif kind is fx.Nonsense:
                self._reject(e.source, "nonsense", e.reason)
            else:
                self._out.append(e)

    # -- membership and joining -------------------------------------------------------

    def _try_join(self) -> None:
        if self.joined:
            return
        if self._now >= self._join_deadline:
            self.join_error = (f"no zfabric node answered at {', '.join(self.seeds)} "
                               f"within {self.join_timeout:g} s")
            self._out.append(fx.StopNode(self.join_error))
            return
        if self._now >= self._next_join:
            self._next_join = self._now + JOIN_RETRY
            hello = p.Gossip(self.node_id, self.membership.rows(),
                             self.replication.vector(self.gcs), True)
            for address in self.seeds:
                self._out.append(fx.JoinSend(address, hello))

    def _probe_seeds(self) -> None:
        """Alone (every peer declared dead, or none known) after we joined: ask
        the seeds for their rows at the slow probe rate, as a join does. Beside
        the probes of the dead members we still know, this finds the cluster
        again after a cut that healed, whatever became of those members."""
        m = self.membership
        if self.joined and self.seeds and m.probe_round and m.alone():
            hello = p.Gossip(self.node_id, m.rows(), self.replication.vector(self.gcs), True)
            for address in self.seeds:
                if address != m.me.address:
                    self._out.append(fx.JoinSend(address, hello))

    def _on_tick(self) -> None:
        now = self._now
        self._publish_view()
        targets, changes = self.membership.tick(now)
        if targets:
            self._gossip(targets)
        self._apply_changes(changes)
        self._probe_seeds()
        for node_id in self.membership.take_forgotten():   # it left long ago
            self.gcs.drop_shard(node_id)
        self._transfer(self.transfers.on_tick(now))
        self._publish_timeline()
        self._try_join()
        if now >= self._next_sched_tick:
            self._next_sched_tick = now + self.tick_interval
            self._events.append(ev.Tick())
            self.activity.publish()

    def _publish_view(self) -> None:
        """Our live view goes out with our next heartbeat."""
        s = self.scheduler
        self.membership.set_info({
            **self.static_info, **s.resource_view(),
            "queued": s.queues.count, "running": s.pool.running_count(),
            "store_used": s.objects.store_used, "store_capacity": s.objects.store_capacity,
            "spilled_bytes": s.objects.table.spilled_bytes,
            "spilled_objects": s.objects.table.spilled_count,
            "demands": [[rs.from_units(d), n] for d, n in s.queues.demands()[:GOSSIP_DEMANDS]]})

    def _publish_timeline(self) -> None:
        timeline = self.scheduler.timeline
        new = timeline.since(self._timeline_seen)
        self._timeline_seen = timeline.total
        if not new:
            return
        self._batch += 1
        # (an entry's fields are str, bytes, float and int from checked messages)
        self.gcs.put("tl", str(self._batch), pack_batch(new), checked=True)
        self._timeline_batches.append((self._batch, len(new)))
        self._timeline_kept += len(new)
        while self._timeline_kept > timeline.capacity and len(self._timeline_batches) > 1:
            batch, n = self._timeline_batches.popleft()
            self.gcs.delete("tl", str(batch))
            self._timeline_kept -= n

    def _on_gossip(self, sender: bytes, msg: p.Gossip) -> None:
        joining = sender not in self.membership.members   # a join: it gets every row
        changes = self.membership.merge(msg.rows, self._now, sender)
        member = self.membership.members.get(sender)
        if member is None:   # (a sender without its own row: still take what it says)
            self._apply_changes(changes)
            return
        updates = self.replication.updates_for(self.gcs, sender, msg.vector)
        if updates:
            self._out.append(fx.PeerSend(member.address, p.GcsUpdate(self.node_id, updates)))
        if msg.reply or self.membership.answers(sender):
            # a join or a probe asks for our rows; and a member we declared dead
            # is told so at once (our rows say it), so that it refutes -- rejoins
            # with a higher incarnation -- instead of waiting for our next slow
            # probe of the dead: after a partition heals, views agree in a few
            # messages, whichever side declared whom dead.
            rows = (self.membership.rows() if joining
                    else self.membership.answer_rows(sender, msg.rows))
            self._out.append(fx.PeerSend(member.address, p.Gossip(
                self.node_id, rows, self.replication.vector(self.gcs), False)))
        self._apply_changes(changes)
        self._held_dead(sender, self.membership.holds_us_dead(msg.rows))

    def _held_dead(self, sender: bytes, dead: bool) -> None:
        """Does `sender` hold us DEAD? Then it dropped our tasks there (and refuses
        more): they run again now, even while what we send it is lost (a one-way
        cut), and none go there until its gossip no longer holds us dead."""
        if dead != (sender in self._held_dead_by):
            (self._held_dead_by.add if dead else self._held_dead_by.discard)(sender)
            self._events.append(ev.DeclaredDead(sender, dead))

    def _apply_changes(self, changes: list) -> None:
        """Tell the scheduler who came, who went, and whose view changed."""
        me = self.node_id
        for change in changes:
            if change.node_id == me:
                continue
            if change.state == MemberState.SUSPECT:
                self._seen.pop(change.node_id, None)   # its next news is a PeerUp again
                self._events.append(ev.PeerSuspect(change.node_id))
            elif change.state in (MemberState.DEAD, MemberState.LEFT):
                self._seen.pop(change.node_id, None)
                self._held_dead_by.discard(change.node_id)
                how = "left" if change.state == MemberState.LEFT else "failed"
                self._events.append(ev.PeerDown(change.node_id, f"node {ids.short(change.node_id)} {how}"))
                self._transfer(self.transfers.on_holder_dead(change.node_id, self._now))
                self._out.append(fx.ForgetPeer(change.node_id, change.address))
        for member in self.membership.peers((MemberState.ALIVE,)):
            version = (member.incarnation, member.heartbeat)
            if self._seen.get(member.node_id) != version:
                self._seen[member.node_id] = version
                self._events.append(ev.PeerUp(member.node_id, member.address, member.info))
        if not self.joined and self._seen:
            self.joined = True
        if changes and self.replication.set_live(
                m.node_id for m in self.membership.members.values() if m.state in LIVE):
            for shard in self.replication.strays(self.gcs):   # placed elsewhere now
                self.gcs.drop_shard(shard)

    # -- GCS -----------------------------------------------------------------------------

    def _on_peer_message(self, event: ev.PeerMessage) -> None:
        msg = event.msg
        kind = type(msg)
        sender = getattr(msg, "sender", getattr(msg, "owner", event.node_id))
        if sender != event.node_id:   # (every peer message names its sender)
            self._reject(peer_source(event.node_id), "nonsense",
                         f"a {kind.__name__} claiming to come from node {ids.short(sender)}")
            return
        malformed = self.membership.malformed + self.gcs.malformed
        if kind is p.Gossip:
            self._on_gossip(msg.sender, msg)
        elif kind is p.LogLines:
            self._out += self.logs.from_peer(msg)
            return
        elif kind is p.GcsUpdate:
            forgotten, keeps = self.membership.forgotten, self.replication.keeps
            for record in msg.records:
                # (ours come back after a restart: no harm; a shard placed
                # elsewhere: a sender whose ring is not ours yet)
                shard = record[1] if len(record) > 1 else None
                if shard != self.node_id and (type(shard) is not bytes or keeps(shard)):
                    self.gcs.apply(record, skip=forgotten)   # (malformed: counted there)
        else:
            self._events.append(event)
            return
        if self.membership.malformed + self.gcs.malformed != malformed:
            self._reject(peer_source(event.node_id), "nonsense",
                         f"a {kind.__name__} with malformed rows, records or vector")

    def _reject(self, source: str, what: str, reason: str) -> None:
        log = self.rejections.reject(source, what, reason)
        if log is not None:
            self._out.append(log)

    def _gossip(self, targets: list) -> None:
        """This round's gossip: to the membership's targets, and (replication
        partial) to one ring neighbour for the GCS shards we share."""
        m, vector = self.membership, self.replication.vector(self.gcs)
        # (every row to every target: one message for all, as always below the threshold)
        shared = None if m.delta.active else p.Gossip(self.node_id, m.rows(), vector, False)
        sent = set()
        for node_id, address in targets:
            sent.add(node_id)
            self._out.append(fx.PeerSend(address, shared or p.Gossip(
                self.node_id, m.gossip_rows(node_id), vector, m.wants_reply(node_id))))
        neighbour = self.replication.ring_peer()
        member = m.members.get(neighbour) if neighbour not in sent else None
        if member is not None and member.state in LIVE:
            self._out.append(fx.PeerSend(member.address, p.Gossip(
                self.node_id, m.gossip_rows(neighbour), vector, False)))

    def _push_gcs(self) -> None:
        """Our shard's new writes go at once to its replicas: every live peer while
        replication is full (core/replication.py); gossip repairs losses."""
        record = self.gcs.take_new()
        if not record:
            return
        msg, members = p.GcsUpdate(self.node_id, [record]), self.membership.members
        for node_id in self.replication.push_targets():
            member = members.get(node_id)
            if member is not None and member.state in LIVE:
                self._out.append(fx.PeerSend(member.address, msg))

    def _free_copies(self, oid: bytes, holders: tuple) -> None:
        nodes = set(holders) | set(self.gcs.lookup("loc", oid))
        nodes.discard(self.node_id)
        for node in nodes:
            member = self.membership.members.get(node)
            if member is not None and member.state in LIVE:
                self._out.append(fx.PeerSend(member.address, p.FreeObjects(self.node_id, [oid])))

    # -- task output ---------------------------------------------------------------------

    def _on_listen(self, client: bytes, msg: p.Listen) -> None:
        """A driver's log listener: only for a driver attached here."""
        if ids.job_node(msg.job) != self.node_id or \
                ids.job_client(msg.job) not in self.scheduler.drivers:
            self._reject(client_source(client), "nonsense",
                         "a Listen for a job of no driver attached here")
            return
        self._out += self.logs.listen(client, msg)

    def _live_address(self, node_id: bytes) -> str | None:
        """A live peer's address: by membership, or, for a peer gossip has not
        told us of yet, by the tasks it spilled to us (their `reply_to`)."""
        member = self.membership.members.get(node_id)
        if member is not None:
            return member.address if member.state in LIVE else None
        return self.scheduler.spill.address_of(node_id)

    # -- pulls ---------------------------------------------------------------------------

    def _transfer(self, outputs: list) -> None:
        for out in outputs:
            kind = type(out)
            if kind is ChunkRequest:
                if not self.transfers.pulling(out.oid):
                    continue   # the pull ended meanwhile (its last holder failed just now)
                member = self.membership.members.get(out.holder)
                address = member.info.get("object_address", "") if member else ""
                if not address:  # not a node we know: that holder fails at once
                    self._transfer(self.transfers.on_error(
                        out.holder, out.oid, "holder unknown", self._now))
                    continue
                self._out.append(fx.RequestChunk(out.holder, address, out.oid, out.offset,
                                                 out.length, self.transfers.size_of(out.oid)))
            elif kind is PullDone:
                self._out.append(fx.SealPull(out.oid))
                self._events.append(ev.ObjectFetched(out.oid))
            elif kind is PullFailed:
                self._out.append(fx.AbortPull(out.oid))
                self._events.append(ev.FetchFailed(out.oid, out.reason))

    # -- queries ---------------------------------------------------------------------------

    def _on_query(self, client: bytes, msg: p.Request) -> None:
        try:
            data = self.views.answer(msg.what)
            self._out.append(fx.Send(client, p.Reply(msg.req_id, data, "")))
        except (KeyError, ValueError, TypeError) as e:
            self._out.append(fx.Send(client, p.Reply(msg.req_id, None, str(e))))

    def _tasks_view(self) -> dict:
        return self.activity.tasks({m.node_id: m.info for m in self.membership.members.values()
                                    if m.node_id != self.node_id and m.state in LIVE})

    # -- leaving ---------------------------------------------------------------------------

    def leave(self) -> list:
        """We stop gracefully: tell every live peer at once (no failure timeout)."""
        rows = self.membership.leave()
        msg = p.Gossip(self.node_id, rows, self.gcs.vector(), False)
        return [fx.PeerSend(m.address, msg)
                for m in self.membership.peers(LIVE)]

    # -- what the node loop asks, and what its sockets report ------------------------------
    # The loop never reads the state machines: it asks these, and turns what its
    # sockets did into events (`_on_peer_send_failed`).

    def ready(self) -> bool:
        """Joined the cluster, and no worker is still starting (the pre-started ones are up)."""
        return self.joined and not self.scheduler.pool.starting_count()

    def output_elsewhere(self, task_id: bytes) -> bool:
        """Do a task's lines go to another node, its job's? (One unknown here: yes.)"""
        task = self.scheduler.tasks.get(task_id)
        return task is None or goes_elsewhere(self.node_id, task.spec.opts)

    def joining(self) -> bool:
        """Is a join still under way (JoinSends may still go out)?"""
        return not self.joined

    def expects_chunk(self, holder: bytes, oid: bytes, offset: int, length: int) -> bool:
        """Does a chunk from `holder` answer an outstanding request? If not, don't write it."""
        return self.transfers.expects(holder, oid, offset, length)

    def _on_peer_send_failed(self, event) -> None:
        """Count a send to a peer that failed; warn once per address until it is
        heard from again. Nothing is retried: gossip repeats itself, and a task
        sent there runs again when the peer is declared dead."""
        if type(event) is ev.PeerUnreachable:
            self.stats["peer_unreachable"] += 1
            why = f"cannot reach peer {event.address}: {event.reason}"
        else:
            self.stats["peer_send_blocked"] += 1
            why = f"peer {event.address} is not taking messages (down or far behind)"
        self.stats["peer_messages_dropped"] += event.dropped
        if event.address in self._warned_peers:
            return
        self._warned_peers.add(event.address)
        self._out.append(fx.Log("warning", (
            f"{why}; dropped {event.dropped} message(s), "
            f"{self.stats['peer_messages_dropped']} to peers so far "
            "(not warned again until it is heard from)")))

    def _on_zygote(self, event) -> None:
        """The worker fork server started again, died or could not start: count
        it and say so (its workers' deaths come as WorkerExited events)."""
        kind = type(event)
        if kind is ev.ZygoteStarted:
            if event.restart:
                self.stats["zygote_restarts"] += 1
                self._out.append(fx.Log("info", f"worker fork server (zygote) {event.pid} "
                                                f"took over"))
            return
        if kind is ev.ZygoteDied:
            self.stats["zygote_deaths"] += 1
            code = event.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 \
                else f"exit code {code}"
            if event.spare:
                self._out.append(fx.Log("info", f"the spare worker fork server died ({how})"))
                return
            self._out.append(fx.Log("warning", (
                f"the worker fork server (zygote) died ({how}); its {event.workers} "
                f"worker(s) were killed and their tasks go back to the queue; a new one "
                f"starts on the next spawn, in {event.restart_in:g} s at the earliest")))
            return
        self.stats["zygote_start_failures"] += 1
        self._out.append(fx.Log("error", (
            f"cannot start the worker fork server (zygote): {event.reason}; "
            f"trying again in {event.retry_in:g} s (no new workers until then)")))

    def _heard_from(self, node_id: bytes) -> None:
        member = self.membership.members.get(node_id)
        if member is not None:
            self._warned_peers.discard(member.address)
