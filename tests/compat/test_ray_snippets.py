"""Ray task-API code, written as Ray's users and documentation write it, run
unchanged after `import zfabric as ray`. Each snippet checks the result Ray
documents for it. They share one node (`ray.init(ignore_reinit_error=True)`).

GPUs, scheduling strategies and runtime_env have their own tests.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import numpy as np
import pytest

import zfabric as ray

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(ignore_reinit_error=True, logging_level=logging.ERROR)
    yield


# -- remote functions, put and get ---------------------------------------------------------------

@ray.remote
def square(x):
    return x * x


def test_tasks_in_parallel():
    futures = [square.remote(i) for i in range(4)]
    assert ray.get(futures) == [0, 1, 4, 9]


def test_put_and_pass_object_refs():
    @ray.remote
    def echo(a: int, b: int, c: int):
        return a, b, c

    assert ray.get(echo.remote(1, 2, 3)) == (1, 2, 3)
    # ObjectRefs at the top level are passed as their values
    assert ray.get(echo.remote(ray.put(1), ray.put(2), ray.put(3))) == (1, 2, 3)


def test_object_refs_nested_in_a_list_are_passed_as_refs():
    @ray.remote
    def echo_and_get(x_list):  # List[ObjectRef]
        assert all(isinstance(x, ray.ObjectRef) for x in x_list)
        return ray.get(x_list)

    a, b, c = ray.put(1), ray.put(2), ray.put(3)
    assert ray.get(echo_and_get.remote([a, b, c])) == [1, 2, 3]


def test_chained_tasks_pass_results_without_get():
    @ray.remote
    def make_array(n):
        return np.arange(n)

    @ray.remote
    def add_arrays(a, b):
        return np.add(a, b)

    result = ray.get(add_arrays.remote(make_array.remote(20), make_array.remote(20)))
    np.testing.assert_array_equal(result, np.arange(20) * 2)


def test_a_large_array_put_once_is_read_only_and_shared():
    array = np.ones((1000, 1000))
    ref = ray.put(array)

    @ray.remote
    def total(a):
        return float(a.sum())

    assert ray.get([total.remote(ref) for _ in range(3)]) == [1e6] * 3
    got = ray.get(ref)
    np.testing.assert_array_equal(got, array)
    with pytest.raises(ValueError):   # zero-copy: a read-only view of the store
        got[0, 0] = 2


def test_a_task_may_return_an_object_ref():
    @ray.remote
    def inner():
        return ray.put("deep")

    ref = ray.get(inner.remote())
    assert isinstance(ref, ray.ObjectRef) and ray.get(ref) == "deep"


def test_get_of_an_empty_list_and_of_duplicates():
    ref = square.remote(3)
    assert ray.get([]) == []
    assert ray.get([ref, ref]) == [9, 9]


def test_put_of_an_object_ref_is_a_type_error():
    with pytest.raises(TypeError):
        ray.put(square.remote(1))


def test_calling_a_remote_function_directly_is_a_type_error():
    with pytest.raises(TypeError, match="remote"):
        square(2)


# -- returns and options -----------------------------------------------------------------------

def test_multiple_returns():
    @ray.remote(num_returns=3)
    def return_multiple():
        return 0, 1, 2

    a, b, c = return_multiple.remote()
    assert ray.get([a, b, c]) == [0, 1, 2]


def test_options_override_the_decorator():
    @ray.remote(num_cpus=1)
    def pair():
        return 1, 2

    first, second = pair.options(num_returns=2, num_cpus=0.5, name="pair-split").remote()
    assert ray.get(second) == 2 and ray.get(first) == 1
    assert pair.options(num_returns=0).remote() is None


def test_fractional_cpus_share_a_cpu():
    @ray.remote(num_cpus=0.25)
    def light(i):
        return i

    assert sorted(ray.get([light.remote(i) for i in range(8)])) == list(range(8))


def test_arguments_are_checked_at_remote_like_a_call():
    @ray.remote
    def f(x, y=1):
        return x + y

    with pytest.raises(TypeError):
        f.remote()                       # missing x
    with pytest.raises(TypeError):
        f.remote(1, 2, 3)                # too many
    with pytest.raises(TypeError):
        f.options(num_cpus=1).remote(1, z=2)   # unknown keyword
    assert ray.get(f.remote(1, y=5)) == 6


# -- nested tasks --------------------------------------------------------------------------------

def test_nested_tasks():
    @ray.remote
    def f():
        return 1

    @ray.remote
    def g():
        return [f.remote() for _ in range(4)]   # a task starts tasks

    @ray.remote
    def h():
        return ray.get([f.remote() for _ in range(4)])   # and waits for them

    refs = ray.get(g.remote())
    assert ray.get(refs) == [1, 1, 1, 1]
    assert ray.get(h.remote()) == [1, 1, 1, 1]


@ray.remote
def quick_sort_distributed(collection):
    if len(collection) <= 50:
        return sorted(collection)
    pivot = collection[0]
    lesser = [x for x in collection[1:] if x < pivot]
    greater = [x for x in collection[1:] if x >= pivot]
    lesser = quick_sort_distributed.remote(lesser)
    greater = quick_sort_distributed.remote(greater)
    return ray.get(lesser) + [pivot] + ray.get(greater)


def test_recursive_tasks_quicksort():
    values = list(np.random.default_rng(7).integers(0, 1000, 400))
    assert ray.get(quick_sort_distributed.remote(values)) == sorted(values)


def test_map_reduce():
    @ray.remote
    def mapper(chunk):
        return sum(chunk)

    @ray.remote
    def reducer(*partials):
        return sum(partials)

    chunks = [list(range(i * 10, i * 10 + 10)) for i in range(10)]
    assert ray.get(reducer.remote(*[mapper.remote(c) for c in chunks])) == sum(range(100))


# -- wait ------------------------------------------------------------------------------------

@ray.remote
def sleep_then(x, delay):
    time.sleep(delay)
    return x


def test_wait_returns_ready_and_not_ready():
    fast, slow = sleep_then.remote("fast", 0), sleep_then.remote("slow", 30)
    ready_refs, remaining_refs = ray.wait([slow, fast], num_returns=1, timeout=None)
    assert ready_refs == [fast] and remaining_refs == [slow]
    ready, not_ready = ray.wait([slow], timeout=0)
    assert ready == [] and not_ready == [slow]
    ray.cancel(slow, force=True)


def test_process_results_in_the_order_they_finish():
    refs = [sleep_then.remote(i, 0.05 * (5 - i)) for i in range(5)]
    unfinished, results = refs, []
    while unfinished:
        finished, unfinished = ray.wait(unfinished, num_returns=1)
        results.append(ray.get(finished[0]))
    assert sorted(results) == list(range(5))


def test_limit_the_number_of_pending_tasks():
    max_pending, result_refs, done = 4, [], 0
    for i in range(40):
        if len(result_refs) > max_pending:
            ready_refs, result_refs = ray.wait(result_refs, num_returns=1)
            done += len(ray.get(ready_refs))
        result_refs.append(square.remote(i))
    done += len(ray.get(result_refs))
    assert done == 40


# -- errors, timeouts, cancel, retries -------------------------------------------------------------

class MyException(Exception):
    pass


def test_task_errors_are_ray_task_errors_and_the_users_class():
    @ray.remote
    def f():
        raise Exception("the real error")

    @ray.remote
    def g(x):
        return

    with pytest.raises(ray.exceptions.RayTaskError, match="the real error"):
        ray.get(f.remote())
    with pytest.raises(ray.exceptions.RayTaskError, match="the real error"):
        ray.get(g.remote(f.remote()))   # an input could not be computed

    @ray.remote
    def raises_my_exc():
        raise MyException("a user exception")

    try:
        ray.get(raises_my_exc.remote())
    except MyException as e:
        assert isinstance(e, ray.exceptions.RayTaskError)
        assert isinstance(e, ray.exceptions.RayError)
        assert isinstance(e.cause, MyException) and "raises_my_exc" in e.traceback_str
    else:
        pytest.fail("no exception")


def test_get_timeout_raises_get_timeout_error():
    obj_ref = sleep_then.remote(None, 30)
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(obj_ref, timeout=0.5)
    with pytest.raises(TimeoutError):   # "You can capture the standard TimeoutError instead"
        ray.get(obj_ref, timeout=0)
    ray.cancel(obj_ref, force=True)


def test_cancel_a_running_task():
    @ray.remote
    def blocking_operation():
        time.sleep(10e6)

    for _ in range(3):   # the next one is sent to the worker the last one was cancelled on
        obj_ref = blocking_operation.remote()
        ray.cancel(obj_ref)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(obj_ref)


def test_retry_exceptions(tmp_path):
    counter = tmp_path / "attempts"
    counter.write_text("0")

    @ray.remote(max_retries=3, retry_exceptions=True)
    def flaky():
        n = int(counter.read_text()) + 1
        counter.write_text(str(n))
        if n < 3:
            raise ConnectionError(f"attempt {n} failed")
        return n

    assert ray.get(flaky.remote()) == 3


def test_an_exception_that_cannot_be_pickled_still_reaches_the_caller():
    class NeedsTwo(Exception):
        def __init__(self, a, b):
            super().__init__(a)

    @ray.remote
    def raises():
        raise NeedsTwo("odd", 2)

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(raises.remote())
    cause = info.value.cause
    assert isinstance(cause, ray.exceptions.RayError)
    assert cause.type_name == "NeedsTwo" and cause.message == "odd"
    assert "raises" in cause.traceback_str and "not serializable" in str(cause)


# -- asyncio and futures ---------------------------------------------------------------------------

def test_await_object_refs():
    async def await_obj_ref():
        first = await square.remote(5)
        done, _ = await asyncio.wait([square.remote(6).as_future()])   # futures, on 3.11+
        return first, [d.result() for d in done]

    assert asyncio.run(await_obj_ref()) == (25, [36])


def test_object_refs_as_asyncio_futures():
    async def convert_to_asyncio_future():
        ref = square.remote(7)
        fut: asyncio.Future = asyncio.wrap_future(ref.future())
        other = square.remote(8).as_future()
        assert isinstance(other, asyncio.Future)
        return await fut, await other

    assert asyncio.run(convert_to_asyncio_future()) == (49, 64)


def test_gather_and_wait_over_as_future():
    async def main():
        refs = [sleep_then.remote(i, 0.01 * i) for i in range(6)]
        gathered = await asyncio.gather(*[r.as_future() for r in refs])
        assert await asyncio.gather(*refs) == gathered   # refs are awaitables too
        done, pending = await asyncio.wait([r.as_future() for r in refs],
                                           return_when=asyncio.ALL_COMPLETED)
        return gathered, sorted(f.result() for f in done), pending

    gathered, done, pending = asyncio.run(main())
    assert gathered == list(range(6)) and done == list(range(6)) and not pending


def test_a_failed_task_raises_through_asyncio():
    @ray.remote
    def fails():
        raise KeyError("missing")

    async def main():
        return await asyncio.gather(fails.remote().as_future(), return_exceptions=True)

    (err,) = asyncio.run(main())
    assert isinstance(err, KeyError) and isinstance(err, ray.exceptions.RayTaskError)


def test_concurrent_futures():
    refs = [square.remote(i) for i in range(4)]
    futs = [ref.future() for ref in refs]
    results = [fut.result() for fut in concurrent.futures.as_completed(futs)]
    assert sorted(results) == [0, 1, 4, 9]


# -- object refs -----------------------------------------------------------------------------------

def test_object_refs_hash_compare_and_have_ids():
    ref = ray.put(1)
    assert isinstance(ref, ray.ObjectRef) and isinstance(ref, ray.ObjectID)
    assert ray.ObjectID is ray.ObjectRef
    assert len(ref.hex()) == 2 * len(ref.binary())
    assert {ref: 1}[ray.ObjectRef(ref.binary())] == 1


# -- the runtime and the cluster ---------------------------------------------------------------

def test_runtime_context_and_nodes():
    assert ray.is_initialized()
    node_id = ray.get_runtime_context().get_node_id()
    assert node_id in {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    @ray.remote
    def where():
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ctx.get_task_id()

    ref = where.remote()
    task_node, task_id = ray.get(ref)
    assert task_node == node_id and task_id == ref.task_id()
    assert task_id != ray.get_runtime_context().get_task_id()


def test_cluster_and_available_resources():
    total = ray.cluster_resources()
    assert total["CPU"] >= 1
    assert 0 <= ray.available_resources().get("CPU", 0) <= total["CPU"]
    node = ray.nodes()[0]
    assert {"NodeID", "Alive", "NodeManagerAddress", "NodeManagerPort", "Resources"} <= set(node)


def test_init_again_with_ignore_reinit_error():
    info = ray.init(ignore_reinit_error=True, logging_level=logging.ERROR)
    assert info["node_id"] in {n["NodeID"] for n in ray.nodes()}
    with pytest.raises(RuntimeError):
        ray.init()


def test_timeline_lists_finished_tasks():
    ray.get(square.remote(2))
    assert any(e["name"].endswith("square") for e in ray.timeline())
