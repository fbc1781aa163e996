"""serialization.py and node/store.py without a node: round-trips, layout, corruption, errors.

Properties (DESIGN §2 "Object store", §4 "store round-trip of arbitrary numpy
dtypes/shapes/objects"):
- any numpy array (any dtype incl. structured, any memory layout, 0-d and
  empty) and any nested Python value comes back equal, both from the inline
  form (`dumps`/`deserialize`) and from a store file (`store.write`/`read`);
- arrays whose data travel out-of-band come back read-only, and from the
  store they point straight into the (page-aligned) map at 64-byte-aligned
  addresses; every out-of-band buffer starts at a multiple of 64;
- a blob whose header is damaged or that is cut short raises
  `CorruptObjectError`, never unpickles garbage;
- error records keep the exception's type and attributes, or degrade to a
  plain `TaskError` carrying type name, message and traceback text.
"""
from __future__ import annotations

import math
import os
import pickle
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zfabric import exceptions, records, serialization
from zfabric.exceptions import TaskCancelledError, TaskError
from zfabric.node import store
from zfabric.serialization import CorruptObjectError

pytestmark = pytest.mark.timeout(120)

SETTINGS = settings(deadline=None, max_examples=150, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


# -- strategies --------------------------------------------------------------------------

scalar_dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1, max_len=8),
    hnp.unicode_string_dtypes(min_len=1, max_len=8),
)
any_dtypes = st.one_of(
    scalar_dtypes,
    hnp.array_dtypes(subtype_strategy=scalar_dtypes, min_size=1, max_size=4),
    # nested structured dtypes and sub-array fields
    hnp.array_dtypes(subtype_strategy=hnp.array_dtypes(subtype_strategy=scalar_dtypes,
                                                      min_size=1, max_size=2),
                     min_size=1, max_size=2),
    hnp.array_dtypes(subtype_strategy=st.tuples(scalar_dtypes, hnp.array_shapes(max_dims=2,
                                                                                max_side=2)),
                     min_size=1, max_size=2),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw):
    """An array in any layout: C, Fortran, a view with odd strides, a transpose."""
    a = draw(hnp.arrays(dtype=any_dtypes, shape=shapes))
    layout = draw(st.sampled_from(["c", "fortran", "index", "transpose", "reversed"]))
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "transpose":
        a = a.T
    elif layout == "reversed" and a.ndim:
        a = a[::-1]
    elif layout == "index":
        idx = draw(hnp.basic_indices(a.shape, allow_newaxis=True, allow_ellipsis=True))
        b = a[idx]
        a = b if isinstance(b, np.ndarray) else np.asarray(b)  # keep it an array (0-d)
    return a


hashables = st.one_of(st.none(), st.booleans(), st.integers(),
                      st.floats(allow_nan=False), st.text(max_size=10), st.binary(max_size=10))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**64, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True), st.just(float("nan")),
    st.complex_numbers(allow_nan=True), st.text(), st.binary(), st.builds(bytearray, st.binary()),
    hnp.arrays(dtype=scalar_dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
)
objects = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), children, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
    ),
    max_leaves=25,
)


# -- comparison ------------------------------------------------------------------------

def assert_same_array(a: np.ndarray, b) -> None:
    """b is what pickle itself makes of a, bit for bit.

    The reference is a plain pickle round-trip, not `a`: numpy's own pickling
    turns a non-native-endian datetime64/timedelta64 dtype into the native one
    (and byte-swaps the data), and zfabric must not do better or worse."""
    assert type(b) is np.ndarray, type(b)
    a = pickle.loads(pickle.dumps(a, 5))
    assert b.dtype == a.dtype, (a.dtype, b.dtype)
    assert b.shape == a.shape
    # bit-exact: nan payloads, -0.0, NaT, padding-free structured records
    assert np.ascontiguousarray(b).tobytes() == np.ascontiguousarray(a).tobytes()
    if a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous:
        assert b.flags.f_contiguous  # Fortran order survives


def assert_same(a, b) -> None:
    """Deep equality that is exact about types, float signs and nans."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert_same_array(a, b)
    elif isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b)
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b)
    elif isinstance(a, complex):
        assert_same(a.real, b.real)
        assert_same(a.imag, b.imag)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)  # same keys, same order
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


def iter_arrays(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from iter_arrays(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_arrays(v)


def out_of_band(a: np.ndarray) -> bool:
    """Whether numpy's protocol-5 reduce hands this array's data over as a buffer
    (contiguous, no objects, not a datetime/timedelta...: numpy decides, in-band
    arrays are rebuilt as private writable copies)."""
    buffers: list = []
    pickle.dumps(a, 5, buffer_callback=buffers.append)
    return bool(buffers)


def check_layout(ser: serialization.Serialized) -> None:
    assert len(ser.offsets) == len(ser.buffers)
    table_end = serialization.HEADER_SIZE + 16 * len(ser.buffers)
    end = table_end + len(ser.pickle)
    for off, buf in zip(ser.offsets, ser.buffers):
        assert off % serialization.ALIGN == 0, ser.offsets
        assert off >= end  # no overlap with the pickle or the previous buffer
        end = off + memoryview(buf).nbytes
    assert ser.size >= end
    blob = ser.to_bytes()
    assert len(blob) == ser.size
    start, table, plen, total = serialization.parse_header(memoryview(blob))
    assert (start, plen, total) == (table_end, len(ser.pickle), ser.size)
    assert table == [(off, memoryview(b).nbytes) for off, b in zip(ser.offsets, ser.buffers)]
    for off, buf in zip(ser.offsets, ser.buffers):
        mv = memoryview(buf).cast("B")
        assert blob[off:off + mv.nbytes] == mv.tobytes()


@pytest.fixture
def store_dir(tmp_path):
    d = str(tmp_path / "store")
    store.create_dir(d)
    yield d
    store.remove_dir(d)


def _oid() -> bytes:
    return os.urandom(20)


def _roundtrip_store(store_dir: str, ser):
    oid = _oid()
    size = store.write(store_dir, oid, ser)
    assert size == ser.size == os.path.getsize(store.path_of(store_dir, oid))
    assert oid.hex() in os.listdir(store_dir)
    assert not [f for f in os.listdir(store_dir) if f.endswith(".tmp")]  # sealed by rename
    return oid, store.read(store_dir, oid)


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


@SETTINGS
@given(a=arrays())
def test_array_roundtrip_store(store_dir, a):
    ser = serialization.serialize(a)
    f_only = a.flags.f_contiguous and not a.flags.c_contiguous
    event(f"kind={a.dtype.kind} ndim={a.ndim} empty={a.size == 0} "
          f"out-of-band={bool(ser.buffers)} F-only={f_only}")
    oid, b = _roundtrip_store(store_dir, ser)
    assert_same_array(a, b)
    if out_of_band(a):
        assert not b.flags.writeable, "an array read from the store must be read-only"
        with pytest.raises(ValueError):
            b[...] = b  # even an attempt to write raises, not corrupts the store file
        if b.size:
            # zero copy: the data live in the map, at the 64-byte aligned buffer offset
            assert b.ctypes.data % serialization.ALIGN == 0
    store.delete(store_dir, oid)
    assert oid.hex() not in os.listdir(store_dir)


def test_large_array_store_is_zero_copy(store_dir):
    a = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
    ser = serialization.serialize(a)
    assert len(ser.buffers) == 1 and ser.offsets[0] % 64 == 0
    oid, b = _roundtrip_store(store_dir, ser)
    np.testing.assert_array_equal(a, b)
    assert not b.flags.writeable and not b.flags.owndata
    # zero copy: the array's memory is the file's map, at the buffer's offset
    mv = store.map_object(store_dir, oid)
    assert bytes(mv[ser.offsets[0]:ser.offsets[0] + 64]) == a.tobytes()[:64]
    assert b.ctypes.data % 4096 == ser.offsets[0] % 4096  # mmap is page-aligned


def test_several_buffers_each_aligned(store_dir):
    value = {"a": np.arange(3, dtype=np.int8), "b": np.ones((5, 7), dtype=np.float32),
             "c": [np.zeros(0), np.array(1.5), np.asfortranarray(np.eye(3))],
             "d": bytearray(b"xyz" * 33)}
    ser = serialization.serialize(value)
    assert len(ser.buffers) >= 5
    check_layout(ser)
    _, back = _roundtrip_store(store_dir, ser)
    assert_same(value, back)


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


@SETTINGS
@given(value=objects)
def test_object_roundtrip_store(store_dir, value):
    oid, back = _roundtrip_store(store_dir, serialization.serialize(value))
    assert_same(value, back)
    for arr in iter_arrays(back):
        if out_of_band(arr):
            assert not arr.flags.writeable
    store.delete(store_dir, oid)


def test_shared_and_cyclic_references_survive(store_dir):
    shared = [1, 2]
    cyclic: list = [shared, shared]
    cyclic.append(cyclic)
    arr = np.arange(4)
    value = {"cyc": cyclic, "arr1": arr, "arr2": arr}
    for back in (serialization.deserialize(serialization.dumps(value)),
                 _roundtrip_store(store_dir, serialization.serialize(value))[1]):
        assert back["cyc"][0] is back["cyc"][1]
        assert back["cyc"][2] is back["cyc"]
        assert back["arr1"] is back["arr2"]


# -- corruption ---------------------------------------------------------------------------

_CORRUPT_SAMPLES = [
    None, 7, "text", b"\x00" * 10, {"k": [1, 2.5, None]},
    np.arange(10, dtype=np.int32),
    [np.ones(3), np.zeros((2, 2), order="F"), bytearray(b"abc")],
    np.zeros((0, 3)),
]


@pytest.mark.parametrize("value", _CORRUPT_SAMPLES, ids=lambda v: type(v).__name__)
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


@pytest.mark.parametrize("value", _CORRUPT_SAMPLES, ids=lambda v: type(v).__name__)
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


@pytest.mark.parametrize("value", _CORRUPT_SAMPLES[3:], ids=lambda v: type(v).__name__)
def test_damaged_store_file_is_detected(store_dir, value):
    ser = serialization.serialize(value)
    oid = _oid()
    store.write(store_dir, oid, ser)
    path = store.path_of(store_dir, oid)
    good = open(path, "rb").read()
    # truncated files (but not empty: see test_empty_store_file_is_corrupt)
    for k in sorted({1, 4, serialization.HEADER_SIZE - 1, serialization.HEADER_SIZE,
                     len(good) // 2, len(good) - 1}):
        if not 0 < k < len(good):
            continue
        with open(path, "wb") as f:
            f.write(good[:k])
        with pytest.raises(CorruptObjectError):
            store.read(store_dir, oid)
    # a flipped byte in the header
    for i in (0, 4, 6, 8, 12, 16, 24):
        bad = bytearray(good)
        bad[i] ^= 0x5A
        with open(path, "wb") as f:
            f.write(bad)
        with pytest.raises(CorruptObjectError):
            store.read(store_dir, oid)
    with open(path, "wb") as f:
        f.write(b"\xff" * len(good))
    with pytest.raises(CorruptObjectError):
        store.read(store_dir, oid)


# Regression: a bare ValueError('cannot mmap an empty file') from mmap, not
# CorruptObjectError
def test_empty_store_file_is_corrupt(store_dir):
    oid = _oid()
    store.write(store_dir, oid, serialization.serialize([1, 2, 3]))
    os.truncate(store.path_of(store_dir, oid), 0)
    with pytest.raises(CorruptObjectError):
        store.read(store_dir, oid)


def test_garbage_is_not_an_object():
    for blob in (b"", b"ZFO1", b"not a zfabric object at all, just words....",
                 pickle.dumps([1, 2, 3], 5)):
        with pytest.raises(CorruptObjectError):
            serialization.deserialize(blob)


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
def test_exception_that_cannot_travel_becomes_plain_task_error(exc):
    record = serialization.error_record(exc, "g")
    err = serialization.error_from_record(record)
    assert type(err) is TaskError
    assert err.cause is None
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
