"""Objects spilled to disk on one node are pulled by others (LocalCluster):
the holder serves a spilled object from its spill file (node/objserver.py)."""
from __future__ import annotations

import os
import time

import numpy as np

import zfabric as zf
from zfabric.testing import LocalCluster

MiB = 2 ** 20
N = MiB   # float64s: 8 MiB per array


@zf.remote(resources={"maker": 1})
def make(i: int):
    return np.full(N, i, dtype=np.float64)


@zf.remote(resources={"summer": 1})
def total(a) -> tuple:
    return float(a.sum()), zf.get_runtime_context().get_node_id()



def test_a_peer_pulls_an_object_spilled_on_its_holder(fresh):
    with LocalCluster(nodes=1, num_cpus=1) as cluster:
        maker = cluster.add_node(num_cpus=1, resources={"maker": 1},
                                 object_store_memory=40 * MiB)
        summer = cluster.add_node(num_cpus=1, resources={"summer": 1})
        zf.init(address=cluster.address)
        # 64 MiB kept on a 40 MiB store (nothing asks for them here: no copy here)
        refs = [make.remote(i) for i in range(8)]
        spill_dir = maker.info["spill_dir"]
        deadline = time.monotonic() + 20
        while refs[0].hex() not in os.listdir(spill_dir):
            assert time.monotonic() < deadline, "the oldest result was not spilled"
            time.sleep(0.05)
        assert zf.get(total.remote(refs[0])) == (0.0, summer.node_id)   # pulled from disk
        assert zf.get(total.remote(refs[1])) == (N * 1.0, summer.node_id)
        assert np.array_equal(zf.get(refs[2]), np.full(N, 2.0))          # the driver's node too
        status = cluster.own_status(maker)
        assert status["spilled_objects"] >= 3
        assert status["stats"]["restored"] == 0                           # served from disk
        del refs
        deadline = time.monotonic() + 20
        while os.listdir(spill_dir) or cluster.own_status(maker)["store_used"]:
            assert time.monotonic() < deadline, "spilled results were not freed"
            time.sleep(0.05)
        zf.shutdown()
