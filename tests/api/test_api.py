"""The library API on one embedded node: the documented contract (README, docs/), edge case by edge case.

Options, init, get, errors, dependencies and nesting, wait. Objects:
test_objects.py; cancel, crashes and retries: test_cancel_and_retries.py;
what the node tells (nodes, resources, context, timeline, output):
test_runtime.py.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import zfabric as zf
from zfabric.exceptions import GetTimeoutError, TaskError, ZFabricError

from tests.harness.functions import Unpicklable, fail, inc, slow

pytestmark = pytest.mark.timeout(60)


# -- options ---------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [
    {"bogus": 1}, {"num_cpus": -1}, {"num_cpus": "2"}, {"resources": {"CPU": 1}},
    {"max_retries": -2}, {"num_returns": -1}, {"num_returns": 1.5},
    {"retry_exceptions": [int]}, {"resources": {"gpu": -1}}, {"resources": [1]},
])
def test_bad_options_raise_in_decorator_and_options(opts):
    with pytest.raises(ValueError):
        zf.remote(**opts)(lambda: None)
    with pytest.raises(ValueError):
        inc.options(**opts)


def test_calling_remote_function_directly_is_a_type_error():
    with pytest.raises(TypeError, match=r"\.remote"):
        inc(1)


def test_remote_rejects_classes():
    with pytest.raises(NotImplementedError, match="no actors"):
        @zf.remote
        class A:
            pass


def test_api_before_init_says_so(fresh):
    with pytest.raises(RuntimeError, match="init"):
        inc.remote(1)
    with pytest.raises(RuntimeError, match="init"):
        zf.put(1)


# -- init ------------------------------------------------------------------------------

def test_init_returns_info_and_rejects_reinit(fresh):
    info = zf.init(num_cpus=1)
    for key in ("node_id", "node_ip_address", "address", "object_store_address",
                "session_dir", "dashboard_url"):
        assert key in info
    assert info["address"].startswith("tcp://127.0.0.1:")
    assert zf.is_initialized()
    with pytest.raises(RuntimeError, match="already initialized"):
        zf.init()
    assert zf.init(ignore_reinit_error=True) == info
    zf.shutdown()
    assert not zf.is_initialized()


def test_init_validates_arguments(fresh, monkeypatch):
    with pytest.raises(ValueError):
        zf.init(num_cpus=-1)
    with pytest.raises(ValueError):
        zf.init(resources={"CPU": 2})
    with pytest.raises(ValueError):
        zf.init(address="nonsense")
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        zf.init(address="tcp://localhost")
    monkeypatch.setenv("ZFABRIC_JOIN_TIMEOUT", "1")
    with pytest.raises(ConnectionError, match="no zfabric node answered at tcp://127.0.0.1:1"):
        zf.init(address="tcp://127.0.0.1:1")
    assert not zf.is_initialized()


def test_shutdown_leaves_nothing_behind(fresh):
    info = zf.init(num_cpus=1)
    ref = zf.put(np.zeros(1_000_000))
    assert zf.get(ref).sum() == 0
    zf.shutdown()
    assert not os.path.exists(info["object_store_address"])
    assert not os.path.exists(info["session_dir"])


# -- get -------------------------------------------------------------------------------

def test_get_single_list_empty_and_duplicates(cluster):
    r = inc.remote(1)
    assert zf.get(r) == 2
    assert zf.get([r, inc.remote(2), r]) == [2, 3, 2]
    assert zf.get([]) == []


@pytest.mark.parametrize("bad", [1, "x", None, [1], [inc]])
def test_get_of_a_non_ref_is_a_type_error(cluster, bad):
    with pytest.raises(TypeError):
        zf.get(bad)


def test_get_timeout_raises_and_timeout_zero_polls(cluster):
    r = slow.remote(1, 1.0)
    t = time.monotonic()
    with pytest.raises(GetTimeoutError):
        zf.get(r, timeout=0)
    with pytest.raises(TimeoutError):  # GetTimeoutError is a TimeoutError
        zf.get([inc.remote(0), r], timeout=0.2)
    assert time.monotonic() - t < 0.9
    assert zf.get(r, timeout=5) == 1
    with pytest.raises(ValueError):
        zf.get(r, timeout=-1)


def test_get_raises_at_once_when_one_element_failed(cluster):
    long = slow.remote(1, 5.0)
    t = time.monotonic()
    with pytest.raises(ValueError):
        zf.get([long, fail.remote()])
    assert time.monotonic() - t < 3.0
    zf.cancel(long, force=True)


# -- errors ----------------------------------------------------------------------------

def test_task_error_is_also_the_users_exception(cluster):
    with pytest.raises(ValueError) as info:
        zf.get(fail.remote("kaput"))
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, ZFabricError)
    assert isinstance(err.cause, ValueError) and str(err.cause) == "kaput"
    assert "in fail" in err.traceback_str and "ValueError: kaput" in err.traceback_str
    assert "kaput" in str(err)


class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


def test_cause_keeps_its_attributes(cluster):
    @zf.remote
    def raises_custom():
        raise CustomError(42)

    with pytest.raises(CustomError) as info:
        zf.get(raises_custom.remote())
    assert info.value.cause.code == 42
    assert info.value.code == 42


def test_unpicklable_exception_arrives_as_task_error_with_text(cluster):
    class Local(Exception):
        def __init__(self, a, b):
            super().__init__(a)

    @zf.remote
    def raises_local():
        raise Local("weird", 2)

    with pytest.raises(TaskError) as info:
        zf.get(raises_local.remote())
    assert info.value.cause_type_name == "Local"
    assert "weird" in str(info.value)
    assert "raises_local" in info.value.traceback_str
    cause = info.value.cause   # says so, with the type, message and traceback as text
    assert isinstance(cause, ZFabricError) and "not serializable" in str(cause)
    assert cause.type_name == "Local" and cause.message == "weird"
    assert "raises_local" in cause.traceback_str


def test_failed_argument_propagates_its_type(cluster):
    with pytest.raises(ValueError, match="could not be computed") as info:
        zf.get(inc.remote(fail.remote("inner")))
    assert "inner" in str(info.value)


def test_unpicklable_argument_names_the_argument(cluster):
    with pytest.raises(TypeError, match="'delay'"):
        slow.remote(1, delay=Unpicklable())
    with pytest.raises(TypeError, match="'x'"):
        slow.remote(Unpicklable())


def test_put_of_ref_or_unpicklable_is_a_type_error(cluster):
    with pytest.raises(TypeError):
        zf.put(inc.remote(1))
    with pytest.raises(TypeError):
        zf.put(Unpicklable())


def test_wrong_number_of_returns_fails_each_ref(cluster):
    @zf.remote(num_returns=2)
    def three():
        return 1, 2, 3

    a, b = three.remote()
    for r in (a, b):
        with pytest.raises(ValueError, match="num_returns=2"):
            zf.get(r)


def test_num_returns_zero_and_many(cluster):
    @zf.remote
    def pair(x):
        return x, x * 2

    assert pair.options(num_returns=0).remote(1) is None
    a, b = pair.options(num_returns=2).remote(5)
    assert zf.get([a, b]) == [5, 10]


def test_unpicklable_return_value_is_a_clear_error(cluster):
    @zf.remote
    def returns_lock():
        import threading
        return threading.Lock()

    with pytest.raises(TypeError, match="could not serialize the return value"):
        zf.get(returns_lock.remote())
    assert zf.get(inc.remote(1)) == 2


def test_exceptions_share_one_base(cluster):
    from zfabric import exceptions as ex
    for name in ("TaskError", "GetTimeoutError", "WorkerCrashedError", "NodeDiedError",
                 "ObjectLostError", "TaskCancelledError", "ObjectStoreFullError",
                 "AuthenticationError"):
        assert issubclass(getattr(ex, name), ex.ZFabricError)


# -- dependencies, nesting -------------------------------------------------------------

def test_refs_at_top_level_are_resolved_nested_ones_are_not(cluster):
    @zf.remote
    def inspect_args(a, b, c=None):
        return type(a).__name__, type(b[0]).__name__, type(c).__name__, zf.get(b[0])

    r = inc.remote(1)
    assert zf.get(inspect_args.remote(r, [r], c=r)) == ("int", "ObjectRef", "int", 2)


def test_nested_tasks_and_deep_recursion_on_one_cpu(fresh):
    zf.init(num_cpus=1)

    @zf.remote
    def depth(n):
        return 0 if n == 0 else zf.get(depth.remote(n - 1)) + 1

    assert zf.get(depth.remote(12), timeout=50) == 12


def test_fair_queueing_many_nested_chains_on_one_cpu(fresh):
    zf.init(num_cpus=1)

    @zf.remote
    def h():
        return 0

    @zf.remote
    def g():
        return zf.get(h.remote())

    @zf.remote
    def f():
        return zf.get(g.remote())

    refs = [f.remote() for _ in range(1000)]
    ready, _ = zf.wait(refs, num_returns=len(refs), timeout=50)
    assert len(ready) == 1000


# -- wait ------------------------------------------------------------------------------

def test_wait_edge_cases(cluster):
    r = inc.remote(1)
    assert zf.wait([]) == ([], [])
    with pytest.raises(TypeError):
        zf.wait(r)
    with pytest.raises(TypeError):
        zf.wait([r, 1])
    with pytest.raises(ValueError):
        zf.wait([r], num_returns=0)
    with pytest.raises(ValueError):
        zf.wait([r], num_returns=2)
    with pytest.raises(ValueError):
        zf.wait([r, r])
    with pytest.raises(ValueError):
        zf.wait([r], timeout=-1)


def test_wait_returns_early_keeps_order_and_counts_failures(cluster):
    s = slow.remote(0, 2.0)
    quick = [inc.remote(i) for i in range(3)]
    bad = fail.remote()
    refs = [s] + quick + [bad]
    t = time.monotonic()
    ready, not_ready = zf.wait(refs, num_returns=4, timeout=10)
    assert time.monotonic() - t < 1.8
    assert ready == [r for r in refs if r in ready]  # input order
    assert set(ready) == set(quick + [bad])
    assert not_ready == [s]
    ready, not_ready = zf.wait([s], timeout=0)
    assert (ready, not_ready) == ([], [s])
