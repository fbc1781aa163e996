"""GPUs and scheduling strategies through the public API on an embedded node:
`init(num_gpus=N)` offers N GPUs, a task's `num_gpus` gets ids of its own in
CUDA_VISIBLE_DEVICES and `zf.get_gpu_ids()` (restored after it), and the
`scheduling_strategy` option is checked where it is given and honoured.
"""
from __future__ import annotations

import os
import time

import pytest

import zfabric as zf
from zfabric.exceptions import TaskUnschedulableError
from zfabric.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.timeout(60)


def _wait_for(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)


@zf.remote(num_gpus=1)
def hold_gpu(tmp: str, n: int):
    with open(os.path.join(tmp, f"started-{n}"), "w"):
        pass
    _wait_for(os.path.join(tmp, "release"))
    return zf.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@zf.remote
def visible():
    return zf.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")


def test_gpu_tasks_get_distinct_ids_and_a_third_waits_for_one(fresh, tmp_path):
    zf.init(num_cpus=4, num_gpus=2)
    assert zf.cluster_resources()["GPU"] == 2.0
    assert zf.nodes()[0]["Resources"]["GPU"] == 2.0
    assert zf.get_gpu_ids() == []   # the driver holds none
    tmp = str(tmp_path)
    refs = [hold_gpu.remote(tmp, n) for n in range(3)]
    started = lambda: sorted(f for f in os.listdir(tmp) if f.startswith("started"))
    deadline = time.monotonic() + 30
    while len(started()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(started()) == 2
    assert zf.available_resources().get("GPU", 0) == 0
    time.sleep(0.5)   # CPUs are free: only the want of a GPU can keep the third back
    assert len(started()) == 2
    open(os.path.join(tmp, "release"), "w").close()
    together = [int(f.split("-")[1]) for f in started()]
    open(os.path.join(tmp, "release"), "w").close()
    results = zf.get(refs, timeout=30)
    assert all(len(ids) == 1 and ids[0] in (0, 1) and env == str(ids[0])
               for ids, env in results), results
    assert sorted(results[n][0][0] for n in together) == [0, 1]   # ran at once: apart
    assert zf.available_resources()["GPU"] == 2.0                 # every id came back


def test_the_variable_is_restored_after_a_gpu_task(fresh, tmp_path):
    zf.init(num_cpus=1, num_gpus=1)   # one worker runs both tasks, in turn
    before = zf.get(visible.remote())
    open(os.path.join(tmp_path, "release"), "w").close()
    ids, env = zf.get(hold_gpu.remote(str(tmp_path), 0))
    assert (ids, env) == ([0], "0")
    assert zf.get(visible.remote()) == before
    assert before[0] == []
    half = zf.get(visible.options(num_gpus=0.5).remote())
    assert half == ([0], "0")


def test_gpu_options_are_checked_where_they_are_given(cluster):
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match="num_gpus"):
            visible.options(num_gpus=bad)
        with pytest.raises(ValueError, match="num_gpus"):
            zf.remote(num_gpus=bad)
    with pytest.raises(ValueError, match="num_gpus"):
        visible.options(resources={"GPU": 1})
    visible.options(num_gpus=0.25)
    visible.options(num_gpus=2)


def test_gpu_arguments_of_init_are_checked(fresh):
    with pytest.raises(ValueError, match="num_gpus"):
        zf.init(resources={"GPU": 1})
    with pytest.raises(ValueError, match="num_gpus"):
        zf.init(num_gpus=0.5)
    assert not zf.is_initialized()


def test_a_gpu_task_on_a_node_without_gpus_is_not_run_here(cluster):
    ref = visible.options(num_gpus=1).remote()
    ready, _ = zf.wait([ref], timeout=0.5)
    assert ready == []
    zf.cancel(ref)


# -- scheduling_strategy ------------------------------------------------------------------

def test_strategies_are_checked_where_they_are_given(cluster):
    for bad in ("spread", "PACK", object(), 3, {"node": "x"}):
        with pytest.raises(ValueError, match="scheduling_strategy"):
            visible.options(scheduling_strategy=bad)
        with pytest.raises(ValueError, match="scheduling_strategy"):
            zf.remote(scheduling_strategy=bad)
    for bad_id in ("zz", "ab" * 8, 42, b"\x00" * 16):
        with pytest.raises(ValueError, match="node_id"):
            NodeAffinitySchedulingStrategy(bad_id, soft=False)


def test_every_strategy_runs_on_one_node(cluster):
    here = zf.get_runtime_context().get_node_id()

    @zf.remote
    def where():
        return zf.get_runtime_context().get_node_id()
    for strategy in (None, "DEFAULT", "SPREAD", NodeAffinitySchedulingStrategy(here),
                     NodeAffinitySchedulingStrategy(here, soft=True),
                     NodeAffinitySchedulingStrategy("ab" * 16, soft=True)):
        assert zf.get(where.options(scheduling_strategy=strategy).remote(),
                      timeout=30) == here
    assert zf.get(zf.remote(scheduling_strategy="SPREAD")(lambda: 7).remote()) == 7


def test_hard_affinity_to_an_unknown_node_fails_with_a_clear_error(cluster):
    strategy = NodeAffinitySchedulingStrategy("ab" * 16, soft=False)
    ref = visible.options(scheduling_strategy=strategy).remote()
    with pytest.raises(TaskUnschedulableError, match="ab" * 16):
        zf.get(ref, timeout=30)
    assert issubclass(TaskUnschedulableError, zf.exceptions.ZFabricError)
