"""The books of one node's objects: state, payload and reference counts.

An object is kept while any of these holds it:
- `holders`: local clients (drivers, workers) holding an ObjectRef to it;
- `pins`: tasks that need it (as an argument, or nested in their arguments)
  and have not finished;
- `contained_in`: stored objects whose value holds an ObjectRef to it.
When all three drop to zero and the object is no longer pending, it is
freed, and the objects it contains lose one `contained_in` in turn. A ref
in a value to an object not known yet (a leased worker's nested task whose
Submit comes after the TaskDone its driver forwarded) is `awaited`: it is
counted when the object is created, and forgotten if the value goes first.

An object made or put on another node may be known here before (or
without) a copy in this node's store: it is STORE with `local` False and
`remote` naming the nodes that hold it; a pull makes it local. A copy kept
for another node's task is held by that node (`peer_client(owner)`), which
frees it with FreeObjects; `owner_node` is None for objects owned here.

A STORE object's copy here is in one of these places (core/capacity.py
decides the moves, the node's spiller copies the bytes):

    local (in the store) --spill starts--> local + spilling --ObjectSpilled--> spilled (on disk)
    spilled --restore starts--> spilled + restoring --ObjectRestored--> local
    local (and another live node holds a copy) --evicted--> remote only

`store_used` counts the bytes in the store and those reserved for pulls
and restores under way; `spilling_bytes` the part of it being copied to
disk (it leaves the store when the copy is durable); `spilled_bytes` the
bytes on disk. `lru` orders the local copies, least recently used first.

The table only keeps books; the object directory (core/directory.py) owns
it, decides, and turns frees into effects (`DeleteObject`, `FreeCopies`...).
"""
from __future__ import annotations

from collections import OrderedDict

from ..protocol import ObjectState


PEER_PREFIX = b"@"


def peer_client(node_id: bytes) -> bytes:
    """The holder id standing for another node (the owner of copies kept here)."""
    return PEER_PREFIX + node_id


class ObjectEntry:
    __slots__ = ("oid", "state", "size", "payload", "holders", "pins",
                 "contained_in", "contains", "subscribers", "dependents",
                 "local", "remote", "owner_node", "fetching", "push_to", "shared_with",
                 "spilling", "spilled", "restoring", "awaits")

    def __init__(self, oid: bytes):
        self.oid = oid
        self.state = ObjectState.PENDING
        self.size = 0
        self.payload = b""
        self.local = True            # STORE: the file is in this node's store
        self.remote: list[bytes] = []  # other nodes holding a copy (known to us)
        self.owner_node: bytes | None = None   # None: owned here
        self.fetching = False        # a pull into this node's store is under way
        self.spilling = False        # (local) being copied to disk
        self.spilled = False         # (not local) a durable copy on this node's disk
        self.restoring = False       # (spilled) being copied back into the store
        self.push_to: bytes | None = None  # the submitter: sent the value unasked if it is here
        self.shared_with: list[bytes] = []  # nodes we sent its location (to free copies there)
        self.holders: set[bytes] = set()
        self.pins = 0
        self.contained_in = 0
        self.contains: list[bytes] = []
        self.awaits: list[bytes] = []   # refs in its value to objects not known here yet
        self.subscribers: set[bytes] = set()
        self.dependents: list[bytes] = []   # task ids waiting for it

    @property
    def ready(self) -> bool:
        return self.state != ObjectState.PENDING

    def releasable(self) -> bool:
        return (not self.holders and self.pins == 0 and self.contained_in == 0
                and self.state != ObjectState.PENDING)


class ObjectTable:
    def __init__(self):
        self.entries: dict[bytes, ObjectEntry] = {}
        self.held_by: dict[bytes, set[bytes]] = {}   # client -> oids it holds
        self.store_used = 0
        self.spilling_bytes = 0
        self.spilled_bytes = 0
        self.spilled_count = 0
        self.lru: OrderedDict[bytes, None] = OrderedDict()   # local STORE copies, oldest use first
        # oid not known yet -> the sealed objects whose values hold a ref to it: a leased
        # worker's nested Submit may reach the node after its task's TaskDone, which its
        # driver forwards (core/leases.py); the ref is counted when the object is created
        self.awaited: dict[bytes, list[ObjectEntry]] = {}

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.entries

    def get(self, oid: bytes) -> ObjectEntry | None:
        return self.entries.get(oid)

    def create(self, oid: bytes, holder: bytes | None) -> ObjectEntry:
        entry = self.entries.get(oid)
        if entry is None:
            entry = self.entries[oid] = ObjectEntry(oid)
            for container in self.awaited.pop(oid, ()):
                container.awaits.remove(oid)
                container.contains.append(oid)
                entry.contained_in += 1
        if holder is not None:
            self.hold(entry, holder)
        return entry

    def hold(self, entry: ObjectEntry, client: bytes) -> None:
        entry.holders.add(client)
        self.held_by.setdefault(client, set()).add(entry.oid)

    def seal(self, entry: ObjectEntry, state: ObjectState, size: int,
             payload: bytes, contains: list[bytes], remote: list[bytes] | None = None) -> None:
        """Give a pending object its value; count the refs inside it.

        `remote`: the value is a STORE object in those nodes' stores, not here.
        """
        entry.state = state
        entry.size = size
        entry.payload = payload
        if remote:
            entry.local = False
            entry.remote = list(remote)
        elif state == ObjectState.STORE:
            self.store_used += size
            self.lru[entry.oid] = None
        self.forget_awaits(entry)
        entry.contains = []
        for c in contains:
            inner = self.entries.get(c)
            if inner is not None:
                entry.contains.append(c)
                inner.contained_in += 1
            else:   # (counted when it is created: `create`)
                entry.awaits.append(c)
                self.awaited.setdefault(c, []).append(entry)

    def forget_awaits(self, entry: ObjectEntry) -> None:
        """`entry`'s value is gone: it no longer waits to count refs to unknown objects."""
        for c in entry.awaits:
            containers = self.awaited[c]
            containers.remove(entry)
            if not containers:
                del self.awaited[c]
        entry.awaits = []

    # -- reference changes; each returns the objects freed by it --------------

    def incref(self, client: bytes, oid: bytes) -> None:
        entry = self.entries.get(oid)
        if entry is not None:
            self.hold(entry, client)

    def decref(self, client: bytes, oid: bytes) -> list[ObjectEntry]:
        entry = self.entries.get(oid)
        if entry is None or client not in entry.holders:
            return []
        entry.holders.discard(client)
        held = self.held_by.get(client)
        if held is not None:
            held.discard(oid)
        if entry.push_to == client:   # it dropped the ref: it will not get the value
            entry.push_to = None
        return self.release_if_unused(entry)

    def pin(self, oid: bytes) -> None:
        self.entries[oid].pins += 1
        self.touch(oid)

    def touch(self, oid: bytes) -> None:
        """The object was used (got, pinned): the last to be evicted or spilled."""
        if oid in self.lru:
            self.lru.move_to_end(oid)

    def unpin(self, oid: bytes) -> list[ObjectEntry]:
        entry = self.entries.get(oid)
        if entry is None:
            return []
        entry.pins -= 1
        return self.release_if_unused(entry)

    def drop_client(self, client: bytes) -> list[ObjectEntry]:
        freed: list[ObjectEntry] = []
        for oid in self.held_by.pop(client, ()):
            entry = self.entries.get(oid)
            if entry is not None:
                entry.holders.discard(client)
                freed += self.release_if_unused(entry)
        for entry in self.entries.values():
            entry.subscribers.discard(client)
            if entry.push_to == client:
                entry.push_to = None
        return freed

    def reserve(self, entry: ObjectEntry) -> None:
        """A pull of a remote STORE object starts: its bytes count from now."""
        entry.fetching = True
        self.store_used += entry.size

    def unreserve(self, entry: ObjectEntry) -> None:
        """The pull failed: give the room back."""
        entry.fetching = False
        self.store_used -= entry.size

    def fetched(self, entry: ObjectEntry) -> None:
        """The pull is sealed: the object is in our store (room was reserved)."""
        entry.fetching = False
        entry.local = True
        self.lru[entry.oid] = None

    # -- the copy here moves between the store and the disk (see the diagram above) -------

    def evict(self, entry: ObjectEntry) -> None:
        """Drop our copy of an object another node also holds."""
        entry.local = False
        self.store_used -= entry.size
        self.lru.pop(entry.oid, None)

    def start_spill(self, entry: ObjectEntry) -> None:
        entry.spilling = True
        self.spilling_bytes += entry.size

    def end_spill(self, entry: ObjectEntry, durable: bool) -> None:
        """The copy to disk ended: `durable`, the store copy goes; else it stays."""
        entry.spilling = False
        self.spilling_bytes -= entry.size
        if durable:
            entry.local, entry.spilled = False, True
            self.store_used -= entry.size
            self.spilled_bytes += entry.size
            self.spilled_count += 1
            self.lru.pop(entry.oid, None)

    def start_restore(self, entry: ObjectEntry) -> None:
        """Copying a spilled object back starts: its bytes count from now."""
        entry.restoring = True
        self.store_used += entry.size

    def end_restore(self, entry: ObjectEntry, restored: bool) -> None:
        """`restored`: the object is in the store again (its disk copy goes);
        else the room is given back and it stays on disk."""
        entry.restoring = False
        if restored:
            entry.local = True
            self.lru[entry.oid] = None
            self.drop_spilled(entry)
        else:
            self.store_used -= entry.size

    def drop_spilled(self, entry: ObjectEntry) -> None:
        """The disk copy is gone (restored, unreadable)."""
        entry.spilled = False
        self.spilled_bytes -= entry.size
        self.spilled_count -= 1

    def release_if_unused(self, entry: ObjectEntry) -> list[ObjectEntry]:
        freed = []
        stack = [entry]
        while stack:
            e = stack.pop()
            if not e.releasable() or self.entries.get(e.oid) is not e:
                continue
            del self.entries[e.oid]
            if e.awaits:
                self.forget_awaits(e)
            if e.state == ObjectState.STORE:
                self._forget_copies(e)
            freed.append(e)
            for c in e.contains:
                inner = self.entries.get(c)
                if inner is not None:
                    inner.contained_in -= 1
                    stack.append(inner)
        return freed

    def _forget_copies(self, e: ObjectEntry) -> None:
        """A freed STORE object's bytes leave the books (its files go: see directory.free)."""
        if e.local or e.fetching or e.restoring:
            self.store_used -= e.size
        if e.spilling:
            self.spilling_bytes -= e.size
        if e.spilled:
            self.spilled_bytes -= e.size
            self.spilled_count -= 1
        self.lru.pop(e.oid, None)

    def validate(self) -> None:
        """Invariants, for tests: counts are never negative, books agree."""
        used = spilling = spilled = count = 0
        local = []
        for oid, e in self.entries.items():
            assert e.oid == oid
            assert e.pins >= 0 and e.contained_in >= 0, (e.pins, e.contained_in)
            assert e.state == ObjectState.PENDING or not e.releasable(), "unused object kept"
            store = e.state == ObjectState.STORE
            if store and (e.local or e.fetching or e.restoring):
                used += e.size
            if store and e.local:
                local.append(oid)
            if e.spilling:
                assert store and e.local and not e.spilled, "only a local copy is spilled"
                spilling += e.size
            if e.spilled:
                assert store and not e.local and not e.fetching, "a spilled copy is not local"
                spilled += e.size
                count += 1
            assert not e.restoring or e.spilled, "only a spilled copy is restored"
            assert not (e.local and e.fetching), "a local object is not fetched again"
            for c in e.holders:
                assert oid in self.held_by.get(c, ()), "holder missing from held_by"
        assert used == self.store_used, (used, self.store_used)
        assert (spilling, spilled, count) == (
            self.spilling_bytes, self.spilled_bytes, self.spilled_count)
        assert sorted(local) == sorted(self.lru), "lru lists exactly the local copies"
        for oid, containers in self.awaited.items():
            assert oid not in self.entries and containers, "awaited: known, or nobody waits"
            for c in containers:
                assert self.entries.get(c.oid) is c and oid in c.awaits, "awaited by a gone object"
