"""Several real nodes on one machine (LocalCluster): spillover, pulls, joins, deaths."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import zfabric as zf
from tests.harness.functions import attach_to
from tests.harness.trace import check_trace, process_names
from zfabric.config import Config
from zfabric.testing import LocalCluster

FAILURE_TIMEOUT = 1.5   # shortened through config, as a user would


def fast_config() -> Config:
    return Config.from_env().replace(failure_timeout=FAILURE_TIMEOUT)


@pytest.fixture(scope="module")
def three_nodes():
    with LocalCluster(nodes=3, num_cpus=1, config=fast_config()) as cluster:
        yield cluster
        if zf.is_initialized():
            zf.shutdown()


@pytest.fixture
def three(three_nodes):
    """Three 1-CPU nodes (kept across the module), this driver attached to the first."""
    return attach_to(three_nodes)


@zf.remote
def node_after(seconds: float) -> str:
    time.sleep(seconds)
    return zf.get_runtime_context().get_node_id()


def counts(node_ids: list[str]) -> dict[str, int]:
    return {n: node_ids.count(n) for n in set(node_ids)}


def seen_gone_within(ask, node_id: str, seconds: float) -> bool:
    """Does `ask()` (a nodes() list) show node_id not alive within `seconds`?"""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not {n["NodeID"]: n["Alive"] for n in ask()}[node_id]:
            return True
        time.sleep(0.02)
    return False



def test_thirty_tasks_spill_over_three_one_cpu_nodes(three):
    start = time.monotonic()
    ran_on = zf.get([node_after.remote(0.2) for _ in range(30)])
    took = time.monotonic() - start
    assert set(ran_on) == {h.node_id for h in three.nodes}
    assert took < 3.0, f"30 x 0.2 s on 3 CPUs took {took:.2f} s"
    assert all(n["Alive"] for n in zf.nodes()) and len(zf.nodes()) == 3
    assert zf.cluster_resources()["CPU"] == 3.0


def test_every_node_holds_the_whole_membership_and_static_records(three):
    ids = {h.node_id for h in three.nodes}
    for handle in three.nodes:
        records = three.query(handle, "nodes")
        assert {r["NodeID"] for r in records} == ids
        by_id = {r["NodeID"]: r for r in records}
        for other in three.nodes:
            assert by_id[other.node_id]["Address"] == other.address
            assert by_id[other.node_id]["ObjectStoreAddress"] == other.info["object_address"]


@zf.remote(resources={"maker": 1})
def make_array(n: int):
    return np.arange(n, dtype=np.int64), zf.get_runtime_context().get_node_id()


@zf.remote(resources={"summer": 1})
def sum_array(pair) -> tuple:
    arr, made_on = pair
    return int(arr.sum()), made_on, zf.get_runtime_context().get_node_id()


@zf.remote(resources={"summer": 1})
def sum_plain(arr) -> int:
    return int(arr.sum())


def test_an_array_made_on_one_node_is_summed_on_another_and_freed_everywhere(fresh):
    n = 100_000_000 // 8   # 100 MB
    with LocalCluster(nodes=1, num_cpus=1, config=fast_config()) as cluster:
        maker = cluster.add_node(num_cpus=1, resources={"maker": 1})
        summer = cluster.add_node(num_cpus=1, resources={"summer": 1})
        zf.init(address=cluster.address)
        pair = make_array.remote(n)
        total, made_on, summed_on = zf.get(sum_array.remote(pair))
        assert total == n * (n - 1) // 2
        assert (made_on, summed_on) == (maker.node_id, summer.node_id)
        # the driver's node pulls it too when the driver gets it
        arr, _ = zf.get(pair)
        assert arr.nbytes == 100_000_000 and arr[-1] == n - 1 and not arr.flags.writeable
        stores = {h.node_id: h.info["store_dir"] for h in cluster.nodes}
        assert all(os.listdir(d) for d in stores.values())   # three copies
        del arr, pair
        deadline = time.monotonic() + 10
        while any(os.listdir(d) for d in stores.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {k: os.listdir(d) for k, d in stores.items()} == {k: [] for k in stores}
        for handle in cluster.nodes:
            assert cluster.own_status(handle)["store_used"] == 0
        zf.shutdown()


def test_a_task_that_fits_no_node_waits_as_pending_demand_until_one_joins(fresh):
    with LocalCluster(nodes=2, num_cpus=1, config=fast_config()) as cluster:
        zf.init(address=cluster.address)
        ref = sum_plain.remote(np.ones(10))
        ready, _ = zf.wait([ref], timeout=0.5)
        assert ready == []
        first = cluster.nodes[0]
        assert cluster.own_status(first)["pending_demand"] == [{"CPU": 1.0, "summer": 1.0}]
        cluster.add_node(num_cpus=1, resources={"summer": 1})
        assert zf.get(ref, timeout=10) == 10
        assert cluster.own_status(first)["pending_demand"] == []
        zf.shutdown()


def test_a_late_joiner_is_used_and_a_removed_node_is_not(fresh):
    with LocalCluster(nodes=2, num_cpus=1, config=fast_config()) as cluster:
        zf.init(address=cluster.address)
        late = cluster.add_node(num_cpus=1)
        ran_on = zf.get([node_after.remote(0.1) for _ in range(12)])
        assert late.node_id in ran_on
        cluster.remove_node(late)
        # a graceful leave is seen at once, not after the failure timeout
        assert seen_gone_within(zf.nodes, late.node_id, FAILURE_TIMEOUT / 3)
        ran_on = zf.get([node_after.remote(0.05) for _ in range(12)])
        assert late.node_id not in ran_on
        assert set(ran_on) == {h.node_id for h in cluster.nodes}
        zf.shutdown()


def test_killing_the_first_node_leaves_a_working_cluster_with_the_whole_gcs(fresh):
    with LocalCluster(nodes=3, num_cpus=1, config=fast_config()) as cluster:
        first, second, third = cluster.nodes
        zf.init(address=second.address)
        refs = [node_after.remote(0.3) for _ in range(9)]
        time.sleep(0.2)   # some of them run on the first node now
        killed_at = time.monotonic()
        cluster.kill_node(first)
        ran_on = zf.get(refs, timeout=30)   # the ones it ran are retried elsewhere
        assert first.node_id not in ran_on[-3:]
        while True:
            alive = {n["NodeID"]: n["Alive"] for n in zf.nodes()}
            if not alive[first.node_id]:
                break
            assert time.monotonic() - killed_at < FAILURE_TIMEOUT + 2.0, "not declared dead"
            time.sleep(0.05)
        for handle in (second, third):
            records = {r["NodeID"]: r for r in cluster.query(handle, "nodes")}
            assert set(records) == {first.node_id, second.node_id, third.node_id}
            assert records[first.node_id]["Address"] == first.address   # its GCS shard lives on
            assert records[first.node_id]["Alive"] is False
        ran_on = zf.get([node_after.remote(0.05) for _ in range(8)])
        assert set(ran_on) == {second.node_id, third.node_id}
        assert zf.cluster_resources()["CPU"] == 2.0
        zf.shutdown()


def test_init_with_the_address_of_a_node_elsewhere_joins_with_an_embedded_node(fresh, tmp_path):
    import tempfile
    elsewhere = tempfile.mkdtemp(prefix="zf-")   # its node records are not ours to find
    try:
        with LocalCluster(nodes=2, num_cpus=1,
                          config=fast_config().replace(temp_dir=elsewhere)) as cluster:
            info = zf.init(address=cluster.address, num_cpus=1, cluster_key=cluster.key_path)
            assert info["node_id"] not in {h.node_id for h in cluster.nodes}
            assert len([n for n in zf.nodes() if n["Alive"]]) == 3
            ran_on = zf.get([node_after.remote(0.2) for _ in range(9)])
            assert set(ran_on) == {info["node_id"]} | {h.node_id for h in cluster.nodes}
            zf.shutdown()   # the embedded node leaves; the cluster sees it go at once
            assert seen_gone_within(lambda: cluster.query(cluster.nodes[0], "nodes"),
                                    info["node_id"], FAILURE_TIMEOUT / 3)
    finally:
        import shutil
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_the_timeline_of_any_node_shows_the_tasks_of_all(three):
    ran_on = zf.get([node_after.remote(0.05) for _ in range(12)])
    tids = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:   # the others' batches arrive within a tick or two
        trace = zf.timeline()
        check_trace(trace)
        events = [e for e in trace if e["name"].endswith("node_after")]
        nodes = {process_names(trace)[e["pid"]] for e in events}
        tids = {e["args"]["task_id"] for e in events}
        if len(nodes) == len(set(ran_on)) and len(tids) >= 12:
            break
        time.sleep(0.05)
    assert nodes == {f"node {n}" for n in set(ran_on)}
    assert len(tids) >= 12


def test_joining_through_another_name_of_a_node_makes_one_cluster(fresh):
    with LocalCluster(nodes=1, num_cpus=1, config=fast_config()) as cluster:
        first = cluster.nodes[0]
        alias = first.address.replace("127.0.0.1", "localhost")
        joined = cluster.add_node(num_cpus=1, join=alias)
        zf.init(address=joined.address)
        # long after the join: both see both, and work flows both ways
        time.sleep(FAILURE_TIMEOUT + 0.5)
        for handle in (first, joined):
            assert all(n["Alive"] for n in cluster.query(handle, "nodes"))
        ran_on = zf.get([node_after.remote(0.2) for _ in range(6)])
        assert set(ran_on) == {first.node_id, joined.node_id}
        zf.shutdown()
