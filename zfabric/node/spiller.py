"""Copying store objects to disk and back, off the node's loop.

    NodeLoop --SpillObject / RestoreObject / DeleteSpilled--> Spiller.submit --> job queue
    spiller thread: store file --copy, fsync, rename--> {spill dir}/{oid hex}    (spill)
                    {spill dir}/{oid hex} --copy, rename--> store file            (restore)
                    unlink {spill dir}/{oid hex}                                  (delete)
    spiller thread --outcome--> done deque + a byte on a pipe --> NodeLoop's poller
    NodeLoop --Spiller.take_events()--> ObjectSpilled / SpillFailed / ObjectRestored /
                                        RestoreFailed --> Fabric.handle

Owns the spill dir (made at start, removed at close), one thread that does
the jobs in the order they were asked (so a delete asked after a spill or a
restore of the same object runs after it), and the pipe that wakes the loop.
(Deleted store files are freed by node/recycle.py.) The loop never waits for the disk: what to spill, restore or delete is
decided in core/directory.py and core/capacity.py; this module only moves
bytes and reports each outcome as an event. A spill is durable before it is
reported (the file fsync'd, renamed, the dir fsync'd); the store file is
deleted by the loop afterwards (DeleteObject). Any OSError (ENOSPC, EIO...)
becomes a SpillFailed / RestoreFailed naming it; nothing is retried here.

`copy` (a constructor argument, store-file path -> disk path) is the seam
tests use to make the disk fail.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import threading
from collections import deque

from ..core import events as ev
from . import store

log = logging.getLogger("zfabric.node")

_SPILL, _RESTORE, _DELETE, _STOP = "spill", "restore", "delete", "stop"
# Restoring failed for want of room in the store (the spill file is fine).
_STORE_FULL = (errno.ENOSPC, errno.ENOMEM, errno.EDQUOT)


def copy_file(src: str, dst: str, *, chunk: int, durable: bool) -> None:
    """Copy src to dst (created, 0600) with sendfile; `durable`: fsync dst
    before closing it."""
    with open(src, "rb") as fin:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = os.fstat(fin.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, fin.fileno(), offset, min(chunk, size - offset))
                if sent == 0:
                    raise OSError(errno.EIO, f"{src} ended early")
                offset += sent
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


class Spiller:
    def __init__(self, store_dir: str, spill_dir: str, *, chunk: int, copy=None):
        self.store_dir = store_dir
        self.spill_dir = spill_dir
        self.chunk = chunk
        self._copy = copy or copy_file
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: deque = deque()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="zfabric-spiller", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        """Readable when outcomes are waiting (register with the loop's poller)."""
        return self._r

    def spill(self, oid: bytes) -> None:
        self._jobs.put((_SPILL, oid))

    def restore(self, oid: bytes) -> None:
        self._jobs.put((_RESTORE, oid))

    def delete(self, oid: bytes) -> None:
        self._jobs.put((_DELETE, oid))

    def take_events(self) -> list:
        """The outcomes reported since the last call, in order."""
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        events = []
        while self._done:
            events.append(self._done.popleft())
        return events

    def close(self) -> None:
        """Stop the threads (after the copy under way; the jobs still queued are
        dropped: the node is going, and its store and spill dir with it), close
        the pipe, remove the spill dir."""
        self._stopping = True
        self._jobs.put((_STOP, b""))
        self._thread.join()
        os.close(self._r)
        os.close(self._w)
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            kind, oid = self._jobs.get()
            if kind == _STOP:
                return
            if self._stopping:
                continue
            event = (self._spill if kind == _SPILL else self._restore if kind == _RESTORE
                     else self._delete)(oid)
            if event is not None:
                self._done.append(event)
                try:
                    os.write(self._w, b"!")
                except BlockingIOError:   # the pipe is full: the loop has wake-ups waiting
                    pass

    def _spill(self, oid: bytes):
        final = store.path_of(self.spill_dir, oid)
        tmp = os.path.join(self.spill_dir, f".{oid.hex()}.tmp")
        try:
            self._copy(store.path_of(self.store_dir, oid), tmp, chunk=self.chunk, durable=True)
            os.rename(tmp, final)
            dir_fd = os.open(self.spill_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            _unlink(tmp)
            _unlink(final)
            return ev.SpillFailed(oid, f"{e.strerror or e} (spill dir {self.spill_dir})")
        return ev.ObjectSpilled(oid)

    def _restore(self, oid: bytes):
        tmp = os.path.join(self.store_dir, f".{oid.hex()}.restore.tmp")
        try:
            self._copy(store.path_of(self.spill_dir, oid), tmp, chunk=self.chunk, durable=False)
            os.rename(tmp, store.path_of(self.store_dir, oid))
        except OSError as e:
            _unlink(tmp)
            lost = e.errno not in _STORE_FULL
            return ev.RestoreFailed(oid, f"{e.strerror or e}", lost)
        return ev.ObjectRestored(oid)

    def _delete(self, oid: bytes):
        _unlink(store.path_of(self.spill_dir, oid))
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:   # (an unreadable disk: the dir goes at close)
        log.warning("could not remove %s: %s", path, e)
