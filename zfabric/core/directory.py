"""The object directory of one node: what each object is, who is told when
it is ready, which copies to pull and which to free.

    clients --Put / Subscribe / Refs--> ObjectDirectory --ObjectReady--> clients
    scheduler --seal / fail returns, pin / unpin arguments--> ObjectDirectory
    ObjectDirectory --Fetch / CancelFetch / Publish / FreeCopies / DeleteObject--> fabric, loop
    fabric --ObjectFetched / FetchFailed--> (scheduler) --> ObjectDirectory
    ObjectDirectory --wake / unavailable / lost--> scheduler (tasks waiting on an object)
    ObjectDirectory --rebuild / copy_lost / forget--> lineage (core/lineage.py)

It owns the books (core/objects.py: states, payloads, reference counts, the
store bytes in use) and the store's capacity. Tasks are the scheduler's:
when an object a task waits for becomes ready, cannot be brought here, or
is lost, the directory calls the hook the scheduler gave it. An object
owned here whose every copy is lost is first offered to lineage, which
makes it PENDING again and runs its task again if it can (`lose`).

A STORE object held elsewhere is pulled into our store (`fetch`) before a
subscriber hears of it (clients map objects from their own node's store);
a pull counts against the capacity from its start. So does a spilled
object brought back from disk (`fetch` too: RestoreObject). When a put, a
result, a pull or a restore does not fit, `make_room` evicts and spills
what core/capacity.py picks; the spiller's reports come back here
(`spilled`, `spill_failed`, `restored`, `restore_failed`). An object we own that
is freed here is freed on every node we told of it (`shared_with`) or that
the GCS says holds a copy (FreeCopies).
"""
from __future__ import annotations

from .. import ids, records
from .. import protocol as p
from ..exceptions import ObjectLostError, ObjectStoreFullError, ZFabricError
from ..protocol import ObjectState
from . import capacity
from . import effects as fx
from .objects import ObjectEntry, ObjectTable
from .rejects import client_source

# The states a worker or a peer may report for a return.
_VALUE_STATES = (ObjectState.INLINE, ObjectState.STORE)


class ObjectDirectory:
    def __init__(self, node_id: bytes, store_capacity: int, *, out: fx.Outbox, stats: dict,
                 any_peers, wake, unavailable, lost, rebuild, copy_lost, drop_lost_copy,
                 forget):
        self.node_id = node_id
        self.store_capacity = store_capacity
        self.table = ObjectTable()
        self._out = out
        self._stats = stats
        self._any_peers = any_peers       # () -> are there peers (that may hold copies)?
        self._wake = wake                 # (entry, task ids) it is ready: those tasks may run
        self._unavailable = unavailable   # (task ids, record) it cannot come here
        self._lost = lost                 # (entry) it became an error: queued users fail
        # lineage (core/lineage.py):
        self._rebuild = rebuild           # (entry) ours, every copy lost: None if made again,
                                          # else why not (added to its ObjectLostError)
        self._copy_lost = copy_lost       # (entry) a copy kept for a peer's tasks: give them back
        self._drop_lost_copy = drop_lost_copy   # (entry) ... then let go of it
        self._forget = forget             # (oid) an object owned here was freed
        self.spill_error = ""             # why the last spill failed; no spilling till room frees

    # -- the books ---------------------------------------------------------------------

    @property
    def entries(self) -> dict[bytes, ObjectEntry]:
        return self.table.entries

    @property
    def store_used(self) -> int:
        return self.table.store_used

    def get(self, oid: bytes) -> ObjectEntry | None:
        return self.table.entries.get(oid)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.table.entries

    def create_returns(self, oids: list[bytes], holder: bytes, *,
                       owner_node: bytes | None, push: bool) -> None:
        """A new task's returns, PENDING, held by `holder` (`push`: sent to it
        when ready if it is here; `owner_node`: the peer that owns them)."""
        for oid in oids:
            entry = self.table.create(oid, holder)
            if owner_node is not None:
                entry.owner_node = owner_node
            if push:
                entry.push_to = holder

    def wait_for(self, entry: ObjectEntry, task_id: bytes) -> None:
        """A task waits for this object: the `wake` hook names it when it is ready."""
        entry.dependents.append(task_id)

    def stop_waiting(self, oid: bytes, task_id: bytes) -> None:
        entry = self.table.entries.get(oid)
        if entry is not None and task_id in entry.dependents:
            entry.dependents.remove(task_id)

    def pin(self, oid: bytes) -> None:
        """A task needs the object (an argument, or a ref nested in its arguments)."""
        self.table.pin(oid)

    def pin_known(self, oids: list[bytes]) -> list[bytes]:
        """Pin those of `oids` that exist here; the list of those pinned."""
        known = [oid for oid in oids if oid in self.table.entries]
        for oid in known:
            self.table.pin(oid)
        return known

    def unpin_all(self, *lists: list[bytes]) -> list:
        """A task no longer needs the objects in these lists; the objects freed."""
        freed: list = []
        unpin = self.table.unpin
        for oids in lists:
            for oid in oids:
                freed += unpin(oid)
        return freed

    def describe_for_worker(self, deps: list[bytes]) -> tuple[list, list]:
        """Arguments as an Execute carries them: states, and INLINE payloads."""
        states, payloads = [], []
        for oid in deps:
            entry = self.table.entries[oid]
            states.append(int(entry.state))
            payloads.append(entry.payload if entry.state == ObjectState.INLINE else b"")
        return states, payloads

    # -- arguments and returns that cross to other nodes ---------------------------------

    def describe_for_peer(self, deps: list[bytes], peer: bytes) -> tuple[list, list, list, list]:
        """Arguments as a Spill carries them to `peer`: states, sizes, holders of
        STORE ones (the peer pulls those: it is told to free its copy later),
        INLINE and ERROR payloads."""
        states, sizes, holders, payloads = [], [], [], []
        for oid in deps:
            entry = self.table.entries[oid]
            states.append(int(entry.state))
            sizes.append(entry.size)
            if entry.state == ObjectState.STORE:
                here = entry.local or entry.spilled   # (a spilled copy is served from disk)
                holders.append(([self.node_id] if here else []) + entry.remote)
                if peer not in entry.shared_with:
                    entry.shared_with.append(peer)
                payloads.append(b"")
            else:
                holders.append([])
                payloads.append(entry.payload)
        return states, sizes, holders, payloads

    def adopt(self, oid: bytes, owner_node: bytes, holder: bytes, state: int, size: int,
              holders: list, payload, name: str) -> bytes | None:
        """An argument of a task a peer forwarded, as the owner described it:
        known here from now on (a STORE copy we pull is held by `holder`, the
        owner, till it frees it). Returns an error record if it has no value."""
        entry = self.table.entries.get(oid)
        failure = None
        if entry is None:
            entry = self.table.create(oid, None)
            entry.owner_node = owner_node
            if state == ObjectState.INLINE:
                self.table.seal(entry, ObjectState.INLINE, size, bytes(payload), [])
            elif state == ObjectState.STORE and [h for h in holders if h != self.node_id]:
                self.table.seal(entry, ObjectState.STORE, size, b"", [],
                                remote=[h for h in holders if h != self.node_id])
                self.table.hold(entry, holder)
            else:
                failure = records.system_error_record(
                    ObjectLostError, f"argument {oid.hex()} has no copy left", name) \
                    if state == ObjectState.STORE else records.system_error_record(
                        ZFabricError, f"argument {oid.hex()} was sent without a value", name)
                self.table.seal(entry, ObjectState.ERROR, 0, b"", [])
        self.table.pin(oid)
        if entry.state == ObjectState.PENDING:
            failure = failure or records.system_error_record(
                ZFabricError, f"argument {oid.hex()} was forwarded before it was ready", name)
        return failure

    def describe_returns(self, returns: list[bytes], holder: bytes, cancelled: bool,
                         name: str) -> tuple[list, list, list, list]:
        """A forwarded task's returns as a TaskResult carries them to their owner:
        states, sizes, contained refs, payloads. The owner keeps STORE returns of
        a success here (it frees them later); the rest are dropped now."""
        states, sizes, payloads, contained = [], [], [], []
        for oid in returns:
            entry = self.table.entries.get(oid)
            contained.append(list(entry.contains) if entry is not None else [])
            if entry is None:
                states.append(int(ObjectState.ERROR))
                sizes.append(0)
                payloads.append(records.system_error_record(
                    ObjectLostError, "the result was freed", name))
                continue
            states.append(int(entry.state))
            sizes.append(entry.size)
            payloads.append(entry.payload if entry.state != ObjectState.STORE else b"")
        failed = cancelled or ObjectState.ERROR in states
        freed: list = []
        for oid in returns:
            entry = self.table.entries.get(oid)
            if entry is not None and (failed or entry.state != ObjectState.STORE):
                freed += self.table.decref(holder, oid)
        self.free(freed)
        return states, sizes, contained, payloads

    # -- capacity ------------------------------------------------------------------------

    def make_room(self, size: int) -> bool:
        """Can `size` more bytes go in the store? Evicts and starts spills to make
        it so (core/capacity.py); False (nothing done) if they cannot."""
        table = self.table
        room = capacity.plan(table, size, self.store_capacity, may_spill=not self.spill_error)
        if room is None:
            return False
        for entry in room.evict:
            table.evict(entry)
            self._stats["evicted"] += 1
            self._out.emit(fx.DeleteObject(entry.oid))
        for entry in room.spill:
            table.start_spill(entry)
            self._out.emit(fx.SpillObject(entry.oid, entry.size))
        return True

    def full_message(self, size: int) -> str:
        table = self.table
        text = (f"object store is full: {size:,} bytes do not fit "
                f"({table.store_used:,} of {self.store_capacity:,} bytes in use, "
                f"{table.spilled_bytes:,} spilled to disk); ")
        if size > self.store_capacity:
            return text + "it is larger than the whole store: raise object_store_memory"
        if self.spill_error:
            return text + f"spilling to disk failed: {self.spill_error}"
        if table.spilling_bytes:
            text += f"{table.spilling_bytes:,} bytes are still being copied to disk; "
        return text + ("the rest is pinned by tasks that need it: free ObjectRefs you "
                       "no longer need or raise object_store_memory")

    # -- clients ------------------------------------------------------------------------

    def put(self, client: bytes, msg: p.Put) -> None:
        table = self.table
        state = ObjectState(msg.state) if msg.state in _VALUE_STATES else None
        nonsense = ""
        if state is None:
            nonsense = "a Put in a state other than INLINE or STORE"
        elif not ids.is_put(msg.oid):
            nonsense = "a Put of an object id that is not a put's"
        elif msg.oid in table:   # (a pending one too: never sealed by a Put)
            nonsense = "a Put of an object that exists"
        error = nonsense or (self.full_message(msg.size) if state == ObjectState.STORE
                             and not self.make_room(msg.size) else "")
        if error:
            if nonsense:   # (its store file, if any, is not the client's to have deleted)
                self._out.nonsense(client_source(client), nonsense)
            elif state == ObjectState.STORE:
                self._out.emit(fx.DeleteObject(msg.oid))
            if msg.req_id:
                self._out.send(client, p.PutReply(msg.req_id, error))
            elif not nonsense:   # a task's argument, its Submit next: the task raises it
                entry = table.create(msg.oid, client)
                table.seal(entry, ObjectState.ERROR, 0, records.system_error_record(
                    ObjectStoreFullError, error), [])
                self.object_ready(entry)
            return
        entry = table.create(msg.oid, client)
        payload = bytes(msg.payload) if state == ObjectState.INLINE else b""
        table.seal(entry, state, msg.size, payload, msg.contained)
        if state == ObjectState.STORE:
            self._publish_here(entry)
        self.object_ready(entry)
        if msg.req_id:
            self._out.send(client, p.PutReply(msg.req_id, ""))

    def subscribe(self, client: bytes, msg: p.Subscribe) -> None:
        for oid in msg.ids:
            entry = self.table.entries.get(oid)
            if entry is None:
                self._out.send(client, p.ObjectReady(oid, int(ObjectState.ERROR), 0,
                               records.system_error_record(
                                   ObjectLostError, f"object {oid.hex()} does not exist "
                                   "(it was freed, or was never created on this node)")))
            elif entry.ready and entry.local:
                self.table.touch(oid)
                self._out.send(client, p.ObjectReady(oid, int(entry.state), entry.size,
                                                     entry.payload))
            else:   # pending, or in other nodes' stores: told once it is here
                entry.subscribers.add(client)
                if entry.ready:
                    self.fetch(entry)

    def refs(self, client: bytes, msg: p.Refs) -> None:
        table = self.table
        for oid in msg.incs:
            table.incref(client, oid)
        freed: list = []
        entries = table.entries
        unheld = 0
        for oid in msg.decs:
            entry = entries.get(oid)
            if entry is not None and client not in entry.holders:
                unheld += 1   # (one it never held: nothing to drop)
            freed += table.decref(client, oid)
        self.free(freed)
        if unheld:
            self._out.nonsense(client_source(client), f"a Refs dropping {unheld} "
                                                      "object(s) it does not hold")

    def drop_client(self, client: bytes) -> None:
        """A client (or a peer, as its `peer_client`) is gone: drop its holds."""
        self.free(self.table.drop_client(client))

    def decref_all(self, client: bytes, oids) -> None:
        freed: list = []
        for oid in oids:
            freed += self.table.decref(client, oid)
        self.free(freed)

    # -- values arrive ----------------------------------------------------------------

    def object_ready(self, entry: ObjectEntry) -> None:
        """An object got its value: notify subscribers, wake dependent tasks.

        A value in another node's store is pulled before subscribers hear of
        it (they map it from our store), but only for a subscriber that asked.
        The submitter (`push_to`) is sent the value unasked if it is here; if
        it is in another node's store, it is told so (an ObjectReady in state
        PENDING), and subscribes if it gets the object: its get sends nothing
        until then. The scheduler decides what dependent tasks do.
        """
        if entry.push_to is not None:
            if entry.local:
                entry.subscribers.add(entry.push_to)
            elif entry.push_to not in entry.subscribers:
                self._out.send(entry.push_to, p.ObjectReady(
                    entry.oid, int(ObjectState.PENDING), entry.size, b""))
            entry.push_to = None
        if entry.subscribers and not entry.local:
            self.fetch(entry)
        elif entry.subscribers:
            msg = p.ObjectReady(entry.oid, int(entry.state), entry.size, entry.payload)
            for client in entry.subscribers:
                self._out.send(client, msg)
            entry.subscribers.clear()
        if entry.dependents:
            waiting, entry.dependents = entry.dependents, []
            self._wake(entry, waiting)

    def seal_return(self, entry: ObjectEntry | None, oid: bytes, state: int, size: int,
                    payload, contains: list, name: str, remote: bytes | None) -> list:
        """A task's return got its value, as a worker or a peer (`remote`: that
        peer keeps a STORE value in its store) reported it; the objects freed."""
        if state not in _VALUE_STATES:
            state, size = ObjectState.ERROR, 0
            payload = records.system_error_record(
                ZFabricError, "worker reported a malformed result", name)
        if entry is None:  # nobody wants it any more
            if state == ObjectState.STORE:
                self._out.emit(fx.FreeCopies(oid, (remote,)) if remote else fx.DeleteObject(oid))
            return []
        table = self.table
        if remote and state == ObjectState.STORE:
            table.seal(entry, state, size, b"", contains, remote=[remote])
            self._publish_owned(entry, remote)
        else:
            if state == ObjectState.STORE and not self.make_room(size):
                self._out.emit(fx.DeleteObject(oid))
                state, payload = ObjectState.ERROR, records.system_error_record(
                    ObjectStoreFullError, self.full_message(size), name)
                size = 0
            table.seal(entry, state, size, bytes(payload), contains)
            if state == ObjectState.STORE:
                self._publish_here(entry)
        self.object_ready(entry)
        return table.release_if_unused(entry)

    def fail_return(self, oid: bytes, record: bytes) -> list:
        """A task's return becomes its error (unless it has a value already)."""
        entry = self.table.entries.get(oid)
        if entry is None or entry.ready:
            return []
        self.table.seal(entry, ObjectState.ERROR, 0, record, [])
        self.object_ready(entry)
        return self.table.release_if_unused(entry)

    # -- pulls -------------------------------------------------------------------------

    def fetch(self, entry: ObjectEntry) -> None:
        """Start bringing a STORE object into our store (once), if there is room:
        from disk if it is spilled here, else pulled from the nodes holding it."""
        if entry.local or entry.fetching or entry.restoring:
            return
        if not self.make_room(entry.size):
            self._fail_askers(entry, records.system_error_record(
                ObjectStoreFullError, self.full_message(entry.size)))
            return
        if entry.spilled:
            self.table.start_restore(entry)
            self._stats["restored"] += 1
            self._out.emit(fx.RestoreObject(entry.oid, entry.size))
            return
        self.table.reserve(entry)
        self._stats["fetches"] += 1
        self._out.emit(fx.Fetch(entry.oid, entry.size, tuple(entry.remote)))

    def fetched(self, oid: bytes) -> None:
        entry = self.table.entries.get(oid)
        if entry is None or not entry.fetching:
            self._out.emit(fx.DeleteObject(oid))  # freed while it was pulled
            return
        self.table.fetched(entry)
        self._out.emit(fx.Publish("loc", oid, entry.size))
        self.object_ready(entry)

    def fetch_failed(self, oid: bytes, reason: str) -> None:
        entry = self.table.entries.get(oid)
        if entry is not None and entry.fetching:
            self.table.unreserve(entry)
            self.lose(entry, ObjectLostError, reason)

    # -- the spiller reports -------------------------------------------------------------

    def spilled(self, oid: bytes) -> None:
        """An object's copy on disk is durable: its store file goes, unless a task
        pinned it meanwhile (then the disk copy goes)."""
        entry = self.table.entries.get(oid)
        if entry is None or not entry.spilling:   # freed meanwhile
            self._out.emit(fx.DeleteSpilled(oid))
            return
        durable = entry.pins == 0
        self.table.end_spill(entry, durable)
        if durable:
            self._stats["spilled_objects"] += 1
            self._out.emit(fx.DeleteObject(oid, spilled=True))
        else:
            self._out.emit(fx.DeleteSpilled(oid))

    def spill_failed(self, oid: bytes, error: str) -> None:
        """The disk is full or failing: the object stays in the store, and no
        more spills start until disk space is freed (a later put that needs
        one fails, naming this cause)."""
        entry = self.table.entries.get(oid)
        if entry is None or not entry.spilling:
            return   # freed meanwhile (its store file went before it was copied)
        self.table.end_spill(entry, durable=False)
        self._stats["spill_failures"] += 1
        if not self.spill_error:
            self._out.log("warning", f"spilling objects to disk failed: {error}")
        self.spill_error = error

    def restored(self, oid: bytes) -> None:
        entry = self.table.entries.get(oid)
        if entry is None or not entry.restoring:   # freed meanwhile (its spill file went then)
            self._out.emit(fx.DeleteObject(oid))
            return
        self.table.end_restore(entry, restored=True)
        self._disk_freed()
        self._out.emit(fx.DeleteSpilled(oid))
        self.object_ready(entry)

    def restore_failed(self, oid: bytes, error: str, lost: bool) -> None:
        entry = self.table.entries.get(oid)
        if entry is None or not entry.restoring:
            return
        self.table.end_restore(entry, restored=False)
        if lost:
            self.table.drop_spilled(entry)
            self._out.emit(fx.DeleteSpilled(oid))
            self.lose(entry, ObjectLostError,
                      f"object {oid.hex()} could not be read back from disk: {error}")
        else:
            self._fail_askers(entry, records.system_error_record(
                ObjectStoreFullError, f"object {oid.hex()} could not be brought back from "
                f"disk into the store: {error}"))

    def _disk_freed(self) -> None:
        """A spill file went: a spill that failed for want of disk may work now."""
        self.spill_error = ""

    def _fail_askers(self, entry: ObjectEntry, record: bytes) -> None:
        """The object cannot come here now: those waiting for it here get the
        error; the object itself is unharmed (a task on its holder may still use it)."""
        for client in entry.subscribers:
            self._out.send(client, p.ObjectReady(entry.oid, int(ObjectState.ERROR), 0, record))
        entry.subscribers.clear()
        waiting, entry.dependents = entry.dependents, []
        self._unavailable(waiting, record)

    def lose(self, entry: ObjectEntry, error: type, text: str) -> None:
        """A ready object's value cannot be had. One owned here is made again
        from its lineage if it can be (PENDING again); otherwise it becomes
        that error (saying why it was not rebuilt), and so do the tasks that
        were about to run with it. A copy kept for another node's task sends
        those tasks back to their owner first."""
        if entry.state == ObjectState.PENDING:
            return   # made again already (with another object of its lineage)
        if entry.owner_node is None:
            why = self._rebuild(entry)
            if why is None:
                return
            text += why
        else:
            self._copy_lost(entry)
        entry.state = ObjectState.ERROR
        entry.payload = records.system_error_record(error, text)
        entry.shared_with += [n for n in entry.remote if n not in entry.shared_with]
        entry.local, entry.remote, entry.size = True, [], 0   # (copies still freed, see free)
        if entry.owner_node is None:
            self._out.emit(fx.Publish("obj", entry.oid, None))
        self.object_ready(entry)
        self._lost(entry)
        if entry.owner_node is not None:
            self._drop_lost_copy(entry)

    def expect(self, oid: bytes) -> None:
        """An object owned here and freed will be made again (an argument of a
        task run again): PENDING, held by nobody; the tasks that need it pin it."""
        self.table.create(oid, None)

    def restore_inline(self, oid: bytes, payload: bytes) -> None:
        """An INLINE argument, freed here, of a task run again: its value again
        (as lineage kept it; refs nested in it are not), held by nobody; the
        tasks that need it pin it."""
        entry = self.table.create(oid, None)
        self.table.seal(entry, ObjectState.INLINE, len(payload), payload, [])

    def make_pending(self, entry: ObjectEntry) -> None:
        """A lost object owned here will be made again: PENDING, its waiters
        (subscribers, dependent tasks, holders) kept; the refs its old value
        held are let go, and the nodes that had copies are still freed later."""
        table = self.table
        freed: list = []
        for c in entry.contains:
            inner = table.entries.get(c)
            if inner is not None:
                inner.contained_in -= 1
                freed += table.release_if_unused(inner)
        table.forget_awaits(entry)
        entry.shared_with += [n for n in entry.remote if n not in entry.shared_with]
        entry.state, entry.payload, entry.size, entry.contains = ObjectState.PENDING, b"", 0, []
        entry.local, entry.remote = True, []
        self._out.emit(fx.Publish("obj", entry.oid, None))
        self.free(freed)

    def holder_gone(self, node_id: bytes, reason: str) -> None:
        """A node died or left: its copies are gone; objects only it held are lost."""
        lost = []
        for entry in list(self.table.entries.values()):
            if node_id in entry.remote:
                entry.remote.remove(node_id)
                if not (entry.remote or entry.local or entry.fetching or entry.spilled):
                    lost.append(entry)
        for entry in lost:
            self.lose(entry, ObjectLostError,
                      f"object {entry.oid.hex()} was only on a node that died ({reason})")

    # -- freeing and publishing ----------------------------------------------------------

    def free(self, freed: list) -> None:
        """Carry out the frees the books decided: store files, pulls, other copies."""
        for entry in freed:
            if entry.owner_node is None and entry.state != ObjectState.INLINE:
                self._forget(entry.oid)   # (only STORE returns keep lineage)
            if entry.state != ObjectState.STORE:
                if entry.shared_with and entry.owner_node is None:   # lost here, maybe not there
                    self._out.emit(fx.FreeCopies(entry.oid, tuple(entry.shared_with)))
                continue
            if entry.owner_node is None:
                self._out.emit(fx.Publish("obj", entry.oid, None))
            if entry.local:
                self._out.emit(fx.DeleteObject(entry.oid))
            if entry.spilled:   # (a restore under way ends first: its file then goes)
                self._disk_freed()
                self._out.emit(fx.DeleteSpilled(entry.oid))
                if not entry.local:
                    self._out.emit(fx.Publish("loc", entry.oid, None))
            elif entry.fetching:
                self._out.emit(fx.CancelFetch(entry.oid))
            if entry.owner_node is None and (entry.remote or entry.shared_with or self._any_peers()):
                self._out.emit(fx.FreeCopies(
                    entry.oid, tuple(dict.fromkeys(entry.remote + entry.shared_with))))

    def _publish_here(self, entry: ObjectEntry) -> None:
        """A STORE object was sealed in our store: the GCS says where, and whose."""
        self._out.emit(fx.Publish("loc", entry.oid, entry.size))
        self._publish_owned(entry, self.node_id)

    def _publish_owned(self, entry: ObjectEntry, made_on: bytes) -> None:
        """An object we own is sealed in a store: the GCS objects table says so."""
        if entry.owner_node is None:
            self._out.emit(fx.Publish("obj", entry.oid, {
                "size": entry.size, "task": ids.task_of(entry.oid), "made_on": made_on}))

    def validate(self) -> None:
        self.table.validate()
