"""The library API on one embedded node: put, the store, ObjectRefs (as documented in README and docs/)."""
from __future__ import annotations

import asyncio
import pickle
import threading
import time

import numpy as np
import pytest

import zfabric as zf

from tests.harness.functions import inc, slow

pytestmark = pytest.mark.timeout(60)


# -- put / store -----------------------------------------------------------------------

def test_put_get_numpy_is_a_read_only_zero_copy_view(cluster):
    a = np.arange(1_000_000, dtype=np.float64)
    ref = zf.put(a)
    b = zf.get(ref)
    assert np.array_equal(a, b)
    assert not b.flags.writeable
    assert not b.flags.owndata  # a view of shared memory, not a copy


def test_large_arguments_and_results_go_through_the_store(cluster):
    @zf.remote
    def total(a):
        return float(a.sum()), a.flags.writeable

    @zf.remote
    def big(n):
        return np.ones(n)

    a = np.ones(2_000_000)
    assert zf.get(total.remote(a)) == (2_000_000.0, False)
    assert zf.get(total.remote(big.remote(3_000_000))) == (3_000_000.0, False)


def test_a_large_argument_is_pickled_once_and_sent_without_a_round_trip(cluster, monkeypatch):
    """Each large argument is pickled once, written to the store and announced
    by a Put that leaves with the Submit: no PutReply is waited for."""
    from zfabric import serialization
    from zfabric.node import client as client_mod

    @zf.remote
    def sizes(a, b, c, big):
        return [len(a), len(b), c, len(big)]

    arrays = [np.ones(300_000), np.arange(200_000)]
    seen = []

    class Counting(serialization.cloudpickle.Pickler):
        def reducer_override(self, obj):
            if any(obj is a for a in arrays):
                seen.append(id(obj))
            return super().reducer_override(obj)

    def no_call(*args):
        raise AssertionError("a task's argument waited for the node's answer")

    monkeypatch.setattr(serialization.cloudpickle, "Pickler", Counting)
    monkeypatch.setattr(client_mod.Client, "call", no_call)
    blob = b"z" * 500_000
    ref = sizes.remote(arrays[0], blob, 7, big=arrays[1])
    assert sorted(seen) == sorted(id(a) for a in arrays)   # once each
    monkeypatch.undo()
    assert zf.get(ref) == [300_000, 500_000, 7, 200_000]


def test_a_large_argument_the_store_cannot_take_fails_its_task(fresh):
    zf.init(num_cpus=1, object_store_memory=10_000_000)
    ref = _total.remote(np.ones(1_500_000))   # 12 MB: more than the whole store
    with pytest.raises(zf.exceptions.ObjectStoreFullError, match="larger than the whole store"):
        zf.get(ref)
    assert zf.get(_total.remote(np.ones(800_000))) == 800_000.0   # the node works


@zf.remote
def _total(a):
    return float(a.sum())


def test_objects_are_freed_when_refs_go(cluster):
    from tests.conftest import store_files
    ref = zf.put(np.ones(1_000_000))
    name = ref.hex()
    assert name in store_files(cluster)
    del ref
    deadline = time.monotonic() + 5
    while name in store_files(cluster) and time.monotonic() < deadline:
        time.sleep(0.05)   # the idle flush tells the node within ref_flush_interval
    assert name not in store_files(cluster)


def test_nested_ref_keeps_object_alive(cluster):
    @zf.remote
    def make():
        return [zf.put(np.full(500_000, 7.0))]

    outer = make.remote()
    inner = zf.get(outer)[0]
    del outer
    time.sleep(0.3)
    assert zf.get(inner)[0] == 7.0


def test_object_store_full_is_a_clear_error(fresh):
    zf.init(num_cpus=1, object_store_memory=10_000_000)
    keep = zf.put(np.ones(800_000))  # 6.4 MB
    with pytest.raises(zf.exceptions.ObjectStoreFullError, match="object store is full"):
        zf.put(np.ones(1_500_000))   # 12 MB: more than the whole store
    other = zf.put(np.full(800_000, 2.0))   # fits once `keep` is spilled to disk
    assert zf.get(keep).sum() == 800_000 and zf.get(other).sum() == 1_600_000


# -- ObjectRef ---------------------------------------------------------------------------

def test_object_ref_hex_hash_pickle_future_await(cluster):
    r = inc.remote(41)
    assert len(r.hex()) == 40 and r == pickle.loads(pickle.dumps(r))
    assert len({r, pickle.loads(pickle.dumps(r))}) == 1
    assert r.future().result(timeout=10) == 42

    async def main():
        return await inc.remote(1)

    assert asyncio.run(main()) == 2


def test_get_from_several_threads(cluster):
    out = []

    def worker(i):
        out.append(zf.get(slow.remote(i, 0.05)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(out) == list(range(8))
