"""Making room in the object store: which copies to evict, which to spill.

    ObjectDirectory (a put, a result, a pull or a restore needs `size` bytes)
        --> plan(table, size, capacity, may_spill) --> Room(evict, spill) or None

Pure policy over the books of core/objects.py; the directory carries the
plan out (core/directory.py: `make_room`). The store counts as full when
the bytes it holds and has reserved, less those already being copied to
disk (they leave it soon), plus `size`, exceed the capacity. Then, least
recently used first:

1. **evict** secondary copies: objects in our store that another live node
   also holds (`remote`, e.g. one we pulled), that no task here has pinned.
   Our copy goes; the books say it is remote-only and it is pulled again if
   needed.
2. **spill** primary copies (nobody else holds one) that no task here has
   pinned (waiting, queued or running: a task's arguments stay in the store
   till it ends), to disk.

Nothing is done unless the plan frees enough (`None`: the store is full,
and the caller raises `ObjectStoreFullError`); an object that alone exceeds
the capacity never fits. The store may hold more than its capacity while
spills are under way (a put's file is already in /dev/shm when it asks).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import ObjectState
from .objects import ObjectEntry, ObjectTable


@dataclass
class Room:
    evict: list[ObjectEntry] = field(default_factory=list)
    spill: list[ObjectEntry] = field(default_factory=list)


def committed(table: ObjectTable) -> int:
    """The store bytes that stay once the spills under way are done."""
    return table.store_used - table.spilling_bytes


def _movable(entry: ObjectEntry) -> bool:
    return (entry.state == ObjectState.STORE and entry.local and entry.pins == 0
            and not entry.spilling)


def plan(table: ObjectTable, size: int, capacity: int, may_spill: bool) -> Room | None:
    """What to evict and spill so that `size` more bytes fit; None if nothing can."""
    need = committed(table) + size - capacity
    room = Room()
    if need <= 0:
        return room
    if size > capacity:
        return None
    entries = table.entries
    candidates = [entries[oid] for oid in table.lru]   # oldest use first
    for entry in candidates:
        if _movable(entry) and entry.remote:
            room.evict.append(entry)
            need -= entry.size
            if need <= 0:
                return room
    if may_spill:
        for entry in candidates:
            if _movable(entry) and not entry.remote:
                room.spill.append(entry)
                need -= entry.size
                if need <= 0:
                    return room
    return None
