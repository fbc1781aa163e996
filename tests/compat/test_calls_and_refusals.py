"""What Ray task code relies on beyond the snippets: arguments checked against
the signature at `.remote()`, `ObjectRef.as_future()`, errors that cannot
travel, and the one line that actors and placement groups get."""
from __future__ import annotations

import asyncio
import functools
import logging

import pytest

import zfabric as ray
from zfabric import exceptions

pytestmark = pytest.mark.timeout(60)


# -- arguments against the signature -------------------------------------------------------------

def add(a, b):
    return a + b


def test_partials_and_callable_objects_are_checked_as_they_would_be_called(cluster):
    plus_one = ray.remote(functools.partial(add, 1))
    assert ray.get(plus_one.remote(2)) == 3
    with pytest.raises(TypeError, match="too many positional"):
        plus_one.remote(2, 3)

    class Scale:
        def __call__(self, x, *, by=2):
            return x * by

    scale = ray.remote(Scale())
    assert ray.get(scale.remote(3, by=3)) == 9
    with pytest.raises(TypeError, match="unexpected keyword argument 'times'"):
        scale.remote(3, times=2)


def test_a_function_whose_signature_cannot_be_read_is_not_checked(cluster):
    remote_max = ray.remote(max)     # a builtin without a signature
    assert ray.get(remote_max.remote([3, 1, 2])) == 3
    assert ray.get(remote_max.remote(1, 5, 2)) == 5


def inject_scale(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, scale=10, **kwargs)
    return wrapper


def test_a_decorated_function_is_checked_as_its_wrapper(cluster):
    @ray.remote
    @inject_scale
    def scaled(x, scale):
        return x * scale

    assert ray.get(scaled.remote(2)) == 20   # `scale` comes from the wrapper


def test_required_keyword_only_arguments(cluster):
    @ray.remote
    def f(*values, sep):
        return sep.join(values)

    with pytest.raises(TypeError, match="'sep'"):
        f.remote("a", "b")
    assert ray.get(f.remote("a", "b", sep="-")) == "a-b"


def test_the_check_runs_inside_tasks_too(cluster):
    @ray.remote
    def child(x):
        return x

    @ray.remote
    def parent():
        return child.remote(1, 2)

    with pytest.raises(TypeError, match="child\\(\\): too many positional"):
        ray.get(parent.remote())


# -- as_future --------------------------------------------------------------------------------

def test_as_future_needs_a_loop(cluster):
    ref = ray.put(5)
    with pytest.raises(RuntimeError, match="event loop"):
        ref.as_future()
    loop = asyncio.new_event_loop()
    try:
        fut = ref.as_future(loop=loop)
        assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
        assert loop.run_until_complete(fut) == 5
    finally:
        loop.close()


def test_a_cancelled_asyncio_future_leaves_the_object_alone(cluster):
    @ray.remote
    def later(x):
        import time
        time.sleep(0.3)
        return x

    async def main():
        ref = later.remote(1)
        fut = ref.as_future()
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        return await ref

    assert asyncio.run(main()) == 1


# -- errors -------------------------------------------------------------------------------

class Sealed(Exception):
    """Refuses subclasses, as a class marked typing.final is meant to."""

    def __init_subclass__(cls, **kwargs):
        raise RuntimeError("Sealed is final")


@ray.remote
def raise_sealed(code):
    raise Sealed(code)


def test_an_exception_class_that_cannot_be_subclassed_arrives_as_task_error(cluster, caplog):
    exceptions._derived_cache.pop(Sealed, None)
    with caplog.at_level(logging.WARNING, logger="zfabric.exceptions"):
        for code in ("a", "b"):
            with pytest.raises(ray.exceptions.TaskError) as info:
                ray.get(raise_sealed.remote(code))
            assert type(info.value.cause) is Sealed and info.value.cause.args == (code,)
            assert "raise_sealed" in info.value.traceback_str
    said = [r.getMessage() for r in caplog.records if r.name == "zfabric.exceptions"]
    assert len(said) == 1 and "Sealed" in said[0] and "cannot be subclassed" in said[0]


def test_ray_exception_names():
    assert ray.exceptions.RayError is ray.exceptions.ZFabricError
    assert ray.exceptions.RayTaskError is ray.exceptions.TaskError
    assert issubclass(ray.exceptions.UnserializableException, ray.exceptions.RayError)
    for name in ("GetTimeoutError", "TaskCancelledError", "WorkerCrashedError",
                 "ObjectLostError", "NodeDiedError", "ObjectStoreFullError"):
        assert issubclass(getattr(ray.exceptions, name), ray.exceptions.RayError)


# -- what zfabric does not have ------------------------------------------------------------------

def one_line_refusal(call, what: str) -> exceptions.NotSupportedError:
    with pytest.raises(exceptions.NotSupportedError) as info:
        call()
    err = info.value
    assert isinstance(err, NotImplementedError) and isinstance(err, ray.exceptions.RayError)
    assert what in str(err) and "\n" not in str(err)
    return err


def test_actors_fail_with_one_clear_line():
    def decorate_class():
        @ray.remote
        class Counter:
            def __init__(self):
                self.n = 0

    def decorate_class_with_options():
        @ray.remote(num_cpus=1)
        class Counter:
            pass

    def actor_method():
        class Counter:
            @ray.method(num_returns=2)
            def pair(self):
                return 1, 2

    assert "Counter" in str(one_line_refusal(decorate_class, "no actors"))
    one_line_refusal(decorate_class_with_options, "no actors")
    one_line_refusal(actor_method, "no actors")
    one_line_refusal(lambda: ray.get_actor("counter"), "no actors")
    one_line_refusal(lambda: ray.kill(object()), "no actors")


def test_placement_groups_fail_with_one_clear_line():
    from zfabric.util.placement_group import (get_current_placement_group, placement_group,
                                              remove_placement_group)
    one_line_refusal(lambda: ray.util.placement_group([{"CPU": 1}], strategy="PACK"),
                     "no placement groups")
    one_line_refusal(lambda: placement_group([{"CPU": 1}]), "no placement groups")
    one_line_refusal(lambda: remove_placement_group(None), "no placement groups")
    assert get_current_placement_group() is None
