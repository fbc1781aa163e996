"""Spillover: tasks this node forwards to peers, and tasks peers forward here.

Peers are other nodes as gossip describes them (`PeerUp`/`PeerSuspect`/
`PeerDown` events, kept as `PeerView`s). Both sides of one exchange:

    owner                                      executor (a peer)
    spill(): a queued task that does
      not fit the free local resources  --Spill-->   on_spill(): accept, or
      goes to the peer placement picks                 Refuse (spillback)
    on_refuse(): queued here again,   <--Refuse--
      that peer left alone for
      `refuse_backoff`
    on_task_result(): its returns     <--TaskResult-- report(): when it ends
      are sealed (STORE ones stay                      (its STORE returns stay in
      in the executor's store)                         our store till the owner
                                                       frees them: FreeObjects)
    check_spilled(): tasks out longer --SpillCheck--> on_spill_check(): Refuse
      than SPILL_CHECK_AGE                             the ones it does not have
    cancel()                          --Cancel-->      (a cancelled TaskResult)

The owner stays the task's owner: a task whose peer dies comes back
(`peer_down`) and is retried by the scheduler. A task forwarded here runs
like a local one, held by `peer_client(owner)`. Locality: a task whose
arguments are mostly in one peer's store goes there if that peer can start
it now (`to_holder`), rather than pulling them here.

A task with a scheduling strategy (SPREAD, node affinity: its
`opts["strategy"]`) is placed by `place` when it is ready, as
`placement.by_strategy` decides: forwarded to the peer it names or whose
turn it is, failed (hard affinity to a node it cannot run on), parked until
the next tick (hard affinity to a peer that is suspect or backing off), or
left to the default way. A task with hard affinity to this node is never
forwarded; one forwarded here with hard affinity to us is always accepted
(if it can ever fit): it has nowhere else to go.

The scheduler owns the tasks; spillover keeps the peers' books and tells
the scheduler (its lifecycle methods) what came back.
"""
from __future__ import annotations

from .. import protocol as p
from .. import ids, records
from ..exceptions import NodeDiedError, TaskUnschedulableError, ZFabricError
from ..protocol import ObjectState, TaskStatus
from . import placement
from . import resources as rs
from .objects import peer_client
from .rejects import peer_source
from .placement import PeerView
from .tasks import Task, TaskState

# Tasks of a function known to be quick (as prefetch judges it) are queued
# this many deep per slot at a peer while the local queue is deep: a round
# trip to the owner per task would leave the peer idle most of the time,
# and a queue of quick tasks drains in milliseconds at the end.
QUICK_SPILL_DEPTH = 16
# A task forwarded to a peer longer ago than this is checked on every tick
# (SpillCheck): a peer that does not have it (its Spill or TaskResult was
# lost: TCP between live peers rarely loses, but a reconnect can) refuses
# it, and it runs again. Messages on one link are ordered, so a result
# already on its way always arrives before the answer.
SPILL_CHECK_AGE = 1.0
# A peer takes every task of hard affinity to it that it can ever hold: the
# owner may send it nowhere else (this is the queue depth per CPU it allows).
HARD_AFFINITY_DEPTH = 1 << 40


class Spillover:
    def __init__(self, sched, *, node_id: bytes, address: str, spill_depth: int,
                 refuse_backoff: float, locality_min_bytes: int,
                 min_task_seconds: float = 0.0):
        self.sched = sched                  # the Scheduler: its tasks, queues, pool, objects
        self.node_id = node_id
        self.address = address              # ours, for peers that do not know us yet
        self.spill_depth = spill_depth
        self.refuse_backoff = refuse_backoff
        self.locality_min_bytes = locality_min_bytes
        self.min_task_seconds = min_task_seconds   # quicker tasks stay (`stays_here`)
        self.peers: dict[bytes, PeerView] = {}
        self.dead: set[bytes] = set()       # peers we declared dead (PeerDown), until a PeerUp
        self.stale: dict[bytes, list] = {}  # peer -> copies it keeps for us in vain, to release
        self.parked: list[Task] = []        # WAITING for the peer their strategy names
        self.spread_turn = 0                # whose turn it is among the nodes (SPREAD)

    # -- owner side ---------------------------------------------------------------------

    def address_of(self, node_id: bytes) -> str | None:
        """A peer's address as its Spills to us gave it (`reply_to`), else None."""
        view = self.peers.get(node_id)
        return view.address if view is not None else None

    def cluster_total(self) -> dict[str, int]:
        total = dict(self.sched.pool.total)
        for view in self.peers.values():
            rs.release(total, view.total)
        return total

    def spill(self) -> None:
        """Forward queued tasks that cannot start here to peers with room."""
        s = self.sched
        queues, pool = s.queues, s.pool
        deep = None   # (worked out once a task is to go)
        for shape in queues.shapes():
            kept = []   # tasks peers forwarded to us: they run here or nowhere
            while True:
                task = queues.head(shape)
                if task is None or rs.fits(pool.available, task.demand):
                    break  # it starts here as soon as a worker is free
                if task.remote_owner is not None or (
                        task.spec.contained and rs.feasible(pool.total, task.demand)) \
                        or placement.hard_affinity_to(task.spec.opts, self.node_id):
                    # forwarded to us: runs here or nowhere; refs nested in the
                    # arguments are known here only: a peer could not get them
                    kept.append(queues.pop(shape))
                    continue
                if self.stays_here(task):
                    break  # quicker run here than handed off, like those behind it
                if deep is None:
                    deep = placement.queue_is_deep(queues.count, self.cluster_total())
                depth = 0
                if deep:
                    depth = QUICK_SPILL_DEPTH if pool.quick(task.spec.fn_id) else self.spill_depth
                peer = placement.pick_peer(self.peers.values(), task.demand, s.now,
                                           depth=depth, arg_bytes=self._arg_bytes(task))
                if peer is None:
                    break  # tasks of one shape are alike: the rest wait too
                self._forward(queues.pop(shape), peer)
            for task in kept:
                queues.push(task)

    def stays_here(self, task: Task) -> bool:
        """Does this queued task run sooner here than it could be handed to a peer?

        Yes if its function runs, on average, in under `min_task_seconds`
        (about what forwarding a task and its result costs the two nodes) and a
        worker here started such a task of the same demand moments ago: that
        worker takes the next one soon. Forwarding it would cost this node more
        than running it, and this node hands on every task it spills, so
        spilling tiny tasks only slows the whole run down. Longer tasks, and
        tiny ones queued behind long ones, are spilled as before."""
        below = self.min_task_seconds
        pool = self.sched.pool
        return (below > 0 and pool.tiny(task.spec.fn_id, below)
                and pool.runs_tiny(task.demand, below, self.sched.now))

    def to_holder(self, task: Task) -> bool:
        """Locality: send a ready task to the peer holding most of its argument
        bytes, if that peer can start it now. False: it stays with us."""
        if placement.hard_affinity_to(task.spec.opts, self.node_id):
            return False
        peer = placement.holder_with_room(self.peers.values(), task.demand, self.sched.now,
                                          self._arg_bytes(task), self.locality_min_bytes)
        if peer is None:
            return False
        self._forward(task, peer, start_now=True)
        return True

    def place(self, task: Task) -> bool:
        """A ready task of ours with a scheduling strategy: forward it, fail it or
        park it as `placement.by_strategy` decides (True: done with it here), or
        False: it goes the default way."""
        strategy = task.spec.opts.get("strategy") if task.spec.opts else None
        if strategy is None or task.remote_owner is not None or task.cancelled:
            return False
        s = self.sched
        verdict, detail = placement.by_strategy(
            strategy, task.demand, s.now, here=self.node_id, local_total=s.pool.total,
            peers=self.peers, dead=self.dead, depth=self.spill_depth,
            spread_turn=self.spread_turn, nested_refs=bool(task.spec.contained))
        if strategy == placement.SPREAD:
            self.spread_turn += 1
        if verdict == placement.PEER:
            self._forward(task, detail, start_now=strategy != placement.SPREAD
                          and strategy["soft"])
        elif verdict == placement.PARK:
            self.parked.append(task)
        elif verdict == placement.FAIL:
            s.finish_failed(task, records.system_error_record(
                TaskUnschedulableError, f"{task.name}() has hard affinity to node "
                f"{strategy['node'].hex()}, but {detail}", task.name))
        else:
            return False
        return True

    def unpark(self) -> None:
        """(each tick) Place the parked tasks again: their peer may be back, or dead."""
        parked, self.parked = self.parked, []
        for task in parked:
            if task.state == TaskState.WAITING and not task.missing:
                self.sched.ready(task)

    def _arg_bytes(self, task: Task) -> dict[bytes, int]:
        """Bytes of the task's STORE arguments held by each node (us included)."""
        held: dict[bytes, int] = {}
        entries = self.sched.objects.entries
        for oid in task.spec.deps:
            entry = entries[oid]
            if entry.state != ObjectState.STORE:
                continue
            here = entry.local or entry.spilled   # (restored from our disk, not pulled)
            nodes = ([self.node_id] if here else []) + entry.remote
            for node in nodes:
                held[node] = held.get(node, 0) + entry.size
        return held

    def _forward(self, task: Task, peer: PeerView, start_now: bool = False) -> None:
        """Send a ready task to a peer to run; we stay its owner. `start_now`:
        it goes there for its arguments, not to wait in that peer's queue."""
        s = self.sched
        spec = task.spec
        task.state = TaskState.SPILLED
        task.node = peer.node_id
        task.since = s.now
        if peer.node_id not in task.tried:
            task.tried += (peer.node_id,)
        task.attempts += 1
        peer.sent(task.demand)
        s.stats["spilled"] += 1
        fn_blob = s.functions.for_receiver(peer.known_fns, spec.fn_id)
        states, sizes, holders, payloads = s.objects.describe_for_peer(spec.deps, peer.node_id)
        limit = spec.max_retries
        retries = -1 if limit < 0 else max(0, limit - (task.attempts - 1))
        s.out.peer(peer.address, p.Spill(
            self.node_id, self.address, spec.task_id, spec.name, spec.fn_id, spec.num_returns,
            spec.resources, retries, spec.retry_exceptions, spec.depth, start_now, spec.deps,
            states, sizes, holders, fn_blob, spec.args_blob, spec.retry_blob, payloads, spec.opts))

    def came_back(self, task: Task) -> PeerView | None:
        """A SPILLED task came back (result, refusal or death): give back its room."""
        peer = self.peers.get(task.node)
        if peer is not None:
            peer.came_back(task.demand)
        task.node = None
        task.state = TaskState.WAITING
        return peer

    def _spilled_to(self, sender: bytes, task_id: bytes) -> Task | None:
        """Our task that `sender` runs, or None (a late answer: retried elsewhere)."""
        task = self.sched.tasks.get(task_id)
        if task is None or task.state != TaskState.SPILLED or task.node != sender:
            return None
        return task

    def on_task_result(self, sender: bytes, msg: p.TaskResult) -> None:
        task = self._spilled_to(sender, msg.task_id)
        if task is None:
            self._release_stale(sender, msg)
            return
        self.came_back(task)
        s = self.sched
        if len(msg.states) != task.spec.num_returns:
            s.finish_failed(task, records.system_error_record(
                ZFabricError, "a peer reported the wrong number of returns", task.name))
        elif msg.status == TaskStatus.CANCELLED:
            task.cancelled = True
            s.retry_or_fail(task, None)
        elif ObjectState.ERROR in msg.states:
            s.finish_failed(task, msg.payloads[msg.states.index(ObjectState.ERROR)])
        else:
            s.finish_ok(task, msg, remote=sender)

    def _release_stale(self, sender: bytes, msg: p.TaskResult) -> None:
        """A result we no longer wait for (the task came back and ran again, or
        ended): STORE returns the sender keeps for us that we do not count as
        its copies are released there (at once, or when we hear from it again if
        we hold it dead), else they would stay in its store."""
        entries = self.sched.objects.entries
        stale = []
        for k, state in enumerate(msg.states):
            oid = ids.object_id(msg.task_id, k)
            entry = entries.get(oid)
            if state == ObjectState.STORE and (entry is None or sender not in entry.remote):
                stale.append(oid)
        if stale:
            self.sched.stats["stale_results"] += 1
            self.stale.setdefault(sender, []).extend(stale)
            self._release(sender)

    def _release(self, node_id: bytes) -> None:
        """Send a peer the stale copies to release, once we can reach it."""
        view = self.peers.get(node_id)
        if view is not None and node_id in self.stale:
            self.sched.out.peer(view.address, p.FreeObjects(self.node_id, self.stale.pop(node_id)))

    def on_refuse(self, sender: bytes, msg: p.Refuse) -> None:
        task = self._spilled_to(sender, msg.task_id)
        if task is None:
            return
        peer = self.came_back(task)
        task.attempts -= 1
        if peer is not None:
            peer.known_fns.discard(task.spec.fn_id)   # it may have refused for want of it
            peer.refused_until = self.sched.now + self.refuse_backoff
            peer.available = rs.to_units(msg.available)
        self.sched.retry_or_fail(task, None)   # (arguments elsewhere are pulled if it runs here)

    def on_declared_dead(self, event) -> None:
        """A peer holds us DEAD (its gossip says so). When it declared it
        (`peer_down` there) it dropped our tasks, and refuses new ones until it
        hears we rejoined: ours there come back now, as from a dead peer --
        nothing else would while what we send it is lost -- and none go there
        until its gossip no longer holds us dead (`event.dead` False). It also
        took back the tasks it had sent us and forgot our copies: those tasks
        stop here and its holds go, as if it had died (it runs them elsewhere)."""
        s = self.sched
        view = self.peers.get(event.node_id)
        if view is not None:
            view.refused_until = float("inf") if event.dead else s.now
        if not event.dead:
            return
        self._drop_work_of(event.node_id)
        for task in [t for t in s.tasks.values()
                     if t.state == TaskState.SPILLED and t.node == event.node_id]:
            self.came_back(task)
            s.stats["dropped_by_peer"] += 1
            s.retry_or_fail(task, records.system_error_record(
                NodeDiedError, f"node {ids.short(event.node_id)}, running {task.name}(), "
                "declared this node dead and dropped it, and the task has no retries left "
                f"(max_retries={task.spec.max_retries})", task.name))

    def check_spilled(self) -> None:
        """Ask each peer about our tasks it has had for a while (SpillCheck)."""
        now = self.sched.now
        due: dict[bytes, list] = {}
        for task in self.sched.tasks.values():
            if task.state == TaskState.SPILLED and now - task.since > SPILL_CHECK_AGE:
                due.setdefault(task.node, []).append(task.spec.task_id)
        for node, task_ids in due.items():
            self.sched.out.peer(self.peers[node].address, p.SpillCheck(self.node_id, task_ids))

    def cancel(self, task: Task, force: bool) -> None:
        """Ask the peer running our task to cancel it (it answers with a cancelled TaskResult)."""
        peer = self.peers.get(task.node)
        if peer is not None:
            self.sched.out.peer(peer.address, p.Cancel(task.returns[0] if task.returns else
                                                       task.spec.task_id + bytes(4), force, True))

    # -- peers come and go --------------------------------------------------------------

    def peer_up(self, node_id: bytes, address: str, info: dict) -> None:
        self.dead.discard(node_id)
        view = self.peers.get(node_id)
        if view is None:
            view = self.peers[node_id] = PeerView(node_id, address)
        view.address = address
        view.suspect = False   # heard of again
        self._release(node_id)
        if not view.update(info):
            self.sched.out.nonsense(peer_source(node_id), "a malformed view in its gossip")

    def peer_suspect(self, node_id: bytes) -> None:
        view = self.peers.get(node_id)
        if view is not None:
            view.suspect = True

    def peer_down(self, node_id: bytes) -> bool:
        """A peer is gone: tasks it forwarded us end (nobody to report to; if it
        comes back, it asks: SpillCheck), and its holds here go. False if we
        did not know it."""
        self.dead.add(node_id)
        if self.peers.pop(node_id, None) is None:
            return False
        self._drop_work_of(node_id)
        return True

    def _drop_work_of(self, node_id: bytes) -> None:
        """Stop the tasks `node_id` forwarded us, quietly, and drop its holds here."""
        s = self.sched
        owner = peer_client(node_id)
        orphans = [t for t in s.tasks.values() if t.owner == owner]
        for task in orphans:
            task.remote_owner = None
        for task in orphans:
            s.cancel_task(task, force=True, recursive=True)
        s.objects.drop_client(owner)

    def take_back(self, node_id: bytes) -> list[Task]:
        """Our tasks a dead peer ran: WAITING again, for the scheduler to retry."""
        tasks = [t for t in self.sched.tasks.values()
                 if t.state == TaskState.SPILLED and t.node == node_id]
        for task in tasks:
            task.node = None
            task.state = TaskState.WAITING
        return tasks

    # -- executor side ------------------------------------------------------------------

    def on_spill(self, sender: bytes, msg: p.Spill) -> None:
        """A peer forwards us a task to run: take it, or refuse (spillback)."""
        s = self.sched
        view = self.peers.get(sender)
        if view is None and msg.reply_to and sender not in self.dead:
            view = self.peers[sender] = PeerView(sender, msg.reply_to)   # it knows us first
        if msg.fn_blob:   # kept even if we refuse: the owner will not send it again
            s.functions.add(msg.fn_id, msg.fn_blob)
        held = s.tasks.get(msg.task_id)
        if held is not None and held.owner == peer_client(sender):
            # We run it for that owner already (a second copy, or the owner sent it
            # again while we were cut off): a Refuse would make the owner run it
            # elsewhere at the same time. Our TaskResult answers both.
            return
        demand = rs.to_units(msg.resources)
        # From a peer we declared dead (we dropped its tasks then): refused until
        # it rejoins. It takes back what it sent us when it hears we hold it dead.
        address = view.address if view is not None else (
            msg.reply_to if sender in self.dead else "")
        if view is None or not self._accepts(msg, demand) or self._clash(sender, msg):
            s.stats["refused"] += 1
            if address:   # (without the code: the owner sends it with the next)
                s.out.peer(address, p.Refuse(
                    self.node_id, msg.task_id, rs.from_units(s.pool.available)))
            return
        s.stats["accepted"] += 1
        owner = peer_client(sender)
        spec = p.Submit(msg.task_id, msg.name, msg.fn_id, msg.num_returns, msg.resources,
                        msg.max_retries, msg.retry_exceptions, msg.depth, b"", [], [],
                        b"", msg.args_blob, msg.retry_blob, msg.opts)
        task = s.admit(spec, owner, demand, owner_node=sender)
        task.remote_owner = sender
        failure = None
        for i, oid in enumerate(msg.dep_ids):   # (each pinned: the task unpins them all)
            failed = s.objects.adopt(
                oid, sender, owner, msg.dep_states[i], msg.dep_sizes[i], msg.dep_holders[i],
                msg.dep_payloads[i], msg.name)
            failure = failure or failed
            spec.deps.append(oid)
        if failure is not None:
            s.finish_failed(task, failure)
        else:
            s.ready(task)

    def _clash(self, sender: bytes, msg: p.Spill) -> bool:
        """Does a Spill name return ids of objects here that are not the sender's?
        (Refused: they are not its to make. A hostile local client may have taken
        an honest task's ids here first, so the sender is not blamed.)"""
        entries = self.sched.objects.entries
        for oid in ids.return_ids(msg.task_id, msg.num_returns):
            entry = entries.get(oid)
            if entry is not None and entry.owner_node != sender:
                return True
        return False

    def _accepts(self, msg: p.Spill, demand: dict[str, int]) -> bool:
        s = self.sched
        depth = (HARD_AFFINITY_DEPTH if placement.hard_affinity_to(msg.opts, self.node_id)
                 else 0 if msg.start_now else QUICK_SPILL_DEPTH if s.pool.quick(msg.fn_id)
                 else self.spill_depth)
        return (msg.task_id not in s.tasks and msg.fn_id in s.functions
                and placement.accepts(s.pool.available, s.pool.total, s.queues.count,
                                      demand, depth))

    def report(self, task: Task) -> None:
        """A task a peer forwarded to us ended: tell it how; keep STORE returns
        (the owner frees them), drop the rest (the owner has their values)."""
        s = self.sched
        states, sizes, contained, payloads = s.objects.describe_returns(
            task.returns, task.owner, task.cancelled, task.name)
        view = self.peers.get(task.remote_owner)
        if view is None:
            return  # the owner is gone: its copies went with peer_client(owner)
        status = TaskStatus.CANCELLED if task.cancelled else TaskStatus.OK
        s.out.peer(view.address, p.TaskResult(
            self.node_id, task.spec.task_id, int(status), states, sizes, contained, payloads))

    def on_spill_check(self, sender: bytes, msg: p.SpillCheck) -> None:
        view = self.peers.get(sender)
        if view is None:
            return
        owner = peer_client(sender)
        for task_id in msg.task_ids:
            task = self.sched.tasks.get(task_id)
            if task is None or task.owner != owner:
                self.sched.out.peer(view.address, p.Refuse(
                    self.node_id, task_id, rs.from_units(self.sched.pool.available)))

    def on_free_objects(self, sender: bytes, msg: p.FreeObjects) -> None:
        """The owner freed objects whose copies we keep for it."""
        self.sched.objects.decref_all(peer_client(sender), msg.ids)

    def validate(self, tasks: dict[bytes, Task]) -> None:
        for t in tasks.values():
            if t.state == TaskState.SPILLED:
                assert t.node in self.peers and t.remote_owner is None
        for view in self.peers.values():
            mine = [t for t in tasks.values()
                    if t.state == TaskState.SPILLED and t.node == view.node_id]
            assert view.ours == len(mine), (view.ours, len(mine))
