"""Freeing store files off the node's loop, and keeping large ones a while to be written over.

    NodeLoop --DeleteObject--> Freer.free: store file renamed to `.{hex}.{n}.freed`
    freer thread: a file of at least 1 MiB --rename--> {store dir}.recycle/{hex size}.{n}
                  (kept `seconds`, `max_bytes` in all, the oldest unlinked first)
                  a smaller one, or any while the store is full --> unlinked
    writer (store.write / store.open_partial) --store.claim--> a kept file's pages

The rename on the loop frees the object's name at once (the same id may be
written again right away, by a pull or a restore); giving 100 MB of tmpfs
pages back takes tens of ms, which the loop's other work should not wait
for. A kept file saves its next writer the cost of new pages (store.py says
why that is safe while a reader may still map it). Kept files are not in
the store's capacity: they are at most `max_bytes`, they go after
`seconds`, and all go at once when the store spills (`pressure`), so a full
store never waits on them.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time

from . import store

log = logging.getLogger("zfabric.node")

_PRESSURE = object()   # on the freer's queue: the store is full
_EXPIRY = object()     # (no item: the oldest kept file's time is up)


class Freer:
    def __init__(self, store_dir: str, *, max_bytes: int, seconds: float, clock=time.monotonic):
        """`max_bytes` 0 or `seconds` 0: every freed file is unlinked."""
        self.store_dir = store_dir
        self.pool = store.recycle_dir(store_dir)
        keeps = max_bytes > 0 and seconds > 0 and store.leases_work(store_dir)
        self.max_bytes = max_bytes if keeps else 0
        self.seconds = seconds
        self.clock = clock
        if self.max_bytes:
            os.makedirs(self.pool, mode=0o700, exist_ok=True)
        self._freed = 0                            # store files renamed to be freed (loop's)
        self._kept_count = 0                       # files kept (thread's)
        self._kept: dict[str, tuple[int, float]] = {}   # name -> (size, kept at); thread's
        self._calm_at = float("-inf")              # no keeping before (after a pressure)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()   # paths, _PRESSURE; None: stop
        self._thread = threading.Thread(target=self._run, name="zfabric-freer", daemon=True)
        self._thread.start()

    def free(self, oid: bytes) -> None:
        """Delete an object's store file: gone from its name now, its pages
        kept or freed by the freer thread."""
        self._freed += 1
        trash = os.path.join(self.store_dir, f".{oid.hex()}.{self._freed}.freed")
        try:
            os.rename(store.path_of(self.store_dir, oid), trash)
        except FileNotFoundError:
            return
        self._queue.put(trash)

    def pressure(self) -> None:
        """The store is full (it spills): give every kept page back, and keep
        none for `seconds`."""
        if self.max_bytes:
            self._queue.put(_PRESSURE)

    def close(self) -> None:
        """Stop the thread (after it has emptied its queue) and remove the
        recycle dir."""
        self._queue.put(None)
        self._thread.join()
        shutil.rmtree(self.pool, ignore_errors=True)

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._until_expiry())
            except queue.Empty:
                item = _EXPIRY
            if item is None:
                return
            now = self.clock()
            if item is _PRESSURE:
                self._calm_at = now + self.seconds
                self._look(now)
                self._drop(lambda size, at: True)
            elif item is not _EXPIRY:
                self._keep_or_unlink(item, now)
            else:
                self._look(now)
            self._drop(lambda size, at: at + self.seconds <= now)

    def _until_expiry(self) -> float | None:
        """Until the oldest kept file's time is up; while nothing is kept,
        every `seconds` (a file a writer gave back after the last look is
        adopted then), or never when nothing is ever kept."""
        if not self.max_bytes:
            return None
        if not self._kept:
            return self.seconds
        oldest = min(at for _, at in self._kept.values())
        return max(0.0, oldest + self.seconds - self.clock())

    def _keep_or_unlink(self, path: str, now: float) -> None:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return
        if not (self.max_bytes and now >= self._calm_at
                and store.RECYCLE_MIN <= size <= self.max_bytes):
            _unlink(path)
            return
        self._kept_count += 1
        name = f"{size:x}.{self._kept_count}"
        try:
            os.rename(path, os.path.join(self.pool, name))
        except OSError:
            _unlink(path)
            return
        self._kept[name] = (size, now)
        self._look(now)
        total = sum(size for size, _ in self._kept.values())
        for name, (size, _) in sorted(self._kept.items(), key=lambda item: item[1][1]):
            if total <= self.max_bytes:
                break
            _unlink(os.path.join(self.pool, name))
            del self._kept[name]
            total -= size

    def _look(self, now: float) -> None:
        """Forget the files writers took; adopt the ones they gave back."""
        try:
            names = os.listdir(self.pool)
        except FileNotFoundError:
            names = []
        kept = {}
        for name in names:
            known = self._kept.get(name)
            item = store.recycled_size(name)
            if known is not None or item is not None:
                kept[name] = known or (item[0], now)
        self._kept = kept

    def _drop(self, which) -> None:
        for name, (size, at) in list(self._kept.items()):
            if which(size, at):
                _unlink(os.path.join(self.pool, name))
                del self._kept[name]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:   # (the dir goes at close)
        log.warning("could not remove %s: %s", path, e)
