"""joblib's backend "zfabric" on an embedded node (tests/cluster/test_joblib_cluster.py:
on several nodes)."""
from __future__ import annotations

import os

import pytest

import zfabric as zf
from zfabric.util import register_joblib

joblib = pytest.importorskip("joblib")
pytestmark = pytest.mark.timeout(60)


def cube(x):
    return x ** 3


def where(_i):
    return os.getpid(), zf.get_runtime_context().get_task_id()


def broken(x):
    if x == 7:
        raise KeyError(x)
    return x


def test_parallel_runs_its_calls_as_tasks_with_the_right_results(cluster):
    register_joblib()
    with joblib.parallel_config(backend="zfabric"):
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(cube)(i) for i in range(300)) == \
            [i ** 3 for i in range(300)]
        ran = joblib.Parallel(n_jobs=-1)(joblib.delayed(where)(i) for i in range(8))
    assert all(task_id is not None for _pid, task_id in ran)       # inside tasks
    assert os.getpid() not in {pid for pid, _ in ran}


def test_n_jobs_minus_one_is_the_clusters_cpus(cluster):
    register_joblib()
    with joblib.parallel_config(backend="zfabric"):
        cpus = int(zf.cluster_resources()["CPU"])
        assert joblib.effective_n_jobs(-1) == cpus
        assert joblib.effective_n_jobs(-2) == cpus - 1
        assert joblib.effective_n_jobs(3) == 3
        with pytest.raises(ValueError):
            joblib.effective_n_jobs(0)


def test_an_error_in_a_call_reaches_the_caller_with_its_type(cluster):
    register_joblib()
    with joblib.parallel_config(backend="zfabric"):
        with pytest.raises(KeyError):
            joblib.Parallel(n_jobs=2)(joblib.delayed(broken)(i) for i in range(20))
        # the backend is usable again afterwards
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(cube)(i) for i in range(5)) == \
            [0, 1, 8, 27, 64]


def test_return_as_generator(cluster):
    register_joblib()
    with joblib.parallel_config(backend="zfabric"):
        gen = joblib.Parallel(n_jobs=2, return_as="generator_unordered")(
            joblib.delayed(cube)(i) for i in range(20))
        assert sorted(gen) == sorted(i ** 3 for i in range(20))
