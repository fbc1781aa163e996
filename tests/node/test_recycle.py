"""Freed store files kept and written over (node/recycle.py, store.claim), without a node.

Properties (docs/architecture.md "The object store", "Recycled pages"):
- a freed object's name is free at once; its file is unlinked soon, or kept
  in the recycle dir when it is at least RECYCLE_MIN bytes;
- the next large write (a put, a task's return, a pull) takes a kept file
  and its pages, and the object reads back whole, at its own size;
- a kept file still mapped by a reader (a zero-copy array) is never written
  over: the reader's bytes stay, the writer makes a new file;
- kept files go after `seconds`, past `max_bytes` the oldest first, all of
  them at once when the store is full (`pressure`), and the dir at close;
- with recycling off, every freed file is unlinked.
A put written over a freed array while a driver holds its zero-copy view:
tests/api/test_store_recycle.py.
"""
from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from zfabric import serialization
from zfabric.node import store
from zfabric.node.recycle import Freer

from tests.harness.polling import wait_until

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


@pytest.fixture
def store_dir(tmp_path):
    d = str(tmp_path / "store")
    store.create_dir(d)
    yield d
    store.remove_dir(d)


@pytest.fixture
def freer(store_dir):
    f = Freer(store_dir, max_bytes=64 * MiB, seconds=30.0)
    yield f
    f.close()


def kept(store_dir: str) -> list[str]:
    try:
        return sorted(os.listdir(store.recycle_dir(store_dir)))
    except FileNotFoundError:
        return []


def put(store_dir: str, value, oid: bytes | None = None) -> bytes:
    oid = oid or os.urandom(20)
    store.write(store_dir, oid, serialization.serialize(value))
    return oid


def inode(store_dir: str, oid: bytes) -> int:
    return os.stat(store.path_of(store_dir, oid)).st_ino


def test_a_freed_file_leaves_its_name_at_once_and_a_small_one_is_unlinked(store_dir, freer):
    a = b"A" * 20
    for _ in range(3):
        with open(store.path_of(store_dir, a), "wb") as f:
            f.write(b"a" * 1000)
        freer.free(a)
        assert not os.path.exists(store.path_of(store_dir, a))
    with open(store.path_of(store_dir, a), "wb") as f:   # e.g. pulled again at once
        f.write(b"new")
    freer.free(b"B" * 20)                                # no such file: nothing happens
    wait_until(lambda: os.listdir(store_dir) == [a.hex()], "freed files unlinked")
    assert kept(store_dir) == []                         # under RECYCLE_MIN: not kept
    with open(store.path_of(store_dir, a), "rb") as f:
        assert f.read() == b"new"
    freer.free(a)
    freer.close()
    assert os.listdir(store_dir) == []                   # close waits for the freer
    assert not os.path.exists(store.recycle_dir(store_dir))


def test_the_next_large_put_writes_over_a_kept_file_and_reads_back_whole(store_dir, freer):
    first = put(store_dir, np.full(3 * MiB // 8, 1.0))
    ino = inode(store_dir, first)
    freer.free(first)
    wait_until(lambda: len(kept(store_dir)) == 1, "the freed file kept")
    smaller = np.arange(2 * MiB // 8, dtype=np.float64)
    second = put(store_dir, smaller)
    assert inode(store_dir, second) == ino               # the same file, its pages
    assert kept(store_dir) == []
    ser_size = serialization.serialize(smaller).size
    assert os.path.getsize(store.path_of(store_dir, second)) == ser_size   # cut to size
    np.testing.assert_array_equal(store.read(store_dir, second), smaller)
    assert not [f for f in os.listdir(store_dir) if f.endswith(".tmp")]


def test_a_pull_writes_into_a_kept_file_too(store_dir, freer):
    first = put(store_dir, np.zeros(2 * MiB // 8))
    ino = inode(store_dir, first)
    freer.free(first)
    wait_until(lambda: len(kept(store_dir)) == 1, "the freed file kept")
    payload = os.urandom(MiB + 123)
    oid = os.urandom(20)
    fd = store.open_partial(store_dir, oid, len(payload))
    store.write_at(fd, payload, 0)
    store.seal_partial(store_dir, oid, fd)
    assert inode(store_dir, oid) == ino
    with open(store.path_of(store_dir, oid), "rb") as f:
        assert f.read() == payload


def test_the_smallest_kept_file_that_fits_is_taken_first(store_dir, freer):
    oids = {mib: put(store_dir, np.zeros(mib * MiB // 8)) for mib in (8, 2, 4)}
    sizes = {mib: inode(store_dir, oid) for mib, oid in oids.items()}
    for oid in oids.values():
        freer.free(oid)
    wait_until(lambda: len(kept(store_dir)) == 3, "three files kept")
    assert inode(store_dir, put(store_dir, np.ones(3 * MiB // 8))) == sizes[4]
    assert inode(store_dir, put(store_dir, np.ones(5 * MiB // 8))) == sizes[8]
    # none left that fits: the largest smaller one (its pages, and new ones after)
    big = np.ones(6 * MiB // 8)
    oid = put(store_dir, big)
    assert inode(store_dir, oid) == sizes[2]
    np.testing.assert_array_equal(store.read(store_dir, oid), big)
    assert kept(store_dir) == []


def test_a_kept_file_a_reader_still_maps_is_not_written_over(store_dir, freer):
    first = put(store_dir, np.full(2 * MiB // 8, 7.0))
    view = store.read(store_dir, first)                  # a zero-copy array into its file
    freer.free(first)
    wait_until(lambda: len(kept(store_dir)) == 1, "the freed file kept")
    second = put(store_dir, np.full(2 * MiB // 8, 9.0))
    assert (view == 7.0).all()                           # the reader's bytes are untouched
    assert (store.read(store_dir, second) == 9.0).all()
    assert len(kept(store_dir)) == 1                     # given back, for later
    del view                                             # the reader lets go
    third = put(store_dir, np.full(2 * MiB // 8, 5.0))
    assert kept(store_dir) == []                         # now it is taken
    assert (store.read(store_dir, third) == 5.0).all()


def test_a_file_a_process_has_open_is_not_taken(store_dir, freer):
    first = put(store_dir, np.zeros(2 * MiB // 8))
    with open(store.path_of(store_dir, first), "rb") as f:
        before = f.read()
    fd = os.open(store.path_of(store_dir, first), os.O_RDONLY)   # opened, not mapped yet
    try:
        freer.free(first)
        wait_until(lambda: len(kept(store_dir)) == 1, "the freed file kept")
        put(store_dir, np.ones(2 * MiB // 8))
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        assert mm[:] == before
        mm.close()
    finally:
        os.close(fd)
    assert len(kept(store_dir)) == 1


def test_kept_files_go_after_their_time_and_past_the_budget_oldest_first(store_dir):
    freer = Freer(store_dir, max_bytes=5 * MiB, seconds=0.5)
    try:
        oids = [put(store_dir, np.zeros(2 * MiB // 8)) for _ in range(3)]
        for oid in oids:
            freer.free(oid)
        wait_until(lambda: len(kept(store_dir)) == 2, "two kept, within 5 MiB")
        newest = max(kept(store_dir), key=lambda name: int(name.split(".")[1]))
        assert newest in kept(store_dir)
        too_big = put(store_dir, np.zeros(6 * MiB // 8))   # larger than the whole budget
        freer.free(too_big)
        wait_until(lambda: kept(store_dir) == [], "kept files gone after 0.5 s")
    finally:
        freer.close()
    assert os.listdir(store_dir) == []


def test_a_full_store_gets_every_kept_page_back_at_once(store_dir, freer):
    for oid in [put(store_dir, np.zeros(2 * MiB // 8)) for _ in range(2)]:
        freer.free(oid)
    wait_until(lambda: len(kept(store_dir)) == 2, "two kept")
    freer.pressure()
    wait_until(lambda: kept(store_dir) == [], "kept files gone")
    freer.free(put(store_dir, np.zeros(2 * MiB // 8)))   # while it spills: not kept
    wait_until(lambda: os.listdir(store_dir) == [], "freed file unlinked")
    assert kept(store_dir) == []


@pytest.mark.parametrize("max_bytes, seconds", [(0, 30.0), (64 * MiB, 0.0)])
def test_recycling_off_unlinks_every_freed_file(store_dir, max_bytes, seconds):
    freer = Freer(store_dir, max_bytes=max_bytes, seconds=seconds)
    try:
        freer.free(put(store_dir, np.zeros(2 * MiB // 8)))
        wait_until(lambda: os.listdir(store_dir) == [], "freed file unlinked")
        assert not os.path.exists(store.recycle_dir(store_dir))
    finally:
        freer.close()


def test_a_file_given_back_after_the_freer_looked_still_goes_in_time(store_dir):
    """A writer that took a kept file and gave it back (a reader still mapped
    it) may do so after the freer last listed the dir: it is adopted at the
    next look, and goes in its time like any other."""
    freer = Freer(store_dir, max_bytes=64 * MiB, seconds=0.3)
    try:
        given_back = os.path.join(store.recycle_dir(store_dir), f"{2 * MiB:x}.999")
        with open(given_back, "wb") as f:
            f.write(b"x" * (2 * MiB))
        wait_until(lambda: kept(store_dir) == [], "the given-back file gone", timeout=5.0)
    finally:
        freer.close()
