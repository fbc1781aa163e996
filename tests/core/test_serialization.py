"""serialization.py: round-trips of the inline form, layout, corruption, errors.

Properties (docs/architecture.md "The object store"; "store round-trip of arbitrary numpy
dtypes/shapes/objects"):
- any numpy array (any dtype incl. structured, any memory layout, 0-d and
  empty) and any nested Python value comes back equal, both from the inline
  form (`dumps`/`deserialize`);
- arrays whose data travel out-of-band come back read-only; every
  out-of-band buffer starts at a multiple of 64;
- a blob whose header is damaged or that is cut short raises
  `CorruptObjectError`, never unpickles garbage;
- error records keep the exception's type and attributes, or degrade to a
  plain `TaskError` carrying type name, message and traceback text;
- a large bytes, bytearray or str inside a value is kept by reference, not
  copied, and `serialize(value, limit)` gives up (None) after pickling about
  `limit` bytes of a value that is larger.
The same values through store files: tests/node/test_store.py.
"""
from __future__ import annotations

import logging
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zfabric import exceptions, records, serialization
from zfabric.exceptions import TaskCancelledError, TaskError
from zfabric.serialization import CorruptObjectError

from tests.harness.values import (CORRUPT_SAMPLES, SETTINGS, arrays, assert_same,
                                  assert_same_array, check_layout, iter_arrays, objects,
                                  out_of_band)

pytestmark = pytest.mark.timeout(120)


# -- numpy round-trips ---------------------------------------------------------------------

@SETTINGS
@given(a=arrays())
def test_array_roundtrip_inline(a):
    ser = serialization.serialize(a)
    check_layout(ser)
    if out_of_band(a):
        assert len(ser.buffers) == 1
    b = serialization.deserialize(serialization.dumps(a))
    assert_same_array(a, b)
    if out_of_band(a):
        assert not b.flags.writeable  # a view of the (immutable) blob


# -- nested Python objects ---------------------------------------------------------------------

@SETTINGS
@given(value=objects)
def test_object_roundtrip_inline(value):
    ser = serialization.serialize(value)
    check_layout(ser)
    assert ser.contained == []
    assert_same(value, serialization.deserialize(serialization.dumps(value)))
    for arr in iter_arrays(serialization.deserialize(serialization.dumps(value))):
        if out_of_band(arr):
            assert not arr.flags.writeable


# -- corruption ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", CORRUPT_SAMPLES, ids=lambda v: type(v).__name__)
def test_every_single_bit_flip_in_header_is_detected(value):
    blob = serialization.dumps(value)
    nbuf = len(serialization.serialize(value).buffers)
    header_len = serialization.HEADER_SIZE + 16 * nbuf
    for i in range(header_len):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises(CorruptObjectError):
                serialization.deserialize(bytes(bad))


@pytest.mark.parametrize("value", CORRUPT_SAMPLES, ids=lambda v: type(v).__name__)
def test_every_truncation_is_detected(value):
    blob = serialization.dumps(value)
    for k in range(len(blob)):
        with pytest.raises(CorruptObjectError):
            serialization.deserialize(blob[:k])


@SETTINGS
@given(value=objects, data=st.data())
def test_random_header_damage_is_detected(value, data):
    blob = serialization.dumps(value)
    nbuf = len(serialization.serialize(value).buffers)
    header_len = serialization.HEADER_SIZE + 16 * nbuf
    start = data.draw(st.integers(0, header_len - 1))
    end = data.draw(st.integers(start + 1, header_len))
    junk = data.draw(st.binary(min_size=end - start, max_size=end - start))
    bad = blob[:start] + junk + blob[end:]
    if bad == blob:
        return
    with pytest.raises(CorruptObjectError):
        serialization.deserialize(bad)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CorruptObjectError):
        serialization.deserialize(blob[:cut])


def test_garbage_is_not_an_object():
    for blob in (b"", b"ZFO1", b"not a zfabric object at all, just words....",
                 pickle.dumps([1, 2, 3], 5)):
        with pytest.raises(CorruptObjectError):
            serialization.deserialize(blob)


# -- large values: kept by reference, and a limit ----------------------------------------------

class CountsReduces:
    """Counts how often the pickler reduces one (and pickles as 200 bytes)."""
    reduced = 0

    def __reduce__(self):
        CountsReduces.reduced += 1
        return bytes, (bytes(range(200)),)   # a new object each time: not memoized


def test_large_bytes_bytearray_and_str_are_kept_by_reference_not_copied():
    big_b, big_ba, text = b"b" * 300_000, bytearray(b"a" * 300_000), "s" * 300_000
    for value in (big_b, [1, big_b, big_ba], {"t": text, "n": [big_ba]}):
        ser = serialization.serialize(value)
        kept = {id(piece) for piece in ser.pickle}
        assert id(big_b) in kept or value is not big_b and id(big_ba) in kept
        assert_same(value, serialization.deserialize(ser.to_bytes()))
        assert ser.pickle_len == sum(len(piece) for piece in ser.pickle)


class _Local:   # a class no worker could import by name: pickled by value
    def __init__(self, x):
        self.x = x


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20) | st.binary(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12))
@SETTINGS
def test_plain_arguments_pickle_as_cloudpickle_would_read_them(value):
    """A task's plain arguments take the C pickler's fast path; what it writes
    reads back the same as cloudpickle's own stream does."""
    from zfabric.ref import DepMarker
    args = ([value, DepMarker(0)], {"k": value})
    blob = serialization.serialize(args).to_bytes()
    back = serialization.deserialize(blob)
    assert_same(args[1], back[1])
    assert_same(value, back[0][0])
    assert type(back[0][1]) is DepMarker and back[0][1].index == 0


def test_values_the_c_pickler_would_write_by_name_go_through_cloudpickle():
    """A lambda, an instance of a class, or a long list nested in the arguments
    is not plain: cloudpickle writes it (by value where a worker could not
    import it by name, as a class of the driver's script)."""
    for args in (([lambda: 1], {}), ([_Local(3)], {}), ([[1] * 40], {}), ([1], {"k": _Local(2)})):
        assert not serialization._plain(args)
        back = serialization.deserialize(serialization.dumps(args))
        assert back[0] is not None
    ser = serialization.serialize(([_Local(5)], {}))
    assert b"_Local" in b"".join(bytes(p) for p in ser.pickle)
    assert serialization.deserialize(ser.to_bytes())[0][0].x == 5


def test_a_limit_gives_up_after_pickling_about_that_much():
    small = {"k": [1, 2.5, "x"]}
    assert serialization.serialize(small, 1000).to_bytes() == serialization.dumps(small)
    for big in (b"b" * 300_000, [b"b" * 300_000], [np.ones(40_000)], "s" * 300_000):
        assert serialization.serialize(big, 100_000) is None
        assert serialization.serialize(big, 1 << 30).size == serialization.serialize(big).size
    CountsReduces.reduced = 0
    assert serialization.serialize([CountsReduces() for _ in range(10_000)], 10_000) is None
    assert CountsReduces.reduced < 1_000   # of 10,000: it stopped early


# -- error records ------------------------------------------------------------------------

class CodedError(ValueError):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code
        self.details = {"retry": False, "where": [1, 2]}


class BadInit(Exception):
    """Pickles, but cannot be unpickled: __init__ needs two arguments, args holds one."""

    def __init__(self, a, b):
        super().__init__(f"bad init {a}-{b}")
        self.a, self.b = a, b


class HoldsLock(Exception):
    """Cannot even be pickled (a lock attribute)."""

    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def _caught(exc):
    try:
        _raise_from_user_function(exc)
    except BaseException as e:
        return e
    raise AssertionError("unreachable")


def _raise_from_user_function(exc):
    raise exc


def test_error_record_is_task_error_and_original_type():
    err = serialization.error_from_record(serialization.error_record(ValueError("x"), "f"))
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert isinstance(err, exceptions.ZFabricError)
    assert type(err.cause) is ValueError and err.cause.args == ("x",)
    assert err.function_name == "f"
    assert "x" in str(err) and "ValueError" in str(err)
    with pytest.raises(ValueError):
        raise err


def test_error_record_keeps_cause_attributes_and_traceback():
    exc = _caught(CodedError("no luck", 42))
    err = serialization.error_from_record(serialization.error_record(exc, "my_task"))
    assert isinstance(err, TaskError) and isinstance(err, CodedError)
    assert isinstance(err, ValueError)
    assert type(err.cause) is CodedError
    assert err.cause.code == 42 and err.cause.details == {"retry": False, "where": [1, 2]}
    assert err.cause.args == ("no luck", 42)
    assert err.code == 42  # attributes also readable on the error itself
    assert "_raise_from_user_function" in err.traceback_str
    assert "my_task" in str(err)


@pytest.mark.parametrize("exc", [_caught(BadInit(1, 2)), _caught(HoldsLock("locked up"))],
                         ids=["unpicklable", "unserializable"])
def test_exception_that_cannot_travel_becomes_task_error_with_text_cause(exc):
    record = serialization.error_record(exc, "g")
    err = serialization.error_from_record(record)
    assert type(err) is TaskError
    cause = err.cause
    assert type(cause) is exceptions.UnserializableException
    assert isinstance(cause, exceptions.ZFabricError)
    assert cause.type_name == type(exc).__name__ and cause.message == str(exc)
    assert "_raise_from_user_function" in cause.traceback_str
    assert "not serializable" in str(cause) and "does not pickle and unpickle" in str(cause)
    assert err.cause_type_name == type(exc).__name__
    assert str(exc) in err.message and str(exc) in str(err)
    assert type(exc).__name__ in str(err)
    assert "_raise_from_user_function" in err.traceback_str
    assert err.function_name == "g"


_BUILTIN_ERRORS = [ValueError, TypeError, KeyError, RuntimeError, ZeroDivisionError,
                   IndexError, AttributeError, ArithmeticError, LookupError, AssertionError,
                   NotImplementedError]


@SETTINGS
@given(cls=st.sampled_from(_BUILTIN_ERRORS), msg=st.text(max_size=50),
       fn=st.text(max_size=20), context=st.lists(st.text(max_size=20), max_size=3))
def test_builtin_errors_roundtrip(cls, msg, fn, context):
    record = serialization.error_record(cls(msg), fn)
    for c in context:
        record = records.error_with_context(record, c)
    err = serialization.error_from_record(record)
    assert isinstance(err, TaskError) and isinstance(err, cls)
    assert type(err.cause) is cls and err.cause.args == (msg,)
    assert err.function_name == fn
    for c in context:
        assert c in str(err)


def test_os_error_keeps_errno():
    err = serialization.error_from_record(
        serialization.error_record(FileNotFoundError(2, "gone", "/x"), "f"))
    assert isinstance(err, FileNotFoundError) and isinstance(err, TaskError)
    assert err.cause.errno == 2 and err.cause.filename == "/x"


def test_system_error_records():
    for cls in (TaskCancelledError, exceptions.WorkerCrashedError, exceptions.ObjectLostError):
        record = records.system_error_record(cls, "it happened", "f")
        assert records.fields(record)["system"] == cls.__name__
        err = serialization.error_from_record(record)
        assert type(err) is cls and "it happened" in str(err)
        err = serialization.error_from_record(
            records.error_with_context(record, "an input of g() could not be computed"))
        assert type(err) is cls and "an input of g()" in str(err)


# Regression: an error a task re-raised (from a nested zf.get it did not catch) lost its
# cause's type: the derived class's
# __reduce__ pickles it as a plain TaskError, and as_instanceof_cause() returns a plain
# TaskError when the cause is a TaskError, so the second hop is no longer a ValueError
def test_reraised_task_error_keeps_the_original_type():
    first = serialization.error_from_record(serialization.error_record(ValueError("x"), "f"))
    assert isinstance(first, ValueError)
    second = serialization.error_from_record(serialization.error_record(first, "g"))
    assert isinstance(second, TaskError)
    assert isinstance(second, ValueError)


# Regression: TaskError (derived class __reduce__ returns TaskError), the root cause of
# test_reraised_task_error_keeps_the_original_type
def test_task_error_pickle_keeps_the_original_type():
    first = serialization.error_from_record(serialization.error_record(ValueError("x"), "f"))
    back = pickle.loads(pickle.dumps(first))
    assert isinstance(back, TaskError) and isinstance(back, ValueError)


def test_exception_that_does_not_unpickle_here_says_why():
    record = records.make("Gone", "from a module this process lacks", traceback="tb text",
                          function="f", exc=b"not a pickle")
    err = serialization.error_from_record(record)
    assert type(err) is TaskError
    assert type(err.cause) is exceptions.UnserializableException
    assert err.cause.type_name == "Gone" and err.cause.traceback_str == "tb text"
    assert "does not unpickle here" in str(err.cause)
    back = pickle.loads(pickle.dumps(err))   # the text cause travels on, as a re-raise would
    assert type(back.cause) is exceptions.UnserializableException
    assert back.cause.message == "from a module this process lacks"


class Sealed(Exception):
    """Refuses subclasses (what typing.final promises, enforced)."""

    def __init_subclass__(cls, **kwargs):
        raise RuntimeError(f"{Sealed.__name__} is final")


class SealedByMeta(type):
    def __new__(mcls, name, bases, namespace):
        if any(isinstance(b, SealedByMeta) for b in bases):
            raise TypeError("final class")
        return super().__new__(mcls, name, bases, namespace)


class SealedMetaError(Exception, metaclass=SealedByMeta):
    pass


@pytest.mark.parametrize("cls", [Sealed, SealedMetaError])
def test_a_class_that_cannot_be_subclassed_gives_a_task_error_and_one_warning(cls, caplog):
    exceptions._derived_cache.pop(cls, None)
    with caplog.at_level(logging.WARNING, logger="zfabric.exceptions"):
        for _ in range(3):
            err = serialization.error_from_record(serialization.error_record(cls("no"), "f"))
            assert type(err) is TaskError and type(err.cause) is cls
            assert err.cause.args == ("no",)
    warnings = [r.getMessage() for r in caplog.records if r.name == "zfabric.exceptions"]
    assert len(warnings) == 1
    assert cls.__name__ in warnings[0] and "cannot be subclassed" in warnings[0]


def test_ray_names_for_the_errors():
    assert exceptions.RayTaskError is TaskError
    assert exceptions.RayError is exceptions.ZFabricError
    err = serialization.error_from_record(serialization.error_record(ValueError("x"), "f"))
    assert isinstance(err, exceptions.RayTaskError) and isinstance(err, exceptions.RayError)
