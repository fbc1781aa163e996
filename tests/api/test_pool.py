"""zfabric.util.Pool beside multiprocessing.Pool: the same inputs give the same
results and the same errors; and zfabric.util.Executor's futures."""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time
from collections import Counter

import pytest

import zfabric as zf
from zfabric.exceptions import TaskCancelledError, TaskError
from zfabric.util import Executor, Pool

pytestmark = pytest.mark.timeout(90)

INPUTS = list(range(-20, 237))


def square(x):
    return x * x


def inverse(x):
    return 1 / x


def power(x, y):
    return x ** y


def nap(seconds):
    time.sleep(seconds)
    return seconds


def add(x, y=0, *, z=0):
    return x + y + z


_state = {}


def remember(value):
    _state["init"] = value


def read_init(_x):
    return _state.get("init"), os.getpid()


@pytest.fixture(scope="module")
def stdlib():
    """multiprocessing.Pool(2), spawned (a fork of a process with zmq threads is unsafe)."""
    with multiprocessing.get_context("spawn").Pool(2) as p:
        yield p


@pytest.fixture
def pool(cluster):
    with Pool(2) as p:
        yield p


def test_map_starmap_imap_give_the_stdlibs_results(pool, stdlib):
    assert pool.map(square, INPUTS) == stdlib.map(square, INPUTS)
    assert pool.map(square, INPUTS, chunksize=7) == stdlib.map(square, INPUTS, chunksize=7)
    assert pool.map(square, iter(INPUTS)) == stdlib.map(square, iter(INPUTS))
    assert pool.map(square, range(10_000)) == stdlib.map(square, range(10_000))
    assert pool.map(square, []) == stdlib.map(square, []) == []
    pairs = [(x, y) for x in range(-3, 9) for y in range(4)]
    assert pool.starmap(power, pairs) == stdlib.starmap(power, pairs)
    assert list(pool.imap(square, INPUTS)) == list(stdlib.imap(square, INPUTS))
    assert list(pool.imap(square, INPUTS, 10)) == list(stdlib.imap(square, INPUTS, 10))
    assert (Counter(pool.imap_unordered(square, INPUTS, 3))
            == Counter(stdlib.imap_unordered(square, INPUTS, 3)))


def test_async_results_and_callbacks_match_the_stdlibs(pool, stdlib):
    for p in (pool, stdlib):
        got, errors = [], []
        r1 = p.apply_async(add, (1, 2), {"z": 3}, callback=got.append)
        r2 = p.map_async(square, range(50), callback=got.append)
        r3 = p.starmap_async(power, [(2, 5), (3, 2)], callback=got.append)
        r4 = p.apply_async(inverse, (0,), error_callback=errors.append)
        assert (r1.get(30), r2.get(30), r3.get(30)) == (6, [x * x for x in range(50)], [32, 9])
        with pytest.raises(ZeroDivisionError):
            r4.get(30)
        assert r1.ready() and r1.successful() and not r4.successful()
        assert sorted(map(str, got)) == sorted(map(str, [6, [x * x for x in range(50)], [32, 9]]))
        assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
        assert p.apply(add, (5,), {"y": 1}) == 6


def test_errors_are_the_stdlibs_types(pool, stdlib):
    for p in (pool, stdlib):
        with pytest.raises(ZeroDivisionError):
            p.map(inverse, [1, 2, 0, 4])
        with pytest.raises(ZeroDivisionError):
            p.apply(inverse, (0,))
        with pytest.raises(ZeroDivisionError):
            list(p.imap(inverse, [1, 0]))
        with pytest.raises(ZeroDivisionError):
            p.map_async(inverse, [0, 1]).get(30)
        with pytest.raises(TypeError):
            p.starmap(power, [(1, 2, 3)])
        with pytest.raises(ValueError):
            p.imap(square, [1], chunksize=0)
    with pytest.raises(TaskError):     # and the remote traceback with it
        pool.map(inverse, [0])


def test_timeouts_and_not_ready_are_the_stdlibs(pool, stdlib):
    for p in (pool, stdlib):
        r = p.apply_async(nap, (1.5,))
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.05)
        with pytest.raises(ValueError):
            r.successful()
        r.wait(0.01)
        assert not r.ready()
        it = p.imap(nap, [1.5])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0.05)
        assert r.get(30) == 1.5 and it.next(30) == 1.5


def test_a_closed_pool_refuses_work_as_the_stdlibs_does(cluster, stdlib):
    ctx = multiprocessing.get_context("spawn")
    for make in (lambda: Pool(2), lambda: ctx.Pool(1)):
        p = make()
        with pytest.raises(ValueError):
            p.join()                  # still running
        r = p.map_async(square, range(10))
        p.close()
        for call in (lambda: p.map(square, [1]), lambda: p.apply_async(square, (1,)),
                     lambda: p.imap(square, [1]), lambda: p.starmap(power, [(1, 1)])):
            with pytest.raises(ValueError):
                call()
        p.join()
        assert r.get(5) == [x * x for x in range(10)]
        p.terminate()
    with pytest.raises(ValueError):
        with Pool(1) as p:
            p.close()
            p.map(square, [1])


def test_terminate_cancels_the_work_not_done(cluster):
    p = Pool(2)
    started = time.monotonic()
    r = p.map_async(nap, [30] * 4, chunksize=1)
    p.terminate()
    with pytest.raises(TaskCancelledError):
        r.get(20)
    p.join()
    assert time.monotonic() - started < 20


def test_initializer_runs_in_each_worker_before_its_calls(cluster):
    with Pool(2, initializer=remember, initargs=("ready",)) as p:
        got = p.map(read_init, range(40), chunksize=1)
    assert {init for init, _pid in got} == {"ready"}


def test_pool_arguments_are_checked_as_the_stdlibs(cluster):
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(TypeError):
        Pool(2, initializer=3)
    with pytest.warns(UserWarning, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=5).terminate()
    with pytest.raises(NotImplementedError):
        import pickle
        pickle.dumps(Pool(1))


def test_map_of_a_cheap_function_is_cut_into_fewer_chunks_next_time(cluster):
    with Pool(2) as p:
        assert p._chunksize(square, 10_000) == 1250        # the stdlib's, at first
        p.map(square, range(10_000))
        assert p._chunksize(square, 10_000) > 1250         # its calls cost ~nothing
        assert p._chunksize(nap, 40) == 5                  # another function: unknown


# -- Executor ---------------------------------------------------------------------------

def test_executor_futures_carry_values_and_exceptions(cluster):
    with Executor() as ex:
        f1, f2 = ex.submit(add, 1, y=2, z=3), ex.submit(inverse, 0)
        assert f1.result(30) == 6
        assert isinstance(f2.exception(30), ZeroDivisionError)
        with pytest.raises(ZeroDivisionError):
            f2.result()
        fs = [ex.submit(square, i) for i in range(30)]
        done = {f.result() for f in concurrent.futures.as_completed(fs, timeout=30)}
        assert done == {i * i for i in range(30)}
        ref = zf.put(7)
        assert ex.submit(square, ref).result(30) == 49   # refs arrive as values
        assert ex.submit(dict, a=1).result(30) == {"a": 1}   # a class is a callable too


def test_executor_map_keeps_order_chunks_and_times_out(cluster):
    with Executor(max_workers=4) as ex:
        assert list(ex.map(square, range(100))) == [x * x for x in range(100)]
        assert list(ex.map(power, range(50), [2] * 60, chunksize=7)) == \
            [x ** 2 for x in range(50)]
        with pytest.raises(ValueError):
            ex.map(square, [1], chunksize=0)
        results = ex.map(nap, [0, 5], timeout=0.5)
        assert next(results) == 0
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
        with pytest.raises(ZeroDivisionError):
            list(ex.map(inverse, [1, 0]))


def test_max_workers_bounds_the_calls_in_flight(cluster):
    ex = Executor(max_workers=1)
    first = ex.submit(nap, 0.5)
    second = ex.submit(nap, 0)
    third = ex.submit(nap, 0)
    assert first.running() and not second.running() and not second.done()
    assert third.cancel()                          # never sent: cancellable
    assert second.result(30) == 0 and first.done()
    assert third.cancelled()
    ex.shutdown()
    with pytest.raises(ValueError):
        Executor(max_workers=0)


def test_shutdown_waits_or_cancels_and_then_refuses(cluster):
    ex = Executor(max_workers=1)
    running, queued = ex.submit(nap, 0.3), ex.submit(nap, 0.3)
    ex.shutdown(wait=True, cancel_futures=True)
    assert running.done() and running.result() == 0.3 and queued.cancelled()
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])
    ex = Executor()
    futures = [ex.submit(nap, 0.2) for _ in range(3)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)


def test_executor_futures_complete_from_other_threads(cluster):
    with Executor(max_workers=3) as ex:
        out = []

        def submit_some(k):
            out.extend(f.result(30) for f in [ex.submit(square, k * 100 + i) for i in range(20)])

        threads = [threading.Thread(target=submit_some, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(out) == sorted((k * 100 + i) ** 2 for k in range(4) for i in range(20))


def test_pool_and_executor_start_zfabric_when_it_is_not_running(fresh):
    assert not zf.is_initialized()
    with Pool(1) as p:
        assert p.map(square, [3]) == [9]
    assert zf.is_initialized()
    zf.shutdown()
    with Executor() as ex:
        assert ex.submit(square, 4).result(30) == 16
