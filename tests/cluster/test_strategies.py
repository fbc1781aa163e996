"""Scheduling strategies and GPUs on real nodes (LocalCluster): node affinity puts
tasks on the chosen node, SPREAD uses every node, hard affinity to a dead node
fails at once while soft runs elsewhere, and a GPU task sent to the only node
with a GPU gets its id there.
"""
from __future__ import annotations

import os
import time

import pytest

import zfabric as zf
from tests.harness.functions import attach_to
from zfabric.config import Config
from zfabric.exceptions import TaskUnschedulableError
from zfabric.testing import LocalCluster
from zfabric.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def three_nodes():
    config = Config.from_env().replace(failure_timeout=1.5)
    with LocalCluster(nodes=3, num_cpus=2, config=config) as cluster:
        yield cluster
        if zf.is_initialized():
            zf.shutdown()


@pytest.fixture
def three(three_nodes):
    """Three 2-CPU nodes (kept across the module), this driver attached to the first."""
    return attach_to(three_nodes)


@zf.remote
def where(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return zf.get_runtime_context().get_node_id()


def test_node_affinity_puts_tasks_on_the_chosen_node(three):
    for handle in three.nodes:
        for soft in (False, True):
            strategy = NodeAffinitySchedulingStrategy(handle.node_id, soft=soft)
            refs = [where.options(scheduling_strategy=strategy).remote(0.05)
                    for _ in range(2 if soft else 6)]
            assert set(zf.get(refs, timeout=60)) == {handle.node_id}


def test_spread_uses_every_node_even_when_the_first_has_room(three):
    ids = {h.node_id for h in three.nodes}
    assert set(zf.get([where.options(scheduling_strategy="SPREAD").remote(0.3)
                       for _ in range(3)], timeout=60)) == ids
    many = zf.get([where.options(scheduling_strategy="SPREAD").remote(0.05)
                   for _ in range(30)], timeout=60)
    assert set(many) == ids


def test_affinity_to_a_node_that_died(three):
    victim = three.add_node(num_cpus=1)
    three.kill_node(victim)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = {n["NodeID"]: n["Alive"] for n in zf.nodes()}
        if not alive.get(victim.node_id, True):
            break
        time.sleep(0.05)
    hard = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim.node_id))
    soft = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(victim.node_id,
                                                                             soft=True))
    soft_ref = soft.remote()
    with pytest.raises(TaskUnschedulableError, match="died"):
        zf.get(hard.remote(), timeout=60)
    assert zf.get(soft_ref, timeout=60) in {h.node_id for h in three.nodes}


def test_a_gpu_task_runs_where_the_gpu_is_and_gets_its_id_there(three):
    gpu_node = three.add_node(num_cpus=1, resources={"GPU": 1})
    try:
        @zf.remote(num_gpus=1)
        def gpu_task():
            return (zf.get_runtime_context().get_node_id(), zf.get_gpu_ids(),
                    os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert zf.get([gpu_task.remote() for _ in range(3)], timeout=60) == \
            [(gpu_node.node_id, [0], "0")] * 3
    finally:
        three.remove_node(gpu_node)
