"""Lineage: what the owner of a task keeps to make its returns again, and the
making again (reconstruction).

    Scheduler.finish_ok --seal_returns--> Rebuilder --record--> Lineage (the book)
    ObjectDirectory.free (objects owned here) --freed(oid)--> Lineage
    ObjectDirectory.lose (an object owned here lost every copy)
        --lost(entry)--> Rebuilder --make_pending, a new attempt--> ObjectDirectory, Scheduler
    ObjectDirectory.lose (a copy kept for another node's task)
        --copy_lost(entry)--> Rebuilder --Refuse--> the owner (it runs the task again)

The owner of a task is the node a client submitted it to. Once the task has
finished, the owner keeps its spec -- function id, arguments, options: what it
takes to run it again -- while one of its STORE returns is alive here (its
entry in the object directory) or a kept spec needs it as an argument's
lineage. INLINE values live in the owner's memory and die only with it: a
task whose returns are all INLINE keeps nothing (the hot path of tiny tasks),
and a kept spec keeps the values of its INLINE arguments, not their lineage.
`Lineage` is the book: bounded by `lineage_max_specs` and `lineage_max_bytes`
(config.py), the oldest spec dropped first.

When every copy of an object owned here is lost (its holders died, or no
holder could serve a pull), `Rebuilder.lost` makes the object PENDING again
and runs its task again through the normal path (queued here or spilled),
first rebuilding arguments that are lost or freed meanwhile, recursively.
Subscribers and waiting tasks simply wait for the new value. Each re-run is
an attempt of the task: once `max_retries` are spent (-1: forever), or if the
object was made by `put` or its lineage was dropped, the object becomes an
ObjectLostError that says why. A task re-run while some of its returns still
hold their first value keeps that value; the second copy is dropped.
"""
from __future__ import annotations

from collections import deque

from .. import ids, records, structs
from .. import protocol as p
from ..exceptions import ObjectLostError
from ..protocol import ObjectState
from . import effects as fx
from .objects import peer_client
from .tasks import Task, TaskState

_PENDING, _STORE = ObjectState.PENDING, ObjectState.STORE   # (the hot path)

# Bytes a kept spec costs beyond its blobs and ids (the record, the dict slot).
SPEC_OVERHEAD = 200


def spec_bytes(spec: p.Submit, deps: list, contained: list, values: dict) -> int:
    """What a kept spec counts against `lineage_max_bytes`."""
    return (SPEC_OVERHEAD + len(spec.args_blob) + len(spec.retry_blob) + len(spec.name)
            + ids.OBJECT_ID_SIZE * (len(deps) + len(contained))
            + sum(len(v) for v in values.values()))


class Spec:
    """A finished task as its owner keeps it, to run it again."""
    __slots__ = ("spec", "deps", "contained", "values", "owner", "demand", "attempts",
                 "live", "users", "holds", "size")

    def __init__(self, spec: p.Submit, owner: bytes, demand: dict, attempts: int,
                 live: set[bytes], values: dict[bytes, bytes], holds: list[bytes]):
        # The task's own Submit, whose deps and contained the scheduler clears
        # when the task ends (it rebinds them, never mutates the lists): kept here.
        self.spec = spec
        self.deps: list[bytes] = spec.deps
        self.contained: list[bytes] = spec.contained
        self.values = values        # INLINE arguments: their values (small; no lineage kept)
        self.owner = owner          # the client that submitted it
        self.demand = demand
        self.attempts = attempts    # attempts spent so far (runs and re-runs)
        self.live = live            # its STORE returns whose entries are alive here
        self.users = 0              # kept specs that hold it as an argument's lineage
        self.holds = holds          # task ids of kept specs of its arguments
        self.size = spec_bytes(spec, self.deps, self.contained, values)

    def may_rerun(self) -> bool:
        limit = self.spec.max_retries
        return limit < 0 or self.attempts <= limit


class Lineage:
    """The book of kept specs, by task id, oldest first; bounded by count and bytes."""

    def __init__(self, max_specs: int, max_bytes: int):
        self.max_specs = max_specs
        self.max_bytes = max_bytes
        self.specs: dict[bytes, Spec] = {}   # in record order: the oldest first
        self.bytes = 0
        self.dropped_count = 0
        # task ids whose lineage the cap dropped, to say so; as bounded as the book
        self._dropped: deque = deque(maxlen=max(1, max_specs))
        self._dropped_set: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, task_id: bytes) -> Spec | None:
        return self.specs.get(task_id)

    def was_dropped(self, task_id: bytes) -> bool:
        return task_id in self._dropped_set

    def record(self, spec: p.Submit, owner: bytes, demand: dict, attempts: int,
               live: set[bytes], values: dict[bytes, bytes]) -> None:
        """A task owned here finished with `live` STORE returns alive: keep its
        spec, with the values of its INLINE arguments (`values`) and the
        lineage of the others (already kept: a re-run finished; only its
        attempts and returns change)."""
        task_id = spec.task_id
        kept = self.specs.get(task_id)
        if kept is not None:
            kept.attempts = attempts
            kept.live = set(live)
            self._release(kept, task_id)
            return
        if not live:
            return
        holds = []
        for dep in dict.fromkeys(ids.task_of(oid) for oid in spec.deps if oid not in values):
            used = self.specs.get(dep)
            if used is not None:
                used.users += 1
                holds.append(dep)
        rec = Spec(spec, owner, demand, attempts, set(live), values, holds)
        if rec.size > self.max_bytes:   # alone over the cap: never kept
            self._drop(rec, task_id, kept=False)
            return
        self.specs[task_id] = rec
        self.bytes += rec.size
        while len(self.specs) > self.max_specs or self.bytes > self.max_bytes:
            oldest, victim = next(iter(self.specs.items()))
            self._drop(victim, oldest, kept=True)

    def freed(self, oid: bytes) -> None:
        """An object owned here was freed: its task's spec may go."""
        rec = self.specs.get(ids.task_of(oid))
        if rec is not None and oid in rec.live:
            rec.live.discard(oid)
            self._release(rec, ids.task_of(oid))

    def _release(self, rec: Spec, task_id: bytes) -> None:
        """Let go of specs nobody needs any more, iteratively (chains are long)."""
        stack = [(rec, task_id)]
        while stack:
            rec, task_id = stack.pop()
            if rec.live or rec.users or self.specs.get(task_id) is not rec:
                continue
            del self.specs[task_id]
            self.bytes -= rec.size
            stack += self._let_go(rec)

    def _let_go(self, rec: Spec) -> list:
        """`rec` is gone: the specs it held lose a user."""
        out = []
        for dep in rec.holds:
            used = self.specs.get(dep)
            if used is not None:
                used.users -= 1
                out.append((used, dep))
        rec.holds = []
        return out

    def _drop(self, rec: Spec, task_id: bytes, *, kept: bool) -> None:
        """The cap drops a spec: its objects can no longer be rebuilt."""
        self.dropped_count += 1
        if kept:
            del self.specs[task_id]
            self.bytes -= rec.size
        if len(self._dropped) == self._dropped.maxlen:
            self._dropped_set.discard(self._dropped[0])
        self._dropped.append(task_id)
        self._dropped_set.add(task_id)
        for used, dep in self._let_go(rec):
            self._release(used, dep)

    def validate(self) -> None:
        assert len(self.specs) <= self.max_specs and self.bytes <= self.max_bytes
        assert self.bytes == sum(r.size for r in self.specs.values())
        users: dict[bytes, int] = {}
        for rec in self.specs.values():
            for dep in rec.holds:
                users[dep] = users.get(dep, 0) + 1
        for task_id, rec in self.specs.items():
            assert rec.users == users.get(task_id, 0), (task_id, rec.users)
            assert rec.live or rec.users, "a spec nobody needs is kept"


class Rebuilder:
    """Runs tasks again to make lost objects (the scheduler's, see the module doc)."""

    def __init__(self, sched, book: Lineage):
        self.sched = sched
        self.book = book

    # -- a task owned here finished --------------------------------------------------

    def seal_returns(self, task: Task, msg, remote: bytes | None) -> list:
        """Seal a finished task's returns (a return that has its value already
        -- the task ran again for another one -- keeps its first value), and keep
        its lineage if it is ours. The objects freed."""
        objects, name = self.sched.objects, task.spec.name
        entries = objects.entries
        freed: list = []
        for i, oid in enumerate(task.returns):
            entry = entries.get(oid)
            if entry is not None and entry.state != _PENDING:
                self._drop_second_copy(entry, msg.states[i], remote)
                continue
            contains = msg.contained[i] if i < len(msg.contained) else []
            freed += objects.seal_return(entry, oid, msg.states[i], msg.sizes[i],
                                         msg.payloads[i], contains, name, remote)
        if task.remote_owner is None and (_STORE in msg.states
                                          or task.spec.task_id in self.book.specs):
            self._record(task)
        return freed

    def _record(self, task: Task) -> None:
        """Keep the lineage of a task of ours with STORE returns (INLINE ones live
        in our memory: they are lost only with us, so only a STORE return needs it)."""
        entries = self.sched.objects.entries
        live = set()
        for oid in task.returns:
            entry = entries.get(oid)
            if entry is not None and entry.state == ObjectState.STORE:
                live.add(oid)
        values = {}
        for oid in task.spec.deps:
            entry = entries.get(oid)
            if entry is not None and entry.state == ObjectState.INLINE:
                values[oid] = entry.payload
        self.book.record(task.spec, task.owner, task.demand, task.attempts, live, values)

    def _drop_second_copy(self, entry, state: int, remote: bytes | None) -> None:
        """A return sealed twice: the first value stands; the copy the second
        run left in a store (not the one that holds the first) is freed."""
        sched = self.sched
        sched.stats["sealed_twice"] += 1
        if state != ObjectState.STORE:
            return
        if remote is None:
            if entry.state != ObjectState.STORE or not entry.local:
                sched.out.emit(fx.DeleteObject(entry.oid))   # (the first is not this file)
        elif remote not in entry.remote:
            peer = sched.spill.peers.get(remote)
            if peer is not None:
                sched.out.peer(peer.address, p.FreeObjects(sched.node_id, [entry.oid]))

    # -- an object owned here lost every copy -------------------------------------------

    def lost(self, entry) -> str | None:
        """(ObjectDirectory hook) Make the object again: None if it is on its way
        (PENDING again), else why it cannot be, to add to its ObjectLostError."""
        plan = self._plan(ids.task_of(entry.oid), entry.oid)
        if isinstance(plan, str):
            return plan
        objects = self.sched.objects
        for rec in plan:   # arguments freed meanwhile: their values, or made again too
            for dep in rec.deps:
                if dep in objects:
                    continue
                if dep in rec.values:
                    objects.restore_inline(dep, rec.values[dep])
                else:
                    objects.expect(dep)
        for rec in plan:   # (their other returns lost with this one too)
            for oid in ids.return_ids(rec.spec.task_id, rec.spec.num_returns):
                other = objects.get(oid)
                if other is not None and self._has_no_copy(other):
                    self._repend(other)
        self._repend(entry)
        for rec in plan:
            self._rerun(rec)
        return None

    def _plan(self, task_id: bytes, oid: bytes) -> list[Spec] | str:
        """The kept specs to run again, arguments first, to make `oid` (of
        `task_id`); or why it cannot be made."""
        sched = self.sched
        objects = sched.objects
        order: list[Spec] = []
        seen = {task_id}
        stack = [(task_id, oid, False)]
        while stack:
            tid, need, expanded = stack.pop()
            rec = self.book.get(tid)
            if expanded:
                order.append(rec)
                continue
            if tid in sched.tasks:
                continue   # already running again (for another of its returns)
            why = self._why_not(tid, need, rec)
            if why:
                return why
            stack.append((tid, need, True))
            for dep in rec.deps:
                dep_tid = ids.task_of(dep)
                entry = objects.get(dep)
                if dep_tid not in seen and dep not in rec.values and (
                        entry is None or self._has_no_copy(entry)):
                    seen.add(dep_tid)
                    stack.append((dep_tid, dep, False))
        return order

    def _why_not(self, task_id: bytes, oid: bytes, rec: Spec | None) -> str:
        if ids.is_put(oid):
            return f"; object {oid.hex()} was made by put, which cannot be rebuilt"
        if rec is None:
            how = ("its lineage was dropped (lineage_max_specs / lineage_max_bytes reached)"
                   if self.book.was_dropped(task_id) else "its lineage was not kept")
            return f"; object {oid.hex()} cannot be rebuilt: {how}"
        if not rec.may_rerun():
            return (f"; object {oid.hex()} cannot be rebuilt: its task {rec.spec.name}() has "
                    f"no retries left (max_retries={rec.spec.max_retries})")
        return ""

    @staticmethod
    def _has_no_copy(entry) -> bool:
        return (entry.state == ObjectState.STORE and not entry.local and not entry.remote
                and not entry.fetching)

    def _repend(self, entry) -> None:
        """The object is made again: PENDING, with its waiters; tasks queued
        with it go back to waiting for it."""
        if entry.state == ObjectState.PENDING:
            return
        sched = self.sched
        sched.objects.make_pending(entry)
        oid = entry.oid
        for task in [t for t in sched.tasks.values()
                     if t.state == TaskState.QUEUED and oid in t.spec.deps]:
            sched.queues.discard(task)
            task.state = TaskState.WAITING
            task.missing.add(oid)
            sched.objects.wait_for(entry, task.spec.task_id)

    def _rerun(self, rec: Spec) -> None:
        """A new attempt of a finished task, through the normal path."""
        sched = self.sched
        sched.stats["rebuilt"] += 1
        spec = structs.replace(rec.spec, deps=list(rec.deps), contained=list(rec.contained))
        task = sched.admit(spec, rec.owner, rec.demand, returns=False)
        task.attempts = rec.attempts
        spec.contained = sched.objects.pin_known(spec.contained)
        failure = sched.pin_deps(task)
        if failure is not None:
            sched.finish_failed(task, failure)
        elif not task.missing:
            sched.ready(task)

    # -- a copy kept here for another node's task was lost --------------------------------

    def copy_lost(self, entry) -> None:
        """(ObjectDirectory hook) An argument a peer sent us with its task has no
        copy left: its tasks here go back to their owner (Refuse), which makes
        the argument again or fails them; our hold on the copy goes."""
        sched = self.sched
        owner_node = entry.owner_node
        view = sched.spill.peers.get(owner_node)
        tasks = [t for t in sched.tasks.values() if t.remote_owner == owner_node
                 and entry.oid in t.spec.deps and t.state in (TaskState.WAITING, TaskState.QUEUED)]
        holder = peer_client(owner_node)
        for task in tasks:
            task.remote_owner = None   # ended quietly: its owner hears a Refuse instead
            sched.finish_failed(task, records.system_error_record(
                ObjectLostError, f"argument {entry.oid.hex()} has no copy left", task.name))
            sched.objects.decref_all(holder, task.returns)
            if view is not None:
                sched.out.peer(view.address, p.Refuse(
                    sched.node_id, task.spec.task_id, sched.resource_view()["available"]))

    def drop_lost_copy(self, entry) -> None:
        """(ObjectDirectory hook, after `copy_lost`) The error stands for whoever
        waits here; our hold for the owner goes, so that the owner may send the
        argument again (a later Spill adopts it afresh)."""
        self.sched.objects.decref_all(peer_client(entry.owner_node), [entry.oid])
