"""Recycled store pages on a real node (node/recycle.py): what a user could see go wrong.

- a put or a task's return written after a large object is freed reuses its
  file, and every value reads back as written;
- a zero-copy array from `get` keeps its values after its object is freed
  and new objects are written, however many;
- a store that spills gives the kept files back at once.
Without a node: tests/node/test_recycle.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import zfabric as zf
from zfabric.node import store

from tests.harness.polling import wait_until

pytestmark = pytest.mark.timeout(60)

N = 2 ** 20   # float64s: 8 MiB per array


def kept(info) -> list[str]:
    try:
        return os.listdir(store.recycle_dir(info["object_store_address"]))
    except FileNotFoundError:
        return []


def test_puts_and_returns_reuse_freed_files_and_held_arrays_keep_their_values(fresh):
    info = zf.init(num_cpus=1)

    @zf.remote
    def filled(value):
        return np.full(N, value)

    held = zf.get(zf.put(np.full(N, -1.0)))    # its ref is gone at once; the array stays
    wait_until(lambda: len(kept(info)) == 1, "the freed object's file kept")
    for i in range(6):
        ref = zf.put(np.full(N, float(i))) if i % 2 else filled.remote(float(i))
        assert (zf.get(ref) == i).all()
        del ref
        assert (held == -1.0).all()
    # every object freed, and its file kept (no name left in the store dir, not
    # even a `.freed` one): the held one's, the last object's, and any other
    # whose release reached the node after the next write had looked (a ref
    # is reported with the driver's next message)
    wait_until(lambda: not os.listdir(info["object_store_address"]), "every object freed")
    n = len(kept(info))
    assert n >= 2
    del held                                   # now its file may be written over too
    refs = [zf.put(np.full(N, 10.0 + i)) for i in range(n)]
    assert kept(info) == []
    assert [float(zf.get(r)[-1]) for r in refs] == [10.0 + i for i in range(n)]


def test_a_store_that_spills_gives_kept_files_back(fresh):
    info = zf.init(num_cpus=1, object_store_memory=64 * 2 ** 20)
    held = zf.get(zf.put(np.full(N, -1.0)))    # mapped: kept, and never taken
    wait_until(lambda: len(kept(info)) == 1, "the freed object's file kept")
    refs = [zf.put(np.full(N, float(i))) for i in range(9)]   # 72 MiB: spills
    wait_until(lambda: kept(info) == [], "kept files given back")
    assert (held == -1.0).all()
    assert [float(zf.get(r)[0]) for r in refs] == [float(i) for i in range(9)]
