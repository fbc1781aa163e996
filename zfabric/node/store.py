"""The mmap object store: one file per object in the node's store dir.

The store dir is `/dev/shm/zfabric-{node_id}` (tmpfs: the files *are* shared
memory). Writers (drivers putting, workers returning) create
`.{hex}.{pid}.tmp`, write the serialized layout (serialization.py), and
rename it to `{hex}`: a reader never sees a half-written object (a writer
that dies mid-write leaves its `.tmp`; the node removes it when it sees the
worker go, `remove_partials`). Readers
mmap the file read-only and unpickle with buffers pointing into the map,
so numpy arrays come back as zero-copy read-only views.

The node keeps the books (capacity, reference counts) and deletes files;
this module only moves bytes.

Recycled pages. A new tmpfs page costs more than the bytes copied into it
(writing 100 MB into new pages takes 3-5x a numpy copy; into pages a file
already holds, about 1.6x). So the node keeps the files of freed large
objects a few seconds in the store's recycle dir, `{store dir}.recycle`
(node/recycle.py), and a writer of a large object (`write`,
`open_partial`) takes one (`claim`) and writes over its pages. A freed
object may still be mapped: a zero-copy array from `get` keeps its pages
alive after the node unlinks it. The kernel knows: a write lease
(F_SETLEASE) is refused while any process has the file open or mapped,
and nothing can open a file in the recycle dir by an object's name. A
claimed file whose lease is refused goes back to the dir.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil

from .. import serialization

_IOV_MAX = os.sysconf("SC_IOV_MAX")   # pieces one pwritev takes
RECYCLE_MIN = 1 << 20   # smaller objects' files are not recycled: few pages to save
_CLAIM_TRIES = 3        # recycled files a writer tries before it makes a new one
_IN_USE = (errno.EAGAIN, errno.EBUSY)   # F_SETLEASE: someone has the file open or mapped


def path_of(store_dir: str, oid: bytes) -> str:
    return os.path.join(store_dir, oid.hex())


def create_dir(store_dir: str) -> None:
    os.makedirs(store_dir, mode=0o700, exist_ok=False)


def remove_dir(store_dir: str) -> None:
    """Remove a store dir and its recycle dir."""
    shutil.rmtree(store_dir, ignore_errors=True)
    shutil.rmtree(recycle_dir(store_dir), ignore_errors=True)


def recycle_dir(store_dir: str) -> str:
    """Where freed objects' files wait to be written over: `{hex size}.{n}`."""
    return store_dir + ".recycle"


def recycled_size(name: str) -> tuple[int, str] | None:
    """(size, name) of a file in the recycle dir; None for another name."""
    head, dot, _ = name.partition(".")
    try:
        return (int(head, 16), name) if dot else None
    except ValueError:
        return None


def claim(store_dir: str, size: int, path: str) -> int | None:
    """A recycled file moved to `path` (new to its caller), open read-write,
    with pages for up to `size` bytes already in it; None if there is none
    to take (then the caller makes a new file).

    The files that hold `size` are tried first, the smallest first, then
    the largest smaller ones; at most _CLAIM_TRIES of them. A file another
    writer took first is skipped; one still open or mapped somewhere (its
    write lease refused) goes back."""
    if size < RECYCLE_MIN:
        return None
    pool = recycle_dir(store_dir)
    try:
        names = os.listdir(pool)
    except FileNotFoundError:
        return None
    sized = sorted(item for item in map(recycled_size, names) if item is not None)
    fits = [item for item in sized if item[0] >= size]
    tries = (fits + [item for item in reversed(sized) if item[0] < size])[:_CLAIM_TRIES]
    for _, name in tries:
        source = os.path.join(pool, name)
        try:
            os.rename(source, path)
        except FileNotFoundError:   # another writer took it
            continue
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as e:
            os.close(fd)
            if e.errno in _IN_USE:
                _rename_or_unlink(path, source)
                continue
            os.unlink(path)   # leases are off here: recycling cannot be made safe
            return None
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return fd
    return None


def _rename_or_unlink(path: str, dest: str) -> None:
    try:
        os.rename(path, dest)
    except OSError:   # (its dir is gone: the node is stopping)
        os.unlink(path)


def leases_work(directory: str) -> bool:
    """Whether this system grants write leases on files in `directory` (a
    sysctl, fs.leases-enable, can turn them off; then nothing is recycled)."""
    path = os.path.join(directory, f".lease-check.{os.getpid()}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def write(store_dir: str, oid: bytes, ser: serialization.Serialized) -> int:
    """Write a serialized object under its id; return its size in bytes.

    Into a recycled file's pages when there is one to take (`claim`). Every
    piece (header, pickle, each buffer after its alignment padding) goes
    straight from the value's memory into the file, in as few `pwritev`
    calls as the system allows: one copy of the bytes, and no other."""
    final = path_of(store_dir, oid)
    tmp = os.path.join(store_dir, f".{oid.hex()}.{os.getpid()}.tmp")
    fd = claim(store_dir, ser.size, tmp)
    if fd is None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_pieces(fd, ser.pieces())
        if os.fstat(fd).st_size > ser.size:   # a recycled file larger than the object
            os.ftruncate(fd, ser.size)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, final)
    return ser.size


def write_pieces(fd: int, pieces: list, offset: int = 0) -> None:
    """Write the bytes-like `pieces` one after the other from `offset`."""
    views = [memoryview(p).cast("B") for p in pieces]
    views = [v for v in views if v.nbytes]
    i = 0
    while i < len(views):
        batch = views[i:i + _IOV_MAX]
        n = os.pwritev(fd, batch, offset)
        offset += n
        for v in batch:   # a short write: go on from the first byte not written
            if n < v.nbytes:
                views[i] = v[n:]
                break
            n -= v.nbytes
            i += 1


def remove_partials(store_dir: str, pid: int) -> int:
    """Remove the half-written files (`.{hex}.{pid}.tmp`) a writer left when it
    died mid-write; how many there were."""
    suffix = f".{pid}.tmp"
    try:
        names = os.listdir(store_dir)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        if name.startswith(".") and name.endswith(suffix):
            try:
                os.unlink(os.path.join(store_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def map_object(store_dir: str, oid: bytes) -> memoryview:
    """A read-only view of a sealed object's bytes (shared memory)."""
    fd = os.open(path_of(store_dir, oid), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size < serialization.HEADER_SIZE:
            raise serialization.CorruptObjectError(
                f"store file of object {oid.hex()} is truncated ({size} bytes)")
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return memoryview(mm)


def read(store_dir: str, oid: bytes):
    """The value of a sealed object, zero-copy where its buffers allow."""
    return serialization.deserialize(map_object(store_dir, oid))


def delete(store_dir: str, oid: bytes) -> None:
    try:
        os.unlink(path_of(store_dir, oid))
    except FileNotFoundError:
        pass


# -- pulls: an object arriving in chunks from another node's store ---------------------

def _partial_path(store_dir: str, oid: bytes) -> str:
    return os.path.join(store_dir, f".{oid.hex()}.pull.tmp")


def open_partial(store_dir: str, oid: bytes, size: int) -> int:
    """A file of `size` bytes to write a pulled object's chunks into: a
    recycled one (`claim`) when there is one to take."""
    path = _partial_path(store_dir, oid)
    fd = claim(store_dir, size, path)
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_at(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def seal_partial(store_dir: str, oid: bytes, fd: int) -> None:
    """Every chunk is written: the object appears under its id, whole."""
    os.close(fd)
    os.rename(_partial_path(store_dir, oid), path_of(store_dir, oid))


def abort_partial(store_dir: str, oid: bytes, fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
    try:
        os.unlink(_partial_path(store_dir, oid))
    except FileNotFoundError:
        pass


def map_raw(store_dir: str, oid: bytes) -> memoryview:
    """A read-only view of a sealed object's file, to serve it to another node."""
    fd = os.open(path_of(store_dir, oid), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return memoryview(b"")
        # not MAP_POPULATE: faulting 100 MB in up front delays the first chunk
        # more than the faults cost spread over the chunks (measured)
        return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
    finally:
        os.close(fd)
