"""node/store.py without a node: values written to store files and read back.

Properties (docs/architecture.md "The object store"; "store round-trip of arbitrary numpy
dtypes/shapes/objects"):
- any numpy array and any nested Python value comes back equal from a store
  file (`store.write`/`read`), sealed by rename;
- arrays whose data travel out-of-band come back read-only and point straight
  into the (page-aligned) map at 64-byte-aligned addresses;
- a store file whose header is damaged, that is cut short or empty raises
  `CorruptObjectError`, never unpickles garbage.
The inline form and error records: tests/core/test_serialization.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import event, given

from zfabric import serialization
from zfabric.node import store
from zfabric.serialization import CorruptObjectError

from tests.harness.values import (CORRUPT_SAMPLES, SETTINGS, arrays, assert_same,
                                  assert_same_array, check_layout, iter_arrays, objects,
                                  out_of_band)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store_dir(tmp_path):
    d = str(tmp_path / "store")
    store.create_dir(d)
    yield d
    store.remove_dir(d)


def _oid() -> bytes:
    return os.urandom(20)


def _roundtrip_store(store_dir: str, ser):
    oid = _oid()
    size = store.write(store_dir, oid, ser)
    assert size == ser.size == os.path.getsize(store.path_of(store_dir, oid))
    assert oid.hex() in os.listdir(store_dir)
    assert not [f for f in os.listdir(store_dir) if f.endswith(".tmp")]  # sealed by rename
    return oid, store.read(store_dir, oid)


# -- numpy round-trips ---------------------------------------------------------------------

@SETTINGS
@given(a=arrays())
def test_array_roundtrip_store(store_dir, a):
    ser = serialization.serialize(a)
    f_only = a.flags.f_contiguous and not a.flags.c_contiguous
    event(f"kind={a.dtype.kind} ndim={a.ndim} empty={a.size == 0} "
          f"out-of-band={bool(ser.buffers)} F-only={f_only}")
    oid, b = _roundtrip_store(store_dir, ser)
    assert_same_array(a, b)
    if out_of_band(a):
        assert not b.flags.writeable, "an array read from the store must be read-only"
        with pytest.raises(ValueError):
            b[...] = b  # even an attempt to write raises, not corrupts the store file
        if b.size:
            # zero copy: the data live in the map, at the 64-byte aligned buffer offset
            assert b.ctypes.data % serialization.ALIGN == 0
    store.delete(store_dir, oid)
    assert oid.hex() not in os.listdir(store_dir)


def test_large_array_store_is_zero_copy(store_dir):
    a = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
    ser = serialization.serialize(a)
    assert len(ser.buffers) == 1 and ser.offsets[0] % 64 == 0
    oid, b = _roundtrip_store(store_dir, ser)
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable and not b.flags.owndata
    # zero copy: the array's memory is the file's map, at the buffer's offset
    mv = store.map_object(store_dir, oid)
    assert bytes(mv[ser.offsets[0]:ser.offsets[0] + 64]) == a.tobytes()[:64]
    assert b.ctypes.data % 4096 == ser.offsets[0] % 4096  # mmap is page-aligned


def test_several_buffers_each_aligned(store_dir):
    value = {"a": np.arange(3, dtype=np.int8), "b": np.ones((5, 7), dtype=np.float32),
             "c": [np.zeros(0), np.array(1.5), np.asfortranarray(np.eye(3))],
             "d": bytearray(b"xyz" * 33)}
    ser = serialization.serialize(value)
    assert len(ser.buffers) >= 5
    check_layout(ser)
    _, back = _roundtrip_store(store_dir, ser)
    assert_same(value, back)


def test_many_pieces_and_short_writes_still_give_the_whole_object(store_dir, monkeypatch):
    """More pieces than one pwritev takes (each large bytes is its own piece),
    and a system that writes less than asked: every byte lands where it belongs."""
    value = [bytes([i % 251]) * 70_000 for i in range(store._IOV_MAX + 50)]
    value.append(np.arange(100_000, dtype=np.int64))
    ser = serialization.serialize(value)
    assert len(ser.pieces()) > store._IOV_MAX
    _, back = _roundtrip_store(store_dir, ser)
    assert_same(value, back)
    real = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: real(fd, [bytes(memoryview(
        bufs[0])[:1000])] if memoryview(bufs[0]).nbytes > 1000 else bufs[:3], off))
    small = {"a": b"q" * 100_000, "b": np.ones(3000), "c": "text"}
    _, back = _roundtrip_store(store_dir, serialization.serialize(small))
    assert_same(small, back)


# -- nested Python objects ---------------------------------------------------------------------

@SETTINGS
@given(value=objects)
def test_object_roundtrip_store(store_dir, value):
    oid, back = _roundtrip_store(store_dir, serialization.serialize(value))
    assert_same(value, back)
    for arr in iter_arrays(back):
        if out_of_band(arr):
            assert not arr.flags.writeable
    store.delete(store_dir, oid)


def test_shared_and_cyclic_references_survive(store_dir):
    shared = [1, 2]
    cyclic: list = [shared, shared]
    cyclic.append(cyclic)
    arr = np.arange(4)
    value = {"cyc": cyclic, "arr1": arr, "arr2": arr}
    for back in (serialization.deserialize(serialization.dumps(value)),
                 _roundtrip_store(store_dir, serialization.serialize(value))[1]):
        assert back["cyc"][0] is back["cyc"][1]
        assert back["cyc"][2] is back["cyc"]
        assert back["arr1"] is back["arr2"]


# -- corruption ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", CORRUPT_SAMPLES[3:], ids=lambda v: type(v).__name__)
def test_damaged_store_file_is_detected(store_dir, value):
    ser = serialization.serialize(value)
    oid = _oid()
    store.write(store_dir, oid, ser)
    path = store.path_of(store_dir, oid)
    good = open(path, "rb").read()
    # truncated files (but not empty: see test_empty_store_file_is_corrupt)
    for k in sorted({1, 4, serialization.HEADER_SIZE - 1, serialization.HEADER_SIZE,
                     len(good) // 2, len(good) - 1}):
        if not 0 < k < len(good):
            continue
        with open(path, "wb") as f:
            f.write(good[:k])
        with pytest.raises(CorruptObjectError):
            store.read(store_dir, oid)
    # a flipped byte in the header
    for i in (0, 4, 6, 8, 12, 16, 24):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        with open(path, "wb") as f:
            f.write(bad)
        with pytest.raises(CorruptObjectError):
            store.read(store_dir, oid)
    with open(path, "wb") as f:
        f.write(b"\xff" * len(good))
    with pytest.raises(CorruptObjectError):
        store.read(store_dir, oid)


# Regression: a bare ValueError('cannot mmap an empty file') from mmap, not
# CorruptObjectError
def test_empty_store_file_is_corrupt(store_dir):
    oid = _oid()
    store.write(store_dir, oid, serialization.serialize([1, 2, 3]))
    os.truncate(store.path_of(store_dir, oid), 0)
    with pytest.raises(CorruptObjectError):
        store.read(store_dir, oid)


def test_remove_partials_removes_only_what_that_writer_left(store_dir):
    oid = b"\x01" * 20
    store.write(store_dir, oid, serialization.serialize(np.arange(10)))   # sealed: stays
    mine = [f".{'ab' * 20}.4242.tmp", f".{'cd' * 20}.4242.tmp"]
    theirs = [f".{'ef' * 20}.14242.tmp", f".{'ab' * 20}.pull.tmp"]
    for name in mine + theirs:
        open(os.path.join(store_dir, name), "wb").close()
    assert store.remove_partials(store_dir, 4242) == 2
    assert sorted(os.listdir(store_dir)) == sorted([oid.hex()] + theirs)
    assert store.remove_partials(os.path.join(store_dir, "gone"), 4242) == 0
