"""The books of one node's objects: state, payload and reference counts.

An object is kept while any of these holds it:
- `holders`: local clients (drivers, workers) holding an ObjectRef to it;
- `pins`: tasks that need it (as an argument, or nested in their arguments)
  and have not finished;
- `contained_in`: stored objects whose value holds an ObjectRef to it.
When all three drop to zero and the object is no longer pending, it is
freed, and the objects it contains lose one `contained_in` in turn.

An object made or put on another node may be known here before (or
without) a copy in this node's store: it is STORE with `local` False and
`remote` naming the nodes that hold it; a pull makes it local. A copy kept
for another node's task is held by that node (`peer_client(owner)`), which
frees it with FreeObjects; `owner_node` is None for objects owned here.

The table only keeps books; the object directory (core/directory.py) owns
it, decides, and turns frees into effects (`DeleteObject`, `FreeCopies`...).
"""
from __future__ import annotations

from ..protocol import ObjectState


PEER_PREFIX = b"@"


def peer_client(node_id: bytes) -> bytes:
    """The holder id standing for another node (the owner of copies kept here)."""
    return PEER_PREFIX + node_id


class ObjectEntry:
    __slots__ = ("oid", "state", "size", "payload", "holders", "pins",
                 "contained_in", "contains", "subscribers", "dependents",
                 "local", "remote", "owner_node", "fetching", "push_to", "shared_with")

    def __init__(self, oid: bytes):
        self.oid = oid
        self.state = ObjectState.PENDING
        self.size = 0
        self.payload = b""
        self.local = True            # STORE: the file is in this node's store
        self.remote: list[bytes] = []  # other nodes holding a copy (known to us)
        self.owner_node: bytes | None = None   # None: owned here
        self.fetching = False        # a pull into this node's store is under way
        self.push_to: bytes | None = None  # the submitter: sent the value unasked if it is here
        self.shared_with: list[bytes] = []  # nodes we sent its location (to free copies there)
        self.holders: set[bytes] = set()
        self.pins = 0
        self.contained_in = 0
        self.contains: list[bytes] = []
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

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.entries

    def get(self, oid: bytes) -> ObjectEntry | None:
        return self.entries.get(oid)

    def create(self, oid: bytes, holder: bytes | None) -> ObjectEntry:
        entry = self.entries.get(oid)
        if entry is None:
            entry = self.entries[oid] = ObjectEntry(oid)
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
        entry.contains = [c for c in contains if c in self.entries]
        for c in entry.contains:
            self.entries[c].contained_in += 1

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
        return self.release_if_unused(entry)

    def pin(self, oid: bytes) -> None:
        self.entries[oid].pins += 1

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

    def release_if_unused(self, entry: ObjectEntry) -> list[ObjectEntry]:
        freed = []
        stack = [entry]
        while stack:
            e = stack.pop()
            if not e.releasable() or self.entries.get(e.oid) is not e:
                continue
            del self.entries[e.oid]
            if e.state == ObjectState.STORE and (e.local or e.fetching):
                self.store_used -= e.size
            freed.append(e)
            for c in e.contains:
                inner = self.entries.get(c)
                if inner is not None:
                    inner.contained_in -= 1
                    stack.append(inner)
        return freed

    def validate(self) -> None:
        """Invariants, for tests: counts are never negative, books agree."""
        used = 0
        for oid, e in self.entries.items():
            assert e.oid == oid
            assert e.pins >= 0 and e.contained_in >= 0, (e.pins, e.contained_in)
            assert e.state == ObjectState.PENDING or not e.releasable(), "unused object kept"
            if e.state == ObjectState.STORE and (e.local or e.fetching):
                used += e.size
            assert not (e.local and e.fetching), "a local object is not fetched again"
            for c in e.holders:
                assert oid in self.held_by.get(c, ()), "holder missing from held_by"
        assert used == self.store_used, (used, self.store_used)
