"""Values for the serialization and store tests: hypothesis strategies for any
numpy array (any dtype incl. structured, any memory layout, 0-d and empty)
and any nested Python value, exact comparisons, and the layout check of a
serialized blob. Used by tests/core/test_serialization.py and
tests/node/test_store.py.
"""
from __future__ import annotations

import math
import pickle

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from zfabric import serialization

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
    end = table_end + ser.pickle_len
    for off, buf in zip(ser.offsets, ser.buffers):
        assert off % serialization.ALIGN == 0, ser.offsets
        assert off >= end  # no overlap with the pickle or the previous buffer
        end = off + memoryview(buf).nbytes
    assert ser.size >= end
    blob = ser.to_bytes()
    assert len(blob) == ser.size
    start, table, plen, total = serialization.parse_header(memoryview(blob))
    assert (start, plen, total) == (table_end, ser.pickle_len, ser.size)
    assert table == [(off, memoryview(b).nbytes) for off, b in zip(ser.offsets, ser.buffers)]
    for off, buf in zip(ser.offsets, ser.buffers):
        mv = memoryview(buf).cast("B")
        assert blob[off:off + mv.nbytes] == mv.tobytes()


# -- values for the corruption tests ---------------------------------------------------------

CORRUPT_SAMPLES = [
    None, 7, "text", b"\x00" * 10, {"k": [1, 2.5, None]},
    np.arange(10, dtype=np.int32),
    [np.ones(3), np.zeros((2, 2), order="F"), bytearray(b"abc")],
    np.zeros((0, 3)),
]
