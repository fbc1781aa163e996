"""joblib's Parallel(n_jobs=-1) with backend "zfabric" runs on every node of a cluster."""
from __future__ import annotations

import time

import pytest

import zfabric as zf
from zfabric.testing import LocalCluster
from zfabric.util import Pool, register_joblib

joblib = pytest.importorskip("joblib")
pytestmark = pytest.mark.timeout(120)


def node_of(_i):
    time.sleep(0.3)     # long enough that the first node's CPU is busy: the rest spill over
    return zf.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def two_nodes():
    if zf.is_initialized():
        zf.shutdown()
    with LocalCluster(nodes=2, num_cpus=2) as cluster:
        zf.init(address=cluster.address)
        try:
            yield cluster
        finally:
            zf.shutdown()


def test_parallel_n_jobs_minus_one_uses_every_node(two_nodes):
    register_joblib()
    with joblib.parallel_config(backend="zfabric"):
        assert joblib.effective_n_jobs(-1) == 4     # the cluster's CPUs (this machine: 2)
        nodes = joblib.Parallel(n_jobs=-1)(joblib.delayed(node_of)(i) for i in range(8))
    assert set(nodes) == {h.node_id for h in two_nodes.nodes}


def test_pool_map_uses_every_node(two_nodes):
    with Pool() as p:
        assert p._processes == 4
        nodes = p.map(node_of, range(8), chunksize=1)
    assert set(nodes) == {h.node_id for h in two_nodes.nodes}
