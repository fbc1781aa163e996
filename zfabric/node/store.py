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
"""
from __future__ import annotations

import mmap
import os
import shutil

from .. import serialization

_IOV_MAX = os.sysconf("SC_IOV_MAX")   # pieces one pwritev takes


def path_of(store_dir: str, oid: bytes) -> str:
    return os.path.join(store_dir, oid.hex())


def create_dir(store_dir: str) -> None:
    os.makedirs(store_dir, mode=0o700, exist_ok=False)


def remove_dir(store_dir: str) -> None:
    shutil.rmtree(store_dir, ignore_errors=True)


def write(store_dir: str, oid: bytes, ser: serialization.Serialized) -> int:
    """Write a serialized object under its id; return its size in bytes.

    Every piece (header, pickle, each buffer after its alignment padding) goes
    straight from the value's memory into the file, in as few `pwritev`
    calls as the system allows: one copy of the bytes, and no other."""
    final = path_of(store_dir, oid)
    tmp = os.path.join(store_dir, f".{oid.hex()}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_pieces(fd, ser.pieces())
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
    """A new file of `size` bytes to write a pulled object's chunks into."""
    fd = os.open(_partial_path(store_dir, oid), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
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
